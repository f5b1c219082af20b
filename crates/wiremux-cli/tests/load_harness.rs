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
