//! Server counters. Connections count locally and add their counts to the
//! shared atomics once per wake-up, so the per-frame path touches no shared
//! cache line.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Shared counters of a server.
#[derive(Debug, Default)]
pub struct Stats {
    connections_accepted: AtomicU64,
    connections_closed: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    requests_started: AtomicU64,
    requests_completed: AtomicU64,
    requests_failed: AtomicU64,
    requests_cancelled: AtomicU64,
    protocol_errors: AtomicU64,
}

/// A point-in-time copy of a server's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connections accepted so far.
    pub connections_accepted: u64,
    /// Connections that have ended.
    pub connections_closed: u64,
    /// Connections open now.
    pub connections_open: u64,
    /// Frames decoded.
    pub frames_in: u64,
    /// Frames encoded for sending.
    pub frames_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Requests taken in: commands dispatched to a handler, and requests
    /// refused by name, permission or as malformed.
    pub requests_started: u64,
    /// Requests answered with a final bytes-response.
    pub requests_completed: u64,
    /// Requests answered with an error-response (application, refusal,
    /// panic, timeout, malformed request).
    pub requests_failed: u64,
    /// Requests dropped unanswered because their connection ended.
    pub requests_cancelled: u64,
    /// Requests started and not answered (in flight now).
    pub requests_in_flight: u64,
    /// Connection-level protocol errors.
    pub protocol_errors: u64,
}

/// Counts of one connection not yet added to [`Stats`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LocalStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub requests_started: u64,
    pub requests_completed: u64,
    pub requests_failed: u64,
    pub requests_cancelled: u64,
    pub protocol_errors: u64,
}

impl Stats {
    pub(crate) fn connection_opened(&self) {
        self.connections_accepted.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_closed.fetch_add(1, Relaxed);
    }

    /// Adds a connection's local counts and zeroes them.
    pub(crate) fn absorb(&self, local: &mut LocalStats) {
        let l = std::mem::take(local);
        for (counter, value) in [
            (&self.frames_in, l.frames_in),
            (&self.frames_out, l.frames_out),
            (&self.bytes_in, l.bytes_in),
            (&self.bytes_out, l.bytes_out),
            (&self.requests_started, l.requests_started),
            (&self.requests_completed, l.requests_completed),
            (&self.requests_failed, l.requests_failed),
            (&self.requests_cancelled, l.requests_cancelled),
            (&self.protocol_errors, l.protocol_errors),
        ] {
            if value != 0 {
                counter.fetch_add(value, Relaxed);
            }
        }
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let accepted = self.connections_accepted.load(Relaxed);
        let closed = self.connections_closed.load(Relaxed);
        let started = self.requests_started.load(Relaxed);
        let completed = self.requests_completed.load(Relaxed);
        let failed = self.requests_failed.load(Relaxed);
        let cancelled = self.requests_cancelled.load(Relaxed);
        StatsSnapshot {
            connections_accepted: accepted,
            connections_closed: closed,
            connections_open: accepted.saturating_sub(closed),
            frames_in: self.frames_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            requests_started: started,
            requests_completed: completed,
            requests_failed: failed,
            requests_cancelled: cancelled,
            requests_in_flight: started.saturating_sub(completed + failed + cancelled),
            protocol_errors: self.protocol_errors.load(Relaxed),
        }
    }
}
