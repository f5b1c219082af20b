//! Many requests on one connection through the async client: out of order
//! answers, thousands in flight, request IDs wrapping around while long
//! calls hold some, and a large streamed response that does not hold up
//! small ones.

mod common;

use common::{wait_idle, wait_stats, within, within_for, Raw};
use futures::stream::{FuturesUnordered, StreamExt};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wiremux::engine::{demo, Client, Config, Permission, Request, Response, Server};
use wiremux::proto::builder::CommandBuilder;

async fn connect(addr: std::net::SocketAddr) -> Client {
    within("connect", Client::connect(addr)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_overtake_a_sleep() {
    let (server, addr) = common::start_default().await;
    let client = connect(addr).await;
    let finished = Arc::new(AtomicUsize::new(0));
    let sleep = {
        let (client, finished) = (client.clone(), finished.clone());
        tokio::spawn(async move {
            let r = client.call("sleep").arg("ms", "2000").send().await;
            (r, finished.fetch_add(1, Ordering::SeqCst))
        })
    };
    // The sleep is on the server before any echo is sent.
    wait_stats(&server, "the sleep to start", |s| s.requests_in_flight == 1).await;
    let echoes: Vec<_> = (0..100)
        .map(|i| {
            let (client, finished) = (client.clone(), finished.clone());
            tokio::spawn(async move {
                let r = client.call("echo").data(format!("echo {i}")).send().await;
                (i, r, finished.fetch_add(1, Ordering::SeqCst))
            })
        })
        .collect();
    for echo in echoes {
        let (i, r, rank) = within("an echo", echo).await.unwrap();
        assert_eq!(r.unwrap().body, format!("echo {i}"));
        assert!(rank < 100, "echo {i} finished in place {rank}");
    }
    let (r, rank) = within("the sleep", sleep).await.unwrap();
    let r = r.unwrap();
    assert_eq!(r.body, "2000");
    assert_eq!(rank, 100, "the sleep finished last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_order_mode_holds_responses_in_request_order() {
    let (_server, addr) = common::start(Config {
        in_order: true,
        ..Config::default()
    })
    .await;
    let mut raw = Raw::connect(addr).await;
    raw.send_command(1, CommandBuilder::new("sleep").arg("ms", "300"))
        .await;
    raw.send_command(3, CommandBuilder::new("echo").data("second"))
        .await;
    raw.send_command(5, CommandBuilder::new("fail").arg("message", "third"))
        .await;
    assert_eq!(
        raw.lines(3).await,
        [
            "1 bytes-response eos 300",
            "3 bytes-response eos second",
            "5 error-response application third"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_calls_on_one_connection() {
    let (server, addr) = common::start_default().await;
    let client = connect(addr).await;
    let mut calls: FuturesUnordered<_> = (0..10_000u32)
        .map(|i| {
            let client = &client;
            async move {
                // Every tenth call waits a little, so answers come out of order.
                let r = if i % 10 == 0 {
                    client
                        .call("sleep")
                        .arg("ms", (i % 7).to_string())
                        .send()
                        .await
                } else {
                    client.call("echo").data(i.to_string()).send().await
                };
                (i, r)
            }
        })
        .collect();
    let mut seen = vec![false; 10_000];
    within("10 000 calls", async {
        while let Some((i, r)) = calls.next().await {
            let r = r.unwrap_or_else(|e| panic!("call {i}: {e}"));
            let expected = if i % 10 == 0 {
                (i % 7).to_string()
            } else {
                i.to_string()
            };
            assert_eq!(r.body, expected, "call {i}");
            assert!(!seen[i as usize], "call {i} answered twice");
            seen[i as usize] = true;
        }
    })
    .await;
    assert!(seen.iter().all(|s| *s));
    drop(calls);
    drop(client);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_started, 10_000, "{stats:?}");
    assert_eq!(stats.requests_completed, 10_000, "{stats:?}");
    assert_eq!(stats.frames_out, 10_000, "{stats:?}");
    assert_eq!(
        stats.requests_failed + stats.protocol_errors,
        0,
        "{stats:?}"
    );
}

/// A demo server with `hold`, a command that answers its data once the
/// test lets go.
fn server_with_hold() -> (Server, tokio::sync::watch::Sender<bool>) {
    let (release, released) = tokio::sync::watch::channel(false);
    let server = Server::builder()
        .registry(demo::registry())
        .command("hold", Permission::Read, move |req: Request| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok(Response::bytes(req.data()))
            }
        })
        .build();
    (server, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_wrap_around_held_ids() {
    const CALLS: u32 = 70_000;
    let (server, release) = server_with_hold();
    let (addr, _) = common::serve(server.clone()).await;
    let client = connect(addr).await;
    let hold = |name: &'static str| {
        let client = client.clone();
        tokio::spawn(async move { client.call("hold").data(name).send().await })
    };
    let mut held = vec![hold("first"), hold("second"), hold("third")];
    wait_stats(&server, "three held calls", |s| s.requests_in_flight == 3).await;
    // IDs used by the sequential calls, and from which call on the fourth,
    // later, held call was active.
    let mut ids = Vec::with_capacity(CALLS as usize);
    let mut fourth_from = 0;
    let mut wraps = 0;
    // 70 000 round trips one after the other take 15–25 s of a debug
    // build on a busy two-core machine: the guard is against a hang only.
    within_for(Duration::from_secs(180), "70 000 sequential calls", async {
        for i in 0..CALLS {
            if i == 20_000 {
                held.push(hold("fourth"));
                wait_stats(&server, "the fourth held call", |s| {
                    s.requests_in_flight == 4
                })
                .await;
                fourth_from = ids.len();
            }
            let r = client
                .call("echo")
                .data(i.to_string())
                .send()
                .await
                .unwrap_or_else(|e| panic!("call {i}: {e}"));
            assert_eq!(r.body, i.to_string());
            if ids.last().is_some_and(|last| r.request_id < *last) {
                wraps += 1;
            }
            ids.push(r.request_id);
        }
    })
    .await;
    assert!(wraps >= 2, "the IDs wrapped {wraps} times");
    release.send(true).unwrap();
    let mut held_ids = Vec::new();
    for (call, name) in held.into_iter().zip(["first", "second", "third", "fourth"]) {
        let r = within("a held call", call).await.unwrap().unwrap();
        assert_eq!(r.body, name);
        held_ids.push(r.request_id);
    }
    for (k, id) in held_ids.iter().enumerate() {
        let from = if k == 3 { fourth_from } else { 0 };
        assert!(
            !ids[from..].contains(id),
            "ID {id} of a held call was reused while it was active"
        );
    }
    let stats = server.stats();
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_calls_finish_while_a_large_blob_streams() {
    const SIZE: usize = 50 << 20;
    let (server, addr) = common::start_default().await;
    // Whatever the kernel buffers between the server and the client is
    // queued ahead of the small answers. Loopback receive buffers autotune
    // up to tens of megabytes, which would let the whole blob sit ahead of
    // them; a fixed receive buffer keeps that queue to a few megabytes (the
    // server's send buffer), far below the blob.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(128 << 10).unwrap();
    let stream = within("connect", socket.connect(addr)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let client = Client::new(stream);
    let blob = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call("blob")
                .arg("size", SIZE.to_string())
                .send()
                .await
        })
    };
    // The blob is streaming before the first small call is sent.
    wait_stats(&server, "the blob to stream", |s| s.bytes_out > 1 << 20).await;
    // One batch, so the small answers wait behind the queued blob frames
    // once, not once per round trip.
    within("the small calls", async {
        let calls: FuturesUnordered<_> = (0..250)
            .map(|i| {
                let client = &client;
                async move {
                    let data = format!("small {i}");
                    let r = client.call("echo").data(data.clone()).send().await;
                    assert_eq!(r.unwrap().body, data);
                }
            })
            .collect();
        calls.collect::<()>().await;
    })
    .await;
    assert!(
        !blob.is_finished(),
        "the blob finished before the small calls: they waited behind it"
    );
    let r = within("the blob", blob).await.unwrap().unwrap();
    assert_eq!(r.body.len(), SIZE);
    if let Some(i) = (0..SIZE).find(|&i| r.body[i] != (i % 251) as u8) {
        panic!("blob byte {i} is {}, not {}", r.body[i], i % 251);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_with_small_limits_still_answers_everything() {
    let (server, addr) = common::start(Config {
        max_executing: 3,
        max_server_executing: 2,
        write_high_water: 4096,
        ..Config::default()
    })
    .await;
    let client = connect(addr).await;
    let calls: FuturesUnordered<_> = (0..2000u32)
        .map(|i| {
            let client = &client;
            async move {
                match i % 4 {
                    0 => {
                        let r = client.call("sleep").arg("ms", "1").send().await;
                        assert_eq!(r.unwrap().body, "1");
                    }
                    1 => {
                        let r = client.call("blob").arg("size", "20000").send().await;
                        assert_eq!(r.unwrap().body.len(), 20000);
                    }
                    2 => {
                        let r = client.call("spin").arg("us", "10").send().await;
                        assert_eq!(r.unwrap().body, "10");
                    }
                    _ => {
                        let r = client.call("echo").data(i.to_string()).send().await;
                        assert_eq!(r.unwrap().body, i.to_string());
                    }
                }
            }
        })
        .collect();
    within("2000 calls", calls.collect::<()>()).await;
    drop(client);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_completed, 2000, "{stats:?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
}
