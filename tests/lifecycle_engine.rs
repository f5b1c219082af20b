//! The engine's timing rules and limits, deterministic: each connection is
//! served with `Server::serve_io` over `tokio::io::duplex`, on paused
//! tokio time, so a test moves the clock itself and checks what happened
//! just before and just after each moment.

mod common;

use common::{within, Duplex};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{advance, Instant};
use wiremux::engine::{demo, CommandError, Config, Permission, Request, Response, Server};
use wiremux::proto::builder::CommandBuilder;

const PIPE: usize = 4 << 20;
const MS: Duration = Duration::from_millis(1);

/// Counts handlers running at once, and the most seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// The demo commands, plus `count`: it records itself in `gauge` while it
/// sleeps 10 ms, from its first poll to its answer.
fn server(config: Config, gauge: Arc<Gauge>) -> Server {
    Server::builder()
        .registry(demo::registry())
        .command("count", Permission::Read, move |_req: Request| {
            let gauge = gauge.clone();
            async move {
                let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
                gauge.max.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                gauge.now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, CommandError>(Response::bytes("counted"))
            }
        })
        .config(config)
        .build()
}

fn sleep(ms: u64) -> CommandBuilder {
    CommandBuilder::new("sleep").arg("ms", ms.to_string())
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_closes_exactly_at_the_idle_timeout() {
    let config = Config {
        idle_timeout: Some(Duration::from_secs(10)),
        ..Config::default()
    };
    let server = server(config, Arc::default());
    let mut peer = Duplex::serve(&server, PIPE);
    assert_eq!(peer.settle().await, (vec![], false));
    advance(Duration::from_secs(10) - MS).await;
    assert_eq!(peer.settle().await, (vec![], false), "closed before 10 s");
    // A request answered restarts the clock.
    peer.send(&["1 command-name have-data echo", "1 command-data eos hi"])
        .await;
    assert_eq!(
        peer.settle().await,
        (vec!["1 bytes-response eos hi".to_string()], false)
    );
    advance(Duration::from_secs(10) - MS).await;
    assert_eq!(peer.settle().await, (vec![], false), "closed before 10 s");
    assert!(!peer.served.is_finished());
    advance(2 * MS).await;
    assert_eq!(peer.settle().await, (vec![], true), "open after 10 s idle");
    within("serve_io", &mut peer.served).await.unwrap().unwrap();
    assert_eq!(server.stats().connections_open, 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_never_completed_fails_the_connection_at_the_assembly_timeout() {
    let config = Config {
        assembly_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let server = server(config, Arc::default());
    let mut peer = Duplex::serve(&server, PIPE);
    // Its arguments never come.
    peer.send(&["1 command-name have-args echo"]).await;
    assert_eq!(peer.settle().await, (vec![], false));
    advance(Duration::from_secs(5) - MS).await;
    assert_eq!(peer.settle().await, (vec![], false), "failed before 5 s");
    advance(2 * MS).await;
    let (lines, _) = peer.settle().await;
    assert_eq!(
        lines,
        ["0 error-response protocol request not complete within the assembly timeout of 5000 ms"]
    );
    // The server then closes (after its linger for unread input).
    assert_eq!(peer.frame().await, None);
    within("serve_io", &mut peer.served).await.unwrap().unwrap();
    assert_eq!(server.stats().protocol_errors, 1);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_closes_at_once_at_shutdown() {
    // No idle timeout: nothing but the shutdown can wake the connection.
    let config = Config {
        idle_timeout: None,
        ..Config::default()
    };
    let server = server(config, Arc::default());
    let mut peer = Duplex::serve(&server, PIPE);
    // Answered first, so that the connection has been polled and waits
    // with everything registered.
    peer.send_command(1, CommandBuilder::new("echo").data("x"))
        .await;
    assert_eq!(
        peer.frame().await.as_deref(),
        Some("1 bytes-response eos x")
    );
    assert_eq!(peer.settle().await, (vec![], false));
    let t0 = Instant::now();
    server.shutdown();
    assert_eq!(within("the close", peer.frame()).await, None);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    within("serve_io", &mut peer.served).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_what_finishes_in_time_and_closes_at_the_drain_timeout() {
    let config = Config {
        drain_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let server = server(config, Arc::default());
    // A request that finishes within the drain timeout is answered.
    let mut quick = Duplex::serve(&server, PIPE);
    quick.send_command(1, sleep(3000)).await;
    // One that does not is dropped when the drain timeout passes.
    let mut slow = Duplex::serve(&server, PIPE);
    slow.send_command(1, sleep(60_000)).await;
    assert_eq!(quick.settle().await, (vec![], false));
    assert_eq!(slow.settle().await, (vec![], false));
    let t0 = Instant::now();
    server.shutdown();
    // The peer has nothing more to say; the server reads no more anyway.
    tokio::io::AsyncWriteExt::shutdown(&mut slow.stream)
        .await
        .unwrap();
    assert_eq!(
        quick.frame().await.as_deref(),
        Some("1 bytes-response eos 3000")
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    assert_eq!(quick.frame().await, None, "closed once drained");
    within("serve_io", &mut quick.served)
        .await
        .unwrap()
        .unwrap();
    advance(Duration::from_secs(2) - MS).await;
    assert_eq!(
        slow.settle().await,
        (vec![], false),
        "closed before the drain timeout"
    );
    advance(2 * MS).await;
    assert_eq!(
        slow.settle().await,
        (vec![], true),
        "open after the drain timeout"
    );
    within("serve_io", &mut slow.served).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn requests_end_at_the_server_deadline_or_their_own_whichever_is_earlier() {
    let config = Config {
        request_deadline: Some(Duration::from_secs(2)),
        ..Config::default()
    };
    let server = server(config, Arc::default());
    let mut peer = Duplex::serve(&server, PIPE);
    let t0 = Instant::now();
    peer.send_command(1, sleep(10_000)).await;
    peer.send_command(3, sleep(10_000).arg("@deadline", "500"))
        .await;
    peer.send_command(5, sleep(10_000).arg("@deadline", "9000"))
        .await;
    peer.send_command(7, sleep(1000)).await;
    assert_eq!(
        peer.frame().await.as_deref(),
        Some("3 error-response application timed out after 500 ms")
    );
    assert_eq!(t0.elapsed(), Duration::from_millis(500));
    assert_eq!(
        peer.frame().await.as_deref(),
        Some("7 bytes-response eos 1000")
    );
    let mut last = peer.lines(2).await;
    last.sort();
    assert_eq!(
        last,
        [
            "1 error-response application timed out after 2000 ms",
            "5 error-response application timed out after 2000 ms",
        ]
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
    // Not a frame more: the stopped sleeps do not answer later.
    advance(Duration::from_secs(20)).await;
    assert_eq!(peer.settle().await, (vec![], false));
    let s = server.stats();
    assert_eq!(
        (s.requests_started, s.requests_completed, s.requests_failed),
        (4, 1, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn never_more_than_max_executing_run_on_a_connection() {
    let gauge = Arc::new(Gauge::default());
    let config = Config {
        max_executing: 4,
        ..Config::default()
    };
    let server = server(config, gauge.clone());
    let mut peer = Duplex::serve(&server, PIPE);
    let mut lines = Vec::new();
    for i in 0..200u16 {
        lines.push(format!("{} command-name eos count", 2 * i + 1));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    peer.send(&refs).await;
    let got = peer.lines(200).await;
    assert!(got
        .iter()
        .all(|l| l.ends_with(" bytes-response eos counted")));
    assert_eq!(gauge.max.load(Ordering::SeqCst), 4);
    assert_eq!(gauge.now.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn never_more_than_max_server_executing_run_across_connections() {
    let gauge = Arc::new(Gauge::default());
    let config = Config {
        max_server_executing: 3,
        ..Config::default()
    };
    let server = server(config, gauge.clone());
    let mut peers = [Duplex::serve(&server, PIPE), Duplex::serve(&server, PIPE)];
    let mut lines = Vec::new();
    for i in 0..100u16 {
        lines.push(format!("{} command-name eos count", 2 * i + 1));
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    for peer in &mut peers {
        peer.send(&refs).await;
    }
    for peer in &mut peers {
        let got = peer.lines(100).await;
        assert!(got
            .iter()
            .all(|l| l.ends_with(" bytes-response eos counted")));
    }
    assert_eq!(gauge.max.load(Ordering::SeqCst), 3);
    assert_eq!(server.stats().requests_completed, 200);
}

#[tokio::test(start_paused = true)]
async fn in_order_mode_releases_twenty_thousand_held_responses_and_orders_request_errors() {
    const N: u16 = 20_000;
    let config = Config {
        in_order: true,
        max_executing: usize::from(N) + 10,
        ..Config::default()
    };
    let server = server(config, Arc::default());
    let mut peer = Duplex::serve(&server, PIPE);
    let mut out = bytes::BytesMut::new();
    sleep(50).encode(1, 32768, &mut out).unwrap();
    // A request-level error (bad command-name flags) in the middle, and an
    // unknown command: each waits for its turn like any answer.
    let (bad, unknown) = (2 * (N / 2) + 1, 2 * (N / 4) + 1);
    for i in 1..N {
        let id = 2 * i + 1;
        let line = if id == bad {
            format!("{id} command-name eos|have-args echo")
        } else if id == unknown {
            format!("{id} command-name eos nope")
        } else {
            format!("{id} command-name have-data echo\n{id} command-data eos {i}")
        };
        for line in line.lines() {
            wiremux::proto::human::parse_frame(line)
                .unwrap()
                .encode(&mut out);
        }
    }
    peer.write(&out).await;
    let got = peer.lines(usize::from(N)).await;
    let mut want = vec!["1 bytes-response eos 50".to_string()];
    for i in 1..N {
        let id = 2 * i + 1;
        want.push(if id == bad {
            format!(
                "{id} error-response application request {id}: command-name flags must be eos \
                 alone, or have-args and/or have-data; got eos|have-args"
            )
        } else if id == unknown {
            format!("{id} error-response application unknown command: nope")
        } else {
            format!("{id} bytes-response eos {i}")
        });
    }
    let diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        diff.is_none(),
        "first difference: {:?}",
        diff.map(|at| (at, &got[at], &want[at]))
    );
    let s = server.stats();
    assert_eq!(s.requests_failed, 2);
}
