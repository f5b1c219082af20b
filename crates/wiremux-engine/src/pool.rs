//! A pool of reconnecting connections to one or several servers, picking
//! for each call the member with fewer calls in flight of two drawn at
//! random ("power of two choices").
//!
//! For callers who outgrow one connection (its driver is one task) or one
//! server. Scaling out is many independent servers behind a pool like
//! this, or behind any L4 balancer: the servers share nothing.
//!
//! The rules, on top of [`ReconnectingClient`]'s:
//!
//! - members whose last connect failed and are backing off are skipped
//!   while any other is not;
//! - a call whose member cannot connect ([`Error::Connect`]: nothing was
//!   sent) goes to another member, each member tried at most once;
//! - a call lost with its connection fails once with
//!   [`Error::ConnectionLost`] and is not sent again, unless sent with
//!   [`Pool::send_idempotent`], which sends it on another member.
//!
//! tower's `balance` does the same for tower `Service`s with a `Discover`
//! stream; the engine's client is not one, and this choice is twenty
//! lines, so the pool has its own.
//!
//! ```no_run
//! use wiremux_engine::pool::Pool;
//! use wiremux_engine::proto::builder::CommandBuilder;
//! use wiremux_engine::reconnect::ReconnectOptions;
//!
//! # async fn demo() -> Result<(), wiremux_engine::client::Error> {
//! let pool = Pool::tcp(
//!     ["10.0.0.1:7878", "10.0.0.2:7878", "10.0.0.3:7878"],
//!     ReconnectOptions::default(),
//! );
//! let reply = pool.send(CommandBuilder::new("echo").data("hi")).await?;
//! # Ok(()) }
//! ```

use crate::client::{Error, Response};
use crate::reconnect::{is_lost, splitmix, ReconnectOptions, ReconnectingClient};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use wiremux_proto::builder::CommandBuilder;

/// A pool of [`ReconnectingClient`]s. Cheap to clone; clones share the
/// members.
#[derive(Clone, Debug)]
pub struct Pool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    members: Vec<Member>,
    seed: AtomicU64,
}

#[derive(Debug)]
struct Member {
    label: String,
    client: ReconnectingClient,
    in_flight: AtomicUsize,
}

/// One call's claim on a member, released when the call ends.
struct Claim<'a>(&'a AtomicUsize);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

impl Pool {
    /// A pool of the given members (a label for each, for
    /// [`Pool::in_flight`]). Give each a zero
    /// [`ReconnectOptions::connect_timeout`] so that a call moves on to
    /// another member at once rather than wait for one that is down.
    ///
    /// # Panics
    /// With no member.
    pub fn new(members: impl IntoIterator<Item = (String, ReconnectingClient)>) -> Pool {
        let members: Vec<Member> = members
            .into_iter()
            .map(|(label, client)| Member {
                label,
                client,
                in_flight: AtomicUsize::new(0),
            })
            .collect();
        assert!(!members.is_empty(), "a pool needs at least one member");
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(7, |d| d.as_nanos() as u64);
        Pool {
            inner: Arc::new(Inner {
                members,
                seed: AtomicU64::new(seed),
            }),
        }
    }

    /// A pool over TCP addresses, `per_address` connections to each, with
    /// `options` for every member but a zero connect timeout (see
    /// [`Pool::new`]).
    pub fn tcp_with<A: Into<String>>(
        addrs: impl IntoIterator<Item = A>,
        per_address: usize,
        options: ReconnectOptions,
    ) -> Pool {
        let options = ReconnectOptions {
            connect_timeout: Duration::ZERO,
            ..options
        };
        let mut members = Vec::new();
        for addr in addrs {
            let addr = addr.into();
            for _ in 0..per_address.max(1) {
                members.push((
                    addr.clone(),
                    ReconnectingClient::tcp(addr.clone(), options.clone()),
                ));
            }
        }
        Pool::new(members)
    }

    /// [`Pool::tcp_with`] with one connection per address.
    pub fn tcp<A: Into<String>>(
        addrs: impl IntoIterator<Item = A>,
        options: ReconnectOptions,
    ) -> Pool {
        Pool::tcp_with(addrs, 1, options)
    }

    /// Calls in flight per member, by label, in the order given.
    pub fn in_flight(&self) -> Vec<(String, usize)> {
        self.inner
            .members
            .iter()
            .map(|m| (m.label.clone(), m.in_flight.load(Relaxed)))
            .collect()
    }

    /// Sends `command` on the member picked for it (see the module's
    /// rules); it is not sent again once it may have reached a server.
    pub async fn send(&self, command: CommandBuilder) -> Result<Response, Error> {
        self.send_with(command, false).await
    }

    /// Sends `command`, and again on another member if its connection is
    /// lost before the answer (each member at most once): for commands
    /// that may run more than once without harm.
    pub async fn send_idempotent(&self, command: CommandBuilder) -> Result<Response, Error> {
        self.send_with(command, true).await
    }

    async fn send_with(
        &self,
        command: CommandBuilder,
        idempotent: bool,
    ) -> Result<Response, Error> {
        let members = &self.inner.members;
        let mut tried = vec![false; members.len()];
        loop {
            let Some(at) = self.pick(&tried) else {
                unreachable!("a member is left while one is untried")
            };
            tried[at] = true;
            let member = &members[at];
            member.in_flight.fetch_add(1, Relaxed);
            let claim = Claim(&member.in_flight);
            let result = member.client.send(command.clone()).await;
            drop(claim);
            let left = tried.iter().any(|t| !t);
            match result {
                // Not sent: another member may take it.
                Err(Error::Connect(_)) if left => continue,
                Err(err) if idempotent && left && is_lost(&err) => continue,
                other => return other,
            }
        }
    }

    /// Two members drawn among the untried ones (preferring those not
    /// backing off); the one with fewer calls in flight.
    fn pick(&self, tried: &[bool]) -> Option<usize> {
        let members = &self.inner.members;
        let untried: Vec<usize> = (0..members.len()).filter(|&i| !tried[i]).collect();
        let up: Vec<usize> = untried
            .iter()
            .copied()
            .filter(|&i| !members[i].client.is_backing_off())
            .collect();
        let candidates = if up.is_empty() { untried } else { up };
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let r = splitmix(&self.inner.seed);
                let a = candidates[(r % n as u64) as usize];
                let mut b = candidates[((r >> 32) % (n as u64 - 1)) as usize];
                if b == a {
                    b = candidates[n - 1];
                }
                let load = |i: usize| members[i].in_flight.load(Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Reason;

    fn down() -> ReconnectingClient {
        ReconnectingClient::new(ReconnectOptions::default(), || {
            Box::pin(async {
                Err(Error::Connect(Reason::new(
                    std::io::ErrorKind::ConnectionRefused,
                    "down",
                )))
            })
        })
    }

    #[test]
    fn two_choices_take_the_member_with_fewer_calls_in_flight() {
        let pool = Pool::new((0..3).map(|i| (format!("m{i}"), down())));
        pool.inner.members[0].in_flight.store(5, Relaxed);
        pool.inner.members[1].in_flight.store(1, Relaxed);
        pool.inner.members[2].in_flight.store(9, Relaxed);
        let mut picked = [0; 3];
        for _ in 0..3000 {
            picked[pool.pick(&[false; 3]).unwrap()] += 1;
        }
        // m1 wins every draw it is in (2 of 3 pairs), m0 the pair (m0, m2);
        // m2 never.
        assert_eq!(picked[2], 0, "{picked:?}");
        assert!(picked[1] > picked[0], "{picked:?}");
        assert!(picked[0] > 0, "{picked:?}");
        // Tried members are left out.
        assert_eq!(pool.pick(&[true, true, false]), Some(2));
        assert_eq!(pool.pick(&[true, true, true]), None);
    }
}
