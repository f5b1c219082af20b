//! Server counters. Connections count locally and add their counts to the
//! shared atomics once per wake-up, so the per-frame path touches no shared
//! cache line.
//!
//! Per-command counts and latencies work the same way: a connection (or
//! any transport) records each request into its [`LocalStats`] with
//! [`LocalStats::request_started`] and [`LocalStats::request_ended`], and
//! [`Stats::absorb`] folds them into a table of atomics that is fixed when
//! the server is built (one row per registered command, plus one row for
//! every name that is not registered), so folding takes no lock either.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds (the last
/// bucket, `+Inf`, is implied). From 100 µs to 10 s, roughly ×2.5 apart.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// [`LATENCY_BUCKETS`] in nanoseconds, for the recording path.
const BUCKET_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Buckets stored per command: the bounded ones and `+Inf`.
const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// The name under which requests for unregistered commands are counted,
/// so that a client cannot make the table (or a metrics scrape) grow.
pub const UNKNOWN_COMMAND: &str = "(unknown)";

/// A command's row in a server's per-command table: its index among the
/// registered names (sorted), or the last row, [`UNKNOWN_COMMAND`]. Found
/// once per command name when the server is built and kept in the
/// registry, so that counting a request is an array index, not a lookup.
pub(crate) type Row = usize;

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
    requests_stopped_by_peer: AtomicU64,
    protocol_errors: AtomicU64,
    commands: CommandTable,
}

/// One row per registered command, and the row for unknown names, fixed
/// at build time: read without a lock, written with relaxed atomics.
#[derive(Debug, Default)]
struct CommandTable {
    index: HashMap<Bytes, usize>,
    /// `rows[i]` for `index` entries; the last row is [`UNKNOWN_COMMAND`].
    rows: Vec<(String, CommandCounters)>,
}

#[derive(Debug, Default)]
struct CommandCounters {
    started: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    latency_sum_nanos: AtomicU64,
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
    /// Requests the peer stopped with `@cancel` (PROTOCOL.md section 8),
    /// answered `cancelled`: a part of `requests_failed`.
    pub requests_stopped_by_peer: u64,
    /// Requests started and not answered (in flight now).
    pub requests_in_flight: u64,
    /// Connection-level protocol errors.
    pub protocol_errors: u64,
}

/// A point-in-time copy of one command's counters and latency histogram,
/// from [`Server::command_stats`](crate::Server::command_stats).
#[derive(Debug, Clone, PartialEq)]
pub struct CommandStatsSnapshot {
    /// The command's name, or [`UNKNOWN_COMMAND`] for the row that counts
    /// every name not registered.
    pub command: String,
    /// Requests for this command taken in.
    pub started: u64,
    /// Requests that ended with a successful answer.
    pub completed: u64,
    /// Requests that ended with an error (or unanswered).
    pub failed: u64,
    /// Requests started and not yet ended.
    pub in_flight: u64,
    /// Cumulative latency counts: `buckets[i]` requests took at most
    /// [`LATENCY_BUCKETS`]`[i]` seconds; the last entry, one longer than
    /// `LATENCY_BUCKETS`, counts every ended request (`+Inf`).
    pub buckets: Vec<u64>,
    /// The sum of the ended requests' latencies, in seconds.
    pub latency_sum_secs: f64,
}

/// Counts of one connection not yet added to [`Stats`].
///
/// Plain integers, owned by one task: counting costs no atomic operation.
/// [`Stats::absorb`] adds them to the server's counters (once per wake-up
/// of the connection) and zeroes them, keeping their allocation.
#[derive(Debug, Default, Clone)]
pub(crate) struct LocalStats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub requests_started: u64,
    pub requests_completed: u64,
    pub requests_failed: u64,
    pub requests_cancelled: u64,
    pub requests_stopped_by_peer: u64,
    pub protocol_errors: u64,
    /// Per-command counts since the last fold, by [`Row`] (as long as the
    /// highest row counted so far: at most the server's table).
    commands: Vec<LocalCommand>,
}

#[derive(Debug, Default, Clone)]
struct LocalCommand {
    started: u64,
    completed: u64,
    failed: u64,
    buckets: [u64; BUCKETS],
    latency_sum_nanos: u64,
}

impl LocalCommand {
    fn is_zero(&self) -> bool {
        self.started == 0 && self.completed == 0 && self.failed == 0
    }
}

impl LocalStats {
    /// The slot counting `row`.
    #[inline]
    fn command(&mut self, row: Row) -> &mut LocalCommand {
        if row >= self.commands.len() {
            self.commands.resize_with(row + 1, LocalCommand::default);
        }
        &mut self.commands[row]
    }

    /// Counts one request for the command of `row` taken in (per command;
    /// the total in `requests_started` is the caller's to count).
    pub(crate) fn request_started(&mut self, row: Row) {
        self.command(row).started += 1;
    }

    /// Counts the end of one request for the command of `row` that took `elapsed`
    /// from start to its final frame: `ok` for a successful answer, not
    /// `ok` for an error or a request dropped unanswered. Per command
    /// only; the totals (`requests_completed` and the others) are the
    /// caller's to count.
    /// [`LocalStats::request_ended`] for a request answered at its start
    /// (no time passed).
    pub(crate) fn request_ended_at_once(&mut self, row: Row, ok: bool) {
        let slot = self.command(row);
        if ok {
            slot.completed += 1;
        } else {
            slot.failed += 1;
        }
        slot.buckets[0] += 1;
    }

    pub(crate) fn request_ended(&mut self, row: Row, ok: bool, elapsed: Duration) {
        let slot = self.command(row);
        if ok {
            slot.completed += 1;
        } else {
            slot.failed += 1;
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS.partition_point(|&bound| bound < nanos);
        slot.buckets[bucket] += 1;
        slot.latency_sum_nanos = slot.latency_sum_nanos.saturating_add(nanos);
    }
}

impl Stats {
    /// Counters with one per-command row for each of `commands`.
    pub(crate) fn for_commands<'a>(commands: impl IntoIterator<Item = &'a Bytes>) -> Stats {
        let mut names: Vec<&Bytes> = commands.into_iter().collect();
        names.sort();
        let mut table = CommandTable::default();
        for name in names {
            table.index.insert(name.clone(), table.rows.len());
            table.rows.push((
                String::from_utf8_lossy(name).into_owned(),
                CommandCounters::default(),
            ));
        }
        table
            .rows
            .push((UNKNOWN_COMMAND.to_string(), CommandCounters::default()));
        Stats {
            commands: table,
            ..Stats::default()
        }
    }

    /// The row counting requests for `name`: its own if it is registered,
    /// else the [`UNKNOWN_COMMAND`] row.
    pub(crate) fn row_of(&self, name: &[u8]) -> Row {
        match self.commands.index.get(name) {
            Some(&row) => row,
            None => self.unknown_row(),
        }
    }

    /// The [`UNKNOWN_COMMAND`] row (0 in a server without a table, whose
    /// per-command counts are dropped).
    pub(crate) fn unknown_row(&self) -> Row {
        self.commands.rows.len().saturating_sub(1)
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_accepted.fetch_add(1, Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_closed.fetch_add(1, Relaxed);
    }

    /// Adds a connection's local counts and zeroes them.
    pub(crate) fn absorb(&self, local: &mut LocalStats) {
        for (counter, value) in [
            (&self.frames_in, &mut local.frames_in),
            (&self.frames_out, &mut local.frames_out),
            (&self.bytes_in, &mut local.bytes_in),
            (&self.bytes_out, &mut local.bytes_out),
            (&self.requests_started, &mut local.requests_started),
            (&self.requests_completed, &mut local.requests_completed),
            (&self.requests_failed, &mut local.requests_failed),
            (&self.requests_cancelled, &mut local.requests_cancelled),
            (
                &self.requests_stopped_by_peer,
                &mut local.requests_stopped_by_peer,
            ),
            (&self.protocol_errors, &mut local.protocol_errors),
        ] {
            let value = std::mem::take(value);
            if value != 0 {
                counter.fetch_add(value, Relaxed);
            }
        }
        let rows = &self.commands.rows;
        for (slot, (_, row)) in local.commands.iter_mut().zip(rows) {
            if slot.is_zero() {
                continue;
            }
            for (counter, value) in [
                (&row.started, slot.started),
                (&row.completed, slot.completed),
                (&row.failed, slot.failed),
                (&row.latency_sum_nanos, slot.latency_sum_nanos),
            ] {
                if value != 0 {
                    counter.fetch_add(value, Relaxed);
                }
            }
            for (counter, &value) in row.buckets.iter().zip(&slot.buckets) {
                if value != 0 {
                    counter.fetch_add(value, Relaxed);
                }
            }
            *slot = LocalCommand::default();
        }
        // Rows past the table (a server without one) are dropped.
        local.commands.truncate(rows.len());
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
            requests_stopped_by_peer: self.requests_stopped_by_peer.load(Relaxed),
            requests_in_flight: started.saturating_sub(completed + failed + cancelled),
            protocol_errors: self.protocol_errors.load(Relaxed),
        }
    }

    /// A copy of every command's counters, registered commands by name,
    /// then the [`UNKNOWN_COMMAND`] row.
    pub fn command_snapshots(&self) -> Vec<CommandStatsSnapshot> {
        self.commands
            .rows
            .iter()
            .map(|(name, row)| {
                let started = row.started.load(Relaxed);
                let completed = row.completed.load(Relaxed);
                let failed = row.failed.load(Relaxed);
                let mut total = 0;
                let buckets = row
                    .buckets
                    .iter()
                    .map(|b| {
                        total += b.load(Relaxed);
                        total
                    })
                    .collect();
                CommandStatsSnapshot {
                    command: name.clone(),
                    started,
                    completed,
                    failed,
                    in_flight: started.saturating_sub(completed + failed),
                    buckets,
                    latency_sum_secs: row.latency_sum_nanos.load(Relaxed) as f64 / 1e9,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Stats {
        let names = [Bytes::from_static(b"echo"), Bytes::from_static(b"sleep")];
        Stats::for_commands(&names)
    }

    fn row<'a>(rows: &'a [CommandStatsSnapshot], name: &str) -> &'a CommandStatsSnapshot {
        rows.iter().find(|r| r.command == name).unwrap()
    }

    #[test]
    fn per_command_counts_and_latency_fold_in_at_absorb() {
        let stats = stats();
        let (echo_row, sleep_row) = (stats.row_of(b"echo"), stats.row_of(b"sleep"));
        let mut local = LocalStats::default();
        local.request_started(echo_row);
        local.request_started(echo_row);
        local.request_started(sleep_row);
        local.request_ended(echo_row, true, Duration::from_micros(50));
        local.request_ended(echo_row, false, Duration::from_millis(3));
        // Nothing shared moves before the fold.
        assert_eq!(row(&stats.command_snapshots(), "echo").started, 0);
        stats.absorb(&mut local);
        let rows = stats.command_snapshots();
        let names: Vec<&str> = rows.iter().map(|r| r.command.as_str()).collect();
        assert_eq!(names, ["echo", "sleep", UNKNOWN_COMMAND]);
        let echo = row(&rows, "echo");
        assert_eq!(
            (echo.started, echo.completed, echo.failed, echo.in_flight),
            (2, 1, 1, 0)
        );
        // 50 µs falls in the first bucket (≤ 100 µs), 3 ms in ≤ 5 ms.
        assert_eq!(echo.buckets.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(echo.buckets[0], 1);
        assert_eq!(echo.buckets[4], 1, "≤ 2.5 ms holds only the first");
        assert_eq!(echo.buckets[5], 2);
        assert_eq!(*echo.buckets.last().unwrap(), 2);
        assert!((echo.latency_sum_secs - 0.003_05).abs() < 1e-9);
        assert_eq!(row(&rows, "sleep").in_flight, 1);
        // The fold zeroes the local counts: a second one adds nothing.
        stats.absorb(&mut local);
        assert_eq!(row(&stats.command_snapshots(), "echo").started, 2);
    }

    #[test]
    fn an_exact_bound_counts_in_its_bucket_and_the_slowest_in_inf() {
        let stats = stats();
        let echo_row = stats.row_of(b"echo");
        let mut local = LocalStats::default();
        local.request_ended(echo_row, true, Duration::from_millis(1));
        local.request_ended(echo_row, true, Duration::from_secs(60));
        stats.absorb(&mut local);
        let echo = row(&stats.command_snapshots(), "echo").clone();
        assert_eq!(echo.buckets[2], 0, "1 ms is not ≤ 500 µs");
        assert_eq!(echo.buckets[3], 1, "1 ms is ≤ 1 ms");
        assert_eq!(echo.buckets[15], 1, "60 s is not ≤ 10 s");
        assert_eq!(echo.buckets[16], 2);
    }

    #[test]
    fn unknown_names_share_one_row_and_the_local_table_stays_small() {
        let stats = stats();
        let mut local = LocalStats::default();
        for n in 0..200 {
            let row = stats.row_of(format!("nope{n}").as_bytes());
            assert_eq!(row, stats.unknown_row());
            local.request_started(row);
            local.request_ended(row, false, Duration::ZERO);
        }
        // One slot per row of the server's table, however many names.
        assert_eq!(local.commands.len(), 3);
        stats.absorb(&mut local);
        let rows = stats.command_snapshots();
        let unknown = row(&rows, UNKNOWN_COMMAND);
        assert_eq!((unknown.started, unknown.failed), (200, 200));
        assert_eq!(row(&rows, "echo").started, 0);
        // The slots (and their allocation) stay for the next fold.
        assert_eq!(local.commands.len(), 3);
    }

    #[test]
    fn totals_fold_and_zero_as_before() {
        let stats = Stats::default();
        let mut local = LocalStats {
            frames_in: 3,
            requests_started: 2,
            requests_completed: 1,
            ..LocalStats::default()
        };
        stats.absorb(&mut local);
        stats.absorb(&mut local);
        let snap = stats.snapshot();
        assert_eq!(
            (
                snap.frames_in,
                snap.requests_started,
                snap.requests_in_flight
            ),
            (3, 2, 1)
        );
        // A server without a table (Stats::default) drops per-command data.
        local.request_started(stats.row_of(b"echo"));
        stats.absorb(&mut local);
        assert!(stats.command_snapshots().is_empty());
        assert!(local.commands.is_empty());
    }
}
