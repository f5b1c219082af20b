//! Flood limits: how many requests of one connection may end in a
//! request-level protocol error, or cancelled, for the work they cost.
//!
//! A peer can make a server do work per request that never finishes
//! usefully: HTTP/2 learned it from Rapid Reset (CVE-2023-44487, streams
//! opened and reset at once) and from peers that provoke stream errors on
//! purpose. wiremux counts, per connection, the requests that end in a
//! request-level protocol error and the requests that end cancelled, and
//! closes the connection with a `protocol` error once either count runs
//! ahead of the requests the connection has started.
//!
//! The window is counted in requests, not in time, so the guard needs no
//! clock and every rule is deterministic. Each kind has an allowance that
//! starts full at `max` and is refilled by `max / window` of a request for
//! every request started (never above `max`); each error or cancellation
//! spends one. A connection whose allowance is spent is closed. In the long
//! run that allows `max` of each kind per `window` requests started, with
//! bursts of up to `max` at once, and no edge between windows to time a
//! burst against. A request that ends in an error or cancelled costs the
//! server about what an ordinary request costs; the limit only keeps a
//! connection from being mostly that.
//!
//! Cancellations have a larger burst than their rate
//! ([`FloodLimits::cancel_burst`]): a client may always cancel everything
//! it has in flight at once (a user gives up on a whole page, a client
//! drops 10 000 calls), which is not a flood; one that keeps starting and
//! cancelling is, whatever its window.
//!
//! The defaults ([`FloodLimits::default`]) let a client that cancels one
//! request of every three it starts (a hedged call: two copies, and a
//! `@cancel` for the slower) go on for ever, and stop a start-and-cancel
//! flood (one of every two) after about 4 100 pairs, and a flood of
//! malformed requests after about 150.
//!
//! ```
//! use wiremux_proto::flood::{FloodGuard, FloodLimits};
//! use wiremux_proto::server::ErrorKind;
//!
//! let limits = FloodLimits { window: 10, max_errors: 2, max_cancelled: 5, cancel_burst: 0 };
//! let mut guard = FloodGuard::new(limits);
//! // Two errors at once: the burst allowance.
//! guard.on_request_started();
//! assert_eq!(guard.on_request_error(), Ok(()));
//! guard.on_request_started();
//! assert_eq!(guard.on_request_error(), Ok(()));
//! // A third right away is one too many.
//! guard.on_request_started();
//! assert_eq!(
//!     guard.on_request_error(),
//!     Err(ErrorKind::TooManyRequestErrors { max: 2, window: 10 })
//! );
//! ```

use crate::server::ErrorKind;

/// The flood limits of one connection. Part of
/// [`Limits`](crate::server::Limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    /// The requests started over which `max_errors` and `max_cancelled`
    /// apply. Default 1024. Every command-name frame starts a request
    /// (`@cancel` commands too).
    pub window: u32,
    /// Requests ending in a request-level protocol error, per `window`
    /// requests started (and at most this many in a burst). Default 128.
    /// Over it: connection-level error
    /// [`ErrorKind::TooManyRequestErrors`]. 0 turns the limit off.
    pub max_errors: u32,
    /// Requests ending cancelled, per `window` requests started (and at
    /// most this many in a burst). Default 384. Over it:
    /// connection-level error [`ErrorKind::TooManyCancelled`]. 0 turns the
    /// limit off.
    pub max_cancelled: u32,
    /// Cancellations allowed in one burst, if more than `max_cancelled`:
    /// the allowance holds up to this many, and is still refilled at
    /// `max_cancelled` per `window`. Default 1024; the engine raises it
    /// to its `max_executing`, so that a client can always cancel
    /// everything it may have in flight at once.
    pub cancel_burst: u32,
}

impl Default for FloodLimits {
    fn default() -> Self {
        FloodLimits {
            window: 1024,
            max_errors: 128,
            max_cancelled: 384,
            cancel_burst: 1024,
        }
    }
}

/// One kind's allowance, in units of 1/`window` of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Allowance {
    left: u64,
    /// The most it holds: the burst, times `window`.
    full: u64,
}

impl Allowance {
    fn full(burst: u32, window: u32) -> Allowance {
        let full = u64::from(burst) * u64::from(window);
        Allowance { left: full, full }
    }

    /// One request started: `rate` per `window` more.
    fn refill(&mut self, rate: u32) {
        self.left = (self.left + u64::from(rate)).min(self.full);
    }

    /// Spends one request; `false` if less than one is left.
    fn spend(&mut self, window: u32) -> bool {
        match self.left.checked_sub(u64::from(window)) {
            Some(left) => {
                self.left = left;
                true
            }
            None => false,
        }
    }
}

/// The counters of [`FloodLimits`] for one connection. The server reactor
/// keeps one ([`ServerReactor::on_cancelled`](crate::server::ServerReactor::on_cancelled)
/// reaches it, and the [`Lifecycle`](crate::lifecycle::Lifecycle) calls
/// that for every `@cancel` that stops a request); it is public so a
/// scheduler can keep the same rule.
///
/// ```
/// use wiremux_proto::flood::{FloodGuard, FloodLimits};
/// use wiremux_proto::server::ErrorKind;
///
/// let mut guard = FloodGuard::new(FloodLimits::default());
/// // Start-and-cancel pairs: two requests started, one cancelled.
/// let mut pairs = 0;
/// let error = loop {
///     guard.on_request_started();
///     guard.on_request_started();
///     if let Err(e) = guard.on_cancelled() {
///         break e;
///     }
///     pairs += 1;
/// };
/// // The burst of 1024, spent at a net quarter of a cancellation per pair.
/// assert_eq!(pairs, 4093);
/// assert_eq!(error.to_string(), "more than 384 requests cancelled within 1024 requests started");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloodGuard {
    limits: FloodLimits,
    errors: Allowance,
    cancelled: Allowance,
}

impl FloodGuard {
    /// A guard with full allowances.
    pub fn new(limits: FloodLimits) -> FloodGuard {
        let window = limits.window.max(1);
        let limits = FloodLimits { window, ..limits };
        FloodGuard {
            limits,
            errors: Allowance::full(limits.max_errors, window),
            cancelled: Allowance::full(limits.max_cancelled.max(limits.cancel_burst), window),
        }
    }

    /// The limits in force (a `window` of 0 is taken as 1).
    pub fn limits(&self) -> &FloodLimits {
        &self.limits
    }

    /// A request was started (its command-name frame arrived).
    pub fn on_request_started(&mut self) {
        self.errors.refill(self.limits.max_errors);
        self.cancelled.refill(self.limits.max_cancelled);
    }

    /// A request ended in a request-level protocol error. `Err` when that
    /// is more than the limit allows: the connection must close with that
    /// connection-level error.
    pub fn on_request_error(&mut self) -> Result<(), ErrorKind> {
        let FloodLimits {
            window, max_errors, ..
        } = self.limits;
        if max_errors == 0 || self.errors.spend(window) {
            Ok(())
        } else {
            Err(ErrorKind::TooManyRequestErrors {
                max: max_errors,
                window,
            })
        }
    }

    /// A request ended cancelled (by `@cancel`; a deadline is not a
    /// cancellation). `Err` when that is more than the limit allows: the
    /// connection must close with that connection-level error.
    pub fn on_cancelled(&mut self) -> Result<(), ErrorKind> {
        let FloodLimits {
            window,
            max_cancelled,
            ..
        } = self.limits;
        if max_cancelled == 0 || self.cancelled.spend(window) {
            Ok(())
        } else {
            Err(ErrorKind::TooManyCancelled {
                max: max_cancelled,
                window,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(window: u32, max_errors: u32, max_cancelled: u32) -> FloodLimits {
        FloodLimits {
            window,
            max_errors,
            max_cancelled,
            cancel_burst: 0,
        }
    }

    /// Requests started before the first one over the limit, when every
    /// `every`-th request started ends in an error.
    fn errors_until_closed(limits: FloodLimits, every: u32, cap: u32) -> Option<u32> {
        let mut guard = FloodGuard::new(limits);
        for n in 1..=cap {
            guard.on_request_started();
            if n % every == 0 && guard.on_request_error().is_err() {
                return Some(n);
            }
        }
        None
    }

    #[test]
    fn a_burst_of_max_is_allowed_and_one_more_is_not() {
        let mut guard = FloodGuard::new(limits(100, 3, 1));
        for _ in 0..3 {
            guard.on_request_started();
            assert_eq!(guard.on_request_error(), Ok(()));
        }
        guard.on_request_started();
        assert_eq!(
            guard.on_request_error(),
            Err(ErrorKind::TooManyRequestErrors {
                max: 3,
                window: 100
            })
        );
        // The kinds are counted apart.
        assert_eq!(guard.on_cancelled(), Ok(()));
        assert_eq!(
            guard.on_cancelled(),
            Err(ErrorKind::TooManyCancelled {
                max: 1,
                window: 100
            })
        );
    }

    #[test]
    fn the_allowance_refills_with_requests_started() {
        // 2 per 10: spent at once, then one more after 5 requests started.
        let mut guard = FloodGuard::new(limits(10, 2, 0));
        assert_eq!(guard.on_request_error(), Ok(()));
        assert_eq!(guard.on_request_error(), Ok(()));
        for _ in 0..4 {
            guard.on_request_started();
        }
        assert!(guard.on_request_error().is_err());
        let mut guard = FloodGuard::new(limits(10, 2, 0));
        assert_eq!(guard.on_request_error(), Ok(()));
        assert_eq!(guard.on_request_error(), Ok(()));
        for _ in 0..5 {
            guard.on_request_started();
        }
        assert_eq!(guard.on_request_error(), Ok(()));
        assert!(guard.on_request_error().is_err());
    }

    #[test]
    fn the_allowance_never_grows_past_max() {
        let mut guard = FloodGuard::new(limits(10, 2, 0));
        for _ in 0..1000 {
            guard.on_request_started();
        }
        assert_eq!(guard.on_request_error(), Ok(()));
        assert_eq!(guard.on_request_error(), Ok(()));
        assert!(guard.on_request_error().is_err());
    }

    #[test]
    fn a_rate_at_the_limit_goes_on_and_one_above_it_is_stopped() {
        let defaults = FloodLimits::default();
        // One error in every 8 requests is exactly 128 per 1024.
        assert_eq!(errors_until_closed(defaults, 8, 1_000_000), None);
        // One in 7 is over it: the burst allowance runs out in the end.
        assert_eq!(errors_until_closed(defaults, 7, 1_000_000), Some(7126));
        // Every request failing: closed at the 147th.
        assert_eq!(errors_until_closed(defaults, 1, 1_000_000), Some(147));
    }

    #[test]
    fn hedged_calls_are_not_a_cancellation_flood() {
        // Two copies of a call and a `@cancel` for the slower: one
        // cancellation per three requests started.
        let mut guard = FloodGuard::new(FloodLimits::default());
        for _ in 0..1_000_000 {
            for _ in 0..3 {
                guard.on_request_started();
            }
            assert_eq!(guard.on_cancelled(), Ok(()));
        }
    }

    /// Start-and-cancel pairs (two requests started, one cancelled) allowed
    /// before the cut.
    fn pairs_until_cut(limits: FloodLimits) -> u32 {
        let mut guard = FloodGuard::new(limits);
        let mut pairs = 0;
        while {
            guard.on_request_started();
            guard.on_request_started();
            guard.on_cancelled().is_ok()
        } {
            pairs += 1;
        }
        pairs
    }

    #[test]
    fn everything_in_flight_can_be_cancelled_at_once_but_a_flood_is_stopped() {
        let limits = FloodLimits::default();
        // 1024 requests in flight, then a @cancel for each.
        let mut guard = FloodGuard::new(limits);
        for _ in 0..1024 {
            guard.on_request_started();
        }
        for _ in 0..1024 {
            guard.on_request_started();
            assert_eq!(guard.on_cancelled(), Ok(()));
        }
        // Then no more than the @cancel requests refilled: 384 per 1024
        // started, less the one refill that found the allowance full.
        let mut more = 0;
        while guard.on_cancelled().is_ok() {
            more += 1;
        }
        assert_eq!(more, 383);
        // The same burst without the requests in flight first: a
        // start-and-cancel flood, stopped after about 4 100 pairs.
        assert_eq!(pairs_until_cut(limits), 4093);
        // Without the burst, at the rate alone.
        let no_burst = FloodLimits {
            cancel_burst: 0,
            ..limits
        };
        assert_eq!(pairs_until_cut(no_burst), 1533);
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let mut guard = FloodGuard::new(limits(0, 0, 0));
        assert_eq!(guard.limits().window, 1);
        for _ in 0..10_000 {
            assert_eq!(guard.on_request_error(), Ok(()));
            assert_eq!(guard.on_cancelled(), Ok(()));
        }
    }
}
