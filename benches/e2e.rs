//! End-to-end benchmark: 32-byte echo requests over one loopback TCP
//! connection with W requests in flight (W = 1, 16, 256), wiremux against
//! its baselines, all in the same run so that the ratios hold on a noisy
//! machine.
//!
//! Run: `cargo bench --bench e2e -- --warm-up-time 1 --measurement-time 3`
//! (figures in docs/PERFORMANCE.md).
//!
//! What is measured, per W:
//! - `wiremux/engine-client`: the engine's server with the demo registry,
//!   driven by the engine's async [`Client`] (W concurrent calls through
//!   `buffer_unordered`);
//! - `wiremux/pipeline`: the same, driven through a `Pipeline` of the
//!   engine's client (W calls started, a new one per answer, no future per
//!   call);
//! - `wiremux/raw-client`: the same server driven by a minimal pipelined
//!   client that writes frames itself and refills the window as responses
//!   come back: this measures the server rather than the client;
//! - `in-order/raw-client`: the same server with `Config::in_order`, the
//!   in-order pipelined baseline;
//! - `hyper-h2`: hyper's HTTP/2 (h2c with prior knowledge, one connection),
//!   the server echoing the request body;
//! - `raw-frame`: a hand-written raw-frame echo server (parse headers,
//!   answer every complete command of a read buffer with one write, no
//!   per-request tasks) with the same raw client: the practical limit of
//!   the protocol on this machine.
//!
//! Every server runs on its own OS thread with a current-thread tokio
//! runtime; every client runs on the benchmark's main thread with another
//! current-thread runtime: one worker each, so the figures compare fairly
//! on a 2-core machine.
//!
//! Criterion times batches of requests (`iter_custom`) and prints
//! requests/s. After the criterion part, a separate pass (outside
//! criterion's timing) records every request's latency in an HDR histogram
//! and measures a mixed load (1 request in 100 is `sleep ms=5`, W = 256)
//! against out-of-order and in-order wiremux. Its table is printed and
//! written to `target/e2e-summary.txt`. Set `E2E_SUMMARY=0` to skip it and
//! `E2E_SUMMARY_SECS` to change how long each of its runs lasts (default 1).
//! `E2E_TARGET_ROUNDS=N` adds N rounds that measure wiremux (raw client)
//! and the raw-frame server back to back at W=256 and W=1 and print the
//! median ratios beside the lifecycle issue's targets; which of the two
//! goes first alternates, so give an even N.

#[path = "support/raw_frame.rs"]
mod raw_frame;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput};
use futures::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use wiremux::engine::{Client, Config, Server};
use wiremux::proto::builder::CommandBuilder;
use wiremux::proto::{Flags, FrameType};

/// Bytes of data in every echo request (and response).
const PAYLOAD: usize = 32;
/// Requests in flight.
const WINDOWS: [usize; 3] = [1, 16, 256];
/// The mixed run: one request in `SLOW_EVERY` sleeps `SLOW_MS`.
const SLOW_EVERY: u64 = 100;
const SLOW_MS: &str = "5";
const MIXED_WINDOW: usize = 256;
const MAX_SEND_PAYLOAD: usize = 32768;

/// Requests per criterion iteration: enough that filling and draining the
/// window is a small part of a batch.
fn batch(w: usize) -> u64 {
    (16 * w).max(256) as u64
}

fn payload() -> Bytes {
    Bytes::from(vec![b'x'; PAYLOAD])
}

// ---------------------------------------------------------------------
// Servers, each on its own thread with a one-worker runtime.

/// Starts `serve` on a new thread with a current-thread runtime and a
/// listener on a free loopback port; the server lives as long as the
/// process.
fn spawn_server<F, Fut>(name: &str, serve: F) -> SocketAddr
where
    F: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(listener.local_addr().expect("address"))
                    .expect("send address");
                serve(listener).await;
            });
        })
        .expect("server thread");
    rx.recv().expect("server address")
}

fn wiremux_server(in_order: bool) -> SocketAddr {
    let name = if in_order {
        "wiremux-in-order"
    } else {
        "wiremux"
    };
    spawn_server(name, move |listener| async move {
        let server = Server::builder()
            .registry(wiremux::engine::demo::registry())
            .config(Config {
                in_order,
                ..Config::default()
            })
            .build();
        server.serve_tcp(listener).await.expect("wiremux server");
    })
}

fn hyper_server() -> SocketAddr {
    spawn_server("hyper-h2", |listener| async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: hyper::Request<Incoming>| async {
                    let body = req.into_body().collect().await?.to_bytes();
                    Ok::<_, hyper::Error>(hyper::Response::new(Full::new(body)))
                });
                // hyper's default stream limit (200) is below the largest
                // window: raise it so every request of the window is in flight.
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(4096)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn raw_frame_server() -> SocketAddr {
    spawn_server("raw-frame", |listener| async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            let _ = stream.set_nodelay(true);
            tokio::spawn(raw_frame::serve(stream));
        }
    })
}

// ---------------------------------------------------------------------
// Clients.

/// A minimal pipelined client: keeps W commands in flight by writing a new
/// one for each response, batching the writes of all responses read
/// together. IDs come from a free list, so responses may come back in any
/// order.
struct RawClient {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    free: Vec<u16>,
    sent_at: Vec<Instant>,
    slow: Vec<bool>,
}

/// What a raw client sends.
struct Load<'a> {
    echo: &'a CommandBuilder,
    /// Every `.0`-th request is `.1` instead of the echo.
    mixed: Option<(u64, &'a CommandBuilder)>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            stream,
            rbuf: BytesMut::with_capacity(64 << 10),
            wbuf: BytesMut::with_capacity(64 << 10),
            free: Vec::new(),
            sent_at: vec![Instant::now(); 1 << 16],
            slow: vec![false; 1 << 16],
        }
    }

    /// Sends `n` requests, `w` at a time; records the latency of every
    /// request but the slow ones in `hist`. Returns the time taken.
    async fn run(
        &mut self,
        n: u64,
        w: usize,
        load: &Load<'_>,
        mut hist: Option<&mut Histogram<u64>>,
    ) -> Duration {
        let start = Instant::now();
        self.free.clear();
        self.free.extend((0..w as u16).rev().map(|i| 2 * i + 1));
        let (mut issued, mut done) = (0u64, 0u64);
        loop {
            let now = Instant::now();
            while issued < n {
                let Some(id) = self.free.pop() else { break };
                let slow = matches!(load.mixed, Some((every, _)) if issued % every == every - 1);
                let command = match load.mixed {
                    Some((_, command)) if slow => command,
                    _ => load.echo,
                };
                command
                    .encode(id, MAX_SEND_PAYLOAD, &mut self.wbuf)
                    .expect("encode");
                self.sent_at[usize::from(id)] = now;
                self.slow[usize::from(id)] = slow;
                issued += 1;
            }
            if !self.wbuf.is_empty() {
                self.stream.write_all(&self.wbuf).await.expect("write");
                self.wbuf.clear();
            }
            if done == n {
                return start.elapsed();
            }
            self.rbuf.reserve(16 << 10);
            let read = self.stream.read_buf(&mut self.rbuf).await.expect("read");
            assert!(read > 0, "the server closed the connection");
            let now = Instant::now();
            raw_frame::for_each_frame(&mut self.rbuf, |header, payload| {
                let id = header.request_id;
                match header.frame_type {
                    FrameType::BYTES_RESPONSE if header.flags.contains(Flags::DATA_EOS) => {}
                    FrameType::BYTES_RESPONSE => return,
                    _ => panic!(
                        "unexpected frame for request {id}: {:?} {}",
                        header.frame_type,
                        String::from_utf8_lossy(payload)
                    ),
                }
                done += 1;
                self.free.push(id);
                if let Some(hist) = hist.as_deref_mut() {
                    if !self.slow[usize::from(id)] {
                        hist.saturating_record(nanos(now - self.sent_at[usize::from(id)]));
                    }
                }
            });
        }
    }
}

type HyperSender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn hyper_connect(addr: SocketAddr) -> HyperSender {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    sender
}

/// One client connection of one configuration.
enum Conn {
    Engine(Client),
    Pipeline(Client),
    Raw(RawClient),
    Hyper(HyperSender),
}

impl Conn {
    async fn run(
        &mut self,
        n: u64,
        w: usize,
        load: &Load<'_>,
        payload: &Bytes,
        mut hist: Option<&mut Histogram<u64>>,
    ) -> Duration {
        let start = Instant::now();
        // Reading the clock per call only when latencies are recorded.
        let timed = hist.is_some();
        match self {
            Conn::Raw(raw) => return raw.run(n, w, load, hist).await,
            Conn::Engine(client) => {
                let mut calls = futures::stream::iter(0..n)
                    .map(|_| {
                        let call = client.call("echo").data(payload.clone());
                        async move {
                            let t = timed.then(Instant::now);
                            let response = call.send().await.expect("echo call");
                            assert_eq!(response.body.len(), PAYLOAD);
                            t.map(|t| t.elapsed())
                        }
                    })
                    .buffer_unordered(w);
                while let Some(latency) = calls.next().await {
                    if let (Some(hist), Some(latency)) = (hist.as_deref_mut(), latency) {
                        hist.saturating_record(nanos(latency));
                    }
                }
            }
            Conn::Pipeline(client) => {
                // Tags are window slots, so the send times fit in `w`.
                let mut pipeline = client.pipeline();
                let mut sent_at = vec![start; w];
                let echo = CommandBuilder::new("echo").data(payload.clone());
                let mut issued = 0;
                for slot in 0..w.min(n as usize) {
                    pipeline.start(slot as u64, echo.clone()).expect("start");
                    issued += 1;
                }
                while let Some((slot, result)) = pipeline.next().await {
                    assert_eq!(result.expect("echo call").body.len(), PAYLOAD);
                    let slot = slot as usize;
                    if let Some(hist) = hist.as_deref_mut() {
                        let now = Instant::now();
                        hist.saturating_record(nanos(now - sent_at[slot]));
                        sent_at[slot] = now;
                    }
                    if issued < n {
                        pipeline.start(slot as u64, echo.clone()).expect("start");
                        issued += 1;
                    }
                }
            }
            Conn::Hyper(sender) => {
                let mut calls = futures::stream::iter(0..n)
                    .map(|_| {
                        let mut sender = sender.clone();
                        let request = hyper::Request::post("http://127.0.0.1/echo")
                            .body(Full::new(payload.clone()))
                            .expect("request");
                        async move {
                            let t = timed.then(Instant::now);
                            let response = sender.send_request(request).await.expect("h2 call");
                            let body = response.into_body().collect().await.expect("body");
                            assert_eq!(body.to_bytes().len(), PAYLOAD);
                            t.map(|t| t.elapsed())
                        }
                    })
                    .buffer_unordered(w);
                while let Some(latency) = calls.next().await {
                    if let (Some(hist), Some(latency)) = (hist.as_deref_mut(), latency) {
                        hist.saturating_record(nanos(latency));
                    }
                }
            }
        }
        start.elapsed()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

// ---------------------------------------------------------------------
// The run.

struct Setup {
    name: &'static str,
    /// The name of the server's thread, for its CPU time.
    server_thread: &'static str,
    conn: Conn,
}

struct Env {
    rt: Runtime,
    setups: Vec<Setup>,
    wiremux: SocketAddr,
    in_order: SocketAddr,
    echo: CommandBuilder,
    payload: Bytes,
}

impl Env {
    /// The runtime, the configurations and the plain echo load with its
    /// payload, borrowed apart.
    fn echo_run(&mut self) -> (&Runtime, &mut [Setup], Load<'_>, &Bytes) {
        let load = Load {
            echo: &self.echo,
            mixed: None,
        };
        (&self.rt, &mut self.setups, load, &self.payload)
    }

    fn start() -> Env {
        let wiremux = wiremux_server(false);
        let in_order = wiremux_server(true);
        let hyper = hyper_server();
        let raw = raw_frame_server();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let setups = rt.block_on(async {
            vec![
                Setup {
                    name: "wiremux/engine-client",
                    server_thread: "wiremux",
                    conn: Conn::Engine(Client::connect(wiremux).await.expect("connect")),
                },
                Setup {
                    name: "wiremux/pipeline",
                    server_thread: "wiremux",
                    conn: Conn::Pipeline(Client::connect(wiremux).await.expect("connect")),
                },
                Setup {
                    name: "wiremux/raw-client",
                    server_thread: "wiremux",
                    conn: Conn::Raw(RawClient::connect(wiremux).await),
                },
                Setup {
                    name: "in-order/raw-client",
                    server_thread: "wiremux-in-order",
                    conn: Conn::Raw(RawClient::connect(in_order).await),
                },
                Setup {
                    name: "hyper-h2",
                    server_thread: "hyper-h2",
                    conn: Conn::Hyper(hyper_connect(hyper).await),
                },
                Setup {
                    name: "raw-frame",
                    server_thread: "raw-frame",
                    conn: Conn::Raw(RawClient::connect(raw).await),
                },
            ]
        });
        let payload = payload();
        Env {
            rt,
            setups,
            wiremux,
            in_order,
            echo: CommandBuilder::new("echo").data(payload.clone()),
            payload,
        }
    }
}

fn throughput(c: &mut Criterion, env: &mut Env) {
    let (rt, setups, load, payload) = env.echo_run();
    for w in WINDOWS {
        let mut group = c.benchmark_group(format!("e2e/w{w}"));
        group.throughput(Throughput::Elements(batch(w)));
        for setup in setups.iter_mut() {
            group.bench_function(setup.name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(setup.conn.run(iters * batch(w), w, &load, payload, None))
                })
            });
        }
        group.finish();
    }
}

/// One line of the summary.
struct Row {
    w: usize,
    name: &'static str,
    rate: f64,
    p50: u64,
    p99: u64,
    p999: u64,
    /// CPU time per request of the server's and the client's thread.
    server_ns: f64,
    client_ns: f64,
    /// Times each thread was put on a CPU, per 1000 requests.
    server_runs: f64,
    client_runs: f64,
}

/// One configuration at window `w`, for about `secs`: throughput,
/// latency, and both threads' CPU time.
fn measure(
    rt: &Runtime,
    setup: &mut Setup,
    w: usize,
    load: &Load,
    payload: &Bytes,
    secs: f64,
) -> Row {
    // A short run to size the measured one to about `secs`.
    let probe = batch(w);
    let took = rt.block_on(setup.conn.run(probe, w, load, payload, None));
    let n = ((probe as f64 / took.as_secs_f64() * secs) as u64).clamp(probe, 20_000_000);
    let mut hist = histogram();
    let before = (thread_cpu(setup.server_thread), own_cpu());
    let took = rt.block_on(setup.conn.run(n, w, load, payload, Some(&mut hist)));
    let after = (thread_cpu(setup.server_thread), own_cpu());
    let per_request = |before: u64, after: u64| (after - before) as f64 / n as f64;
    Row {
        server_ns: per_request(before.0.ns, after.0.ns),
        client_ns: per_request(before.1.ns, after.1.ns),
        server_runs: 1000.0 * per_request(before.0.runs, after.0.runs),
        client_runs: 1000.0 * per_request(before.1.runs, after.1.runs),
        w,
        name: setup.name,
        rate: n as f64 / took.as_secs_f64(),
        p50: hist.value_at_quantile(0.50),
        p99: hist.value_at_quantile(0.99),
        p999: hist.value_at_quantile(0.999),
    }
}

/// The lifecycle issue's targets, judged over `rounds` rounds: in each,
/// wiremux with the raw client and the raw-frame server are measured back
/// to back (which goes first alternates) at W=256 and W=1. One pass of the
/// summary gives one sample of each ratio, and on a shared VM the ratio
/// moves by several per cent between passes; the medians of many rounds,
/// each pair measured within seconds of each other, are what to compare
/// with a target.
fn target_rounds(env: &mut Env, rounds: usize, secs: f64) -> String {
    let (rt, setups, load, payload) = env.echo_run();
    let index = |name: &str| {
        setups
            .iter()
            .position(|s| s.name == name)
            .expect("a configured setup")
    };
    let (engine, raw) = (index("wiremux/raw-client"), index("raw-frame"));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\ntargets: {rounds} rounds of wiremux/raw-client against raw-frame, back to back, about {secs} s each\n\
         round  first       W=256 server CPU ratio  W=256 requests/s ratio  W=1 requests/s ratio"
    );
    let mut ratios: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        let mut pair = |w: usize| {
            let order = if round % 2 == 0 {
                [engine, raw]
            } else {
                [raw, engine]
            };
            let [a, b] = order.map(|i| measure(rt, &mut setups[i], w, &load, payload, secs));
            if order[0] == engine {
                (a, b)
            } else {
                (b, a)
            }
        };
        let (ours, theirs) = pair(256);
        ratios[0].push(ours.server_ns / theirs.server_ns);
        ratios[1].push(ours.rate / theirs.rate);
        let (ours, theirs) = pair(1);
        ratios[2].push(ours.rate / theirs.rate);
        let _ = writeln!(
            out,
            "{:>5}  {:<10}  {:>22.2}  {:>22.3}  {:>20.3}",
            round + 1,
            if round % 2 == 0 {
                "wiremux"
            } else {
                "raw-frame"
            },
            ratios[0][round],
            ratios[1][round],
            ratios[2][round]
        );
    }
    // Whichever goes first tends to measure a few per cent slower: with
    // an even number of rounds both orders count alike.
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        match v.len() % 2 {
            0 => (v[mid - 1] + v[mid]) / 2.0,
            _ => v[mid],
        }
    };
    let [cpu, rate, rate1] = &mut ratios;
    let _ = writeln!(
        out,
        "median             {:>22.2}  {:>22.3}  {:>20.3}\ntarget             {:>22}  {:>22}  {:>20}",
        median(cpu),
        median(rate),
        median(rate1),
        "at most 1.5",
        "at least 0.85",
        "at least 0.9"
    );
    out
}

/// Latency and throughput per configuration, and the mixed run, measured
/// outside criterion.
fn summary(env: &mut Env) -> String {
    let secs: f64 = std::env::var("E2E_SUMMARY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let mut rows = Vec::new();
    let (rt, setups, load, payload) = env.echo_run();
    for w in WINDOWS {
        for setup in setups.iter_mut() {
            rows.push(measure(rt, setup, w, &load, payload, secs));
        }
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "e2e summary: 32-byte echo, one loopback connection, one tokio worker per side\nload average before: {}",
        loadavg()
    );
    let _ = writeln!(
        out,
        "\n{:>4}  {:<22} {:>12} {:>10} {:>10} {:>10}  {:>9} {:>9}  {:>10} {:>10}  {:>8} {:>8}",
        "W",
        "configuration",
        "requests/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "/raw-frame",
        "/hyper-h2",
        "server ns",
        "client ns",
        "srv runs",
        "cli runs"
    );
    for row in &rows {
        let rate_of = |name: &str| {
            rows.iter()
                .find(|r| r.w == row.w && r.name == name)
                .map(|r| r.rate)
                .unwrap_or(f64::NAN)
        };
        let _ = writeln!(
            out,
            "{:>4}  {:<22} {:>12.0} {:>10.1} {:>10.1} {:>10.1}  {:>9.3} {:>9.2}  {:>10.0} {:>10.0}  {:>8.1} {:>8.1}",
            row.w,
            row.name,
            row.rate,
            row.p50 as f64 / 1e3,
            row.p99 as f64 / 1e3,
            row.p999 as f64 / 1e3,
            row.rate / rate_of("raw-frame"),
            row.rate / rate_of("hyper-h2"),
            row.server_ns,
            row.client_ns,
            row.server_runs,
            row.client_runs,
        );
    }
    let _ = writeln!(
        out,
        "server ns, client ns: CPU time per request of the server's and the client's thread\n\
         srv runs, cli runs: times each thread was put on a CPU (woken), per 1000 requests"
    );

    // The mixed run: fast requests behind slow ones.
    let slow = CommandBuilder::new("sleep").arg("ms", SLOW_MS);
    let mixed = Load {
        echo: &env.echo,
        mixed: Some((SLOW_EVERY, &slow)),
    };
    let _ = writeln!(
        out,
        "\nmixed: W={MIXED_WINDOW}, 1 request in {SLOW_EVERY} is `sleep ms={SLOW_MS}`, the rest 32-byte echo; latency of the echoes"
    );
    let _ = writeln!(
        out,
        "{:<22} {:>10} {:>12} {:>10} {:>10} {:>10}",
        "server", "requests", "requests/s", "p50 µs", "p99 µs", "p99.9 µs"
    );
    let mut p99s = Vec::new();
    for (name, addr) in [("wiremux", env.wiremux), ("in-order", env.in_order)] {
        let (n, hist, took) = env.rt.block_on(async {
            let mut client = RawClient::connect(addr).await;
            client.run(1000, MIXED_WINDOW, &mixed, None).await;
            let n = 50_000;
            let mut hist = histogram();
            let took = client.run(n, MIXED_WINDOW, &mixed, Some(&mut hist)).await;
            (n, hist, took)
        });
        p99s.push(hist.value_at_quantile(0.99));
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>12.0} {:>10.1} {:>10.1} {:>10.1}",
            name,
            n,
            n as f64 / took.as_secs_f64(),
            hist.value_at_quantile(0.50) as f64 / 1e3,
            hist.value_at_quantile(0.99) as f64 / 1e3,
            hist.value_at_quantile(0.999) as f64 / 1e3,
        );
    }
    let _ = writeln!(
        out,
        "fast-request p99, out-of-order / in-order: {:.3} (target at most 0.2)",
        p99s[0] as f64 / p99s[1] as f64
    );
    let rounds: usize = std::env::var("E2E_TARGET_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if rounds > 0 {
        out.push_str(&target_rounds(env, rounds, secs));
    }
    let _ = writeln!(out, "load average after: {}", loadavg());
    out
}

/// What the scheduler has counted so far for one thread (from
/// `/proc/.../schedstat`; zeros where that is not available).
#[derive(Clone, Copy, Default)]
struct Cpu {
    /// Nanoseconds spent on a CPU.
    ns: u64,
    /// Times the thread was put on a CPU.
    runs: u64,
}

/// The scheduler's counts for this process's thread called `name`.
fn thread_cpu(name: &str) -> Cpu {
    // The kernel keeps the first 15 bytes of a thread's name.
    let comm: String = name.chars().take(15).collect();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Cpu::default();
    };
    tasks
        .flatten()
        .find(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .map_or_else(Cpu::default, |task| {
            schedstat(&task.path().join("schedstat"))
        })
}

/// The scheduler's counts for the calling thread.
fn own_cpu() -> Cpu {
    schedstat(std::path::Path::new("/proc/thread-self/schedstat"))
}

/// A schedstat file holds time on a CPU, time waiting for one, and the
/// number of times the thread was put on one.
fn schedstat(path: &std::path::Path) -> Cpu {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    match fields[..] {
        [ns, _, runs, ..] => Cpu { ns, runs },
        _ => Cpu::default(),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .configure_from_args();
    let mut env = Env::start();
    throughput(&mut criterion, &mut env);
    // `cargo bench` passes `--bench`; `cargo test --benches` runs each
    // benchmark once without it, and needs no summary.
    let benching = std::env::args().any(|a| a == "--bench");
    if benching && std::env::var("E2E_SUMMARY").as_deref() != Ok("0") {
        let report = summary(&mut env);
        println!("\n{report}");
        let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        let path = std::path::Path::new(&dir).join("e2e-summary.txt");
        match std::fs::write(&path, &report) {
            Ok(()) => println!("written to {}", path.display()),
            Err(err) => eprintln!("cannot write {}: {err}", path.display()),
        }
    }
    criterion.final_summary();
}
