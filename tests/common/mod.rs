//! Helpers shared by the end-to-end tests: a demo server on a loopback port.

#![allow(dead_code)]

use std::net::SocketAddr;
use wiremux::engine::{demo, Config, Server};

/// A demo server with `config`, serving on an ephemeral loopback port.
pub async fn start(config: Config) -> (Server, SocketAddr) {
    let server = Server::builder()
        .registry(demo::registry())
        .config(config)
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    tokio::spawn(async move { s.serve_tcp(listener).await.unwrap() });
    (server, addr)
}

/// A demo server with default settings.
pub async fn start_default() -> (Server, SocketAddr) {
    start(Config::default()).await
}
