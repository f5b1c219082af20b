//! The report of a run: text for people, JSON for scripts, and the side by
//! side comparison of an out-of-order and an in-order run.

use super::run::{failure, Outcome, ERROR_KINDS};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use std::fmt::Write;

/// What the report needs besides the measurements.
pub struct Context {
    /// What was loaded: "embedded server (…)" or the address.
    pub target: String,
    /// Connections × in flight, loop kind, duration.
    pub shape: String,
    /// The mix and payload.
    pub workload: String,
    /// The mix entries' labels, in order.
    pub commands: Vec<String>,
}

/// The numbers of one run, derived once for every kind of output.
pub struct Summary {
    pub ok: u64,
    pub completed: u64,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub megabytes_per_second: f64,
    pub errors: Vec<(&'static str, u64)>,
    pub duplicates: u64,
    pub overtook_share: f64,
    pub overtaken_mean: f64,
    pub overtaken_max: u64,
    pub fatal: Option<String>,
}

impl Summary {
    pub fn of(outcome: &Outcome) -> Summary {
        let m = &outcome.measured;
        let seconds = outcome.elapsed.as_secs_f64().max(1e-9);
        let measured = m.all.len().max(1);
        Summary {
            ok: m.ok,
            completed: m.completed(),
            seconds,
            requests_per_second: m.ok as f64 / seconds,
            megabytes_per_second: m.bytes as f64 / seconds / 1e6,
            errors: ERROR_KINDS.iter().copied().zip(m.errors).collect(),
            duplicates: m.duplicates,
            overtook_share: m.overtook as f64 / measured as f64,
            overtaken_mean: if m.overtook == 0 {
                0.0
            } else {
                m.overtaken_sum as f64 / m.overtook as f64
            },
            overtaken_max: m.overtaken_max,
            fatal: m.fatal.clone(),
        }
    }

    /// Whether every response was right and none went missing.
    pub fn clean(&self) -> bool {
        self.duplicates == 0
            && self
                .errors
                .iter()
                .all(|(kind, n)| *n == 0 || *kind == "application")
    }
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

fn micros(us: u64) -> String {
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

/// The text report.
pub fn text(ctx: &Context, outcome: &Outcome) -> String {
    let s = Summary::of(outcome);
    let m = &outcome.measured;
    let mut out = heading("wiremux load", ctx);
    let _ = writeln!(
        out,
        "throughput    {:.0} requests/s, {:.1} MB/s ({} correct responses in {:.2} s)",
        s.requests_per_second, s.megabytes_per_second, s.ok, s.seconds
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "latency       {:>10} {:>10} {:>10} {:>10} {:>10}",
        "p50", "p90", "p99", "p99.9", "max"
    );
    let mut rows = vec![("all".to_string(), &m.all)];
    if ctx.commands.len() > 1 {
        rows.extend(ctx.commands.iter().cloned().zip(&m.per_command));
    }
    for (label, h) in rows {
        if h.is_empty() {
            let _ = writeln!(out, "  {label:<12}  (no responses)");
            continue;
        }
        let cells: Vec<String> = latency_row(h)
            .into_iter()
            .map(|v| format!("{:>10}", micros(v)))
            .collect();
        let _ = writeln!(
            out,
            "  {label:<12}{}  ({} responses)",
            cells.join(" "),
            h.len()
        );
    }
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
    let _ = writeln!(
        out,
        "errors        {}",
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
    if let Some(fatal) = &s.fatal {
        let _ = writeln!(out, "first error   {fatal}");
    }
    out
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
    json!({
        "target": ctx.target,
        "shape": ctx.shape,
        "workload": ctx.workload,
        "seconds": s.seconds,
        "responses": s.ok,
        "requests_per_second": s.requests_per_second,
        "megabytes_per_second": s.megabytes_per_second,
        "latency_us": histogram_json(&m.all),
        "latency_us_by_command": per_command,
        "errors": errors,
        "checks": { "completed": s.completed, "mismatched": m.errors[failure::MISMATCH], "duplicated": s.duplicates, "lost": m.errors[failure::LOST] },
        "out_of_order": { "share": s.overtook_share, "mean_overtaken": s.overtaken_mean, "max_overtaken": s.overtaken_max },
        "timeline": m.timeline.iter().enumerate().map(|(second, h)| json!({
            "second": second, "responses": h.len(),
            "p50_us": h.value_at_quantile(0.5), "p99_us": h.value_at_quantile(0.99), "max_us": h.max(),
        })).collect::<Vec<_>>(),
        "first_error": s.fatal,
        "clean": s.clean(),
    })
}

/// The two runs of `--compare-in-order`, side by side, with ratios.
pub fn compare_text(ctx: &Context, ooo: &Outcome, in_order: &Outcome) -> String {
    let (a, b) = (Summary::of(ooo), Summary::of(in_order));
    let mut out = heading("wiremux load --compare-in-order", ctx);
    let _ = writeln!(
        out,
        "{:<28} {:>14} {:>14} {:>10}",
        "", "out of order", "in order", "ratio"
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
    let (ha, hb) = (&ooo.measured.all, &in_order.measured.all);
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
        let (pa, pb) = (
            &ooo.measured.per_command[i],
            &in_order.measured.per_command[i],
        );
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
        "errors: {} out of order, {} in order; checks: {} and {} responses checked, {} mismatched, {} duplicated, {} lost",
        a.errors.iter().map(|e| e.1).sum::<u64>(),
        b.errors.iter().map(|e| e.1).sum::<u64>(),
        a.completed,
        b.completed,
        ooo.measured.errors[failure::MISMATCH] + in_order.measured.errors[failure::MISMATCH],
        a.duplicates + b.duplicates,
        ooo.measured.errors[failure::LOST] + in_order.measured.errors[failure::LOST]
    );
    out
}

/// The JSON document of `--compare-in-order`.
pub fn compare_json(ctx: &Context, ooo: &Outcome, in_order: &Outcome) -> Value {
    let (a, b) = (Summary::of(ooo), Summary::of(in_order));
    let ratio = |x: f64, y: f64| if y > 0.0 { json!(x / y) } else { Value::Null };
    json!({
        "out_of_order": json(ctx, ooo),
        "in_order": json(ctx, in_order),
        "ratios": {
            "requests_per_second": ratio(a.requests_per_second, b.requests_per_second),
            "p99_latency": ratio(ooo.measured.all.value_at_quantile(0.99) as f64, in_order.measured.all.value_at_quantile(0.99) as f64),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::run::histogram;
    use std::time::Duration;

    fn outcome(latencies: &[u64], errors: [u64; 5]) -> Outcome {
        let mut m = super::super::run::Measured::empty(2);
        for (i, &l) in latencies.iter().enumerate() {
            m.all.record(l).unwrap();
            m.per_command[i % 2].record(l).unwrap();
            m.ok += 1;
            m.bytes += 1000;
        }
        m.timeline = vec![histogram()];
        m.errors = errors;
        m.overtook = 1;
        m.overtaken_sum = 3;
        m.overtaken_max = 3;
        Outcome {
            measured: m,
            elapsed: Duration::from_secs(2),
        }
    }

    fn ctx() -> Context {
        Context {
            target: "embedded server".into(),
            shape: "1 connection".into(),
            workload: "mix echo:1,sleep(ms=1):1".into(),
            commands: vec!["echo".into(), "sleep(ms=1)".into()],
        }
    }

    #[test]
    fn text_report_has_every_section() {
        let text = text(&ctx(), &outcome(&[10, 20, 30, 40], [1, 0, 0, 0, 0]));
        assert!(text.starts_with(
            "wiremux load: embedded server\n  1 connection\n  mix echo:1,sleep(ms=1):1\n"
        ));
        assert!(
            text.contains("throughput    2 requests/s, 0.0 MB/s (4 correct responses in 2.00 s)"),
            "{text}"
        );
        assert!(text.contains("  all         "), "{text}");
        assert!(text.contains("  sleep(ms=1) "), "{text}");
        assert!(text.contains("out of order  25.0% of responses overtook an earlier request on their connection (by 3.0 on average, 3 at most)"), "{text}");
        assert!(text.contains("errors        1 application\n"), "{text}");
        assert!(
            text.contains("checks        5 responses checked: 0 mismatched, 0 duplicated, 0 lost"),
            "{text}"
        );
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v = json(&ctx(), &outcome(&[10, 20, 30, 40], [0, 0, 0, 2, 1]));
        assert_eq!(v["responses"], 4);
        assert_eq!(v["requests_per_second"], 2.0);
        assert_eq!(v["latency_us"]["count"], 4);
        assert_eq!(v["latency_us"]["max"], 40);
        assert_eq!(v["latency_us_by_command"]["echo"]["count"], 2);
        assert_eq!(v["errors"]["mismatch"], 2);
        assert_eq!(v["checks"]["lost"], 1);
        assert_eq!(v["out_of_order"]["share"], 0.25);
        assert_eq!(v["clean"], false);
        assert!(v["timeline"].is_array());
    }

    #[test]
    fn comparison_shows_both_runs_and_ratios() {
        let text = compare_text(
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
        let v = compare_json(&ctx(), &outcome(&[10], [0; 5]), &outcome(&[50], [0; 5]));
        assert_eq!(v["ratios"]["p99_latency"], 0.2);
        assert_eq!(v["in_order"]["responses"], 1);
    }
}
