//! Commands: what a handler receives, what it returns, and the registry
//! that maps command names to handlers and permissions.
//!
//! A handler is an `async fn(Request) -> Result<Response, CommandError>`, a
//! tower `Service<Request>` with the same response and error types, or, for
//! a command that answers without waiting, a plain
//! `fn(Request) -> Result<Response, CommandError>` wrapped in
//! [`SyncHandler`]. A response is either whole bytes or a stream of chunks,
//! each sent as soon as it is produced.

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
pub use wiremux_proto::{CommandError, Request};

/// The body of a response.
pub enum Body {
    /// The whole response at once.
    Bytes(Bytes),
    /// Chunks, each sent as soon as it is produced. An error ends the
    /// response with an application error-response.
    Stream(BoxStream<'static, Result<Bytes, CommandError>>),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Bytes(b) => f.debug_tuple("Bytes").field(&b.len()).finish(),
            Body::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

/// A handler's successful answer.
#[derive(Debug)]
pub struct Response {
    /// What to send back.
    pub body: Body,
}

impl Response {
    /// A response of whole bytes.
    pub fn bytes(body: impl Into<Bytes>) -> Response {
        Response {
            body: Body::Bytes(body.into()),
        }
    }

    /// A streamed response.
    pub fn stream(
        chunks: impl Stream<Item = Result<Bytes, CommandError>> + Send + 'static,
    ) -> Response {
        Response {
            body: Body::Stream(chunks.boxed()),
        }
    }
}

/// Logs a panic caught from a handler and gives its request's error.
pub(crate) fn caught_panic(panic: &(dyn std::any::Any + Send)) -> CommandError {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::warn!(%detail, "command handler panicked");
    CommandError::panicked()
}

/// What a command may do, checked against the connection's or URL's access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Reads state only: allowed everywhere.
    Read,
    /// Changes state: refused on read-only connections and `ro` URLs.
    Write,
}

/// The future a handler returns.
pub type HandlerFuture = BoxFuture<'static, Result<Response, CommandError>>;

/// A started command: answered at once, or a future to drive.
pub enum Started {
    /// The outcome, known without waiting.
    Ready(Result<Response, CommandError>),
    /// The command runs on: poll the future for its outcome.
    Pending(HandlerFuture),
}

impl Started {
    /// The outcome as a future, whichever way the command started.
    pub fn into_future(self) -> HandlerFuture {
        match self {
            Started::Ready(outcome) => futures::future::ready(outcome).boxed(),
            Started::Pending(fut) => fut,
        }
    }
}

impl fmt::Debug for Started {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Started::Ready(outcome) => f.debug_tuple("Ready").field(outcome).finish(),
            Started::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// Something that runs a command. Implemented for async functions and
/// closures `Fn(Request) -> impl Future<Output = Result<Response, CommandError>>`;
/// wrap a tower service in [`ServiceHandler`] and a synchronous function in
/// [`SyncHandler`].
pub trait Handler: Send + Sync + 'static {
    /// Starts the command.
    fn call(&self, request: Request) -> HandlerFuture;

    /// Starts the command, answering at once if it can. Transports call
    /// this: a handler that knows its outcome without waiting returns
    /// [`Started::Ready`] and spares the boxed future. The default wraps
    /// [`Handler::call`].
    fn start(&self, request: Request) -> Started {
        Started::Pending(self.call(request))
    }
}

impl<F, Fut> Handler for F
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, CommandError>> + Send + 'static,
{
    fn call(&self, request: Request) -> HandlerFuture {
        self(request).boxed()
    }
}

/// A tower `Service` used as a handler: cloned per request, then driven to
/// readiness and called, so tower middleware (timeouts, limits) applies.
#[derive(Debug, Clone)]
pub struct ServiceHandler<S>(pub S);

impl<S> Handler for ServiceHandler<S>
where
    S: tower_service::Service<Request, Response = Response, Error = CommandError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn call(&self, request: Request) -> HandlerFuture {
        let mut service = self.0.clone();
        async move {
            futures::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            service.call(request).await
        }
        .boxed()
    }
}

/// A synchronous function as a handler: `Fn(Request) -> Result<Response,
/// CommandError>`. It runs on the connection's task the moment its command
/// is complete, with no future and no allocation, so it suits commands that
/// answer from memory (echo, a map lookup). It must not block: anything
/// that waits or computes for long belongs in an async handler.
///
/// ```
/// use wiremux_engine::{Permission, Request, Response, Server, SyncHandler};
///
/// let server = Server::builder()
///     .command("ping", Permission::Read, SyncHandler(|_: Request| Ok(Response::bytes("pong"))))
///     .build();
/// # drop(server);
/// ```
#[derive(Debug, Clone)]
pub struct SyncHandler<F>(pub F);

impl<F> Handler for SyncHandler<F>
where
    F: Fn(Request) -> Result<Response, CommandError> + Send + Sync + 'static,
{
    fn call(&self, request: Request) -> HandlerFuture {
        futures::future::ready((self.0)(request)).boxed()
    }

    fn start(&self, request: Request) -> Started {
        Started::Ready((self.0)(request))
    }
}

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

/// One registered command.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) permission: Permission,
    pub(crate) handler: Arc<dyn Handler>,
    /// Its row in the server's per-command stats, set when the server is
    /// built.
    pub(crate) row: Option<crate::stats::Row>,
}

impl Entry {
    /// The permission check: `granted` access may run this command.
    fn allows(&self, name: &[u8], granted: Permission) -> Result<(), Refusal> {
        if self.permission > granted {
            return Err(Refusal::ReadOnly(lossy(name)));
        }
        Ok(())
    }
}

/// A multiply-xorshift hash over the command name, eight bytes at a time.
/// Command names are short and looked up once per request; the map only
/// ever holds the registered names, so a peer choosing names cannot crowd
/// it, and a keyed hash buys nothing here.
#[derive(Clone, Copy, Default)]
struct NameHasher(u64);

impl NameHasher {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(Self::K);
        self.0 ^= self.0 >> 29;
    }
}

impl std::hash::Hasher for NameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            self.mix(u64::from_le_bytes(word.try_into().expect("eight bytes")));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            // Assembled in a register: a copy through memory here would
            // cost more than the whole hash.
            let last = rest
                .iter()
                .rev()
                .fold(0u64, |word, &b| word << 8 | u64::from(b));
            self.mix(last);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
}

/// The set of commands a server runs, by name.
#[derive(Clone, Default)]
pub struct Registry {
    commands: HashMap<Bytes, Entry, std::hash::BuildHasherDefault<NameHasher>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self
            .commands
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        names.sort();
        f.debug_struct("Registry")
            .field("commands", &names)
            .finish()
    }
}

/// Why a command cannot run on this connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No command of that name.
    #[error("unknown command: {0}")]
    Unknown(String),
    /// A write command where only reads are allowed.
    #[error("permission denied: {0} needs write access and this connection is read-only")]
    ReadOnly(String),
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `handler` as `name` with a permission.
    pub fn insert(&mut self, name: &str, permission: Permission, handler: impl Handler) {
        let entry = Entry {
            permission,
            handler: Arc::new(handler),
            row: None,
        };
        self.commands
            .insert(Bytes::copy_from_slice(name.as_bytes()), entry);
    }

    /// Adds every command of `other`; one of the same name as a command
    /// here replaces it.
    pub(crate) fn merge(&mut self, other: Registry) {
        self.commands.extend(other.commands);
    }

    /// The names of the registered commands, in no order.
    pub(crate) fn names(&self) -> impl Iterator<Item = &Bytes> {
        self.commands.keys()
    }

    /// Gives every command its row in the server's per-command stats.
    pub(crate) fn assign_rows(&mut self, row_of: impl Fn(&[u8]) -> crate::stats::Row) {
        for (name, entry) in &mut self.commands {
            entry.row = Some(row_of(name));
        }
    }

    /// The permission of a command, if registered.
    pub fn permission(&self, name: &[u8]) -> Option<Permission> {
        self.commands.get(name).map(|e| e.permission)
    }

    /// Looks up a command and checks it against the granted access.
    pub(crate) fn resolve(&self, name: &[u8], granted: Permission) -> Result<&Entry, Refusal> {
        let entry = self
            .commands
            .get(name)
            .ok_or_else(|| Refusal::Unknown(lossy(name)))?;
        entry.allows(name, granted)?;
        Ok(entry)
    }

    /// Checks a command against the granted access without running it.
    pub fn check(&self, name: &[u8], granted: Permission) -> Result<Permission, Refusal> {
        self.resolve(name, granted).map(|e| e.permission)
    }

    /// Starts a command through its handler, after the permission check.
    /// This is the one path to a handler: every transport calls it.
    ///
    /// Starting runs user code (a [`SyncHandler`]'s body, or a closure that
    /// panics before it returns its future): a panic there is caught and
    /// becomes the request's [`CommandError::panicked`] outcome. Panics
    /// while the future runs are the transport's to catch.
    pub fn start(&self, request: Request, granted: Permission) -> Result<Started, Refusal> {
        self.start_counted(request, granted).1
    }

    /// [`Registry::start`], and the command's stats row (`None`: not a
    /// registered command, or a registry not in a server).
    #[inline]
    pub(crate) fn start_counted(
        &self,
        request: Request,
        granted: Permission,
    ) -> (Option<crate::stats::Row>, Result<Started, Refusal>) {
        let Some(entry) = self.commands.get(&request.name[..]) else {
            return (None, Err(Refusal::Unknown(lossy(&request.name))));
        };
        if let Err(refusal) = entry.allows(&request.name, granted) {
            return (entry.row, Err(refusal));
        }
        let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            entry.handler.start(request)
        }));
        let started = started.unwrap_or_else(|panic| Started::Ready(Err(caught_panic(&*panic))));
        (entry.row, Ok(started))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let mut registry = Registry::new();
        registry.insert(
            "now",
            Permission::Read,
            SyncHandler(|req: Request| Ok(Response::bytes(req.data()))),
        );
        registry.insert("later", Permission::Read, |req: Request| async move {
            Ok(Response::bytes(req.data()))
        });
        registry.insert(
            "put",
            Permission::Write,
            SyncHandler(|_: Request| Ok(Response::bytes("ok"))),
        );
        registry
    }

    fn body(outcome: Result<Response, CommandError>) -> Bytes {
        match outcome.expect("success").body {
            Body::Bytes(b) => b,
            Body::Stream(_) => panic!("expected bytes"),
        }
    }

    #[test]
    fn sync_handlers_answer_at_once_and_async_ones_give_a_future() {
        let registry = registry();
        let request = |name: &str| Request::new(name.to_string()).with_data("x");
        match registry.start(request("now"), Permission::Read) {
            Ok(Started::Ready(outcome)) => assert_eq!(body(outcome), "x"),
            other => panic!("expected a ready outcome, got {other:?}"),
        }
        match registry.start(request("later"), Permission::Read) {
            Ok(Started::Pending(fut)) => {
                assert_eq!(body(futures::executor::block_on(fut)), "x")
            }
            other => panic!("expected a future, got {other:?}"),
        }
        // Either way, a transport that wants a future gets the same outcome.
        let started = registry.start(request("now"), Permission::Read).unwrap();
        assert_eq!(
            body(futures::executor::block_on(started.into_future())),
            "x"
        );
    }

    #[test]
    fn a_panic_while_starting_becomes_the_requests_error() {
        let mut registry = Registry::new();
        registry.insert(
            "boom",
            Permission::Read,
            SyncHandler(|_: Request| -> Result<Response, CommandError> { panic!("boom") }),
        );
        registry.insert("boom-early", Permission::Read, |_: Request| {
            panic!("before the future");
            #[allow(unreachable_code)]
            async {
                Ok(Response::bytes(""))
            }
        });
        for name in ["boom", "boom-early"] {
            match registry.start(Request::new(name), Permission::Read) {
                Ok(Started::Ready(Err(err))) => {
                    assert_eq!(err, CommandError::panicked());
                    assert_eq!(err.message(), "command failed: the handler panicked");
                }
                other => panic!("{name}: expected the panic error, got {other:?}"),
            }
        }
    }

    #[test]
    fn sync_handlers_are_permission_checked_like_any_other() {
        let registry = registry();
        let err = registry
            .start(Request::new("put"), Permission::Read)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "permission denied: put needs write access and this connection is read-only"
        );
        let err = registry
            .start(Request::new("nope"), Permission::Write)
            .unwrap_err();
        assert_eq!(err, Refusal::Unknown("nope".into()));
    }
}
