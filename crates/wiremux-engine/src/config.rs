//! Every limit and timeout of a server, in one place, with its default.

use std::time::Duration;
use wiremux_proto::lifecycle::LifecycleConfig;
use wiremux_proto::schedule::{DEFAULT_MAX_DEPENDENCIES, DEFAULT_MAX_KEPT_BYTES};
use wiremux_proto::server::Limits;

/// Server settings. Build one with [`Config::default`] and change fields,
/// or through [`crate::ServerBuilder`]'s setters.
///
/// ```
/// let mut config = wiremux_engine::Config::default();
/// config.max_executing = 64;
/// config.request_deadline = Some(std::time::Duration::from_secs(5));
/// assert_eq!(config.limits.max_receiving, 1024);
/// assert_eq!(config.limits.max_send_payload, 32768);
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// The reactor's limits: requests receiving at once (1024), arguments
    /// per request (256), bytes buffered per request (8 MiB) and per
    /// connection (32 MiB), and the one frame size of every response
    /// (`max_send_payload`, 32768), for every transport.
    pub limits: Limits,
    /// Largest frame payload accepted from a client. Default 65535.
    pub max_recv_payload: usize,
    /// Requests taken in and not yet answered in full, per connection,
    /// held ones (waiting for a dependency) included. When reached, the
    /// connection stops reading until one finishes (backpressure, not an
    /// error). Default 1024. It is also the least burst of `@cancel`s the
    /// flood limit allows (`limits.flood.cancel_burst`): a client may
    /// cancel everything it has in flight at once.
    pub max_executing: usize,
    /// Async handlers started and not finished, across the whole server,
    /// for every transport (HTTP included). A handler takes its slot before
    /// its first poll and gives it back when it finishes (at once, if it is
    /// ready at that poll); `SyncHandler` commands take none. When all are
    /// taken, handlers wait unpolled and connections stop reading until one
    /// finishes. Default 262144 (clamped to tokio's semaphore maximum).
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
    /// A request that has not ended this long after its last frame arrived
    /// is stopped and answered `timed out after N ms`. Default: none. A
    /// request's own `@deadline` (PROTOCOL.md §8.6) applies too: the
    /// earlier wins. A handler reads what is left with
    /// [`Request::time_left`](crate::Request::time_left).
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
    /// Most request IDs one request may name in `@after` and `@use`
    /// (PROTOCOL.md §8.3). Default 64; over it: `too many dependencies`.
    pub max_dependencies: usize,
    /// Most bytes of `@keep` response bodies kept per connection
    /// (PROTOCOL.md §8.4). Default 8 MiB; a body that does not fit is not
    /// kept.
    pub max_kept_bytes: usize,
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
            max_executing: 1024,
            max_server_executing: 1 << 18,
            max_connections: 16384,
            write_high_water: 128 << 10,
            request_deadline: None,
            assembly_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(300)),
            drain_timeout: Duration::from_secs(10),
            max_dependencies: DEFAULT_MAX_DEPENDENCIES,
            max_kept_bytes: DEFAULT_MAX_KEPT_BYTES,
            read_only: false,
            in_order: false,
        }
    }
}

impl Config {
    /// The settings of a connection's request lifecycle.
    pub fn lifecycle(&self) -> LifecycleConfig {
        let mut limits = self.limits.clone();
        // A client may cancel everything it may have in flight at once.
        let in_flight = u32::try_from(self.max_executing).unwrap_or(u32::MAX);
        limits.flood.cancel_burst = limits.flood.cancel_burst.max(in_flight);
        LifecycleConfig {
            limits,
            in_order: self.in_order,
            request_deadline: self.request_deadline,
            assembly_timeout: Some(self.assembly_timeout),
            idle_timeout: self.idle_timeout,
            max_dependencies: self.max_dependencies,
            max_kept_bytes: self.max_kept_bytes,
        }
    }
}
