//! Measures the server's memory: resident set size (VmRSS) with many idle
//! connections, and with many requests in flight across connections.
//!
//! Run: `cargo run --release --example memory -- [IDLE_CONNECTIONS] [REQUESTS] [REQUEST_CONNECTIONS] [SLEEP_MS]`
//! (defaults 10000, 100000, 100, 5000; figures in docs/PERFORMANCE.md).
//!
//! The server runs in a child process (this program started with the
//! argument `server`), on a current-thread tokio runtime with the demo
//! commands, so that its RSS holds nothing of the client's and the two
//! sides do not share the file-descriptor limit. The parent asks it for
//! its RSS and counters over a pipe, and reports the growth per
//! connection and per request:
//!
//! 1. the server with no connection;
//! 2. with IDLE_CONNECTIONS connections that have sent nothing;
//! 3. the same connections after each has sent one 32-byte `echo` and
//!    read the answer (a connection that has been used keeps its buffers);
//! 4. after they are closed;
//! 5. in a fresh server process (so that memory freed by the closed
//!    connections is not reused by what follows and hidden),
//!    REQUEST_CONNECTIONS connections, each used once, then REQUESTS
//!    `sleep ms=SLEEP_MS` requests spread over them, measured once the
//!    server reports them all in flight;
//! 6. in another fresh server process, REQUEST_CONNECTIONS connections,
//!    each used once, then one `sleep ms=SLEEP_MS` on each (request 1),
//!    then REQUESTS `echo` requests spread over them, each held with
//!    `@after=1` until its connection's sleep ends (PROTOCOL.md section
//!    8), measured once the server reports them all in flight.
//!
//! This is a measurement program, not a test: it asserts only that every
//! request is answered.

use bytes::{Buf, BytesMut};
use futures::StreamExt;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wiremux::engine::{Config, Server};
use wiremux::proto::builder::CommandBuilder;
use wiremux::proto::{Flags, FrameType, Header, HEADER_LEN};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("server") {
        return serve();
    }
    let arg = |i: usize, default: usize| -> usize {
        args.get(i)
            .map(|s| s.parse().expect("a number"))
            .unwrap_or(default)
    };
    let idle = arg(0, 10_000);
    let requests = arg(1, 100_000);
    let request_connections = arg(2, 100).max(1);
    let sleep_ms = arg(3, 5_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(measure(idle, requests, request_connections, sleep_ms));
}

// ---- the server, in the child process ----

fn serve() {
    let config = Config {
        max_connections: 1 << 20,
        max_executing: 1 << 16,
        max_server_executing: 1 << 24,
        ..Config::default()
    };
    let server = Server::builder()
        .registry(wiremux::engine::demo::registry())
        .config(config)
        .build();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    println!("{}", listener.local_addr().expect("address"));
    std::io::stdout().flush().expect("stdout");
    // Answers each line on stdin with the RSS and counters; ends the
    // process when stdin closes.
    let reporter = server.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
            let stats = reporter.stats();
            println!(
                "{} {} {}",
                rss_kib("self"),
                stats.connections_open,
                stats.requests_in_flight
            );
            std::io::stdout().flush().expect("stdout");
        }
        std::process::exit(0);
    });
    rt.block_on(server.serve_tcp(listener)).expect("serve");
}

/// VmRSS of `/proc/<pid>/status`, in KiB.
fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

// ---- the parent: client and report ----

struct Probe {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

#[derive(Clone, Copy)]
struct Sample {
    rss_kib: u64,
    connections: u64,
    in_flight: u64,
}

impl Probe {
    fn start() -> (Probe, String) {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .arg("server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server process");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut addr = String::new();
        stdout.read_line(&mut addr).expect("server address");
        let probe = Probe {
            _child: child,
            stdin,
            stdout,
        };
        (probe, addr.trim().to_string())
    }

    fn sample(&mut self) -> Sample {
        writeln!(self.stdin, "stats").expect("ask the server");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("server answer");
        let v: Vec<u64> = line
            .split_whitespace()
            .map(|x| x.parse().expect("number"))
            .collect();
        Sample {
            rss_kib: v[0],
            connections: v[1],
            in_flight: v[2],
        }
    }

    /// Samples until `done` holds (or 60 s pass), then lets the server
    /// settle and samples again.
    async fn wait_for(&mut self, what: &str, done: impl Fn(&Sample) -> bool) -> Sample {
        let start = Instant::now();
        loop {
            let s = self.sample();
            if done(&s) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.sample()
    }
}

async fn connect_many(addr: &str, n: usize) -> Vec<TcpStream> {
    futures::stream::iter(0..n)
        .map(|_| async {
            let stream = TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            stream
        })
        .buffer_unordered(128)
        .collect()
        .await
}

/// Writes `count` copies of `command` on odd IDs from 1.
async fn send(stream: &mut TcpStream, command: &CommandBuilder, count: usize) {
    send_from(stream, command, count, 1).await
}

/// Writes `count` copies of `command` on odd IDs from `first`.
async fn send_from(stream: &mut TcpStream, command: &CommandBuilder, count: usize, first: usize) {
    let mut buf = BytesMut::new();
    for i in 0..count {
        command
            .encode((first + 2 * i) as u16, 32768, &mut buf)
            .expect("encode");
    }
    stream.write_all(&buf).await.expect("write");
}

/// Reads until `count` final response frames have arrived.
async fn answers(stream: &mut TcpStream, count: usize) {
    let mut buf = BytesMut::with_capacity(4096);
    let mut done = 0;
    while done < count {
        assert!(
            stream.read_buf(&mut buf).await.expect("read") > 0,
            "the server closed the connection"
        );
        while buf.len() >= HEADER_LEN {
            let header = Header::parse(buf[..HEADER_LEN].try_into().expect("six bytes"));
            if buf.len() < HEADER_LEN + header.length {
                break;
            }
            assert_eq!(header.frame_type, FrameType::BYTES_RESPONSE, "{header:?}");
            if header.flags.contains(Flags::DATA_EOS) {
                done += 1;
            }
            buf.advance(HEADER_LEN + header.length);
        }
    }
}

/// One echo on each connection, all at once.
async fn use_once(conns: &mut [TcpStream]) {
    let echo = CommandBuilder::new("echo").data(vec![b'x'; 32]);
    futures::stream::iter(conns.iter_mut())
        .for_each_concurrent(256, |c| {
            let echo = &echo;
            async move {
                send(c, echo, 1).await;
                answers(c, 1).await;
            }
        })
        .await;
}

async fn measure(idle: usize, requests: usize, request_connections: usize, sleep_ms: usize) {
    let (mut probe, addr) = Probe::start();
    let mut lines = Vec::new();
    let mut report = |label: String, s: Sample, per: Option<(&str, u64, u64)>| {
        let extra = match per {
            Some((unit, base, count)) if count > 0 => {
                let bytes = (s.rss_kib as f64 - base as f64) * 1024.0 / count as f64;
                format!("{bytes:>9.0} B per {unit}")
            }
            _ => String::new(),
        };
        let line = format!(
            "{label:<52} rss {:>9} KiB  connections {:>6}  in flight {:>7}  {extra}",
            s.rss_kib, s.connections, s.in_flight
        );
        println!("{line}");
        lines.push(line);
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let empty = probe.sample();
    report("server, no connection".into(), empty, None);

    let mut conns = connect_many(&addr, idle).await;
    let opened = probe
        .wait_for("idle connections", |s| s.connections == idle as u64)
        .await;
    report(
        format!("{idle} idle connections, nothing sent"),
        opened,
        Some(("connection", empty.rss_kib, idle as u64)),
    );

    use_once(&mut conns).await;
    let used = probe.wait_for("echoes", |s| s.in_flight == 0).await;
    report(
        format!("{idle} idle connections, each used for one echo"),
        used,
        Some(("connection", empty.rss_kib, idle as u64)),
    );

    drop(conns);
    let closed = probe
        .wait_for("connections to close", |s| s.connections == 0)
        .await;
    report("all closed".into(), closed, None);

    // Memory freed by the closed connections stays in the server's heap
    // and would be reused by the requests, hiding their cost: measure them
    // in a fresh server process.
    drop(probe);
    let (mut probe, addr) = Probe::start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    report(
        "fresh server process, no connection".into(),
        probe.sample(),
        None,
    );
    let mut conns = connect_many(&addr, request_connections).await;
    use_once(&mut conns).await;
    let before = probe
        .wait_for("request connections", |s| {
            s.connections == request_connections as u64 && s.in_flight == 0
        })
        .await;
    report(
        format!("{request_connections} connections, each used for one echo"),
        before,
        None,
    );

    let sleep = CommandBuilder::new("sleep").arg("ms", sleep_ms.to_string());
    let per_conn = requests / request_connections;
    let started = Instant::now();
    for c in conns.iter_mut() {
        send(c, &sleep, per_conn).await;
    }
    let total = (per_conn * request_connections) as u64;
    let busy = probe
        .wait_for("requests in flight", |s| s.in_flight == total)
        .await;
    let measured_after = started.elapsed();
    report(
        format!("{total} `sleep ms={sleep_ms}` in flight"),
        busy,
        Some(("request", before.rss_kib, total)),
    );
    assert!(
        measured_after < Duration::from_millis(sleep_ms as u64),
        "the sleeps ended before the measurement ({measured_after:?}): raise SLEEP_MS"
    );
    futures::stream::iter(conns.iter_mut())
        .for_each_concurrent(None, |c| answers(c, per_conn))
        .await;
    let after = probe.wait_for("answers", |s| s.in_flight == 0).await;
    report("all answered".into(), after, None);

    // Requests held for a dependency, in another fresh process.
    drop(conns);
    drop(probe);
    let (mut probe, addr) = Probe::start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    report(
        "fresh server process, no connection".into(),
        probe.sample(),
        None,
    );
    let mut conns = connect_many(&addr, request_connections).await;
    use_once(&mut conns).await;
    let long = CommandBuilder::new("sleep").arg("ms", sleep_ms.to_string());
    for c in conns.iter_mut() {
        send(c, &long, 1).await;
    }
    let sleeping = request_connections as u64;
    let before = probe
        .wait_for("one sleep per connection", |s| {
            s.connections == sleeping && s.in_flight == sleeping
        })
        .await;
    report(
        format!("{request_connections} connections, one `sleep ms={sleep_ms}` on each"),
        before,
        None,
    );
    let held = CommandBuilder::new("echo")
        .arg("@after", "1")
        .data(vec![b'x'; 32]);
    let started = Instant::now();
    for c in conns.iter_mut() {
        send_from(c, &held, per_conn, 3).await;
    }
    let busy = probe
        .wait_for("requests held", |s| s.in_flight == total + sleeping)
        .await;
    let measured_after = started.elapsed();
    report(
        format!("{total} 32-byte `echo @after=1` held"),
        busy,
        Some(("held request", before.rss_kib, total)),
    );
    assert!(
        measured_after < Duration::from_millis(sleep_ms as u64),
        "the sleeps ended before the measurement ({measured_after:?}): raise SLEEP_MS"
    );
    futures::stream::iter(conns.iter_mut())
        .for_each_concurrent(None, |c| answers(c, per_conn + 1))
        .await;
    let after = probe.wait_for("answers", |s| s.in_flight == 0).await;
    report("all answered".into(), after, None);

    let summary = format!(
        "memory: {idle} idle connections; {total} requests over {request_connections} connections\n{}\n",
        lines.join("\n")
    );
    let dir = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = std::path::Path::new(&dir).join("memory-summary.txt");
    if std::fs::write(&path, summary).is_ok() {
        println!("written to {}", path.display());
    }
}
