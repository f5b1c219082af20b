//! The sans-IO core of wiremux: Mercurial's frame protocol
//! (`application/mercurial-exp-framing-0002`) as plain data and state
//! machines. No runtime, no sockets, no clocks: bytes and events in, actions
//! out, so every rule is tested deterministically.
//!
//! - [`frame`]: the header, frame types and flags.
//! - [`codec`]: incremental, zero-copy decoding and encoding
//!   (also tokio-util's `Decoder`/`Encoder`).
//! - [`human`]: the one-line human syntax used by tests and tools.
//! - [`builder`]: every frame of a command, a response, an error.
//! - [`server`]: the server reactor, one assembler per request ID.
//! - [`flood`]: the limits on requests that end in errors or cancelled.
//! - [`client`]: the ID allocator and the response assembler.
//! - [`reflect`]: the reflect report of the server reactor's decisions.
//! - [`request`]: the one request type, from the reactor to the handler.
//! - [`schedule`]: the reserved arguments of the extensions (PROTOCOL.md §8).
//! - [`send`]: the send side: response bodies in, frames out.
//! - [`lifecycle`]: every request of a connection from first to last frame:
//!   receive side, scheduler, send side and timers, for every transport.
//!
//! ```
//! use wiremux_proto::builder::CommandBuilder;
//! use wiremux_proto::server::{Action, ServerReactor};
//! use wiremux_proto::FrameCodec;
//!
//! // A client encodes a command...
//! let mut wire = bytes::BytesMut::new();
//! CommandBuilder::new("echo").arg("k", "v").data("hi").encode(1, 32768, &mut wire).unwrap();
//! // ...and the server decodes and assembles it.
//! let (mut codec, mut reactor) = (FrameCodec::new(), ServerReactor::new());
//! while let Some(frame) = codec.decode_frame(&mut wire).unwrap() {
//!     if let Action::RunCommand(cmd) = reactor.on_frame(frame) {
//!         assert_eq!(cmd.arg("k").unwrap(), "v");
//!         assert_eq!(cmd.data.unwrap(), "hi");
//!     }
//! }
//! ```

#![warn(missing_docs)]

pub mod builder;
pub mod client;
pub mod codec;
pub mod flood;
pub mod frame;
pub mod human;
pub mod id_map;
pub mod lifecycle;
pub mod reflect;
pub mod request;
pub mod schedule;
pub mod send;
pub mod server;
pub mod slots;

pub use codec::{decode_all, CodecError, FrameCodec};
pub use frame::{Flags, Frame, FrameType, Header, HEADER_LEN};
pub use id_map::IdMap;
pub use request::{CommandError, Request};
pub use slots::IdTable;

/// The media type of the frame protocol.
pub const MEDIA_TYPE: &str = "application/mercurial-exp-framing-0002";
