//! deadline-notifier: AWS Deadline Cloud job transitions, delivered to team chat.
//!
//! Data flow: [`watch`] polls [`deadline`] → [`watch::diff`] → [`watch::route`] →
//! [`render`] → [`store`] outbox → [`deliver`] → [`notify`] channels. The layer
//! table in ARCHITECTURE.md says which module may import which; `tests/architecture.rs`
//! enforces it.
#![forbid(unsafe_code)]

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
