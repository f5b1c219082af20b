//! How fast is `wiremux load` against the fastest client one can write?
//!
//!     cargo build --release -p wiremux-cli
//!     cargo run --release --example loadgen -- [SECONDS] [ROUNDS] [raw|wiremux]
//!
//! Starts a minimal raw-frame echo server (parse headers, answer each
//! complete command of a read with one write, no task per request) and
//! wiremux's own server (demo registry), each on its own thread with a
//! current-thread runtime. Against each, in alternating rounds of SECONDS
//! (default 3) each, ROUNDS (default 2) times:
//!
//! - `minimal`: a hand-written closed-loop client on one connection with
//!   256 32-byte echoes in flight, on this process's main thread (one
//!   current-thread runtime): write a new request for every answer read,
//!   all the writes of one read in one syscall, no checks beyond the frame
//!   type;
//! - `wiremux load`: the release binary (`target/release/wiremux`, or
//!   `$WIREMUX_BIN`; several, separated by commas, each run in every
//!   round after the minimal client, compare builds in one run) with `--connect ADDR --mix echo --connections 1
//!   --inflight 256 --threads 1 --warmup 0s`, which checks every answer.
//!
//! With `LOADGEN_MINIMAL=process` the minimal client runs in a process of
//! its own, as `wiremux load` does, instead of beside the servers' threads
//! in this one.
//!
//! It prints requests/s and CPU time per request of both, and the ratio of
//! `wiremux load` to `minimal` per server: over all rounds, and the median
//! and range of the rounds' ratios. A third argument, `raw` or `wiremux`,
//! runs against that server only. The two run one after the other
//! against the same server in the same process run, so the ratio holds
//! better than either figure on a busy machine.

#[path = "../benches/support/raw_frame.rs"]
mod raw_frame;

use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wiremux::engine::{demo, Server};
use wiremux::proto::builder::CommandBuilder;
use wiremux::proto::FrameType;

const WINDOW: u16 = 256;

fn spawn_server(name: &str, raw: bool) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(listener.local_addr().expect("address")).unwrap();
                if raw {
                    loop {
                        let (s, _) = listener.accept().await.expect("accept");
                        s.set_nodelay(true).expect("nodelay");
                        tokio::spawn(raw_frame::serve(s));
                    }
                } else {
                    let server = Server::builder().registry(demo::registry()).build();
                    server.serve_tcp(listener).await.expect("serve");
                }
            });
        })
        .expect("server thread");
    rx.recv().expect("address")
}

/// The minimal closed-loop client: requests/s and CPU µs per request.
async fn minimal(addr: SocketAddr, run: Duration) -> (f64, f64) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let echo = CommandBuilder::new("echo").data(vec![b'x'; 32]);
    let (mut rbuf, mut wbuf) = (BytesMut::with_capacity(64 << 10), BytesMut::new());
    for i in 0..WINDOW {
        echo.encode(2 * i + 1, 32768, &mut wbuf).expect("encode");
    }
    let cpu = thread_cpu();
    let start = Instant::now();
    let mut done = 0u64;
    let mut free = Vec::new();
    while start.elapsed() < run {
        s.write_all(&wbuf).await.expect("write");
        wbuf.clear();
        rbuf.reserve(16 << 10);
        assert!(s.read_buf(&mut rbuf).await.expect("read") > 0, "closed");
        raw_frame::for_each_frame(&mut rbuf, |h, _| {
            assert_eq!(h.frame_type, FrameType::BYTES_RESPONSE);
            free.push(h.request_id);
        });
        for id in free.drain(..) {
            done += 1;
            echo.encode(id, 32768, &mut wbuf).expect("encode");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    (done as f64 / secs, (thread_cpu() - cpu) * 1e6 / done as f64)
}

/// `wiremux load` (the binary `bin`) against `addr`: requests/s and CPU µs
/// per request.
fn wiremux_load(bin: &str, addr: SocketAddr, run: Duration) -> (f64, f64) {
    let out = std::process::Command::new(bin)
        .args(["load", "--connect", &addr.to_string(), "--mix", "echo"])
        .args(["--connections", "1", "--inflight", "256", "--threads", "1"])
        .args(["--warmup", "0s", "--json", "--duration"])
        .arg(format!("{}ms", run.as_millis()))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {bin}: {e} (build it with cargo build --release -p wiremux-cli)")
        });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        number(&text, "\"requests_per_second\":"),
        number(&text, "\"cpu_us_per_request\":"),
    )
}

/// The number after `key` in a JSON text.
fn number(text: &str, key: &str) -> f64 {
    let at = text.find(key).unwrap_or_else(|| panic!("no {key}")) + key.len();
    let digits: String = text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | '-' | '+'))
        .collect();
    digits.parse().unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn thread_cpu() -> f64 {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns / 1e9)
}

/// The minimal client in a process of its own (`LOADGEN_MINIMAL=process`),
/// apart from the server's, as `wiremux load` is.
fn minimal_process(addr: SocketAddr, run: Duration) -> (f64, f64) {
    let exe = std::env::current_exe().expect("this program");
    let out = std::process::Command::new(exe)
        .args(["--minimal", &addr.to_string(), &run.as_millis().to_string()])
        .output()
        .expect("the minimal client's process");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut numbers = text
        .split_whitespace()
        .map(|n| n.parse().unwrap_or(f64::NAN));
    (
        numbers.next().unwrap_or(f64::NAN),
        numbers.next().unwrap_or(f64::NAN),
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let apart = std::env::var("LOADGEN_MINIMAL").is_ok_and(|v| v == "process");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let first = args.next();
    if first.as_deref() == Some("--minimal") {
        let addr: SocketAddr = args.next().expect("ADDR").parse().expect("ADDR");
        let ms: u64 = args.next().expect("MILLIS").parse().expect("MILLIS");
        let (rps, cpu) = rt.block_on(minimal(addr, Duration::from_millis(ms)));
        println!("{rps} {cpu}");
        return;
    }
    let mut args = first.into_iter().chain(args);
    let secs: f64 = args.next().map_or(3.0, |s| s.parse().expect("SECONDS"));
    let rounds: usize = args.next().map_or(2, |s| s.parse().expect("ROUNDS"));
    let only: Option<String> = args.next();
    let run = Duration::from_secs_f64(secs);
    let bins: Vec<String> = std::env::var("WIREMUX_BIN")
        .unwrap_or_else(|_| "target/release/wiremux".into())
        .split(',')
        .map(String::from)
        .collect();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load.trim());
    if apart {
        println!("(the minimal client runs in a process of its own)");
    }
    for (name, raw) in [("raw-frame echo server", true), ("wiremux server", false)] {
        if only
            .as_deref()
            .is_some_and(|o| o != if raw { "raw" } else { "wiremux" })
        {
            continue;
        }
        let addr = spawn_server(if raw { "raw-frame" } else { "wiremux" }, raw);
        let mut mine = Vec::new();
        let mut theirs: Vec<Vec<(f64, f64)>> = bins.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            mine.push(if apart {
                minimal_process(addr, run)
            } else {
                rt.block_on(minimal(addr, run))
            });
            for (bin, results) in bins.iter().zip(&mut theirs) {
                results.push(wiremux_load(bin, addr, run));
            }
        }
        println!("{name}, 1 connection, 256 in flight, {secs} s rounds:");
        let sum = |v: &[(f64, f64)]| v.iter().map(|x| x.0).sum::<f64>();
        let cpu = |v: &[(f64, f64)]| median(v.iter().map(|x| x.1).collect());
        for (bin, theirs) in bins.iter().zip(&theirs) {
            if bins.len() > 1 {
                println!("  {bin}:");
            }
            for (i, (m, w)) in mine.iter().zip(theirs).enumerate() {
                println!(
                    "  round {}: minimal {:>9.0} req/s ({:.3} µs CPU/req)   wiremux load {:>9.0} req/s ({:.3} µs CPU/req)   ratio {:.2}",
                    i + 1,
                    m.0,
                    m.1,
                    w.0,
                    w.1,
                    w.0 / m.0
                );
            }
            let ratios: Vec<f64> = mine.iter().zip(theirs).map(|(m, w)| w.0 / m.0).collect();
            println!(
                "  all rounds: wiremux load / minimal = {:.2}; per round: median {:.2}, range {:.2}-{:.2}",
                sum(theirs) / sum(&mine),
                median(ratios.clone()),
                ratios.iter().copied().fold(f64::INFINITY, f64::min),
                ratios.iter().copied().fold(0.0, f64::max),
            );
            println!(
                "  median CPU per request: minimal {:.3} µs, wiremux load {:.3} µs",
                cpu(&mine),
                cpu(theirs)
            );
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", load.trim());
}
