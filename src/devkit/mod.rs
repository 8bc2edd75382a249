//! Local stand-ins for the outside world, for the demo, the tests and the benchmarks:
//! a Deadline Cloud simulator speaking the real wire format, a webhook sink, and the
//! demo that runs both with the service. Production code never imports this folder.
pub mod demo;
pub mod simulator;
pub mod sink;
pub mod slack;
pub mod sqs;
