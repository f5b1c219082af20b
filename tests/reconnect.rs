//! The long-lived client: a server stopped and restarted under load, and a
//! pool over three servers where one dies. Every call's outcome is
//! counted: each call ends exactly once, a call lost with its connection
//! is never run twice (unless marked idempotent), and new calls go on.

mod common;

use common::within;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wiremux::engine::client::Error;
use wiremux::engine::pool::Pool;
use wiremux::engine::proto::builder::CommandBuilder;
use wiremux::engine::reconnect::{ReconnectOptions, ReconnectingClient};
use wiremux::engine::{CommandError, Config, Permission, Request, Response, Server};

/// How often each call id ran, on which server.
type Runs = Arc<Mutex<HashMap<u64, Vec<&'static str>>>>;

/// A server whose `note id=N` records that it ran, waits 2 ms, and
/// answers its name. Shutdown drops requests in flight at once.
fn server(name: &'static str, runs: Runs) -> Server {
    Server::builder()
        .command("note", Permission::Read, move |req: Request| {
            let runs = runs.clone();
            async move {
                let id: u64 = req.arg_parse("id")?;
                runs.lock().unwrap().entry(id).or_default().push(name);
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, CommandError>(Response::bytes(name))
            }
        })
        .config(Config {
            drain_timeout: Duration::ZERO,
            ..Config::default()
        })
        .build()
}

/// Serves `server` on `listener` until it shuts down; the handle ends
/// once the listener is closed.
fn spawn(server: &Server, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let server = server.clone();
    tokio::spawn(async move {
        server.serve(listener).await.unwrap();
    })
}

fn note(id: u64) -> CommandBuilder {
    CommandBuilder::new("note").arg("id", id.to_string())
}

#[derive(Default, Debug)]
struct Outcomes {
    ok: Vec<u64>,
    lost: Vec<u64>,
    other: Vec<(u64, String)>,
}

/// `workers` tasks, each `per_worker` calls one after another, ids unique;
/// `done` counts calls ended. Outcomes by id.
async fn load<F, Fut>(workers: u64, per_worker: u64, done: Arc<AtomicU64>, call: F) -> Outcomes
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<wiremux::engine::client::Response, Error>> + Send,
{
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (call, done) = (call.clone(), done.clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..per_worker {
                    let id = w * per_worker + i;
                    out.push((id, call(id).await));
                    done.fetch_add(1, Relaxed);
                }
                out
            })
        })
        .collect();
    let mut outcomes = Outcomes::default();
    for task in tasks {
        for (id, result) in within("a worker", task).await.unwrap() {
            match result {
                Ok(_) => outcomes.ok.push(id),
                Err(Error::ConnectionLost(_)) => outcomes.lost.push(id),
                Err(err) => outcomes.other.push((id, err.to_string())),
            }
        }
    }
    outcomes
}

async fn wait_until(done: &AtomicU64, n: u64) {
    within("calls to complete", async {
        while done.load(Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
}

fn options() -> ReconnectOptions {
    ReconnectOptions {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(20),
        idempotent_retries: 3,
    }
}

/// Stops the server at `addr` mid-load, starts a new one on the same
/// address, and returns the run's outcomes and the ids' runs.
async fn restart_under_load(idempotent: bool) -> (Outcomes, HashMap<u64, Vec<&'static str>>, u64) {
    let runs: Runs = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let first = server("first", runs.clone());
    let serving = spawn(&first, listener);
    let client = ReconnectingClient::tcp(addr.to_string(), options());
    let done = Arc::new(AtomicU64::new(0));
    let calls = {
        let client = client.clone();
        move |id| {
            let client = client.clone();
            async move {
                if idempotent {
                    client.send_idempotent(note(id)).await
                } else {
                    client.send(note(id)).await
                }
            }
        }
    };
    let running = tokio::spawn(load(16, 150, done.clone(), calls));
    wait_until(&done, 600).await;
    first.shutdown();
    within("the first server to stop", serving).await.unwrap();
    // Down for a moment: calls wait for the reconnect meanwhile.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let second = server("second", runs.clone());
    let serving = spawn(&second, listener);
    let outcomes = within("the load", running).await.unwrap();
    second.shutdown();
    let _ = serving.await;
    let runs = runs.lock().unwrap().clone();
    (outcomes, runs, client.connects())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_loses_only_the_calls_in_flight_each_once() {
    let (outcomes, runs, connects) = restart_under_load(false).await;
    let total = 16 * 150;
    assert!(outcomes.other.is_empty(), "{:?}", outcomes.other);
    assert_eq!(outcomes.ok.len() + outcomes.lost.len(), total);
    // Lost: calls sent on the old connection after the stopping server
    // stopped reading (or on one the stopping listener queued but never
    // accepted), before the client saw it close. Calls the server had
    // read are drained and answered, so whether any is lost depends on
    // timing: none is a correct run too (it failed 1 run in 8 under load
    // when this asserted some).
    assert!(
        outcomes.lost.len() < total / 10,
        "{} lost",
        outcomes.lost.len()
    );
    assert!(connects >= 2, "reconnected: {connects}");
    // Never run twice; every answered call ran exactly once; a lost call
    // ran at most once (on the first server, or not at all).
    assert!(runs.values().all(|r| r.len() == 1), "a call ran twice");
    for id in &outcomes.ok {
        assert_eq!(runs[id].len(), 1, "call {id}");
    }
    for id in &outcomes.lost {
        assert!(
            runs.get(id).map_or(true, |r| r == &["first"]),
            "lost call {id}: {:?}",
            runs.get(id)
        );
    }
    let after = runs.values().filter(|r| r[0] == "second").count();
    assert!(after > 0, "the second server took the later calls");
    eprintln!(
        "restart: {} ok, {} lost with the first server, {} on the second server, {connects} connects",
        outcomes.ok.len(),
        outcomes.lost.len(),
        after
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_calls_survive_the_restart() {
    let (outcomes, runs, connects) = restart_under_load(true).await;
    assert!(outcomes.other.is_empty(), "{:?}", outcomes.other);
    assert!(outcomes.lost.is_empty(), "{:?}", outcomes.lost);
    assert_eq!(outcomes.ok.len(), 16 * 150);
    assert!(connects >= 2, "reconnected: {connects}");
    // Each ran once, or (lost with the first server and sent again) once
    // on each: the stopped server runs nothing new.
    let twice = runs.values().filter(|r| r.len() == 2).count();
    for r in runs.values() {
        assert!(
            r == &["first"] || r == &["second"] || r == &["first", "second"],
            "{r:?}"
        );
    }
    eprintln!(
        "idempotent restart: all {} ok, {twice} ran on both servers, {connects} connects",
        outcomes.ok.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_over_three_servers_goes_on_when_one_dies() {
    let runs: Runs = Arc::default();
    let names = ["a", "b", "c"];
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    let mut serving = Vec::new();
    for name in names {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap().to_string());
        let s = server(name, runs.clone());
        serving.push(spawn(&s, listener));
        servers.push(s);
    }
    let pool = Pool::tcp(addrs, options());
    let done = Arc::new(AtomicU64::new(0));
    let calls = {
        let pool = pool.clone();
        move |id| {
            let pool = pool.clone();
            async move { pool.send(note(id)).await }
        }
    };
    let (workers, per_worker) = (24, 120);
    let running = tokio::spawn(load(workers, per_worker, done.clone(), calls));
    wait_until(&done, 800).await;
    let before: usize = runs
        .lock()
        .unwrap()
        .values()
        .filter(|r| r[0] == "b")
        .count();
    servers[1].shutdown();
    let outcomes = within("the load", running).await.unwrap();
    let runs = runs.lock().unwrap().clone();
    let total = (workers * per_worker) as usize;
    assert!(outcomes.other.is_empty(), "{:?}", outcomes.other);
    assert_eq!(outcomes.ok.len() + outcomes.lost.len(), total);
    assert!(
        outcomes.lost.len() <= workers as usize,
        "only calls in flight on b: {}",
        outcomes.lost.len()
    );
    assert!(runs.values().all(|r| r.len() == 1), "a call ran twice");
    for id in &outcomes.lost {
        assert!(
            runs.get(id).map_or(true, |r| r == &["b"]),
            "lost call {id}: {:?}",
            runs.get(id)
        );
    }
    let count = |name| runs.values().filter(|r| r[0] == name).count();
    assert!(before > 0, "b had its share before it died");
    // After the death, a and c took everything: the rest of the calls.
    assert!(count("a") + count("c") + count("b") >= outcomes.ok.len());
    assert!(count("b") <= before + workers as usize);
    assert_eq!(
        pool.in_flight().iter().map(|(_, n)| n).sum::<usize>(),
        0,
        "every claim released"
    );
    eprintln!(
        "pool: {} ok, {} lost with b; runs a={} b={} (before its death {before}) c={}",
        outcomes.ok.len(),
        outcomes.lost.len(),
        count("a"),
        count("b"),
        count("c")
    );
    for s in &servers {
        s.shutdown();
    }
}
