//! wiremux
pub use wiremux_engine as engine;
pub use wiremux_proto as proto;
