//! Soak run: millions of requests over many connections with a mixed
//! workload that includes the extensions of PROTOCOL.md section 8, checking
//! every answer and watching memory.
//!
//!     cargo run --release --example soak -- [REQUESTS] [CONNECTIONS] [MAX_SECONDS]
//!
//! Defaults: 10 000 000 requests over 64 connections, stopping after 900 s
//! at the latest. The server runs in this process on its own runtime (one
//! worker thread); the clients run on another (one worker thread). Each
//! connection keeps 32 groups of calls in flight. The mix, per 100 groups:
//!
//! - 79 `echo` of 32 bytes (checked byte for byte);
//! - 6 `sleep ms=1` (checked value);
//! - 1 `blob size=65536` (length and pattern checked);
//! - 1 `get` of a missing key (the exact application error checked);
//! - 4 chains of three `add` calls through `use_result` (`@keep`/`@use`),
//!   each sum checked;
//! - 2 `echo` held `after` a `sleep ms=1` (both checked, and the sleep must
//!   have its answer when the echo has its own);
//! - 2 `sleep ms=60000` dropped once sent (the client cancels them with
//!   `@cancel`; one that is not stopped keeps the server busy past the end,
//!   which fails the run);
//! - 2 `sleep ms=50` under a 5 ms timeout (`@deadline`; must time out);
//! - 2 `sleep ms=1` under a 5 s timeout (must not);
//! - 1 `fail` and an `add` that uses its result (the exact `fail` message,
//!   then the exact `dependency N failed`).
//!
//! REQUESTS counts every call (a chain counts three). It prints the
//! resident memory of the process every million requests and a summary;
//! the exit code is non-zero if any answer was wrong or missing, or if the
//! server's counters disagree with the clients'.

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wiremux::engine::client::Error;
use wiremux::engine::{demo, Client, Config, Server};

const IN_FLIGHT: usize = 32;
const SHORT: Duration = Duration::from_millis(5);
const LONG: Duration = Duration::from_secs(5);

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User and system CPU time of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime: fields 14 and 15 of the line, 11 and 12 from here.
    (ticks(11) + ticks(12)) / 100.0
}

#[derive(Default)]
struct Tally {
    /// Calls started (a chain is three).
    issued: AtomicU64,
    /// Calls whose answer was checked right.
    ok: AtomicU64,
    /// Calls dropped on purpose once sent: no answer to check.
    dropped: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    dependency_failed: AtomicU64,
}

impl Tally {
    fn done(&self) -> u64 {
        self.ok.load(Relaxed)
            + self.dropped.load(Relaxed)
            + self.wrong.load(Relaxed)
            + self.failed.load(Relaxed)
    }
}

/// What a group of calls came to.
#[derive(Default)]
struct Checked {
    ok: u64,
    dropped: u64,
    timed_out: u64,
    dependency_failed: u64,
    /// A wrong answer, or a call that failed where it must not.
    wrong: Vec<String>,
    failed: Vec<String>,
}

impl Checked {
    fn calls(&self) -> u64 {
        self.ok + self.dropped + (self.wrong.len() + self.failed.len()) as u64
    }

    /// `outcome` must be `Ok(want)`.
    fn body(&mut self, what: &str, outcome: Result<Bytes, Error>, want: &[u8]) {
        match outcome {
            Ok(body) if body[..] == *want => self.ok += 1,
            Ok(body) => self
                .wrong
                .push(format!("{what}: wrong body ({} bytes)", body.len())),
            Err(e) if e.is_connection_error() => self.failed.push(format!("{what}: {e}")),
            Err(e) => self.wrong.push(format!("{what}: {e}")),
        }
    }

    /// `outcome` must be this exact error; returns whether it was.
    fn error(&mut self, what: &str, outcome: Result<Bytes, Error>, want: Error) -> bool {
        match outcome {
            Err(e) if e == want => {
                self.ok += 1;
                return true;
            }
            Err(e) if e.is_connection_error() => self.failed.push(format!("{what}: {e}")),
            other => self.wrong.push(format!("{what}: {other:?}, not {want:?}")),
        }
        false
    }
}

fn body_of(outcome: Result<wiremux::engine::client::Response, Error>) -> Result<Bytes, Error> {
    outcome.map(|r| r.body)
}

/// Sends group number `n` and checks its answers.
async fn one(client: &Client, n: u64, payload: &Bytes) -> Checked {
    let mut c = Checked::default();
    match n % 100 {
        0..=78 => {
            let r = client.call("echo").data(payload.clone()).send().await;
            c.body("echo", body_of(r), payload);
        }
        79..=84 => {
            let r = client.call("sleep").arg("ms", "1").send().await;
            c.body("sleep", body_of(r), b"1");
        }
        85 => {
            let r = client.call("blob").arg("size", "65536").send().await;
            match r {
                Ok(r) => {
                    let good = r.body.len() == 65536
                        && r.body
                            .iter()
                            .enumerate()
                            .all(|(i, b)| *b == demo::blob_byte(i));
                    if good {
                        c.ok += 1;
                    } else {
                        c.wrong.push(format!("blob {n}: wrong body"));
                    }
                }
                Err(e) => c.failed.push(format!("blob {n}: {e}")),
            }
        }
        86 => {
            let r = client.call("get").arg("key", "absent").send().await;
            let _ = c.error(
                "get",
                body_of(r),
                Error::Application("no such key: absent".into()),
            );
        }
        87..=90 => {
            // n + 1, + 2, + 3, in one round trip.
            let a = client
                .call("add")
                .arg("a", n.to_string())
                .arg("b", "1")
                .start();
            let b = client.call("add").use_result("a", &a).arg("b", "2").start();
            let last = client.call("add").use_result("a", &b).arg("b", "3").start();
            c.body(
                "chain link 3",
                body_of(last.await),
                (n + 6).to_string().as_bytes(),
            );
            c.body(
                "chain link 2",
                body_of(b.await),
                (n + 3).to_string().as_bytes(),
            );
            c.body(
                "chain link 1",
                body_of(a.await),
                (n + 1).to_string().as_bytes(),
            );
        }
        91 | 92 => {
            let mut first = client.call("sleep").arg("ms", "1").start();
            let then = client
                .call("echo")
                .data(payload.clone())
                .after(&first)
                .start();
            let echoed = then.await;
            // Held after the sleep: the sleep has its answer by now.
            let sleep_done = futures::poll!(&mut first).is_ready();
            if echoed.is_ok() && !sleep_done {
                c.wrong
                    .push("echo after a sleep: answered before the sleep".into());
            }
            c.body("echo after a sleep", body_of(echoed), payload);
            c.body("the sleep an echo waits for", body_of(first.await), b"1");
        }
        93 | 94 => {
            let mut call = client.call("sleep").arg("ms", "60000").start();
            // Polled: sent; then given up, which sends @cancel.
            if futures::poll!(&mut call).is_ready() {
                c.wrong.push("a 60-second sleep answered at once".into());
            }
            tokio::task::yield_now().await;
            drop(call);
            c.dropped += 1;
        }
        95 | 96 => {
            let r = client
                .call("sleep")
                .arg("ms", "50")
                .timeout(SHORT)
                .send()
                .await;
            if c.error("sleep 50 under 5 ms", body_of(r), Error::TimedOut(SHORT)) {
                c.timed_out += 1;
            }
        }
        97 | 98 => {
            let r = client
                .call("sleep")
                .arg("ms", "1")
                .timeout(LONG)
                .send()
                .await;
            c.body("sleep 1 under 5 s", body_of(r), b"1");
        }
        _ => {
            let mut failing = client
                .call("fail")
                .arg("message", format!("soak {n}"))
                .start();
            let after = client
                .call("add")
                .use_result("a", &failing)
                .arg("b", "1")
                .start();
            let failed = (&mut failing).await;
            let id = failing.request_id();
            let _ = c.error(
                "fail",
                body_of(failed),
                Error::Application(format!("soak {n}")),
            );
            let want = match id {
                Some(id) => format!("dependency {id} failed"),
                None => "dependency failed".to_string(),
            };
            if c.error(
                "add using a failed result",
                body_of(after.await),
                Error::Application(want),
            ) {
                c.dependency_failed += 1;
            }
        }
    }
    c
}

/// Calls a group of number `n` makes.
fn calls_in(n: u64) -> u64 {
    match n % 100 {
        87..=90 => 3,
        91 | 92 | 99 => 2,
        _ => 1,
    }
}

async fn connection(
    client: Client,
    quota: u64,
    first: u64,
    tally: Arc<Tally>,
    log: Arc<Mutex<Vec<String>>>,
    deadline: Instant,
) {
    let payload = Bytes::from(vec![b'w'; 32]);
    let mut in_flight = FuturesUnordered::new();
    let mut issued = 0u64;
    let mut next = first;
    loop {
        while in_flight.len() < IN_FLIGHT && issued < quota && Instant::now() < deadline {
            let (client, payload, n) = (client.clone(), payload.clone(), next);
            in_flight.push(async move { one(&client, n, &payload).await });
            let calls = calls_in(n);
            tally.issued.fetch_add(calls, Relaxed);
            issued += calls;
            next += 1;
        }
        let Some(checked) = in_flight.next().await else {
            break;
        };
        tally.ok.fetch_add(checked.ok, Relaxed);
        tally.dropped.fetch_add(checked.dropped, Relaxed);
        tally.timed_out.fetch_add(checked.timed_out, Relaxed);
        tally
            .dependency_failed
            .fetch_add(checked.dependency_failed, Relaxed);
        tally.wrong.fetch_add(checked.wrong.len() as u64, Relaxed);
        tally.failed.fetch_add(checked.failed.len() as u64, Relaxed);
        if !checked.wrong.is_empty() || !checked.failed.is_empty() {
            let mut log = log.lock().unwrap();
            if log.len() < 20 {
                log.extend(checked.wrong.iter().map(|e| format!("wrong: {e}")));
                log.extend(checked.failed.iter().map(|e| format!("failed: {e}")));
            }
        }
        debug_assert!(checked.calls() >= 1);
    }
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u64>().expect("numbers only"));
    let requests = args.next().unwrap_or(10_000_000);
    let connections = args.next().unwrap_or(64);
    let max_seconds = args.next().unwrap_or(900);

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = Server::builder()
        .registry(demo::registry())
        .config(Config::default())
        .build();
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let s = server.clone();
    server_rt.spawn(async move { s.serve_tcp(listener).await });

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let tally = Arc::new(Tally::default());
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let started = Instant::now();
    let cpu_start = cpu_seconds();
    let deadline = started + Duration::from_secs(max_seconds);
    let start_rss = rss_kib();
    println!(
        "soak: {requests} requests over {connections} connections, {IN_FLIGHT} groups in flight \
         each; RSS at start {start_rss} KiB"
    );

    let samples = Arc::new(Mutex::new(Vec::<(u64, f64, u64)>::new()));
    let progress = {
        let (tally, samples) = (tally.clone(), samples.clone());
        std::thread::spawn(move || {
            let mut reported = 0;
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let done = tally.done();
                while done >= (reported + 1) * 1_000_000 {
                    reported += 1;
                    let (at, rss) = (started.elapsed().as_secs_f64(), rss_kib());
                    println!("soak: {reported}M done at {at:.1} s, RSS {rss} KiB");
                    samples.lock().unwrap().push((reported, at, rss));
                }
                if done >= tally.issued.load(Relaxed)
                    && (done >= requests || Instant::now() >= deadline)
                {
                    break;
                }
            }
        })
    };

    client_rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..connections {
            let client = Client::connect(addr).await.expect("connect");
            let quota = requests / connections + u64::from(c < requests % connections);
            // Each connection's groups are numbered on from its own start,
            // so that every connection has the whole mix.
            tasks.push(tokio::spawn(connection(
                client,
                quota,
                c * 7919,
                tally.clone(),
                log.clone(),
                deadline,
            )));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    progress.join().unwrap();
    let elapsed = started.elapsed();
    let cpu = cpu_seconds() - cpu_start;
    let end_rss = rss_kib();
    // The connections close as the clients drop; the server must have
    // nothing left in flight soon after (a dropped 60-second sleep that
    // was not cancelled would still be running).
    let settle_until = Instant::now() + Duration::from_secs(10);
    let mut stats = server.stats();
    while (stats.requests_in_flight > 0 || stats.connections_open > 0)
        && Instant::now() < settle_until
    {
        std::thread::sleep(Duration::from_millis(20));
        stats = server.stats();
    }
    let closed_rss = rss_kib();
    let (issued, ok, dropped, wrong, failed) = (
        tally.issued.load(Relaxed),
        tally.ok.load(Relaxed),
        tally.dropped.load(Relaxed),
        tally.wrong.load(Relaxed),
        tally.failed.load(Relaxed),
    );
    let lost = issued - ok - dropped - wrong - failed;
    for line in log.lock().unwrap().iter() {
        eprintln!("soak: {line}");
    }
    println!(
        "soak: {issued} calls issued: {ok} answered right ({} timed out as they must, {} failed \
         for a failed dependency as they must), {dropped} dropped and cancelled, {wrong} wrong, \
         {failed} failed, {lost} lost",
        tally.timed_out.load(Relaxed),
        tally.dependency_failed.load(Relaxed),
    );
    println!(
        "soak: {:.1} s, {:.0} calls/s; CPU {cpu:.1} s ({:.2} µs per call)",
        elapsed.as_secs_f64(),
        issued as f64 / elapsed.as_secs_f64(),
        cpu * 1e6 / issued.max(1) as f64,
    );
    let samples = samples.lock().unwrap().clone();
    let mut rss = format!("soak: RSS {start_rss} KiB at start");
    if let Some(first) = samples.first() {
        rss += &format!(", {} KiB at 1M", first.2);
    }
    if samples.len() > 2 {
        let mid = &samples[samples.len() / 2];
        let later = samples[1..].iter().map(|s| s.2);
        let (low, high) = (later.clone().min().unwrap(), later.max().unwrap());
        rss += &format!(
            ", {} KiB at {}M, {low} to {high} KiB from 2M on",
            mid.2, mid.0
        );
    }
    println!("{rss}, {end_rss} KiB at the end, {closed_rss} KiB once the connections closed");
    println!(
        "soak: server counted {} started, {} completed, {} failed (application errors), {} torn \
         down with their connection, {} in flight, {} connections open",
        stats.requests_started,
        stats.requests_completed,
        stats.requests_failed,
        stats.requests_cancelled,
        stats.requests_in_flight,
        stats.connections_open,
    );
    // Every call reached the server but dropped ones (one dropped before
    // the client wrote it is never sent); the server also saw at most one
    // `@capabilities` per connection and one `@cancel` per dropped call.
    let counters_agree = stats.requests_started + dropped >= issued
        && stats.requests_started <= issued + connections + dropped
        && stats.requests_completed + stats.requests_failed + stats.requests_cancelled
            == stats.requests_started
        && stats.requests_in_flight == 0
        && stats.connections_open == 0;
    if wrong + failed + lost > 0 || !counters_agree {
        eprintln!("soak: FAILED");
        std::process::exit(1);
    }
    println!("soak: passed");
}
