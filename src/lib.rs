//! deadline-notifier: AWS Deadline Cloud job transitions, delivered to team chat.
//!
//! Data flow: [`watch`] polls [`deadline`] → [`watch::diff`] → [`watch::route`] →
//! [`render`] → [`store`] outbox → [`deliver`] → [`notify`] channels. The layer
//! table in ARCHITECTURE.md says which module may import which; `tests/architecture.rs`
//! enforces it.
// No unsafe code, with one audited exception: jemalloc's start-up options below.
#![deny(unsafe_code)]

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod deadline;
pub mod deliver;
pub mod devkit;
pub mod domain;
pub mod http;
pub mod notify;
pub mod render;
pub mod store;
pub mod triage;
pub mod watch;

/// glibc's allocator spent about a third of the watcher's CPU (per `perf`) and
/// fragments across tokio's threads; jemalloc is faster and keeps RSS flat.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at start-up (`_RJEM_MALLOC_CONF` in the
/// environment still overrides them). Two arenas instead of four per core: the
/// service allocates from few threads at once (one poll loop, a few delivery
/// workers, the API), and each extra arena keeps its own partly used pages of
/// every size class; with 100k watched jobs two arenas hold ~100 bytes less per
/// job (`examples/bench`). Thread caches stop at 4 KiB, so large transient buffers
/// (HTTP bodies) go back to the arena instead of sitting in one thread's cache.
///
/// The symbol is the C string jemalloc reads (`malloc_conf`, with the prefix
/// tikv-jemalloc-sys builds it with); a thin pointer to a NUL-terminated string
/// with static lifetime, never written.
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &u8 = &MALLOC_CONF[0];
const MALLOC_CONF: [u8; 27] = *b"narenas:2,lg_tcache_max:12\0";
