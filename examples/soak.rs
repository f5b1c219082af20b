//! Soak run: millions of requests over many connections with a mixed
//! workload, checking every response and watching memory.
//!
//!     cargo run --release --example soak -- [REQUESTS] [CONNECTIONS] [MAX_SECONDS]
//!
//! Defaults: 10 000 000 requests over 64 connections, stopping after 900 s
//! at the latest. The server runs in this process on its own runtime (one
//! worker thread); the clients run on another (one worker thread). Each
//! connection keeps 32 calls in flight. The mix, per 100 requests: 90
//! `echo` of 32 bytes (checked byte for byte), 8 `sleep ms=1` (checked
//! value), 1 `blob size=65536` (length and pattern checked), 1 `get` of a
//! missing key (the exact application error checked).
//!
//! It prints the resident memory of the process every million requests and
//! a summary; the exit code is non-zero if any response was wrong or
//! missing, or if the server's counters disagree with the clients'.

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiremux::engine::client::Error;
use wiremux::engine::{demo, Client, Config, Server};

const IN_FLIGHT: usize = 32;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    issued: AtomicU64,
    ok: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
}

/// Sends request number `n` and checks its answer.
async fn one(client: &Client, n: u64, payload: &Bytes) -> Result<(), String> {
    match n % 100 {
        0..=89 => {
            let r = client
                .call("echo")
                .data(payload.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            (r.body == *payload)
                .then_some(())
                .ok_or_else(|| format!("echo {n}: wrong body"))
        }
        90..=97 => {
            let r = client
                .call("sleep")
                .arg("ms", "1")
                .send()
                .await
                .map_err(|e| e.to_string())?;
            (r.body == "1")
                .then_some(())
                .ok_or_else(|| format!("sleep {n}: wrong answer"))
        }
        98 => {
            let r = client
                .call("blob")
                .arg("size", "65536")
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let good = r.body.len() == 65536
                && r.body
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == demo::blob_byte(i));
            good.then_some(())
                .ok_or_else(|| format!("blob {n}: wrong body"))
        }
        _ => match client.call("get").arg("key", "absent").send().await {
            Err(Error::Application(m)) if m == "no such key: absent" => Ok(()),
            other => Err(format!("get {n}: unexpected {other:?}")),
        },
    }
}

async fn connection(client: Client, quota: u64, tally: Arc<Tally>, deadline: Instant) {
    let payload = Bytes::from(vec![b'w'; 32]);
    let mut in_flight = FuturesUnordered::new();
    let mut next = 0u64;
    loop {
        while in_flight.len() < IN_FLIGHT && next < quota && Instant::now() < deadline {
            let (client, payload, n) = (client.clone(), payload.clone(), next);
            in_flight.push(async move { one(&client, n, &payload).await });
            tally.issued.fetch_add(1, Relaxed);
            next += 1;
        }
        match in_flight.next().await {
            Some(Ok(())) => tally.ok.fetch_add(1, Relaxed),
            Some(Err(e))
                if e.starts_with("echo")
                    || e.starts_with("sleep")
                    || e.starts_with("blob")
                    || e.starts_with("get") =>
            {
                eprintln!("soak: {e}");
                tally.wrong.fetch_add(1, Relaxed)
            }
            Some(Err(e)) => {
                eprintln!("soak: call failed: {e}");
                tally.failed.fetch_add(1, Relaxed)
            }
            None => break,
        };
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
    let started = Instant::now();
    let deadline = started + Duration::from_secs(max_seconds);
    let start_rss = rss_kib();
    println!("soak: {requests} requests over {connections} connections, {IN_FLIGHT} in flight each; RSS at start {start_rss} KiB");

    let progress = {
        let tally = tally.clone();
        std::thread::spawn(move || {
            let mut reported = 0;
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let done =
                    tally.ok.load(Relaxed) + tally.wrong.load(Relaxed) + tally.failed.load(Relaxed);
                while done >= (reported + 1) * 1_000_000 {
                    reported += 1;
                    println!(
                        "soak: {reported}M done at {:.1} s, RSS {} KiB",
                        started.elapsed().as_secs_f64(),
                        rss_kib()
                    );
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
            tasks.push(tokio::spawn(connection(
                client,
                quota,
                tally.clone(),
                deadline,
            )));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    progress.join().unwrap();
    let elapsed = started.elapsed();
    let end_rss = rss_kib();
    // Let the server settle its counters (connections close as clients drop).
    std::thread::sleep(Duration::from_millis(300));
    let stats = server.stats();
    let (issued, ok, wrong, failed) = (
        tally.issued.load(Relaxed),
        tally.ok.load(Relaxed),
        tally.wrong.load(Relaxed),
        tally.failed.load(Relaxed),
    );
    println!(
        "soak: {issued} issued, {ok} correct, {wrong} wrong, {failed} failed, {} lost",
        issued - ok - wrong - failed
    );
    println!(
        "soak: {:.1} s, {:.0} requests/s; RSS {start_rss} KiB at start, {end_rss} KiB at end",
        elapsed.as_secs_f64(),
        issued as f64 / elapsed.as_secs_f64()
    );
    println!(
        "soak: server counted {} started, {} completed, {} failed (application errors), {} in flight",
        stats.requests_started, stats.requests_completed, stats.requests_failed, stats.requests_in_flight
    );
    let counters_agree = stats.requests_started == issued && stats.requests_in_flight == 0;
    if wrong + failed > 0 || ok != issued || !counters_agree {
        eprintln!("soak: FAILED");
        std::process::exit(1);
    }
    println!("soak: passed");
}
