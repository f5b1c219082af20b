//! The HTTP transport of wiremux: Mercurial's HTTP API version 2
//! (PROTOCOL.md §7) on hyper.
//!
//! An HTTP/1.1 request carries a whole body of frames; the server reads it
//! all, feeds it to a [`ServerReactor`](wiremux_proto::server::ServerReactor)
//! with deferred output (§4), checks every command against the permission
//! the URL grants, and only then runs the commands, concurrently, through
//! the same [`Registry`](wiremux_engine::Registry) and runtime as the TCP
//! transport. The response body streams their frames in completion order
//! with chunked transfer encoding.
//!
//! The URL space, under [`API_ROOT`]:
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/exp-http-v2-0001/` | 200, a short text description |
//! | `POST <ro\|rw>/<command>` | 200, the response frames of exactly one command |
//! | `POST <ro\|rw>/multirequest` | 200, the response frames of every command in the body |
//! | `POST <ro\|rw>/debugreflect` | the reflect report of §6 as text, if enabled (else 404) |
//!
//! ```no_run
//! use wiremux_engine::{demo, Server};
//! use wiremux_http::{HttpClient, HttpOptions};
//! use wiremux_proto::human::parse_frame;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder().registry(demo::registry()).build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}{}ro/echo", listener.local_addr()?, wiremux_http::API_ROOT);
//! tokio::spawn(wiremux_http::serve(listener, server.clone(), HttpOptions::default()));
//!
//! let frames = [
//!     parse_frame("1 command-name have-data echo")?,
//!     parse_frame("1 command-data eos hello")?,
//! ];
//! let response = HttpClient::new().post_frames(&url, &frames).await?;
//! assert_eq!(response.status(), 200);
//! let answer = response.frames().await?;
//! assert_eq!(&answer[0].payload[..], b"hello");
//! server.shutdown();
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod client;
mod exchange;
mod metrics;
mod options;
mod responses;
mod route;
mod serve;
mod service;

pub use client::{HttpClient, HttpError, HttpResponse};
pub use metrics::serve_metrics;
pub use options::HttpOptions;
pub use route::API_ROOT;
pub use serve::{serve, serve_on, serve_tls};
pub use service::{HttpBody, HttpService};
pub use wiremux_proto::MEDIA_TYPE;
