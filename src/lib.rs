//! wiremux: one connection, many requests in flight.
//!
//! This facade re-exports the crates of the workspace:
//! [`proto`] (the sans-IO protocol core), [`engine`] (the tokio server and
//! client) and [`http`] (the HTTP transport).

pub use wiremux_engine as engine;
pub use wiremux_http as http;
pub use wiremux_proto as proto;
