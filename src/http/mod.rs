//! The HTTP side: the API's server and routes, the artists' page, and the client the
//! CLI and the demo use to talk to the API. Imports the loops' read-only views, the
//! store and the live set; nothing below imports it.
pub mod api;
pub mod client;
pub mod server;
pub mod web;
