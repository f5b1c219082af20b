#![doc = include_str!("../README.md")]

pub use wiremux_engine as engine;
pub use wiremux_http as http;
pub use wiremux_proto as proto;
