//! Integration tests: the real `deadline-notifier` binary against the in-process
//! Deadline Cloud simulator (through the real AWS SDK) and a local webhook sink.
mod api;
mod delivery;
mod escaping;
mod events;
mod fairness;
mod golden;
mod helpers;
mod pipeline;
mod quiet;
mod redaction;
mod reload;
mod retention;
mod security;
mod slack_app;
mod startup;
mod tls;
mod triage;
mod watches;
