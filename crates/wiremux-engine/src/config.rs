//! Every limit and timeout of a server, in one place, with its default.

use std::time::Duration;
use wiremux_proto::server::Limits;

/// Server settings. Build one with [`Config::default`] and change fields,
/// or through [`crate::ServerBuilder`]'s setters.
///
/// ```
/// let mut config = wiremux_engine::Config::default();
/// config.max_executing = 64;
/// config.request_deadline = Some(std::time::Duration::from_secs(5));
/// assert_eq!(config.limits.max_receiving, 1024);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// The reactor's limits: requests receiving at once (1024), arguments
    /// per request (256), bytes buffered per request (8 MiB) and per
    /// connection (32 MiB).
    pub limits: Limits,
    /// Largest frame payload accepted from a client. Default 65535.
    pub max_recv_payload: usize,
    /// Largest frame payload sent. Default 32768.
    pub max_send_payload: usize,
    /// Requests started and not yet answered in full, per connection. When
    /// reached, the connection stops reading until one finishes
    /// (backpressure, not an error). Default 1024.
    pub max_executing: usize,
    /// Handlers running in the background (not finished at their first
    /// poll) across the whole server. When reached, connections stop
    /// reading until one finishes. Default 262144.
    pub max_server_executing: usize,
    /// Connections served at once by the whole server, across all its
    /// listeners (TCP, Unix, HTTP, TLS; [`Server::serve_io`](crate::Server::serve_io)
    /// connections are not counted); while all are taken, each listener
    /// holds one accepted connection unserved and further ones wait in
    /// its listen queue. Clamped to between 1 and tokio's
    /// `Semaphore::MAX_PERMITS` (`usize::MAX >> 3`). Default 16384.
    pub max_connections: usize,
    /// Output buffered per connection before the connection stops taking
    /// more output from responses and stops reading. Default 128 KiB.
    pub write_high_water: usize,
    /// A handler that runs longer is cancelled and its request answered
    /// with a timeout error. Default: none. A handler that is ready at its
    /// first poll, and any [`SyncHandler`](crate::SyncHandler), has
    /// finished before a deadline could apply.
    pub request_deadline: Option<Duration>,
    /// A request whose frames are still arriving after this long with no
    /// command completing on the connection closes the connection with a
    /// protocol error (slowloris defence). Default 30 s.
    pub assembly_timeout: Duration,
    /// A connection with nothing in flight and nothing arriving for this
    /// long is closed. Default 300 s.
    pub idle_timeout: Option<Duration>,
    /// On graceful shutdown, how long in-flight requests may take to
    /// finish before their connections are closed. Default 10 s.
    pub drain_timeout: Duration,
    /// Refuse commands that need write permission. Default false.
    pub read_only: bool,
    /// Send responses in request order (head-of-line blocking), as an
    /// in-order baseline for benchmarks. Default false.
    pub in_order: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            max_recv_payload: wiremux_proto::codec::DEFAULT_MAX_RECV_PAYLOAD,
            max_send_payload: wiremux_proto::codec::DEFAULT_MAX_SEND_PAYLOAD,
            max_executing: 1024,
            max_server_executing: 1 << 18,
            max_connections: 16384,
            write_high_water: 128 << 10,
            request_deadline: None,
            assembly_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(300)),
            drain_timeout: Duration::from_secs(10),
            read_only: false,
            in_order: false,
        }
    }
}
