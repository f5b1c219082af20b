//! The server: a registry of commands, the settings, and what its
//! connections share. The accept loop is in [`crate::listener`].

use crate::config::Config;
use crate::connection::Connection;
use crate::handler::{Handler, Permission, Registry, ServiceHandler};
use crate::stats::{CommandStatsSnapshot, Stats, StatsSnapshot};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Set just before `shutdown` is cancelled: what a connection checks
    /// at each wake-up (see `Connection::shutdown_begun`).
    pub(crate) shutting_down: AtomicBool,
    /// Server-wide connection slots, one per connection open on any
    /// listener ([`Config::max_connections`], clamped).
    pub(crate) connection_slots: Arc<Semaphore>,
}

/// Builds a [`Server`].
///
/// The order of the calls does not matter: [`ServerBuilder::config`] is
/// the base of the settings, and the setters ([`ServerBuilder::read_only`],
/// [`ServerBuilder::request_deadline`], [`ServerBuilder::max_executing`],
/// [`ServerBuilder::in_order`]) apply on top of it whether they come before
/// or after it. Commands accumulate: [`ServerBuilder::registry`] adds a
/// prepared registry's commands to those added so far, and where two
/// calls name the same command the later one wins.
///
/// ```
/// use wiremux_engine::{CommandError, Config, Permission, Request, Response, Server};
///
/// async fn hello(req: Request) -> Result<Response, CommandError> {
///     let who = req.arg_str("who")?;
///     Ok(Response::bytes(format!("hello, {who}")))
/// }
///
/// let server = Server::builder()
///     .command("hello", Permission::Read, hello)
///     .read_only(true)
///     .registry(wiremux_engine::demo::registry())
///     .config(Config { max_executing: 64, ..Config::default() })
///     .build();
/// // The setter before `.config()` still holds, and so does `hello`.
/// assert!(server.config().read_only);
/// assert_eq!(server.config().max_executing, 64);
/// assert!(server.registry().permission(b"hello").is_some());
/// assert!(server.registry().permission(b"echo").is_some());
/// assert_eq!(server.stats().connections_open, 0);
/// ```
#[derive(Default)]
pub struct ServerBuilder {
    registry: Registry,
    config: Option<Config>,
    read_only: Option<bool>,
    request_deadline: Option<Duration>,
    max_executing: Option<usize>,
    in_order: Option<bool>,
}

impl ServerBuilder {
    /// Registers an async function or closure as command `name`, replacing
    /// any command of that name added before.
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

    /// Adds every command of a prepared registry to those added so far;
    /// one of the same name as an earlier command replaces it.
    pub fn registry(mut self, registry: Registry) -> ServerBuilder {
        self.registry.merge(registry);
        self
    }

    /// The base settings: every setting the builder's setters do not set
    /// comes from here (or from [`Config::default`] without this call).
    /// The setters win whatever the order of the calls; of two calls to
    /// this, the later one is the base.
    pub fn config(mut self, config: Config) -> ServerBuilder {
        self.config = Some(config);
        self
    }

    /// Refuses write commands on every connection.
    pub fn read_only(mut self, read_only: bool) -> ServerBuilder {
        self.read_only = Some(read_only);
        self
    }

    /// Cancels handlers that run longer than `deadline`.
    pub fn request_deadline(mut self, deadline: Duration) -> ServerBuilder {
        self.request_deadline = Some(deadline);
        self
    }

    /// Requests in flight per connection before it stops reading.
    pub fn max_executing(mut self, max: usize) -> ServerBuilder {
        self.max_executing = Some(max);
        self
    }

    /// Sends responses in request order (a baseline for comparisons).
    pub fn in_order(mut self, in_order: bool) -> ServerBuilder {
        self.in_order = Some(in_order);
        self
    }

    /// The settings the server will have: the base, then the setters.
    fn settings(&self) -> Config {
        let mut config = self.config.clone().unwrap_or_default();
        if let Some(read_only) = self.read_only {
            config.read_only = read_only;
        }
        if let Some(deadline) = self.request_deadline {
            config.request_deadline = Some(deadline);
        }
        if let Some(max) = self.max_executing {
            config.max_executing = max;
        }
        if let Some(in_order) = self.in_order {
            config.in_order = in_order;
        }
        config
    }

    /// The server.
    pub fn build(self) -> Server {
        let config = self.settings();
        let executing = Arc::new(Semaphore::new(
            config.max_server_executing.min(Semaphore::MAX_PERMITS),
        ));
        let stats = Stats::for_commands(self.registry.names());
        let mut registry = self.registry;
        registry.assign_rows(|name| stats.row_of(name));
        let connection_slots = Arc::new(Semaphore::new(
            config.max_connections.clamp(1, Semaphore::MAX_PERMITS),
        ));
        Server {
            shared: Arc::new(Shared {
                registry,
                config,
                stats,
                executing,
                shutdown: CancellationToken::new(),
                shutting_down: AtomicBool::new(false),
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
        self.shared.shutting_down.store(true, Ordering::Release);
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

#[cfg(test)]
mod builder_tests {
    use super::*;
    use crate::handler::{Request, Response, SyncHandler};

    fn ok(_: Request) -> Result<Response, wiremux_proto::CommandError> {
        Ok(Response::bytes("ok"))
    }

    #[test]
    fn setters_hold_whether_they_come_before_or_after_config() {
        let base = Config {
            max_executing: 64,
            in_order: true,
            drain_timeout: Duration::from_secs(3),
            ..Config::default()
        };
        let before = Server::builder()
            .read_only(true)
            .max_executing(7)
            .request_deadline(Duration::from_millis(250))
            .config(base.clone())
            .build();
        let after = Server::builder()
            .config(base.clone())
            .read_only(true)
            .max_executing(7)
            .request_deadline(Duration::from_millis(250))
            .build();
        for server in [before, after] {
            let config = server.config();
            // From the setters ...
            assert!(config.read_only);
            assert_eq!(config.max_executing, 7);
            assert_eq!(config.request_deadline, Some(Duration::from_millis(250)));
            // ... and everything else from the base.
            assert!(config.in_order);
            assert_eq!(config.drain_timeout, Duration::from_secs(3));
            assert_eq!(server.granted(), Permission::Read);
        }
        // A setter can also turn off what the base turned on.
        let server = Server::builder()
            .in_order(false)
            .config(base.clone())
            .build();
        assert!(!server.config().in_order);
        assert_eq!(server.config().max_executing, 64);
    }

    #[test]
    fn the_later_config_is_the_base_and_no_config_is_the_default() {
        let a = Config {
            max_executing: 10,
            ..Config::default()
        };
        let b = Config {
            max_server_executing: 5,
            ..Config::default()
        };
        let server = Server::builder()
            .config(a)
            .read_only(true)
            .config(b)
            .build();
        assert_eq!(server.config().max_executing, 1024);
        assert_eq!(server.config().max_server_executing, 5);
        assert!(server.config().read_only);
        let server = Server::builder().build();
        let default = Config::default();
        assert_eq!(server.config().max_executing, default.max_executing);
        assert_eq!(server.config().in_order, default.in_order);
        assert_eq!(server.config().read_only, default.read_only);
    }

    #[test]
    fn a_registry_adds_to_the_commands_so_far_and_the_later_name_wins() {
        let mut prepared = Registry::new();
        prepared.insert("shared", Permission::Read, SyncHandler(ok));
        prepared.insert("theirs", Permission::Read, SyncHandler(ok));
        let server = Server::builder()
            .command("mine", Permission::Write, SyncHandler(ok))
            .command("shared", Permission::Write, SyncHandler(ok))
            .registry(prepared.clone())
            .build();
        let registry = server.registry();
        assert_eq!(registry.permission(b"mine"), Some(Permission::Write));
        assert_eq!(registry.permission(b"theirs"), Some(Permission::Read));
        // The registry came later: its `shared` replaced the earlier one.
        assert_eq!(registry.permission(b"shared"), Some(Permission::Read));
        // Every command has its counters, whichever call added it.
        let mut names: Vec<String> = server
            .command_stats()
            .into_iter()
            .map(|row| row.command)
            .collect();
        names.sort();
        assert_eq!(names, ["(unknown)", "mine", "shared", "theirs"]);

        // A later `.command` replaces the registry's command of that name.
        let server = Server::builder()
            .registry(prepared)
            .command("shared", Permission::Write, SyncHandler(ok))
            .build();
        assert_eq!(
            server.registry().permission(b"shared"),
            Some(Permission::Write)
        );
        assert_eq!(
            server.registry().permission(b"theirs"),
            Some(Permission::Read)
        );
    }
}
