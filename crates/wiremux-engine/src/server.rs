//! The server: a registry of commands, the settings, and what its
//! connections share. The accept loop is in [`crate::listener`].

use crate::config::Config;
use crate::connection::Connection;
use crate::handler::{Handler, Permission, Registry, ServiceHandler};
use crate::stats::{CommandStatsSnapshot, Stats, StatsSnapshot};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What every connection of a server shares. Read-only but for the
/// counters and the server-wide slots.
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) config: Config,
    pub(crate) stats: Stats,
    /// Server-wide slots for handlers running in the background.
    pub(crate) executing: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
    /// Server-wide connection slots, one per connection open on any
    /// listener ([`Config::max_connections`], clamped).
    pub(crate) connection_slots: Arc<Semaphore>,
}

/// Builds a [`Server`].
///
/// ```
/// use wiremux_engine::{CommandError, Permission, Request, Response, Server};
///
/// async fn hello(req: Request) -> Result<Response, CommandError> {
///     let who = req.arg_str("who")?;
///     Ok(Response::bytes(format!("hello, {who}")))
/// }
///
/// let server = Server::builder()
///     .command("hello", Permission::Read, hello)
///     .read_only(true)
///     .build();
/// assert_eq!(server.stats().connections_open, 0);
/// ```
#[derive(Default)]
pub struct ServerBuilder {
    registry: Registry,
    config: Config,
}

impl ServerBuilder {
    /// Registers an async function or closure as command `name`.
    pub fn command(
        mut self,
        name: &str,
        permission: Permission,
        handler: impl Handler,
    ) -> ServerBuilder {
        self.registry.insert(name, permission, handler);
        self
    }

    /// Registers a tower `Service` as command `name`.
    pub fn service<S>(self, name: &str, permission: Permission, service: S) -> ServerBuilder
    where
        ServiceHandler<S>: Handler,
    {
        self.command(name, permission, ServiceHandler(service))
    }

    /// Uses a prepared registry (its commands replace those added so far).
    pub fn registry(mut self, registry: Registry) -> ServerBuilder {
        self.registry = registry;
        self
    }

    /// Replaces all settings.
    pub fn config(mut self, config: Config) -> ServerBuilder {
        self.config = config;
        self
    }

    /// Refuses write commands on every connection.
    pub fn read_only(mut self, read_only: bool) -> ServerBuilder {
        self.config.read_only = read_only;
        self
    }

    /// Cancels handlers that run longer than `deadline`.
    pub fn request_deadline(mut self, deadline: Duration) -> ServerBuilder {
        self.config.request_deadline = Some(deadline);
        self
    }

    /// Requests in flight per connection before it stops reading.
    pub fn max_executing(mut self, max: usize) -> ServerBuilder {
        self.config.max_executing = max;
        self
    }

    /// Sends responses in request order (a baseline for comparisons).
    pub fn in_order(mut self, in_order: bool) -> ServerBuilder {
        self.config.in_order = in_order;
        self
    }

    /// The server.
    pub fn build(self) -> Server {
        let executing = Arc::new(Semaphore::new(
            self.config.max_server_executing.min(Semaphore::MAX_PERMITS),
        ));
        let stats = Stats::for_commands(self.registry.names());
        let connection_slots = Arc::new(Semaphore::new(
            self.config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
        ));
        Server {
            shared: Arc::new(Shared {
                registry: self.registry,
                config: self.config,
                stats,
                executing,
                shutdown: CancellationToken::new(),
                connection_slots,
            }),
        }
    }
}

/// A wiremux server. Cheap to clone; clones share commands, settings,
/// counters and shutdown.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("registry", &self.shared.registry)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Server {
    /// A builder with no commands and default settings.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The commands.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// A copy of the counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// A copy of every command's counters and latency histogram:
    /// registered commands by name, then one row
    /// ([`UNKNOWN_COMMAND`](crate::UNKNOWN_COMMAND)) for all names
    /// that are not registered. For embedders with their own metrics
    /// registry.
    ///
    /// ```
    /// let server = wiremux_engine::Server::builder()
    ///     .registry(wiremux_engine::demo::registry())
    ///     .build();
    /// let rows = server.command_stats();
    /// assert!(rows.iter().any(|row| row.command == "echo" && row.started == 0));
    /// assert_eq!(rows.last().unwrap().command, "(unknown)");
    /// ```
    pub fn command_stats(&self) -> Vec<CommandStatsSnapshot> {
        self.shared.stats.command_snapshots()
    }

    /// The access granted to connections: read-only or read-write.
    pub fn granted(&self) -> Permission {
        if self.shared.config.read_only {
            Permission::Read
        } else {
            Permission::Write
        }
    }

    /// An executor for one connection or exchange of a transport built
    /// outside this crate (the HTTP API uses one per request): it starts
    /// the commands a [`Lifecycle`](wiremux_proto::lifecycle::Lifecycle)
    /// says to run with `granted` access, through this server's registry,
    /// server-wide slots and counters, exactly as the server's own
    /// connections do.
    pub fn executor(&self, granted: Permission) -> crate::Executor {
        crate::Executor::new(self.shared.clone(), granted)
    }

    /// Starts a graceful shutdown: listeners stop accepting, connections
    /// stop taking new requests, requests in flight get
    /// [`Config::drain_timeout`] to finish, then everything closes.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Completes when [`Server::shutdown`] is called (at once if it has
    /// been). Transports built outside this crate wait on it.
    pub fn shutdown_requested(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.shared.shutdown.clone().cancelled_owned()
    }

    /// Whether [`Server::shutdown`] has been called.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Serves one connection over any byte stream (a socket, a pipe pair,
    /// stdin/stdout) until the peer is done or the server shuts down.
    pub async fn serve_io<IO>(&self, io: IO) -> io::Result<()>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.shared.stats.connection_opened();
        let result = Connection::new(io, self.shared.clone()).run().await;
        self.shared.stats.connection_closed();
        result
    }

    /// Accepts TCP connections until shutdown, then drains them: the
    /// same as [`Server::serve`].
    pub async fn serve_tcp(&self, listener: TcpListener) -> io::Result<()> {
        self.serve(listener).await
    }

    /// Accepts Unix-socket connections until shutdown, then drains them:
    /// the same as [`Server::serve`].
    pub async fn serve_unix(&self, listener: UnixListener) -> io::Result<()> {
        self.serve(listener).await
    }

    /// What the connections share (counters included).
    #[cfg(test)]
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The server-wide connection slots, shared by every accept loop.
    pub(crate) fn connection_slots(&self) -> &Arc<Semaphore> {
        &self.shared.connection_slots
    }
}
