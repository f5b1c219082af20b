//! The report of a run: text for people, JSON for scripts (and for
//! `--merge`), and the side by side comparison of two runs.

use super::histo;
use super::run::{failure, Outcome, ERROR_KINDS, HISTOGRAM_HIGH, HISTOGRAM_LOW, HISTOGRAM_SIGFIG};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::fmt::Write;
use std::time::UNIX_EPOCH;

/// What the report needs besides the measurements.
#[derive(Debug, Clone)]
pub struct Context {
    /// What was loaded: "embedded server (…)" or the address.
    pub target: String,
    /// Connections × in flight, loop kind, duration.
    pub shape: String,
    /// The mix and payload.
    pub workload: String,
    /// The mix entries' labels, in order.
    pub commands: Vec<String>,
    /// Open loop: the requests per second asked for.
    pub rate: Option<f64>,
    /// Who generated the load (`--name`, else the host name).
    pub generator: String,
}

/// The numbers of one run, derived once for every kind of output.
pub struct Summary {
    pub ok: u64,
    pub expected_errors: u64,
    pub answered: u64,
    pub completed: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub megabytes_per_second: f64,
    pub errors: Vec<(&'static str, u64)>,
    pub failed: u64,
    pub duplicates: u64,
    pub overtook_share: f64,
    pub overtaken_mean: f64,
    pub overtaken_max: u64,
    pub fatal: Option<String>,
    pub first_error: Option<String>,
    /// Generator CPU time per answered request, microseconds.
    pub cpu_us_per_request: Option<f64>,
    /// Embedded server CPU time per answered request, microseconds.
    pub server_cpu_us_per_request: Option<f64>,
}

/// `part / whole`, 0 when there is no whole.
pub fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Summary {
    pub fn of(outcome: &Outcome) -> Summary {
        let m = &outcome.measured;
        let seconds = outcome.elapsed.as_secs_f64().max(1e-9);
        let failed = m.errors.iter().sum::<u64>();
        let per_request = |cpu: Option<f64>| {
            cpu.filter(|_| m.answered > 0)
                .map(|c| c * 1e6 / m.answered as f64)
        };
        Summary {
            ok: m.ok,
            expected_errors: m.expected_errors,
            answered: m.answered,
            completed: m.completed(),
            seconds,
            requests_per_second: m.ok as f64 / seconds,
            megabytes_per_second: m.bytes as f64 / seconds / 1e6,
            errors: ERROR_KINDS.iter().copied().zip(m.errors).collect(),
            failed,
            duplicates: m.duplicates,
            overtook_share: share(m.overtook, m.answered),
            overtaken_mean: if m.overtook == 0 {
                0.0
            } else {
                m.overtaken_sum as f64 / m.overtook as f64
            },
            overtaken_max: m.overtaken_max,
            fatal: m.fatal.clone(),
            first_error: m.first_error.clone(),
            cpu_us_per_request: per_request(outcome.busy.cpu_seconds),
            server_cpu_us_per_request: per_request(outcome.server_cpu_seconds),
        }
    }

    /// Whether every answer was right (or an error the mix expected) and
    /// none went missing.
    pub fn clean(&self) -> bool {
        self.duplicates == 0 && self.failed == 0
    }

    /// Why the run must exit non-zero, if it must.
    pub fn problem(&self) -> Option<String> {
        if let Some(fatal) = &self.fatal {
            return Some(fatal.clone());
        }
        if self.failed > 0 {
            let first = self
                .first_error
                .as_deref()
                .map(|e| format!("; the first: {e}"))
                .unwrap_or_default();
            return Some(format!(
                "{} of {} requests failed{first}",
                self.failed,
                self.failed + self.ok
            ));
        }
        if self.duplicates > 0 {
            return Some(format!(
                "{} answers came for requests that were not out",
                self.duplicates
            ));
        }
        if self.answered == 0 {
            return Some("no request was answered in the measured part of the run".into());
        }
        None
    }
}

/// Warnings about the run itself: what else than the server may have set
/// the figures.
pub fn warnings(ctx: &Context, outcome: &Outcome) -> Vec<String> {
    let mut out = Vec::new();
    let s = Summary::of(outcome);
    if let Some(busy) = outcome.busy.max().filter(|b| *b >= 0.9) {
        out.push(format!(
            "the generator was busy {:.0}% of the time: it, not the server, may have limited this run (try --threads)",
            busy * 100.0
        ));
    }
    if let Some(rate) = ctx.rate {
        let m = &outcome.measured;
        let queued_p99 = m.queued.value_at_quantile(0.99);
        let wire_p99 = m.wire.value_at_quantile(0.99);
        if s.answered > 0 && queued_p99 > 1000 && queued_p99 > wire_p99 {
            out.push(format!(
                "requests waited in the generator (p99 {}) longer than on the wire (p99 {}): the window (--inflight) or the generator, not only the server, set these latencies",
                micros(queued_p99),
                micros(wire_p99)
            ));
        }
        let sent = s.answered as f64 / s.seconds;
        if s.answered > 0 && sent < 0.95 * rate {
            out.push(format!(
                "{sent:.0} requests/s were answered of the {rate} asked for"
            ));
        }
    }
    out
}

/// The percentiles reported, with their labels.
pub const PERCENTILES: [(&str, f64); 4] =
    [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)];

fn latency_row(h: &Histogram<u64>) -> Vec<u64> {
    let mut row: Vec<u64> = PERCENTILES
        .iter()
        .map(|(_, q)| h.value_at_quantile(q / 100.0))
        .collect();
    row.push(h.max());
    row
}

pub fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

/// The first lines of a text report: what was loaded, and how.
fn heading(title: &str, ctx: &Context) -> String {
    format!(
        "{title}: {}\n  {}\n  {}\n\n",
        ctx.target, ctx.shape, ctx.workload
    )
}

/// A latency table: one row per label, columns aligned for the longest.
fn latency_table(out: &mut String, rows: &[(String, &Histogram<u64>)]) {
    let width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let width = width.max(12);
    let _ = writeln!(
        out,
        "latency{:pad$}{:>10} {:>10} {:>10} {:>10} {:>10}",
        "",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "max",
        pad = width - 5
    );
    for (label, h) in rows {
        if h.is_empty() {
            let _ = writeln!(out, "  {label:<width$}  (no responses)");
            continue;
        }
        let cells: Vec<String> = latency_row(h)
            .into_iter()
            .map(|v| format!("{:>10}", micros(v)))
            .collect();
        let _ = writeln!(
            out,
            "  {label:<width$}{}  ({} responses)",
            cells.join(" "),
            h.len()
        );
    }
}

/// The text report.
pub fn text(ctx: &Context, outcome: &Outcome) -> String {
    let s = Summary::of(outcome);
    let m = &outcome.measured;
    let mut out = heading("wiremux load", ctx);
    let expected = if s.expected_errors > 0 {
        format!(", {} of them the errors the mix expects", s.expected_errors)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "throughput    {:.0} requests/s, {:.1} MB/s ({} correct responses{expected} in {:.2} s)",
        s.requests_per_second, s.megabytes_per_second, s.ok, s.seconds
    );
    let _ = writeln!(out);
    let mut rows = vec![("all".to_string(), &m.all)];
    if ctx.commands.len() > 1 {
        rows.extend(ctx.commands.iter().cloned().zip(&m.per_command));
    }
    if ctx.rate.is_some() {
        rows.push(("of which: queued in the generator".into(), &m.queued));
        rows.push(("of which: write to answer".into(), &m.wire));
    }
    latency_table(&mut out, &rows);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "out of order  {:.1}% of responses overtook an earlier request on their connection (by {:.1} on average, {} at most)",
        s.overtook_share * 100.0,
        s.overtaken_mean,
        s.overtaken_max
    );
    let errors: Vec<String> = s
        .errors
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    let expected = if s.expected_errors > 0 {
        format!(
            " ({} expected errors, counted as correct)",
            s.expected_errors
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "errors        {}{expected}",
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "checks        {} responses checked: {} mismatched, {} duplicated, {} lost",
        s.completed,
        m.errors[failure::MISMATCH],
        s.duplicates,
        m.errors[failure::LOST]
    );
    let _ = writeln!(out, "{}", generator_line(outcome, &s));
    if let Some(first) = s.fatal.as_ref().or(s.first_error.as_ref()) {
        let _ = writeln!(out, "first error   {first}");
    }
    for w in warnings(ctx, outcome) {
        let _ = writeln!(out, "warning       {w}");
    }
    out
}

fn generator_line(outcome: &Outcome, s: &Summary) -> String {
    let threads = outcome.busy.threads.len().max(1);
    let mut line = format!("generator     {threads} thread(s)");
    if let Some(busy) = outcome.busy.max() {
        let _ = write!(line, ", busiest {:.0}% busy", busy * 100.0);
    }
    if let Some(cpu) = s.cpu_us_per_request {
        let _ = write!(line, ", {cpu:.2} µs CPU per request");
    }
    if let Some(cpu) = s.server_cpu_us_per_request {
        let _ = write!(line, "; embedded server {cpu:.2} µs CPU per request");
    }
    line
}

fn histogram_json(h: &Histogram<u64>) -> Value {
    let mut v = json!({ "count": h.len() });
    if !h.is_empty() {
        for ((label, _), value) in PERCENTILES.iter().zip(latency_row(h)) {
            v[label] = json!(value);
        }
        v["max"] = json!(h.max());
        v["mean"] = json!(h.mean());
    }
    v
}

/// The JSON document of one run.
pub fn json(ctx: &Context, outcome: &Outcome) -> Value {
    let s = Summary::of(outcome);
    let m = &outcome.measured;
    let per_command: serde_json::Map<String, Value> = ctx
        .commands
        .iter()
        .cloned()
        .zip(m.per_command.iter().map(histogram_json))
        .collect();
    let errors: serde_json::Map<String, Value> = s
        .errors
        .iter()
        .map(|(k, n)| (k.to_string(), json!(n)))
        .collect();
    let start_ms = outcome
        .started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    json!({
        "target": ctx.target,
        "shape": ctx.shape,
        "workload": ctx.workload,
        "rate": ctx.rate,
        "start_unix_ms": start_ms,
        "seconds": s.seconds,
        "responses": s.ok,
        "expected_errors": s.expected_errors,
        "answered": s.answered,
        "requests_per_second": s.requests_per_second,
        "megabytes_per_second": s.megabytes_per_second,
        "bytes": m.bytes,
        "latency_us": histogram_json(&m.all),
        "latency_us_by_command": per_command,
        "queued_us": histogram_json(&m.queued),
        "wire_us": histogram_json(&m.wire),
        "errors": errors,
        "checks": { "completed": s.completed, "mismatched": m.errors[failure::MISMATCH], "duplicated": s.duplicates, "lost": m.errors[failure::LOST] },
        "out_of_order": { "share": s.overtook_share, "overtook": m.overtook, "overtaken_sum": m.overtaken_sum, "mean_overtaken": s.overtaken_mean, "max_overtaken": s.overtaken_max },
        "timeline": m.timeline.iter().enumerate().map(|(second, h)| json!({
            "second": second, "responses": h.len(),
            "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99), "max_us": h.max(),
        })).collect::<Vec<_>>(),
        "generator": {
            "name": ctx.generator,
            "threads": outcome.busy.threads.len(),
            "busy": outcome.busy.threads,
            "cpu_seconds": outcome.busy.cpu_seconds,
            "cpu_us_per_request": s.cpu_us_per_request,
            "server_cpu_us_per_request": s.server_cpu_us_per_request,
        },
        "warnings": warnings(ctx, outcome),
        "histograms": {
            "encoding": histo::ENCODING,
            "unit": "µs",
            "lowest": HISTOGRAM_LOW,
            "highest": HISTOGRAM_HIGH,
            "significant_digits": HISTOGRAM_SIGFIG,
            "all": histo::encode(&m.all),
            "queued": histo::encode(&m.queued),
            "wire": histo::encode(&m.wire),
            "by_command": ctx.commands.iter().cloned().zip(m.per_command.iter().map(|h| Value::from(histo::encode(h)))).collect::<serde_json::Map<String, Value>>(),
            "per_second": m.timeline.iter().map(histo::encode).collect::<Vec<_>>(),
        },
        "first_error": s.fatal.clone().or(s.first_error.clone()),
        "clean": s.clean(),
    })
}

/// Two runs side by side, with ratios (`--compare-in-order`,
/// `--compare-round-trips`).
pub fn compare_text(
    title: &str,
    labels: [&str; 2],
    ctx: &Context,
    one: &Outcome,
    two: &Outcome,
) -> String {
    let (a, b) = (Summary::of(one), Summary::of(two));
    let mut out = heading(title, ctx);
    let _ = writeln!(
        out,
        "{:<28} {:>14} {:>14} {:>10}",
        "", labels[0], labels[1], "ratio"
    );
    let mut row = |label: &str, x: f64, y: f64, fmt: &dyn Fn(f64) -> String| {
        let ratio = if y > 0.0 {
            format!("{:.2}x", x / y)
        } else {
            "-".into()
        };
        let _ = writeln!(out, "{label:<28} {:>14} {:>14} {ratio:>10}", fmt(x), fmt(y));
    };
    let rate = |v: f64| format!("{v:.0}");
    let us = |v: f64| micros(v as u64);
    row(
        "requests/s",
        a.requests_per_second,
        b.requests_per_second,
        &rate,
    );
    row(
        "MB/s",
        a.megabytes_per_second,
        b.megabytes_per_second,
        &|v| format!("{v:.1}"),
    );
    let (ha, hb) = (&one.measured.all, &two.measured.all);
    for (label, q) in PERCENTILES {
        row(
            &format!("latency {label}"),
            ha.value_at_quantile(q / 100.0) as f64,
            hb.value_at_quantile(q / 100.0) as f64,
            &us,
        );
    }
    row("latency max", ha.max() as f64, hb.max() as f64, &us);
    for (i, label) in ctx
        .commands
        .iter()
        .enumerate()
        .filter(|_| ctx.commands.len() > 1)
    {
        let (pa, pb) = (&one.measured.per_command[i], &two.measured.per_command[i]);
        row(
            &format!("{label} p99"),
            pa.value_at_quantile(0.99) as f64,
            pb.value_at_quantile(0.99) as f64,
            &us,
        );
    }
    row(
        "overtook an earlier request",
        a.overtook_share * 100.0,
        b.overtook_share * 100.0,
        &|v| format!("{v:.1}%"),
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "errors: {} {}, {} {}; checks: {} and {} responses checked, {} mismatched, {} duplicated, {} lost",
        a.failed,
        labels[0],
        b.failed,
        labels[1],
        a.completed,
        b.completed,
        one.measured.errors[failure::MISMATCH] + two.measured.errors[failure::MISMATCH],
        a.duplicates + b.duplicates,
        one.measured.errors[failure::LOST] + two.measured.errors[failure::LOST]
    );
    for (label, outcome, s) in [(labels[0], one, &a), (labels[1], two, &b)] {
        if let Some(first) = s.fatal.as_ref().or(s.first_error.as_ref()) {
            let _ = writeln!(out, "first error ({label}): {first}");
        }
        for w in warnings(ctx, outcome) {
            let _ = writeln!(out, "warning ({label}): {w}");
        }
    }
    out
}

/// The JSON document of a comparison: each run under its key, and ratios.
pub fn compare_json(keys: [&str; 2], ctx: &Context, one: &Outcome, two: &Outcome) -> Value {
    let (a, b) = (Summary::of(one), Summary::of(two));
    let ratio = |x: f64, y: f64| if y > 0.0 { json!(x / y) } else { Value::Null };
    let mut v = json!({
        "ratios": {
            "requests_per_second": ratio(a.requests_per_second, b.requests_per_second),
            "p50_latency": ratio(one.measured.all.value_at_quantile(0.5) as f64, two.measured.all.value_at_quantile(0.5) as f64),
            "p99_latency": ratio(one.measured.all.value_at_quantile(0.99) as f64, two.measured.all.value_at_quantile(0.99) as f64),
        },
    });
    v[keys[0]] = json(ctx, one);
    v[keys[1]] = json(ctx, two);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::run::{histogram, Busy, Measured};
    use std::time::{Duration, SystemTime};

    fn outcome(latencies: &[u64], errors: [u64; 5]) -> Outcome {
        let mut m = Measured::empty(2);
        for (i, &l) in latencies.iter().enumerate() {
            m.all.record(l).unwrap();
            m.per_command[i % 2].record(l).unwrap();
            m.ok += 1;
            m.answered += 1;
            m.bytes += 1000;
        }
        m.answered += errors[..failure::LOST].iter().sum::<u64>();
        m.timeline = vec![histogram()];
        m.errors = errors;
        m.overtook = 1;
        m.overtaken_sum = 3;
        m.overtaken_max = 3;
        Outcome {
            measured: m,
            elapsed: Duration::from_secs(2),
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            busy: Busy {
                threads: vec![0.5],
                cpu_seconds: Some(0.001),
            },
            server_cpu_seconds: None,
        }
    }

    fn ctx() -> Context {
        Context {
            target: "embedded server".into(),
            shape: "1 connection".into(),
            workload: "mix echo:1,sleep(ms=1):1".into(),
            commands: vec!["echo".into(), "sleep(ms=1)".into()],
            rate: None,
            generator: "test".into(),
        }
    }

    #[test]
    fn shares_are_shares() {
        assert_eq!(share(0, 0), 0.0);
        assert_eq!(share(1, 4), 0.25);
        // Errors count in the denominator of the out-of-order share as they
        // may in its numerator: 9 answers, 1 error, every one overtook.
        let mut o = outcome(&[10; 9], [1, 0, 0, 0, 0]);
        o.measured.overtook = 10;
        let s = Summary::of(&o);
        assert_eq!(s.answered, 10);
        assert_eq!(s.overtook_share, 1.0);
    }

    #[test]
    fn accounting_of_errors() {
        let clean = Summary::of(&outcome(&[10, 20], [0; 5]));
        assert!(clean.clean());
        assert_eq!(clean.problem(), None);
        let mut o = outcome(&[10, 20], [3, 0, 0, 0, 0]);
        o.measured.first_error = Some("ecco: the server answered `unknown command: ecco`".into());
        let s = Summary::of(&o);
        assert!(!s.clean(), "an unexpected application error is unclean");
        assert_eq!(
            s.problem().unwrap(),
            "3 of 5 requests failed; the first: ecco: the server answered `unknown command: ecco`"
        );
        let mut o = outcome(&[10, 20], [0; 5]);
        o.measured.expected_errors = 1;
        let s = Summary::of(&o);
        assert!(s.clean(), "expected errors are correct answers");
        assert_eq!(s.expected_errors, 1);
        let nothing = Summary::of(&outcome(&[], [0; 5]));
        assert_eq!(
            nothing.problem().unwrap(),
            "no request was answered in the measured part of the run"
        );
        let mut o = outcome(&[10], [0; 5]);
        o.measured.fatal = Some("connection lost: reset".into());
        assert_eq!(Summary::of(&o).problem().unwrap(), "connection lost: reset");
    }

    #[test]
    fn text_report_has_every_section() {
        let mut o = outcome(&[10, 20, 30, 40], [1, 0, 0, 0, 0]);
        o.measured.first_error = Some("ecco: the server answered `unknown command: ecco`".into());
        let text = text(&ctx(), &o);
        assert!(text.starts_with(
            "wiremux load: embedded server\n  1 connection\n  mix echo:1,sleep(ms=1):1\n"
        ));
        assert!(
            text.contains("throughput    2 requests/s, 0.0 MB/s (4 correct responses in 2.00 s)"),
            "{text}"
        );
        assert!(text.contains("  all         "), "{text}");
        assert!(text.contains("  sleep(ms=1) "), "{text}");
        assert!(text.contains("out of order  20.0% of responses overtook an earlier request on their connection (by 3.0 on average, 3 at most)"), "{text}");
        assert!(text.contains("errors        1 application\n"), "{text}");
        assert!(
            text.contains("checks        5 responses checked: 0 mismatched, 0 duplicated, 0 lost"),
            "{text}"
        );
        assert!(
            text.contains("generator     1 thread(s), busiest 50% busy, 200.00 µs CPU per request"),
            "{text}"
        );
        assert!(
            text.contains("first error   ecco: the server answered `unknown command: ecco`"),
            "{text}"
        );
    }

    #[test]
    fn latency_columns_line_up_for_long_labels() {
        let mut c = ctx();
        c.commands[1] = "blob(size=1048576,other=argument)".into();
        let text = text(&c, &outcome(&[10, 20000, 30, 40], [0; 5]));
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("latency"))
            .take(4)
            .collect();
        let end_of_p50 = lines[0].find("p50").unwrap() + 3;
        for line in &lines[1..] {
            let cell = &line[..line
                .char_indices()
                .nth(end_of_p50)
                .map_or(line.len(), |(i, _)| i)];
            assert!(
                cell.ends_with(" µs") || cell.ends_with(" ms"),
                "p50 column of `{line}` in:\n{text}"
            );
        }
    }

    #[test]
    fn warnings_name_the_generator_when_it_limited_the_run() {
        let mut o = outcome(&[10, 20], [0; 5]);
        o.busy.threads = vec![0.2, 0.97];
        let w = warnings(&ctx(), &o);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with("the generator was busy 97% of the time"),
            "{w:?}"
        );
        let mut c = ctx();
        c.rate = Some(100.0);
        let mut o = outcome(&[10, 20], [0; 5]);
        o.measured.queued.record(1500).unwrap();
        o.measured.wire.record(50).unwrap();
        let w = warnings(&c, &o);
        assert!(
            w[0].starts_with("requests waited in the generator (p99 1500 µs) longer than on the wire (p99 50 µs)"),
            "{w:?}"
        );
        assert_eq!(w[1], "1 requests/s were answered of the 100 asked for");
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v = json(&ctx(), &outcome(&[10, 20, 30, 40], [0, 0, 0, 2, 1]));
        assert_eq!(v["responses"], 4);
        assert_eq!(v["answered"], 6);
        assert_eq!(v["requests_per_second"], 2.0);
        assert_eq!(v["latency_us"]["count"], 4);
        assert_eq!(v["latency_us"]["max"], 40);
        assert_eq!(v["latency_us_by_command"]["echo"]["count"], 2);
        assert_eq!(v["errors"]["mismatch"], 2);
        assert_eq!(v["checks"]["lost"], 1);
        assert_eq!(v["out_of_order"]["share"], 1.0 / 6.0);
        assert_eq!(v["clean"], false);
        assert_eq!(v["start_unix_ms"], 1_700_000_000_000u64);
        assert_eq!(v["generator"]["name"], "test");
        assert_eq!(v["histograms"]["highest"], 100_000_000);
        let all = histo::decode(v["histograms"]["all"].as_str().unwrap()).unwrap();
        assert_eq!(all.len(), 4);
        assert!(v["timeline"].is_array());
    }

    #[test]
    fn comparison_shows_both_runs_and_ratios() {
        let text = compare_text(
            "wiremux load --compare-in-order",
            ["out of order", "in order"],
            &ctx(),
            &outcome(&[10, 10, 10, 10], [0; 5]),
            &outcome(&[50, 50, 50, 50], [0; 5]),
        );
        assert!(
            text.contains("out of order       in order      ratio"),
            "{text}"
        );
        assert!(
            text.contains("latency p99                           10 µs          50 µs      0.20x"),
            "{text}"
        );
        let v = compare_json(
            ["out_of_order", "in_order"],
            &ctx(),
            &outcome(&[10], [0; 5]),
            &outcome(&[50], [0; 5]),
        );
        assert_eq!(v["ratios"]["p99_latency"], 0.2);
        assert_eq!(v["in_order"]["responses"], 1);
    }
}
