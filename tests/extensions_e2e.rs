//! The client's section 8 calls against the real server: chains pipelined
//! in one batch, timeouts as `@deadline`, and dropped calls cancelled until
//! the server has nothing in flight.

mod common;

use common::{wait_idle, wait_stats, within};
use std::time::Duration;
use wiremux::engine::client::Error;
use wiremux::engine::{demo, Client, CommandError, Config, Request, Response, Server, SyncHandler};
use wiremux::proto::builder::CommandBuilder;

/// The demo server, with `add` as PROTOCOL.md 8.7 says (registered here so
/// the test does not depend on where the demo command lives).
async fn start(config: Config) -> (Server, std::net::SocketAddr) {
    let add = SyncHandler(|req: Request| {
        let number = |name: &str| -> Result<i64, CommandError> {
            let text = req.arg_str(name)?;
            text.parse()
                .map_err(|_| CommandError::new(format!("malformed argument {name}: `{text}`")))
        };
        let sum = number("a")?
            .checked_add(number("b")?)
            .ok_or_else(|| CommandError::new("overflow"))?;
        Ok(Response::bytes(sum.to_string()))
    });
    let server = Server::builder()
        .registry(demo::registry())
        .command("add", wiremux::engine::Permission::Read, add)
        .config(config)
        .build();
    let (addr, _) = common::serve(server.clone()).await;
    (server, addr)
}

async fn connect(addr: std::net::SocketAddr) -> Client {
    within("connect", Client::connect(addr)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_three_in_one_round_trip() {
    let (server, addr) = start(Config::default()).await;
    let client = connect(addr).await;
    let a = client.call("add").arg("a", "1").arg("b", "2").start();
    let b = client
        .call("add")
        .use_result("a", &a)
        .arg("b", "10")
        .start();
    let c = client
        .call("add")
        .use_result("a", &b)
        .arg("b", "100")
        .start();
    assert_eq!(within("c", c).await.unwrap().body, "113");
    assert_eq!(a.await.unwrap().body, "3");
    assert_eq!(b.await.unwrap().body, "13");
    let caps = client.capabilities().await.unwrap();
    assert!(
        caps.pipelining() && caps.cancel() && caps.deadline(),
        "{caps:?}"
    );
    // A failure propagates to what depends on it, and nothing else.
    let bad = client.call("add").arg("a", "x").arg("b", "1").start();
    let after_bad = client.call("echo").data("no").after(&bad).start();
    let fine = client.call("echo").data("yes").start();
    let bad_id = {
        let mut bad = bad;
        let _ = futures::poll!(&mut bad);
        let err = within("bad", &mut bad).await.unwrap_err();
        assert!(matches!(err, Error::Application(_)), "{err:?}");
        bad.request_id().unwrap()
    };
    assert_eq!(
        within("after_bad", after_bad).await,
        Err(Error::Application(format!("dependency {bad_id} failed")))
    );
    assert_eq!(fine.await.unwrap().body, "yes");
    drop(client);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_ten_thousand_links_in_one_batch() {
    let (server, addr) = start(Config::default()).await;
    let client = connect(addr).await;
    let mut pipeline = client.pipeline();
    const LINKS: u64 = 10_000;
    let first = CommandBuilder::new("add").arg("a", "0").arg("b", "1");
    let mut last = pipeline.call(0, first).start().unwrap();
    for tag in 1..LINKS {
        let link = CommandBuilder::new("add").arg("b", "1");
        last = pipeline
            .call(tag, link)
            .use_result("a", &last)
            .start()
            .unwrap();
    }
    let mut answered = 0;
    while let Some((tag, result)) = within("a link", pipeline.next()).await {
        assert_eq!(result.unwrap().body, (tag + 1).to_string(), "link {tag}");
        answered += 1;
    }
    assert_eq!(answered, LINKS);
    drop(last);
    // The same chain with futures, started before the first await.
    let mut calls = vec![client.call("add").arg("a", "0").arg("b", "1").start()];
    for _ in 1..LINKS {
        let link = client
            .call("add")
            .use_result("a", calls.last().unwrap())
            .arg("b", "1")
            .start();
        calls.push(link);
    }
    let last = calls.pop().unwrap();
    assert_eq!(within("the last link", last).await.unwrap().body, "10000");
    drop(calls);
    drop((pipeline, client));
    let stats = wait_idle(&server).await;
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    assert_eq!(stats.requests_failed, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_dropped_calls_leave_nothing_in_flight() {
    let (server, addr) = start(Config {
        max_executing: 20_000,
        ..Config::default()
    })
    .await;
    let client = connect(addr).await;
    let mut calls: Vec<_> = (0..10_000)
        .map(|_| client.call("sleep").arg("ms", "600000").start())
        .collect();
    // Polling one sends them all.
    let _ = futures::poll!(&mut calls[0]);
    wait_stats(&server, "10 000 sleeps in flight", |s| {
        s.requests_in_flight == 10_000
    })
    .await;
    // Drop them; the client stays, so only @cancel can free the server.
    drop(calls);
    wait_stats(&server, "nothing in flight", |s| s.requests_in_flight == 0).await;
    // Every ID came back: the connection still works.
    let r = within("an echo", client.call("echo").data("after").send()).await;
    assert_eq!(r.unwrap().body, "after");
    let stats = server.stats();
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    assert!(stats.requests_failed >= 10_000, "{stats:?}");
    // Each stopped by its @cancel, all at once: not a cancellation flood
    // (the burst allowed is the connection's max_executing).
    assert_eq!(stats.requests_stopped_by_peer, 10_000, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_reaches_the_server_as_a_deadline() {
    let (server, addr) = start(Config::default()).await;
    let client = connect(addr).await;
    let timed = client
        .call("sleep")
        .arg("ms", "600000")
        .timeout(Duration::from_millis(200))
        .start();
    assert_eq!(
        within("the timeout", timed).await,
        Err(Error::TimedOut(Duration::from_millis(200)))
    );
    // The server stopped the sleep itself: nothing stays in flight.
    wait_stats(&server, "nothing in flight", |s| s.requests_in_flight == 0).await;
    let quick = client
        .call("echo")
        .data("in time")
        .timeout(Duration::from_secs(30))
        .send();
    assert_eq!(within("echo", quick).await.unwrap().body, "in time");
    // A pipelined call with a timeout, and one cancelled by tag.
    let mut pipeline = client.pipeline();
    let slow = CommandBuilder::new("sleep").arg("ms", "600000");
    pipeline
        .call(1, slow.clone())
        .timeout(Duration::from_millis(100))
        .start()
        .unwrap();
    pipeline.start(2, slow).unwrap();
    pipeline.flush();
    let (tag, result) = within("the timeout", pipeline.next()).await.unwrap();
    assert_eq!(
        (tag, result),
        (1, Err(Error::TimedOut(Duration::from_millis(100))))
    );
    wait_stats(&server, "one sleep left", |s| s.requests_in_flight == 1).await;
    pipeline.cancel(2);
    let (tag, result) = within("the cancel", pipeline.next()).await.unwrap();
    assert_eq!((tag, result), (2, Err(Error::Cancelled)));
    wait_stats(&server, "nothing in flight", |s| s.requests_in_flight == 0).await;
}
