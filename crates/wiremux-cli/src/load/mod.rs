//! `wiremux load`: the load-test harness.
//!
//! With no target it starts the demo server in this process and loads it:
//! the server gets a tokio runtime of one worker thread and the load
//! generator another, so on a two-core machine each has a core and the
//! figures are the server's, not the scheduler's. `--compare-in-order`
//! runs the same workload against the server as it is and with responses
//! forced into request order, and shows both with the ratios.

mod conn;
mod histo;
mod http;
mod merge;
mod mix;
mod plot;
mod relay;
mod report;
mod requests;
mod run;
mod steps;

use crate::CliResult;
use indicatif::{ProgressBar, ProgressStyle};
use mix::Mix;
use report::{Context, Summary};
use run::{Live, Outcome, Plan, Target};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiremux_engine::{demo, Config, Server};

/// Arguments of `wiremux load`.
#[derive(clap::Args)]
pub struct Args {
    /// Load the server at this TCP address (default: an embedded server).
    #[arg(long, value_name = "ADDR")]
    connect: Option<String>,
    /// Speak TLS to the --connect address (through a local relay thread;
    /// see docs/DEPLOY.md), trusting --ca or, with --insecure, anything.
    #[arg(long, requires = "connect")]
    tls: bool,
    /// PEM file of the certificate(s) to trust for --tls.
    #[arg(long, value_name = "PEM", requires = "connect")]
    ca: Option<PathBuf>,
    /// Accept any server certificate (test servers only).
    #[arg(long, requires = "connect", conflicts_with = "ca")]
    insecure: bool,
    /// Load the HTTP API at this address (`host:port` or a URL): one
    /// command per POST with `--inflight 1`, else W commands per
    /// `multirequest` POST; closed loop only.
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["connect", "unix", "compare_in_order", "rate", "rtt", "compare_round_trips"])]
    http: Option<String>,
    /// Load the server at this Unix socket.
    #[arg(long, value_name = "PATH", conflicts_with = "connect")]
    unix: Option<PathBuf>,
    /// Connections to open.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10000))]
    connections: u64,
    /// Requests in flight per connection (the window of the closed loop,
    /// the cap of the open loop).
    #[arg(long, value_name = "W", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=32768))]
    inflight: u64,
    /// How long to measure, e.g. 10s, 500ms, 2m (default 10s unless
    /// --requests is given).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many measured requests.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Load before measuring, not counted.
    #[arg(long, value_name = "TIME", default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Open loop: this many requests per second over all connections, on a
    /// fixed schedule (`20000`, `20k`, `1.5M`); latency counts from each
    /// request's scheduled time.
    #[arg(long, value_name = "R")]
    rate: Option<String>,
    /// The workload: `name(arg=value,...):weight`, comma separated.
    #[arg(long, value_name = "SPEC", default_value = "echo:90,sleep(ms=5):10")]
    mix: String,
    /// Bytes of data sent with each echo.
    #[arg(long, value_name = "BYTES", default_value_t = 32)]
    payload: usize,
    /// Generator threads (default: 1 with the embedded server, else one
    /// per core); connections are spread over them.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// The generator's name in the JSON document (default: the host name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Print one JSON document instead of the text report.
    #[arg(long)]
    json: bool,
    /// Write latency plots to FILE.svg or FILE.html.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Run twice against the embedded server, out of order and in order,
    /// and compare.
    #[arg(long, conflicts_with_all = ["connect", "unix"])]
    compare_in_order: bool,
    /// Stepped open loop (with `--rate FROM..TO`): how many rates.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=100))]
    steps: u64,
    /// Stepped open loop: how long each rate is measured.
    #[arg(long, value_name = "TIME", default_value = "5s", value_parser = parse_duration)]
    step_duration: Duration,
    /// Stepped open loop: the latency objective, e.g. `p99=2ms` or
    /// `p50=500us,p99.9=10ms`; the report names the highest rate that
    /// meets it.
    #[arg(long, value_name = "SPEC", value_parser = steps::parse_slo)]
    slo: Option<steps::Slo>,
    /// Reach the target through an in-process relay that delays each
    /// direction by half of this round trip.
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    rtt: Option<Duration>,
    /// Run twice: chains pipelined (`@use`, all links at once), then link
    /// by link (each after the previous answer), and compare.
    #[arg(long, conflicts_with = "compare_in_order")]
    compare_round_trips: bool,
    /// Do not load anything: merge the `--json` documents of generators
    /// that ran at the same time into one report.
    #[arg(long, value_name = "FILE", num_args = 1.., conflicts_with_all = ["connect", "unix", "compare_in_order", "rate", "requests", "duration"])]
    merge: Vec<PathBuf>,
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a plain number of seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&t[..i], &t[i..]),
        None => (t, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 10s, 500ms or 2m"))?;
    let seconds = match unit {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}`; use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("`{text}` is not a duration of zero or more"))
}

/// Parses a rate: `20000`, `20k`, `1.5M`.
fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let (number, scale) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        _ => (t, 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .map(|v| v * scale)
        .filter(|r| *r > 0.0 && r.is_finite())
        .ok_or_else(|| "--rate must be a number of requests per second above 0".to_string())
}

/// The plot file of `--report`, checked and created before the run.
struct ReportFile {
    path: PathBuf,
    html: bool,
}

impl ReportFile {
    fn prepare(path: &Path) -> Result<ReportFile, String> {
        let html = match path.extension().and_then(|e| e.to_str()) {
            Some("svg") => false,
            Some("html" | "htm") => true,
            _ => {
                return Err(format!(
                    "--report {}: the file name must end in .svg or .html",
                    path.display()
                ))
            }
        };
        std::fs::File::create(path)
            .map_err(|e| format!("--report {}: cannot write it: {e}", path.display()))?;
        Ok(ReportFile {
            path: path.to_path_buf(),
            html,
        })
    }
}

pub fn run(args: Args) -> CliResult {
    let mix = Mix::parse(&args.mix)?;
    let rate = match args.rate.as_deref() {
        None => Rate::Closed,
        Some(text) => match text.split_once("..") {
            Some((from, to)) => {
                let (from, to) = (parse_rate(from)?, parse_rate(to)?);
                if to <= from {
                    return Err(format!(
                        "--rate {text}: the last rate must be above the first"
                    ));
                }
                Rate::Steps {
                    from,
                    to,
                    steps: args.steps as usize,
                }
            }
            None => Rate::Fixed(parse_rate(text)?),
        },
    };
    if matches!(rate, Rate::Steps { .. })
        && (args.report.is_some() || args.compare_in_order || args.compare_round_trips)
    {
        return Err(
            "a stepped --rate FROM..TO cannot be combined with --report or a comparison".into(),
        );
    }
    if args.duration == Some(Duration::ZERO) {
        return Err("--duration must be longer than 0".into());
    }
    let duration = match (args.duration, args.requests) {
        (None, None) => Some(Duration::from_secs(10)),
        (d, _) => d,
    };
    let links = mix.max_chain_len().max(1) as u64;
    if args.inflight * links > 32768 {
        return Err(format!(
            "--inflight {} with chains of {links} links needs more than the 32768 request IDs of a connection",
            args.inflight
        ));
    }
    let report = args
        .report
        .as_deref()
        .map(ReportFile::prepare)
        .transpose()?;
    if !args.merge.is_empty() {
        let (ctx, outcome) = merge::merge(&args.merge)?;
        return finish(
            &args,
            report.as_ref(),
            &ctx,
            &[("merged", outcome)],
            Comparison::None,
        );
    }
    let result = load(&args, mix, rate, duration, report.as_ref());
    if result.is_err() {
        if let Some(r) = &report {
            if std::fs::metadata(&r.path).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(&r.path);
            }
        }
    }
    result
}

fn load(
    args: &Args,
    mix: Mix,
    rate: Rate,
    duration: Option<Duration>,
    report: Option<&ReportFile>,
) -> CliResult {
    let embedded = args.connect.is_none() && args.unix.is_none() && args.http.is_none();
    if args.http.is_some() && mix.max_chain_len() > 0 {
        return Err("chains over --http are not supported yet".into());
    }
    let threads = args.threads.map(|t| t as usize).unwrap_or_else(|| {
        if embedded {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    });
    let has_chains = mix.max_chain_len() > 0;
    if args.compare_round_trips && !has_chains {
        return Err(
            "--compare-round-trips needs a chain in the mix, e.g. --mix 'chain(len=8)'".into(),
        );
    }
    let mut plan = Plan {
        target: Target::Tcp(String::new()),
        connections: args.connections as usize,
        inflight: args.inflight as usize,
        duration,
        requests: args.requests,
        warmup: args.warmup,
        rate: rate.first(),
        mix,
        payload: args.payload,
        threads,
        sequential_chains: false,
    };
    if matches!(rate, Rate::Steps { .. }) {
        plan.duration = Some(args.step_duration);
        plan.requests = None;
    }
    let mut shape = shape(&plan);
    if let Rate::Steps { .. } = rate {
        shape = shape.replacen(
            &format!("open loop at {} requests/s", rate.first().unwrap_or(0.0)),
            "open loop, each step",
            1,
        );
    }
    if let Some(rtt) = args.rtt {
        shape.push_str(&format!(
            "; through a relay adding {rtt:?} to each round trip"
        ));
    }
    let workload = format!("mix {}; echo payload {} bytes", plan.mix, plan.payload);
    let commands: Vec<String> = plan.mix.entries().iter().map(mix::Entry::label).collect();
    let show_progress = !args.json && std::io::stdout().is_terminal();
    let generator = args.name.clone().unwrap_or_else(host_name);
    let mut ctx = Context {
        target: embedded_label(),
        shape,
        workload,
        commands,
        rate: plan.rate,
        generator,
    };
    if !embedded {
        let (target, label) = match (&args.connect, &args.unix, &args.http) {
            (Some(addr), _, _) => (Target::Tcp(addr.clone()), addr.clone()),
            (_, Some(path), _) => (Target::Unix(path.clone()), path.display().to_string()),
            (_, _, Some(addr)) => {
                let root = http::api_root(addr);
                (Target::Http(root.clone()), format!("{root} (HTTP)"))
            }
            _ => unreachable!("not embedded"),
        };
        plan.target = target;
        ctx.target = label;
    }
    // TLS: the generator talks plaintext to a relay that holds the TLS
    // connections (kept until the run ends).
    let _tls_relay = match crate::tls::client_config(args.tls, args.ca.as_deref(), args.insecure)? {
        Some(config) => {
            let addr = args.connect.as_deref().unwrap_or_default();
            let relay = crate::tls::TlsRelay::start(addr, &crate::tls::host_of(addr), config)?;
            plan.target = Target::Tcp(relay.addr().to_string());
            ctx.target = format!("{addr} (TLS)");
            Some(relay)
        }
        None => None,
    };
    let server = embedded.then(|| Embedded::start(false)).transpose()?;
    if let Some(server) = &server {
        plan.target = Target::Tcp(server.addr.to_string());
    }
    let _relay = match (args.rtt, &plan.target) {
        (None, _) => None,
        (Some(rtt), Target::Tcp(addr)) => {
            let relay = relay::start(addr, rtt)?;
            plan.target = Target::Tcp(relay.addr.to_string());
            Some(relay)
        }
        (Some(_), _) => return Err("--rtt works over TCP only".into()),
    };
    if let Rate::Steps { from, to, steps } = rate {
        let step = steps::Steps {
            rates: steps::rates(from, to, steps),
            duration: args.step_duration,
            slo: args.slo.clone().unwrap_or_default(),
        };
        let result = steps::run(&plan, &step, &ctx, |plan| {
            measure(plan, server.as_ref(), show_progress, "step")
        });
        return steps::finish(args.json, &ctx, &step, result);
    }
    let first = measure(&plan, server.as_ref(), show_progress, "")?;
    if args.compare_round_trips {
        plan.sequential_chains = true;
        let second = measure(&plan, server.as_ref(), show_progress, "round trips")?;
        return finish(
            args,
            report,
            &ctx,
            &[("pipelined", first), ("link by link", second)],
            Comparison::RoundTrips,
        );
    }
    if !args.compare_in_order {
        return finish(args, report, &ctx, &[("wiremux", first)], Comparison::None);
    }
    drop(server);
    let in_order = Embedded::start(true)?;
    plan.target = Target::Tcp(in_order.addr.to_string());
    let _relay = match args.rtt {
        Some(rtt) => {
            let relay = relay::start(&in_order.addr.to_string(), rtt)?;
            plan.target = Target::Tcp(relay.addr.to_string());
            Some(relay)
        }
        None => None,
    };
    let second = measure(&plan, Some(&in_order), show_progress, "in order")?;
    finish(
        args,
        report,
        &ctx,
        &[("out of order", first), ("in order", second)],
        Comparison::InOrder,
    )
}

/// What a two-run report compares.
#[derive(Clone, Copy)]
enum Comparison {
    None,
    InOrder,
    RoundTrips,
}

/// A rate: one, or steps from one to another.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rate {
    Closed,
    Fixed(f64),
    Steps { from: f64, to: f64, steps: usize },
}

impl Rate {
    fn first(self) -> Option<f64> {
        match self {
            Rate::Closed => None,
            Rate::Fixed(r) => Some(r),
            Rate::Steps { from, .. } => Some(from),
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "generator".into())
}

fn embedded_label() -> String {
    "embedded server (demo commands; server on one tokio worker thread, load generator on its own)"
        .into()
}

fn shape(plan: &Plan) -> String {
    let kind = match plan.rate {
        Some(rate) => {
            format!("open loop at {rate} requests/s (latency from each request's scheduled time)")
        }
        None => "closed loop".into(),
    };
    let stop = match (plan.duration, plan.requests) {
        (Some(d), Some(n)) => format!("{:?} or {n} requests", d),
        (Some(d), None) => format!("{:?}", d),
        (None, Some(n)) => format!("{n} requests"),
        (None, None) => unreachable!("a default duration is set"),
    };
    format!(
        "{} connection(s) x {} in flight, {kind}, {stop} after {:?} of warm-up",
        plan.connections, plan.inflight, plan.warmup
    )
}

/// The name of the embedded server's threads (for their CPU time).
const SERVER_THREAD: &str = "wiremux-server";

/// The embedded server, on its own runtime; stops when dropped.
struct Embedded {
    addr: std::net::SocketAddr,
    server: Server,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Embedded {
    /// Starts the demo server (in order or not) on a loopback port.
    fn start(in_order: bool) -> Result<Embedded, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(SERVER_THREAD)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let server = Server::builder()
            .registry(demo::registry())
            .config(Config {
                in_order,
                max_executing: 32768,
                ..Config::default()
            })
            .build();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| format!("cannot start the embedded server: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let s = server.clone();
        runtime.spawn(async move { s.serve_tcp(listener).await });
        Ok(Embedded {
            addr,
            server,
            runtime: Some(runtime),
        })
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.server.shutdown();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Runs the plan; with the embedded server, notes its CPU time.
fn measure(
    plan: &Plan,
    embedded: Option<&Embedded>,
    progress: bool,
    label: &str,
) -> Result<Outcome, String> {
    let before = embedded.and(run::threads_cpu(SERVER_THREAD));
    drive(plan, progress, label).map(|mut o| {
        o.server_cpu_seconds = run::threads_cpu(SERVER_THREAD)
            .zip(before)
            .map(|(a, b)| a - b);
        o
    })
}

/// Runs the plan with a progress bar (when stdout is a terminal).
fn drive(plan: &Plan, progress: bool, label: &str) -> Result<Outcome, String> {
    let live = Arc::new(Live::default());
    let bar = progress.then(|| {
        let total = plan.warmup + plan.duration.unwrap_or(Duration::ZERO);
        let bar = ProgressBar::new(total.as_millis() as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed_precise} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(if label.is_empty() {
            "load".to_string()
        } else {
            label.to_string()
        });
        bar
    });
    let ticker = bar.clone().map(|bar| {
        let live = live.clone();
        let started = Instant::now();
        let warmup = plan.warmup;
        std::thread::spawn(move || {
            let mut last = (Instant::now(), 0u64);
            while !live.stop.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let done = live.completed.load(Relaxed);
                let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
                last = (Instant::now(), done);
                bar.set_position(started.elapsed().as_millis() as u64);
                let phase = if started.elapsed() < warmup {
                    "warming up, "
                } else {
                    ""
                };
                bar.set_message(format!("{phase}{done} responses, {rate:.0} req/s"));
            }
        })
    });
    let result = run::run(plan, live.clone());
    live.stop.store(true, Relaxed);
    if let Some(t) = ticker {
        let _ = t.join();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

/// Prints the report(s), writes the plot, and turns failures into the exit code.
fn finish(
    args: &Args,
    report: Option<&ReportFile>,
    ctx: &Context,
    runs: &[(&str, Outcome)],
    comparison: Comparison,
) -> CliResult {
    if let Some(file) = report {
        let colours = ["#1f77b4", "#d62728"];
        let series: Vec<plot::Series<'_>> = runs
            .iter()
            .zip(colours)
            .map(|((label, outcome), colour)| plot::Series {
                label,
                outcome,
                colour,
            })
            .collect();
        let title = format!("wiremux load: {}", ctx.workload);
        let doc = if file.html {
            plot::html(&title, &series)
        } else {
            plot::svg(&title, &series)
        };
        std::fs::write(&file.path, doc)
            .map_err(|e| format!("cannot write {}: {e}", file.path.display()))?;
    }
    let text = match (runs, args.json) {
        ([(_, one)], false) => report::text(ctx, one),
        ([(_, one)], true) => report::json(ctx, one).to_string() + "\n",
        ([(la, a), (lb, b)], false) => {
            let title = match comparison {
                Comparison::RoundTrips => "wiremux load --compare-round-trips",
                _ => "wiremux load --compare-in-order",
            };
            report::compare_text(title, [la, lb], ctx, a, b)
        }
        ([(_, a), (_, b)], true) => {
            let keys = match comparison {
                Comparison::RoundTrips => ["pipelined", "link_by_link"],
                _ => ["out_of_order", "in_order"],
            };
            report::compare_json(keys, ctx, a, b).to_string() + "\n"
        }
        _ => unreachable!("one or two runs"),
    };
    print!("{text}");
    if let Some(file) = report {
        eprintln!("wiremux: wrote the plots to {}", file.path.display());
    }
    let mut problems = Vec::new();
    for (label, outcome) in runs {
        let Some(problem) = Summary::of(outcome).problem() else {
            continue;
        };
        problems.push(if runs.len() > 1 {
            format!("{label} run: {problem}")
        } else {
            problem
        });
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_duration, parse_rate};
    use std::time::Duration;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(
            parse_duration("10h"),
            Err("`10h`: unknown unit `h`; use ms, s or m".into())
        );
        assert_eq!(
            parse_duration("ten"),
            Err("`ten` is not a duration like 10s, 500ms or 2m".into())
        );
        assert_eq!(
            parse_duration("-1s"),
            Err("`-1s` is not a duration of zero or more".into())
        );
    }

    #[test]
    fn rates_take_k_and_m() {
        assert_eq!(parse_rate("20000"), Ok(20000.0));
        assert_eq!(parse_rate("20k"), Ok(20000.0));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
