//! `wiremux load` as a user runs it: short, bounded runs of the built
//! binary against its embedded server and against a `wiremux serve`
//! process. No assertion on speed: only on shape, counts and checks.

use std::process::{Command, Output, Stdio};

mod common;

use common::BIN;

fn load(args: &[&str]) -> Output {
    Command::new(BIN).arg("load").args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(out)).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

#[test]
fn a_short_run_prints_every_section_of_the_report() {
    let out = load(&[
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--inflight",
        "8",
        "--mix",
        "echo:9,sleep(ms=2):1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for section in [
        "wiremux load: embedded server",
        "throughput ",
        "latency ",
        "  all ",
        "  echo ",
        "  sleep(ms=2) ",
        "out of order ",
        "errors        none",
        "checks ",
    ] {
        assert!(text.contains(section), "missing `{section}` in:\n{text}");
    }
    assert!(
        text.contains("0 mismatched, 0 duplicated, 0 lost"),
        "{text}"
    );
}

#[test]
fn json_output_is_one_document_with_counts_that_add_up() {
    let out = load(&[
        "--requests",
        "3000",
        "--warmup",
        "0s",
        "--connections",
        "1",
        "--inflight",
        "16",
        "--mix",
        "echo:8,blob(size=70000):1,fail(message=boom):1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["responses"], 3000);
    assert_eq!(v["latency_us"]["count"], 3000);
    let by_command = &v["latency_us_by_command"];
    let counts: Vec<u64> = ["echo", "blob(size=70000)", "fail(message=boom)"]
        .iter()
        .map(|c| by_command[c]["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), 3000);
    assert_eq!(
        counts,
        [2400, 300, 300],
        "the mix is exact over each block of its total weight"
    );
    assert_eq!(v["checks"]["mismatched"], 0);
    assert_eq!(v["checks"]["lost"], 0);
    assert_eq!(v["checks"]["duplicated"], 0);
    assert_eq!(v["clean"], true);
    for key in ["requests_per_second", "megabytes_per_second", "seconds"] {
        assert!(v[key].as_f64().unwrap() > 0.0, "{key}");
    }
    for key in ["p50", "p90", "p99", "p99.9", "max"] {
        assert!(v["latency_us"][key].as_u64().unwrap() >= 1, "{key}");
    }
    assert!(v["out_of_order"]["share"].as_f64().unwrap() >= 0.0);
    // The per-second timeline counts every correct response, the expected
    // `fail` errors included.
    let per_second: u64 = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["responses"].as_u64().unwrap())
        .sum();
    assert_eq!(per_second, 3000);
}

#[test]
fn compare_in_order_runs_both_and_shows_ratios() {
    let out = load(&[
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--connections",
        "1",
        "--inflight",
        "16",
        "--mix",
        "echo:9,sleep(ms=20):1",
        "--compare-in-order",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("wiremux load --compare-in-order: embedded server"),
        "{text}"
    );
    assert!(
        text.contains("out of order       in order      ratio"),
        "{text}"
    );
    for row in [
        "requests/s",
        "latency p99",
        "echo p99",
        "sleep(ms=20) p99",
        "overtook an earlier request",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(row) && l.trim_end().ends_with('x')
                    || l.starts_with(row) && row.starts_with("overtook")),
            "row `{row}` in:\n{text}"
        );
    }
    // In order, no response may overtake an earlier one; out of order, the
    // echoes overtake the sleeps.
    let overtook = text.lines().find(|l| l.starts_with("overtook")).unwrap();
    let cells: Vec<&str> = overtook.split_whitespace().collect();
    assert_eq!(cells[cells.len() - 2], "0.0%", "{overtook}");
    assert_ne!(cells[cells.len() - 3], "0.0%", "{overtook}");
}

#[test]
fn compare_in_order_json_has_both_runs() {
    let out = load(&[
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--connections",
        "1",
        "--inflight",
        "4",
        "--compare-in-order",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert!(v["out_of_order"]["responses"].as_u64().unwrap() > 0);
    assert!(v["in_order"]["responses"].as_u64().unwrap() > 0);
    assert!(v["ratios"]["requests_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn open_loop_keeps_its_schedule() {
    let out = load(&[
        "--rate",
        "2000",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    let n = v["responses"].as_u64().unwrap();
    // 2000/s for one second: the schedule, not the server, sets the count.
    assert!((1900..=2001).contains(&n), "{n} responses");
    assert!(v["shape"]
        .as_str()
        .unwrap()
        .contains("open loop at 2000 requests/s"));
}

#[test]
fn report_file_holds_both_plots() {
    let path = std::env::temp_dir().join(format!("wiremux-load-{}.svg", std::process::id()));
    let out = load(&[
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--report",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(
        svg.starts_with("<svg ")
            && svg.contains("latency over time")
            && svg.contains("latency distribution")
    );
    let _ = std::fs::remove_file(&path);
    let out = load(&[
        "--duration",
        "100ms",
        "--warmup",
        "0s",
        "--report",
        "plot.png",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--report plot.png: the file name must end in .svg or .html"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn nothing_listening_is_a_clear_error() {
    let out = load(&["--connect", "127.0.0.1:1", "--duration", "1s"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        "wiremux: cannot connect to 127.0.0.1:1: Connection refused (os error 111)\n"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn bad_flags_are_refused_with_the_reason() {
    let out = load(&["--mix", "echo:x"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        "wiremux: mix: `echo:x`: weight `x` is not a whole number above 0\n"
    );
    let out = load(&["--duration", "10h"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`10h`: unknown unit `h`; use ms, s or m"),
        "{}",
        stderr(&out)
    );
    let out = load(&["--rate", "0", "--duration", "1s"]);
    assert_eq!(
        stderr(&out),
        "wiremux: --rate must be a number of requests per second above 0\n"
    );
    let out = load(&["--connect", "127.0.0.1:1", "--compare-in-order"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_server_that_goes_away_mid_run_is_reported_after_what_completed() {
    let mut serve = common::Serve::start(&["--listen", "127.0.0.1:0"]);
    let addr = serve.listening.clone();
    let load = Command::new(BIN)
        .args([
            "load",
            "--connect",
            &addr,
            "--duration",
            "20s",
            "--warmup",
            "0s",
            "--connections",
            "2",
            "--inflight",
            "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    serve.kill();
    let out = load.wait_with_output().unwrap();
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(
        text.contains("throughput "),
        "the report of what completed comes first:\n{text}"
    );
    assert!(text.contains("connection"), "{text}");
    assert!(
        stderr(&out).starts_with("wiremux: connection lost: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unexpected_error_makes_the_run_unclean_and_shows_the_server_message() {
    let out = load(&[
        "--requests",
        "200",
        "--warmup",
        "0s",
        "--connections",
        "1",
        "--inflight",
        "8",
        "--mix",
        "ecco:90,sleep(ms=5):10",
        "--json",
    ]);
    assert!(!out.status.success());
    let v = json(&out);
    assert_eq!(v["clean"], false);
    assert_eq!(
        v["first_error"],
        "ecco: the server answered `unknown command: ecco`"
    );
    assert_eq!(v["errors"]["application"], 180);
    assert_eq!(v["responses"], 20);
    assert_eq!(v["answered"], 200);
    let share = v["out_of_order"]["share"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&share), "share {share}");
    assert_eq!(
        stderr(&out),
        "wiremux: 180 of 200 requests failed; the first: ecco: the server answered `unknown command: ecco`\n"
    );
}

#[test]
fn expected_errors_are_counted_as_such_and_shares_stay_shares() {
    let out = load(&[
        "--requests",
        "1100",
        "--warmup",
        "0s",
        "--connections",
        "1",
        "--inflight",
        "16",
        "--mix",
        "echo:9,get(key=missing):1,sleep(ms=5):1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("(1100 correct responses, 100 of them the errors the mix expects in "),
        "{text}"
    );
    assert!(
        text.contains("errors        none (100 expected errors, counted as correct)"),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("out of order"))
        .unwrap();
    let percent: f64 = line
        .split_whitespace()
        .nth(3)
        .unwrap()
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!((0.0..=100.0).contains(&percent), "{line}");
}

#[test]
fn a_run_where_everything_failed_names_the_cause_not_the_warm_up() {
    let out = load(&[
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--connections",
        "1",
        "--mix",
        "sleep(msec=5):1",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("wiremux: "), "{err}");
    assert!(
        err.contains(
            "requests failed; the first: sleep(msec=5): the server answered `missing argument: ms`"
        ),
        "{err}"
    );
    assert!(!err.contains("warm-up"), "{err}");
}

#[test]
fn bad_durations_and_report_paths_are_refused_before_the_run() {
    let out = load(&["--duration", "0s"]);
    assert_eq!(stderr(&out), "wiremux: --duration must be longer than 0\n");
    assert!(stdout(&out).is_empty());
    // A 60 s run that must not start: the refusal comes first.
    let out = load(&["--duration", "60s", "--report", "/nonexistent-dir/plot.svg"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with("wiremux: --report /nonexistent-dir/plot.svg: cannot write it: "),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());
    let out = load(&["--duration", "60s", "--report", "plot.png"]);
    assert_eq!(
        stderr(&out),
        "wiremux: --report plot.png: the file name must end in .svg or .html\n"
    );
}

#[test]
fn success_says_where_the_plots_went_and_the_timeline_has_no_extra_second() {
    let path = std::env::temp_dir().join(format!("wiremux-load-t-{}.html", std::process::id()));
    let out = load(&[
        "--duration",
        "2s",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--inflight",
        "8",
        "--mix",
        "echo:9,sleep(ms=20):1",
        "--json",
        "--report",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!("wiremux: wrote the plots to {}\n", path.display())
    );
    let page = std::fs::read_to_string(&path).unwrap();
    assert!(page.starts_with("<!doctype html>"));
    let _ = std::fs::remove_file(&path);
    // Requests count in the second they were started in: a 2 s run has two
    // seconds, not a third holding only the last stragglers.
    let v = json(&out);
    assert_eq!(
        v["timeline"].as_array().unwrap().len(),
        2,
        "{}",
        v["timeline"]
    );
}

/// An independent reference: `connections` threads, each with a blocking
/// socket, sending one 32-byte echo at a time on its own fixed schedule
/// (rate / connections per second) and timing each from its scheduled
/// time. Returns the sorted latencies in microseconds.
fn reference_client(
    addr: &str,
    rate: f64,
    connections: usize,
    run: std::time::Duration,
) -> Vec<u64> {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                s.set_nodelay(true).unwrap();
                let period = Duration::from_secs_f64(connections as f64 / rate);
                let start = Instant::now() + period.mul_f64(c as f64 / connections as f64);
                let mut latencies = Vec::new();
                let mut k = 0u32;
                loop {
                    let due = start + period * k;
                    if due > start + run {
                        break latencies;
                    }
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let mut frames = bytes::BytesMut::new();
                    wiremux_proto::builder::CommandBuilder::new("echo")
                        .data(vec![b'x'; 32])
                        .encode(1, 32768, &mut frames)
                        .unwrap();
                    s.write_all(&frames).unwrap();
                    let mut head = [0u8; 6];
                    s.read_exact(&mut head).unwrap();
                    let len = head[0] as usize | (head[1] as usize) << 8 | (head[2] as usize) << 16;
                    let mut body = vec![0; len];
                    s.read_exact(&mut body).unwrap();
                    assert_eq!(body, [b'x'; 32]);
                    latencies.push(due.elapsed().as_micros() as u64);
                    k += 1;
                }
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    all
}

/// The open loop measures what an independent client measures against the
/// same server at the same rate, in the same run: for 1 and 4 connections
/// the generator's p50 is within 5x of the reference client's p50 (taken
/// as at least 100 µs). (Before the generator sent on its own schedule,
/// 4 connections at 1000/s showed 35x.)
#[test]
fn open_loop_latency_agrees_with_an_independent_client() {
    let serve = common::Serve::start(&["--listen", "127.0.0.1:0"]);
    for connections in [1usize, 4] {
        let run = std::time::Duration::from_secs(2);
        let generator = Command::new(BIN)
            .args([
                "load",
                "--connect",
                &serve.listening,
                "--rate",
                "1000",
                "--mix",
                "echo",
                "--connections",
                &connections.to_string(),
                "--threads",
                "1",
                "--duration",
                "2s",
                "--warmup",
                "200ms",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let reference = reference_client(&serve.listening, 1000.0, connections, run);
        let out = generator.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let v = json(&out);
        let generated_p50 = v["latency_us"]["p50"].as_u64().unwrap();
        let reference_p50 = reference[reference.len() / 2];
        assert!(
            generated_p50 <= 5 * reference_p50.max(100),
            "{connections} connection(s): generator p50 {generated_p50} µs, reference p50 {reference_p50} µs"
        );
        // The split adds up: queued plus wire is the latency reported.
        assert!(v["queued_us"]["count"] == v["latency_us"]["count"]);
        eprintln!(
            "{connections} connection(s): generator p50 {generated_p50} µs (queued p50 {} µs), reference p50 {reference_p50} µs",
            v["queued_us"]["p50"]
        );
    }
}

/// Splits a base64 V2 histogram in two: each recorded value's count goes
/// half to one side, the rest to the other.
fn split_histogram(text: &str) -> (String, String) {
    use base64::Engine as _;
    use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
    use hdrhistogram::Histogram;
    let b64 = base64::engine::general_purpose::STANDARD;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut b64.decode(text).unwrap().as_slice())
        .unwrap();
    let mut a = Histogram::<u64>::new_from(&h);
    let mut b = Histogram::<u64>::new_from(&h);
    for (i, v) in h.iter_recorded().enumerate() {
        let n = v.count_at_value();
        let to_a = if i % 2 == 0 { n.div_ceil(2) } else { n / 2 };
        if to_a > 0 {
            a.record_n(v.value_iterated_to(), to_a).unwrap();
        }
        if n - to_a > 0 {
            b.record_n(v.value_iterated_to(), n - to_a).unwrap();
        }
    }
    let encode = |h: &Histogram<u64>| {
        let mut out = Vec::new();
        V2Serializer::new().serialize(h, &mut out).unwrap();
        b64.encode(out)
    };
    (encode(&a), encode(&b))
}

#[test]
fn merging_a_run_split_in_two_gives_back_its_percentiles() {
    let out = load(&[
        "--requests",
        "4000",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--inflight",
        "8",
        "--mix",
        "echo:9,sleep(ms=2):1",
        "--name",
        "one",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let whole = json(&out);
    let (mut a, mut b) = (whole.clone(), whole.clone());
    let mut split = |path: &[&str]| {
        let mut src = &whole["histograms"];
        for p in path {
            src = &src[*p];
        }
        let (x, y) = split_histogram(src.as_str().unwrap());
        let (mut da, mut db) = (&mut a["histograms"], &mut b["histograms"]);
        for p in path {
            da = &mut da[*p];
            db = &mut db[*p];
        }
        *da = x.into();
        *db = y.into();
    };
    for path in [
        &["all"][..],
        &["queued"],
        &["wire"],
        &["by_command", "echo"],
        &["by_command", "sleep(ms=2)"],
    ] {
        split(path);
    }
    for i in 0..whole["histograms"]["per_second"].as_array().unwrap().len() {
        let (x, y) = split_histogram(whole["histograms"]["per_second"][i].as_str().unwrap());
        a["histograms"]["per_second"][i] = x.into();
        b["histograms"]["per_second"][i] = y.into();
    }
    // Counts split the same way, and the second generator is "two".
    let half = |v: &serde_json::Value| v.as_u64().unwrap() / 2;
    for key in ["responses", "answered", "bytes"] {
        a[key] = (whole[key].as_u64().unwrap() - half(&whole[key])).into();
        b[key] = half(&whole[key]).into();
    }
    b["generator"]["name"] = "two".into();
    let dir = std::env::temp_dir();
    let (pa, pb) = (
        dir.join(format!("wiremux-merge-a-{}.json", std::process::id())),
        dir.join(format!("wiremux-merge-b-{}.json", std::process::id())),
    );
    std::fs::write(&pa, a.to_string()).unwrap();
    std::fs::write(&pb, b.to_string()).unwrap();
    let out = load(&[
        "--merge",
        pa.to_str().unwrap(),
        pb.to_str().unwrap(),
        "--json",
    ]);
    let _ = (std::fs::remove_file(&pa), std::fs::remove_file(&pb));
    assert!(out.status.success(), "{}", stderr(&out));
    let merged = json(&out);
    assert_eq!(merged["responses"], whole["responses"]);
    assert_eq!(merged["latency_us"], whole["latency_us"]);
    assert_eq!(
        merged["latency_us_by_command"],
        whole["latency_us_by_command"]
    );
    assert_eq!(merged["wire_us"], whole["wire_us"]);
    assert_eq!(merged["timeline"], whole["timeline"]);
    assert_eq!(merged["generator"]["name"], "one+two");
    // The text report of the merge says what it merged.
    let out = load(&["--merge", "/nonexistent.json"]);
    assert!(
        stderr(&out).starts_with("wiremux: --merge /nonexistent.json: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn stepped_open_loop_reports_each_step_and_names_the_knee() {
    let out = load(&[
        "--rate",
        "200..600",
        "--steps",
        "3",
        "--step-duration",
        "500ms",
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--mix",
        "echo",
        "--slo",
        "p99=10s",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["rates"], serde_json::json!([200.0, 400.0, 600.0]));
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3);
    for (step, rate) in steps.iter().zip([200u64, 400, 600]) {
        assert_eq!(step["rate"], rate as f64);
        // Half a second of each rate: the schedule sets the count.
        let n = step["run"]["responses"].as_u64().unwrap();
        assert!(n.abs_diff(rate / 2) <= 2, "{n} responses at {rate}/s");
        assert_eq!(step["run"]["clean"], true);
    }
    // An objective of 10 s is met by every step: the knee is the last.
    assert_eq!(v["knee"], 600.0);
    let out = load(&[
        "--rate",
        "200..400",
        "--steps",
        "2",
        "--step-duration",
        "300ms",
        "--warmup",
        "0s",
        "--mix",
        "echo",
        "--slo",
        "p99=1us",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("objective p99=1 µs"), "{text}");
    assert!(text.contains("missed: p99 "), "{text}");
    assert!(
        text.contains("knee          no step met the objective"),
        "{text}"
    );
    let out = load(&["--rate", "400..200"]);
    assert_eq!(
        stderr(&out),
        "wiremux: --rate 400..200: the last rate must be above the first\n"
    );
}

#[test]
fn generator_threads_share_the_connections_and_report_how_busy_they_were() {
    let mut serve = common::Serve::start(&["--listen", "127.0.0.1:0"]);
    let out = load(&[
        "--connect",
        &serve.listening,
        "--requests",
        "3000",
        "--warmup",
        "0s",
        "--connections",
        "3",
        "--threads",
        "2",
        "--json",
    ]);
    serve.kill();
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["responses"], 3000);
    assert_eq!(v["generator"]["threads"], 2);
    let busy = v["generator"]["busy"].as_array().unwrap();
    assert_eq!(busy.len(), 2);
    for b in busy {
        assert!((0.0..=1.0).contains(&b.as_f64().unwrap()), "{b}");
    }
    assert!(v["generator"]["cpu_us_per_request"].as_f64().unwrap() > 0.0);
}

#[test]
fn rtt_puts_a_relay_in_the_way() {
    let out = load(&[
        "--rtt",
        "40ms",
        "--requests",
        "20",
        "--warmup",
        "0s",
        "--connections",
        "1",
        "--inflight",
        "1",
        "--mix",
        "echo",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["responses"], 20);
    // (The relay's delays are tested with paused time in its unit test.)
    assert_eq!(v["clean"], true);
    assert!(v["shape"]
        .as_str()
        .unwrap()
        .ends_with("through a relay adding 40ms to each round trip"));
}

#[test]
fn http_loads_the_api_one_command_or_a_multirequest_per_post() {
    let mut serve = common::Serve::start(&["--http", "127.0.0.1:0"]);
    let url = serve.listening.clone();
    for inflight in ["1", "8"] {
        let out = load(&[
            "--http",
            &url,
            "--requests",
            "400",
            "--warmup",
            "0s",
            "--connections",
            "2",
            "--inflight",
            inflight,
            "--mix",
            "echo:8,get(key=nope):1,fail(message=boom):1",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "--inflight {inflight}: {}",
            stderr(&out)
        );
        let v = json(&out);
        assert_eq!(v["responses"], 400, "--inflight {inflight}");
        assert_eq!(v["expected_errors"], 80, "--inflight {inflight}");
        assert_eq!(v["clean"], true);
        assert!(v["target"]
            .as_str()
            .unwrap()
            .ends_with("/api/exp-http-v2-0001/ (HTTP)"));
    }
    let out = load(&["--http", &url, "--requests", "10", "--mix", "ecco"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        "wiremux: 10 of 10 requests failed; the first: ecco: the server answered `unknown command: ecco`\n"
    );
    serve.kill();
}

#[test]
fn chains_are_pipelined_checked_and_compared_with_round_trips() {
    let out = load(&[
        "--requests",
        "100",
        "--warmup",
        "0s",
        "--connections",
        "1",
        "--inflight",
        "4",
        "--mix",
        "chain(len=8):1,echo:1",
        "--compare-round-trips",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v = json(&out);
    for key in ["pipelined", "link_by_link"] {
        assert_eq!(v[key]["clean"], true, "{key}");
        assert_eq!(v[key]["responses"], 100, "{key}");
        assert_eq!(
            v[key]["latency_us_by_command"]["chain(len=8)"]["count"], 50,
            "{key}"
        );
    }
    assert!(v["ratios"]["p50_latency"].as_f64().unwrap() > 0.0);
    let out = load(&["--mix", "echo", "--compare-round-trips", "--duration", "1s"]);
    assert_eq!(
        stderr(&out),
        "wiremux: --compare-round-trips needs a chain in the mix, e.g. --mix 'chain(len=8)'\n"
    );
}
