//! The tokio runtime of wiremux: a server that runs many commands at once
//! per connection and answers each as soon as it is done, and an async
//! client that keeps thousands of calls in flight on one connection.
//!
//! The protocol logic lives in [`wiremux_proto`]; this crate moves bytes,
//! spawns work and enforces time.
//!
//! ```no_run
//! use wiremux_engine::{Client, CommandError, Permission, Request, Response, Server};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let server = Server::builder()
//!     .command("echo", Permission::Read, |req: Request| async move { Ok(Response::bytes(req.data())) })
//!     .build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! tokio::spawn({ let server = server.clone(); async move { server.serve_tcp(listener).await } });
//!
//! let client = Client::connect(addr).await.unwrap();
//! let reply = client.call("echo").data("hi").send().await.unwrap();
//! assert_eq!(reply.body, "hi");
//! server.shutdown();
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod client;
mod config;
mod connection;
pub mod demo;
mod executor;
mod handler;
mod listener;
pub mod metrics;
pub mod pool;
pub mod reconnect;
mod server;
mod stats;
pub mod tls;

pub use client::{Client, Pipeline};
pub use config::Config;
pub use executor::Executor;
pub use handler::{
    Body, CommandError, Handler, HandlerFuture, Permission, Refusal, Registry, Request, Response,
    ServiceHandler, Started, SyncHandler,
};
pub use listener::{is_transient_accept_error, Listener};
pub use server::{Server, ServerBuilder};
pub use stats::{CommandStatsSnapshot, StatsSnapshot, LATENCY_BUCKETS, UNKNOWN_COMMAND};
pub use wiremux_proto as proto;
