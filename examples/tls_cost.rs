//! What TLS costs: the same closed-loop echo over plain TCP and over TLS
//! to one server, in one run, at W = 1 and W = 256 calls in flight; and
//! the same plain run while a scraper renders the server's Prometheus
//! metrics every 10 ms.
//!
//!     cargo run --release --example tls_cost -- [SECONDS_PER_RUN] [ROUNDS]
//!
//! Defaults: 2 s per run, 3 rounds; each round runs every case once, in
//! turn, so that the machine's drift hits all of them alike. The server
//! (demo commands, plain and TLS listeners of one `Server`) runs on its
//! own OS thread with a current-thread runtime; the client (the engine's
//! `Client`, one connection, W concurrent calls of a 32-byte `echo`) on
//! the main thread with another. The certificate is made at start
//! (rcgen, ECDSA P-256); TLS 1.3 with rustls' defaults (ring).
//!
//! Printed per case: requests/s, and CPU time per request of the server's
//! thread and of the client's (from /proc's schedstat, kernel included),
//! the median over the rounds, then the TLS/plain ratios.

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use wiremux::engine::tls::{self, TlsAcceptor};
use wiremux::engine::{demo, Client, Server};

const SERVER_THREAD: &str = "tls-cost-srv";

/// Nanoseconds on a CPU of a thread, from its schedstat file.
fn schedstat(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn server_thread_cpu() -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == SERVER_THREAD {
            return schedstat(task.path().join("schedstat").to_str().unwrap());
        }
    }
    0
}

fn own_cpu() -> u64 {
    schedstat("/proc/thread-self/schedstat")
}

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Plain,
    Tls,
    PlainScraped,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Plain => "plain TCP",
            Case::Tls => "TLS 1.3",
            Case::PlainScraped => "plain + scrape/10ms",
        }
    }
}

struct Measured {
    rps: f64,
    server_ns: f64,
    client_ns: f64,
}

async fn run(
    case: Case,
    window: usize,
    secs: f64,
    plain: SocketAddr,
    secure: SocketAddr,
    config: std::sync::Arc<tls::rustls::ClientConfig>,
) -> Measured {
    let client = match case {
        Case::Tls => Client::connect_tls(secure, "localhost", config)
            .await
            .unwrap(),
        _ => Client::connect(plain).await.unwrap(),
    };
    let payload = Bytes::from(vec![b'x'; 32]);
    let drive = |until: Instant| {
        let client = client.clone();
        let payload = payload.clone();
        async move {
            let calls = (0..window).map(|_| {
                let client = client.clone();
                let payload = payload.clone();
                async move {
                    let mut n = 0u64;
                    while Instant::now() < until {
                        let reply = client.call("echo").data(payload.clone()).send().await;
                        assert_eq!(reply.unwrap().body.len(), 32);
                        n += 1;
                    }
                    n
                }
            });
            futures::future::join_all(calls).await.iter().sum::<u64>()
        }
    };
    drive(Instant::now() + Duration::from_millis(300)).await; // warm-up
    let (server0, client0, start) = (server_thread_cpu(), own_cpu(), Instant::now());
    let n = drive(start + Duration::from_secs_f64(secs)).await;
    let elapsed = start.elapsed().as_secs_f64();
    let (server1, client1) = (server_thread_cpu(), own_cpu());
    Measured {
        rps: n as f64 / elapsed,
        server_ns: (server1 - server0) as f64 / n as f64,
        client_ns: (client1 - client0) as f64 / n as f64,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().map_or(2.0, |s| s.parse().expect("seconds"));
    let rounds: usize = args.next().map_or(3, |s| s.parse().expect("rounds"));

    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let acceptor = TlsAcceptor::from_pem(
        made.cert.pem().as_bytes(),
        made.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let config = tls::client_config(made.cert.pem().as_bytes()).unwrap();

    let server = Server::builder().registry(demo::registry()).build();
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = server.clone();
    let server_thread = std::thread::Builder::new()
        .name(SERVER_THREAD.into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let secure = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send((plain.local_addr().unwrap(), secure.local_addr().unwrap()))
                    .unwrap();
                let _ = tokio::join!(srv.serve(plain), srv.serve_tls(secure, acceptor));
            })
        })
        .unwrap();
    let (plain, secure) = rx.recv().unwrap();

    let scraping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let (server, scraping) = (server.clone(), scraping.clone());
        std::thread::spawn(move || {
            let mut scrapes = 0u64;
            while !server.is_shutting_down() {
                if scraping.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = wiremux::engine::metrics::render(&server);
                    assert!(text.contains("wiremux_requests_started_total"));
                    scrapes += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            scrapes
        })
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cases = [Case::Plain, Case::Tls, Case::PlainScraped];
    let windows = [1usize, 256];
    let mut results: Vec<Vec<Measured>> = (0..cases.len() * windows.len())
        .map(|_| Vec::new())
        .collect();
    for round in 0..rounds {
        for (wi, &window) in windows.iter().enumerate() {
            for (ci, &case) in cases.iter().enumerate() {
                scraping.store(
                    case == Case::PlainScraped,
                    std::sync::atomic::Ordering::Relaxed,
                );
                let m = rt.block_on(run(case, window, secs, plain, secure, config.clone()));
                eprintln!(
                    "round {round} W={window:<3} {:<20} {:>9.0} req/s {:>7.0} srv ns {:>7.0} cli ns",
                    case.name(),
                    m.rps,
                    m.server_ns,
                    m.client_ns
                );
                results[wi * cases.len() + ci].push(m);
            }
        }
    }
    server.shutdown();
    let scrapes = scraper.join().unwrap();
    server_thread.join().unwrap();

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "tls_cost: {rounds} round(s) of {secs} s per case; medians; loadavg at end {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "| W | transport | requests/s | server ns/req | client ns/req | req/s vs plain | server CPU vs plain |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (wi, &window) in windows.iter().enumerate() {
        let row = |ci: usize| {
            let r = &results[wi * cases.len() + ci];
            (
                median(r.iter().map(|m| m.rps).collect()),
                median(r.iter().map(|m| m.server_ns).collect()),
                median(r.iter().map(|m| m.client_ns).collect()),
            )
        };
        let base = row(0);
        for (ci, case) in cases.iter().enumerate() {
            let (rps, srv, cli) = row(ci);
            println!(
                "| {window} | {} | {rps:.0} | {srv:.0} | {cli:.0} | {:.2} | {:.2} |",
                case.name(),
                rps / base.0,
                srv / base.1
            );
        }
    }
    println!("({scrapes} scrapes rendered during the scraped runs)");
}
