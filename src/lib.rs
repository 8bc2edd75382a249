//! deadline-notifier: AWS Deadline Cloud job transitions, delivered to team chat.
//!
//! Data flow: [`watcher`] polls [`deadline`] → [`diff`] → [`route`] → [`render`] →
//! [`store`] outbox → [`deliver`] → [`notify`] channels. See ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod api;
pub mod api_client;
pub mod app;
pub mod clock;
pub mod config;
pub mod deadline;
pub mod deliver;
pub mod demo;
pub mod diff;
pub mod domain;
pub mod monitor;
pub mod notify;
pub mod people;
pub mod progress;
pub mod redact;
pub mod reload;
pub mod render;
pub mod route;
pub mod schedule;
pub mod secret;
pub mod server;
pub mod sink;
pub mod store;
pub mod telemetry;
pub mod triage;
pub mod watcher;
pub mod web;

/// glibc's allocator spent about a third of the watcher's CPU (per `perf`) and
/// fragments across tokio's threads; jemalloc is faster and keeps RSS flat.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
