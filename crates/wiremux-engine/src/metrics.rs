//! The server's counters as Prometheus metrics, through the
//! `prometheus-client` crate.
//!
//! [`ServerCollector`] is a [`Collector`]: registered in a
//! `prometheus_client` [`Registry`] (yours, beside your own metrics, or a
//! fresh one), it reads the server's counters at each scrape. Nothing is
//! recorded for it: the counters are the ones the server keeps anyway
//! (per connection, folded in once per wake-up), so the request path
//! takes no lock and does no extra work for metrics.
//! [`render`] gives the whole text for a server alone.
//!
//! Metrics (all prefixed `wiremux_`; counters end in `_total`):
//!
//! | name | type | labels |
//! |---|---|---|
//! | `connections_accepted_total`, `connections_closed_total` | counter | |
//! | `connections_open` | gauge | |
//! | `frames_in_total`, `frames_out_total`, `bytes_in_total`, `bytes_out_total` | counter | |
//! | `requests_started_total`, `requests_completed_total`, `requests_failed_total`, `requests_cancelled_total`, `requests_stopped_by_peer_total` | counter | |
//! | `requests_in_flight` | gauge | |
//! | `protocol_errors_total` | counter | |
//! | `command_requests_started_total`, `command_requests_completed_total`, `command_requests_failed_total` | counter | `command` |
//! | `command_requests_in_flight` | gauge | `command` |
//! | `command_request_duration_seconds` | histogram ([`LATENCY_BUCKETS`]) | `command` |
//!
//! ```
//! let server = wiremux_engine::Server::builder()
//!     .registry(wiremux_engine::demo::registry())
//!     .build();
//! let text = wiremux_engine::metrics::render(&server);
//! assert!(text.contains("# TYPE wiremux_requests_started_total counter"));
//! assert!(text.contains("wiremux_command_requests_started_total{command=\"echo\"} 0"));
//! assert!(text.contains("wiremux_command_request_duration_seconds_bucket{command=\"echo\",le=\"+Inf\"} 0"));
//! ```

use crate::server::Server;
use crate::stats::{CommandStatsSnapshot, LATENCY_BUCKETS};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
pub use prometheus_client::registry::Registry;

/// The `Content-Type` of [`render`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Reads a [`Server`]'s counters at each scrape of the registry it is in.
///
/// ```
/// use prometheus_client::registry::Registry;
/// let server = wiremux_engine::Server::builder().build();
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(wiremux_engine::metrics::ServerCollector::new(server)));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
/// assert!(text.contains("wiremux_connections_open 0"));
/// ```
#[derive(Debug, Clone)]
pub struct ServerCollector {
    server: Server,
}

impl ServerCollector {
    /// A collector for `server` (and its clones).
    pub fn new(server: Server) -> ServerCollector {
        ServerCollector { server }
    }
}

/// The Prometheus text of `server`'s metrics alone.
pub fn render(server: &Server) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ServerCollector::new(server.clone())));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .expect("writing to a String does not fail");
    text
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One command's latency histogram, for the encoder.
struct Histogram<'a>(&'a CommandStatsSnapshot);

impl EncodeMetric for Histogram<'_> {
    fn encode(&self, mut encoder: MetricEncoder) -> std::fmt::Result {
        // The encoder wants each bucket's own count; the snapshot is
        // cumulative, with +Inf last.
        let mut buckets = Vec::with_capacity(self.0.buckets.len());
        let mut below = 0;
        for (i, &cumulative) in self.0.buckets.iter().enumerate() {
            let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative - below));
            below = cumulative;
        }
        encoder.encode_histogram::<NoLabelSet>(self.0.latency_sum_secs, below, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = self.server.stats();
        let e = &mut encoder;
        counter(
            e,
            "wiremux_connections_accepted",
            "Connections accepted.",
            s.connections_accepted,
        )?;
        counter(
            e,
            "wiremux_connections_closed",
            "Connections that have ended.",
            s.connections_closed,
        )?;
        gauge(
            e,
            "wiremux_connections_open",
            "Connections open now.",
            s.connections_open,
        )?;
        counter(e, "wiremux_frames_in", "Frames decoded.", s.frames_in)?;
        counter(
            e,
            "wiremux_frames_out",
            "Frames encoded for sending.",
            s.frames_out,
        )?;
        counter(e, "wiremux_bytes_in", "Bytes read.", s.bytes_in)?;
        counter(e, "wiremux_bytes_out", "Bytes written.", s.bytes_out)?;
        counter(
            e,
            "wiremux_requests_started",
            "Requests taken in.",
            s.requests_started,
        )?;
        counter(
            e,
            "wiremux_requests_completed",
            "Requests answered with a final bytes-response.",
            s.requests_completed,
        )?;
        counter(
            e,
            "wiremux_requests_failed",
            "Requests answered with an error-response.",
            s.requests_failed,
        )?;
        counter(
            e,
            "wiremux_requests_cancelled",
            "Requests dropped unanswered because their connection ended.",
            s.requests_cancelled,
        )?;
        counter(
            e,
            "wiremux_requests_stopped_by_peer",
            "Requests the peer stopped with @cancel (counted as failed too).",
            s.requests_stopped_by_peer,
        )?;
        gauge(
            e,
            "wiremux_requests_in_flight",
            "Requests started and not answered.",
            s.requests_in_flight,
        )?;
        counter(
            e,
            "wiremux_protocol_errors",
            "Connection-level protocol errors.",
            s.protocol_errors,
        )?;

        let rows = self.server.command_stats();
        type Field = fn(&CommandStatsSnapshot) -> u64;
        let families: [(&str, &str, MetricType, Field); 4] = [
            (
                "wiremux_command_requests_started",
                "Requests taken in, per command.",
                MetricType::Counter,
                |r| r.started,
            ),
            (
                "wiremux_command_requests_completed",
                "Requests answered successfully, per command.",
                MetricType::Counter,
                |r| r.completed,
            ),
            (
                "wiremux_command_requests_failed",
                "Requests answered with an error or left unanswered, per command.",
                MetricType::Counter,
                |r| r.failed,
            ),
            (
                "wiremux_command_requests_in_flight",
                "Requests started and not ended, per command.",
                MetricType::Gauge,
                |r| r.in_flight,
            ),
        ];
        for (name, help, kind, field) in families {
            let mut family = e.encode_descriptor(name, help, None, kind)?;
            for row in &rows {
                let labels = [("command", row.command.as_str())];
                let metric = family.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(field(row)).encode(metric)?,
                    _ => ConstGauge::new(i64::try_from(field(row)).unwrap_or(i64::MAX))
                        .encode(metric)?,
                }
            }
        }
        let mut family = e.encode_descriptor(
            "wiremux_command_request_duration_seconds",
            "Time from a request's start to its final frame, per command.",
            None,
            MetricType::Histogram,
        )?;
        for row in &rows {
            let labels = [("command", row.command.as_str())];
            Histogram(row).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::LocalStats;
    use std::time::Duration;

    #[test]
    fn the_text_carries_totals_per_command_rows_and_histograms() {
        let server = Server::builder().registry(crate::demo::registry()).build();
        let stats = &server.shared().stats;
        let mut local = LocalStats::default();
        local.frames_in = 4;
        local.requests_started = 3;
        local.requests_completed = 2;
        local.request_started(stats.row_of(b"echo"));
        local.request_started(stats.row_of(b"echo"));
        local.request_started(stats.row_of(b"nonesuch"));
        local.request_ended(stats.row_of(b"echo"), true, Duration::from_micros(200));
        local.request_ended(stats.row_of(b"nonesuch"), false, Duration::from_micros(20));
        stats.absorb(&mut local);
        let text = render(&server);
        for line in [
            "# TYPE wiremux_frames_in_total counter",
            "wiremux_frames_in_total 4",
            "# TYPE wiremux_requests_in_flight gauge",
            "wiremux_requests_in_flight 1",
            "wiremux_command_requests_started_total{command=\"echo\"} 2",
            "wiremux_command_requests_completed_total{command=\"echo\"} 1",
            "wiremux_command_requests_in_flight{command=\"echo\"} 1",
            "wiremux_command_requests_failed_total{command=\"(unknown)\"} 1",
            "# TYPE wiremux_command_request_duration_seconds histogram",
            "wiremux_command_request_duration_seconds_bucket{command=\"echo\",le=\"0.0001\"} 0",
            "wiremux_command_request_duration_seconds_bucket{command=\"echo\",le=\"0.00025\"} 1",
            "wiremux_command_request_duration_seconds_bucket{command=\"echo\",le=\"+Inf\"} 1",
            "wiremux_command_request_duration_seconds_count{command=\"echo\"} 1",
            "wiremux_command_request_duration_seconds_sum{command=\"echo\"} 0.0002",
            "wiremux_command_request_duration_seconds_bucket{command=\"(unknown)\",le=\"0.0001\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in:\n{text}"
            );
        }
    }
}
