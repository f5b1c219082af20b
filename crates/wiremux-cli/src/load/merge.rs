//! `wiremux load --merge FILE...`: one report from the `--json` documents
//! of several generators that loaded one server at the same time.
//!
//! Counts are added; latencies come from the sum of the generators' HDR
//! histograms, never from averaged percentiles; the per-second timelines
//! are aligned on each document's absolute start time; the measured time
//! runs from the first generator's start to the last one's end.

use super::histo;
use super::report::Context;
use super::run::{
    failure, Busy, Measured, Outcome, ERROR_KINDS, HISTOGRAM_HIGH, HISTOGRAM_LOW, HISTOGRAM_SIGFIG,
};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

/// Reads and merges the documents.
pub fn merge(files: &[PathBuf]) -> Result<(Context, Outcome), String> {
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--merge {}: {e}", path.display()))?;
        let doc: Value = serde_json::from_str(&text)
            .map_err(|e| format!("--merge {}: not a JSON document: {e}", path.display()))?;
        check(&doc).map_err(|e| format!("--merge {}: {e}", path.display()))?;
        docs.push((path, doc));
    }
    let start_ms = |d: &Value| d["start_unix_ms"].as_u64().unwrap_or(0);
    let first = docs.iter().map(|(_, d)| start_ms(d)).min().unwrap_or(0);
    let end = docs
        .iter()
        .map(|(_, d)| start_ms(d) as f64 + d["seconds"].as_f64().unwrap_or(0.0) * 1000.0)
        .fold(0.0, f64::max);
    let mut commands: Vec<String> = Vec::new();
    for (_, d) in &docs {
        for key in d["histograms"]["by_command"]
            .as_object()
            .into_iter()
            .flatten()
        {
            if !commands.contains(key.0) {
                commands.push(key.0.clone());
            }
        }
    }
    let mut m = Measured::empty(commands.len());
    let mut busy = Busy {
        threads: Vec::new(),
        cpu_seconds: Some(0.0),
    };
    let mut names = Vec::new();
    for (path, d) in &docs {
        let fail = |e: String| format!("--merge {}: {e}", path.display());
        let h = &d["histograms"];
        let one = |v: &Value| histo::decode(v.as_str().unwrap_or("")).map_err(fail);
        let mut part = Measured::empty(commands.len());
        part.all = one(&h["all"])?;
        part.queued = one(&h["queued"])?;
        part.wire = one(&h["wire"])?;
        for (label, text) in h["by_command"].as_object().into_iter().flatten() {
            let i = commands.iter().position(|c| c == label).expect("collected");
            part.per_command[i] = one(text)?;
        }
        for text in h["per_second"].as_array().into_iter().flatten() {
            part.timeline.push(one(text)?);
        }
        let count = |v: &Value| v.as_u64().unwrap_or(0);
        part.ok = count(&d["responses"]);
        part.expected_errors = count(&d["expected_errors"]);
        part.answered = count(&d["answered"]);
        part.bytes = count(&d["bytes"]);
        for (i, kind) in ERROR_KINDS.iter().enumerate() {
            part.errors[i] = count(&d["errors"][kind]);
        }
        part.duplicates = count(&d["checks"]["duplicated"]);
        part.overtook = count(&d["out_of_order"]["overtook"]);
        part.overtaken_sum = count(&d["out_of_order"]["overtaken_sum"]);
        part.overtaken_max = count(&d["out_of_order"]["max_overtaken"]);
        part.first_error = d["first_error"].as_str().map(|e| {
            let name = d["generator"]["name"].as_str().unwrap_or("?");
            format!("{e} (generator {name})")
        });
        if part.errors[failure::CONNECTION] + part.errors[failure::PROTOCOL] > 0 {
            part.fatal = part.first_error.take();
        }
        let offset = ((start_ms(d) - first) as f64 / 1000.0).round() as usize;
        m.merge_at(part, offset);
        let g = &d["generator"];
        busy.threads.extend(
            g["busy"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64),
        );
        busy.cpu_seconds = busy
            .cpu_seconds
            .zip(g["cpu_seconds"].as_f64())
            .map(|(a, b)| a + b);
        names.push(g["name"].as_str().unwrap_or("?").to_string());
    }
    let same = |key: &str| {
        let values: Vec<&str> = docs.iter().filter_map(|(_, d)| d[key].as_str()).collect();
        match values.first() {
            Some(v) if values.iter().all(|x| x == v) => v.to_string(),
            _ => format!("{} different {key}s", docs.len()),
        }
    };
    let rates: Option<f64> = docs
        .iter()
        .map(|(_, d)| d["rate"].as_f64())
        .sum::<Option<f64>>();
    let shapes = same("shape");
    let ctx = Context {
        target: same("target"),
        shape: format!(
            "{} generators merged ({}); each: {shapes}",
            docs.len(),
            names.join(", ")
        ),
        workload: same("workload"),
        commands,
        rate: rates,
        generator: names.join("+"),
    };
    let outcome = Outcome {
        measured: m,
        elapsed: Duration::from_secs_f64(((end - first as f64) / 1000.0).max(1e-3)),
        started: UNIX_EPOCH + Duration::from_millis(first),
        busy,
        server_cpu_seconds: None,
    };
    Ok((ctx, outcome))
}

/// A document `--merge` can use: one run's, with histograms of our bounds.
fn check(doc: &Value) -> Result<(), String> {
    if doc.get("in_order").is_some() || doc.get("steps").is_some() {
        return Err("a comparison or stepped document; merge single runs".into());
    }
    let h = &doc["histograms"];
    if h["encoding"] != histo::ENCODING {
        return Err("no histograms (made by an older wiremux load?)".into());
    }
    if h["lowest"] != HISTOGRAM_LOW
        || h["highest"] != HISTOGRAM_HIGH
        || h["significant_digits"] != HISTOGRAM_SIGFIG
    {
        return Err(format!(
            "histogram bounds {}..{} ({} digits), expected {HISTOGRAM_LOW}..{HISTOGRAM_HIGH} ({HISTOGRAM_SIGFIG})",
            h["lowest"], h["highest"], h["significant_digits"]
        ));
    }
    if doc["start_unix_ms"].as_u64().is_none() {
        return Err("no start_unix_ms".into());
    }
    Ok(())
}
