//! A client for long-lived use: one connection that is made again, for
//! new calls, after it is lost.
//!
//! The rules, on top of the one-connection [`Client`]:
//!
//! - a call finds the connection up, or (re)connects first; failed
//!   attempts wait a capped exponential backoff with jitter between them
//!   ([`ReconnectOptions`]), and a call gives up with
//!   [`Error::Connect`] after [`ReconnectOptions::connect_timeout`];
//! - a call that was in flight when the connection was lost fails once
//!   with [`Error::ConnectionLost`] (or [`Error::Protocol`]): nothing says
//!   whether the server ran it, so it is **never sent again** behind the
//!   caller's back;
//! - unless the caller marked it idempotent ([`ReconnectingClient::send_idempotent`]):
//!   then it is sent again on the next connection, at most
//!   [`ReconnectOptions::idempotent_retries`] more times.
//!
//! ```no_run
//! use wiremux_engine::proto::builder::CommandBuilder;
//! use wiremux_engine::reconnect::{ReconnectOptions, ReconnectingClient};
//!
//! # async fn demo() -> Result<(), wiremux_engine::client::Error> {
//! let client = ReconnectingClient::tcp("127.0.0.1:7878", ReconnectOptions::default());
//! let reply = client.send(CommandBuilder::new("echo").data("hi")).await?;
//! assert_eq!(reply.body, "hi");
//! // A read may be sent again if the connection drops under it.
//! let reply = client
//!     .send_idempotent(CommandBuilder::new("get").arg("key", "k"))
//!     .await;
//! # Ok(()) }
//! ```

use crate::client::{Client, Error, Reason, Response};
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use wiremux_proto::builder::CommandBuilder;

/// How a [`ReconnectingClient`] reconnects.
#[derive(Debug, Clone)]
pub struct ReconnectOptions {
    /// The wait after the first failed attempt (default 50 ms); it doubles
    /// with each further failure...
    pub initial_backoff: Duration,
    /// ...up to this (default 5 s). Each wait is drawn at random between
    /// half of it and all of it (jitter), so that many clients of one
    /// restarted server do not come back in step.
    pub max_backoff: Duration,
    /// How long one call may wait for a connection before it fails with
    /// [`Error::Connect`] (default 10 s). [`Duration::ZERO`]: one attempt
    /// at most, and none while a backoff is running (what a
    /// [`Pool`](crate::pool::Pool) wants, to try another server instead).
    pub connect_timeout: Duration,
    /// How many more times an idempotent call is sent after its
    /// connection was lost under it (default 3).
    pub idempotent_retries: u32,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            idempotent_retries: 3,
        }
    }
}

type Connect = Arc<dyn Fn() -> BoxFuture<'static, Result<Client, Error>> + Send + Sync>;

/// A [`Client`] that reconnects for new calls. Cheap to clone; clones
/// share the connection.
#[derive(Clone)]
pub struct ReconnectingClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReconnectingClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconnectingClient")
            .field("options", &self.inner.options)
            .field("connects", &self.connects())
            .finish_non_exhaustive()
    }
}

struct Inner {
    connect: Connect,
    options: ReconnectOptions,
    state: Mutex<State>,
    connects: AtomicU64,
    seed: AtomicU64,
}

#[derive(Default)]
struct State {
    client: Option<Client>,
    /// Failed attempts since the last success.
    failures: u32,
    /// No attempt before this (the backoff).
    not_before: Option<Instant>,
    last_error: Option<Error>,
}

impl ReconnectingClient {
    /// A client that connects with `connect` (any transport: TCP, Unix,
    /// TLS, a test's duplex), again each time the connection is lost.
    ///
    /// ```no_run
    /// use wiremux_engine::reconnect::{ReconnectOptions, ReconnectingClient};
    /// use wiremux_engine::Client;
    /// let client = ReconnectingClient::new(ReconnectOptions::default(), || {
    ///     Box::pin(Client::connect_unix("/tmp/wiremux.sock"))
    /// });
    /// ```
    pub fn new<F>(options: ReconnectOptions, connect: F) -> ReconnectingClient
    where
        F: Fn() -> BoxFuture<'static, Result<Client, Error>> + Send + Sync + 'static,
    {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        ReconnectingClient {
            inner: Arc::new(Inner {
                connect: Arc::new(connect),
                options,
                state: Mutex::new(State::default()),
                connects: AtomicU64::new(0),
                seed: AtomicU64::new(seed),
            }),
        }
    }

    /// A client of the server at a TCP address.
    pub fn tcp(addr: impl Into<String>, options: ReconnectOptions) -> ReconnectingClient {
        let addr: Arc<str> = addr.into().into();
        ReconnectingClient::new(options, move || {
            let addr = addr.clone();
            Box::pin(async move { Client::connect(&*addr).await })
        })
    }

    /// Connections made so far (1 after the first call, 2 after one
    /// reconnect, ...).
    pub fn connects(&self) -> u64 {
        self.inner.connects.load(Relaxed)
    }

    /// Whether a connection is up now (none has been made yet, or the last
    /// one was lost: the next call connects).
    pub fn is_connected(&self) -> bool {
        self.inner
            .state
            .try_lock()
            .map_or(true, |s| s.client.as_ref().is_some_and(|c| !c.is_closed()))
    }

    /// Whether the last attempt to connect failed and its backoff has not
    /// run out: a call now would wait (or, with a zero
    /// [`ReconnectOptions::connect_timeout`], fail at once).
    pub fn is_backing_off(&self) -> bool {
        self.inner
            .state
            .try_lock()
            .is_ok_and(|s| s.client.is_none() && s.not_before.is_some_and(|t| t > Instant::now()))
    }

    /// Sends `command` once: on a connection that is up or made for it.
    /// Lost with its connection, it fails with that error (it may or may
    /// not have run on the server) and is not sent again.
    pub async fn send(&self, command: CommandBuilder) -> Result<Response, Error> {
        let client = self.client().await?;
        client.send(command).await
    }

    /// Sends `command`, and again on a new connection (at most
    /// [`ReconnectOptions::idempotent_retries`] more times) if the
    /// connection is lost before its answer: for commands that may run
    /// more than once without harm.
    pub async fn send_idempotent(&self, command: CommandBuilder) -> Result<Response, Error> {
        let mut retries = self.inner.options.idempotent_retries;
        loop {
            let client = self.client().await?;
            match client.send(command.clone()).await {
                Err(err) if is_lost(&err) && retries > 0 => retries -= 1,
                other => return other,
            }
        }
    }

    /// The connection, made first if need be (see the module's rules).
    pub async fn client(&self) -> Result<Client, Error> {
        let options = &self.inner.options;
        let deadline = Instant::now() + options.connect_timeout;
        let mut state = self.inner.state.lock().await;
        loop {
            if let Some(client) = &state.client {
                if !client.is_closed() {
                    return Ok(client.clone());
                }
                state.client = None;
            }
            if let Some(not_before) = state.not_before {
                if not_before > Instant::now() {
                    if not_before > deadline {
                        return Err(self.gave_up(&state));
                    }
                    tokio::time::sleep_until(not_before).await;
                }
            }
            match (self.inner.connect)().await {
                Ok(client) => {
                    self.inner.connects.fetch_add(1, Relaxed);
                    state.failures = 0;
                    state.not_before = None;
                    state.last_error = None;
                    state.client = Some(client.clone());
                    return Ok(client);
                }
                Err(err) => {
                    state.failures = state.failures.saturating_add(1);
                    let wait = self.backoff(state.failures);
                    tracing::debug!(%err, wait_ms = wait.as_millis() as u64, "connect failed");
                    state.not_before = Some(Instant::now() + wait);
                    state.last_error = Some(err);
                    if Instant::now() >= deadline {
                        return Err(self.gave_up(&state));
                    }
                }
            }
        }
    }

    fn gave_up(&self, state: &State) -> Error {
        let why = match &state.last_error {
            Some(err) => format!(
                "gave up after {} failed attempt(s); last: {err}",
                state.failures
            ),
            None => "reconnecting (backing off)".to_string(),
        };
        Error::Connect(Reason::new(std::io::ErrorKind::NotConnected, why))
    }

    /// The wait after `failures` failed attempts: capped exponential,
    /// drawn between half and all of it.
    fn backoff(&self, failures: u32) -> Duration {
        let options = &self.inner.options;
        let base = options
            .initial_backoff
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(options.max_backoff);
        let r = splitmix(&self.inner.seed);
        let half = base / 2;
        half + Duration::from_nanos(r % (half.as_nanos() as u64 + 1))
    }
}

/// Whether an error means the connection went away under the call.
pub(crate) fn is_lost(err: &Error) -> bool {
    matches!(err, Error::ConnectionLost(_) | Error::Protocol(_))
}

/// A step of splitmix64: enough randomness for jitter, no dependency.
pub(crate) fn splitmix(state: &AtomicU64) -> u64 {
    let mut z = state
        .fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let client = ReconnectingClient::new(
            ReconnectOptions {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(1000),
                ..ReconnectOptions::default()
            },
            || Box::pin(async { Err(Error::Connect("never".into())) }),
        );
        for (failures, base_ms) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..50 {
                let wait = client.backoff(failures);
                let base = Duration::from_millis(base_ms);
                assert!(wait >= base / 2 && wait <= base, "{failures}: {wait:?}");
            }
        }
        // Jitter: not every wait the same.
        let waits: std::collections::BTreeSet<_> = (0..20).map(|_| client.backoff(3)).collect();
        assert!(waits.len() > 10, "{waits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waits_out_the_backoff_then_gives_up_at_the_timeout() {
        let attempts = Arc::new(AtomicU64::new(0));
        let counted = attempts.clone();
        let client = ReconnectingClient::new(
            ReconnectOptions {
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_millis(400),
                connect_timeout: Duration::from_secs(2),
                idempotent_retries: 0,
            },
            move || {
                counted.fetch_add(1, Relaxed);
                Box::pin(async {
                    Err(Error::Connect(Reason::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "refused",
                    )))
                })
            },
        );
        let started = Instant::now();
        let err = client.send(CommandBuilder::new("echo")).await.unwrap_err();
        let waited = started.elapsed();
        assert!(matches!(err, Error::Connect(_)), "{err}");
        assert!(
            err.to_string().contains("last: cannot connect: refused"),
            "{err}"
        );
        // Waits of 50-100, 100-200, 200-400, then 200-400 ms each: within
        // 2 s, between 6 and 9 attempts fit.
        let n = attempts.load(Relaxed);
        assert!((6..=11).contains(&n), "{n} attempts");
        assert!(waited <= Duration::from_secs(2), "{waited:?}");
        assert_eq!(client.connects(), 0);
    }
}
