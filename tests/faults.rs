//! Faults through real sockets: peers that go away mid-request and
//! mid-response, handlers that panic or overrun their deadline, graceful
//! shutdown, and limits that must not be mistaken for attacks.

mod common;

use bytes::Bytes;
use common::{sorted, wait_idle, wait_stats, within, Raw};
use futures::StreamExt;
use std::time::Duration;
use wiremux::engine::client::Error;
use wiremux::engine::{
    demo, Client, CommandError, Config, Permission, Request, Response, Server, SyncHandler,
};
use wiremux::proto::builder::CommandBuilder;

fn sleep(ms: u64) -> CommandBuilder {
    CommandBuilder::new("sleep").arg("ms", ms.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_request_leaves_nothing_in_flight() {
    let (server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    for i in 0..5u16 {
        raw.send_command(1 + 2 * i, sleep(300)).await;
    }
    wait_stats(&server, "five sleeps in flight", |s| {
        s.requests_in_flight == 5
    })
    .await;
    // A plain close looks like a half-close to the server: the sleeps run
    // to their end, then the connection closes.
    drop(raw);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.connections_closed, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connection_cancels_its_handlers() {
    let (server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    for i in 0..5u16 {
        // Far longer than the test may take: only cancellation ends them.
        raw.send_command(1 + 2 * i, sleep(600_000)).await;
    }
    wait_stats(&server, "five sleeps in flight", |s| {
        s.requests_in_flight == 5
    })
    .await;
    // Close with a reset: the peer is certainly gone, nothing can be sent to
    // it, so its handlers must be cancelled rather than awaited.
    raw.stream.set_zero_linger().unwrap();
    drop(raw);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_cancelled, 5, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_response_leaves_nothing_in_flight() {
    let (server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send_command(
        1,
        CommandBuilder::new("blob").arg("size", (50 << 20).to_string()),
    )
    .await;
    let mut got = 0;
    while got < 1 << 20 {
        got += raw.frame().await.expect("blob frames").payload.len();
    }
    // Unread data in the socket: dropping it resets the connection.
    drop(raw);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_cancelled, 1, "{stats:?}");
    assert!(stats.bytes_out < 50 << 20, "{stats:?}");
}

const PANICKED: &str = "command failed: the handler panicked";

/// A demo server plus one extra command.
async fn with_command(name: &str, handler: impl wiremux::engine::Handler) -> (Server, Client) {
    let server = Server::builder()
        .registry(demo::registry())
        .command(name, Permission::Read, handler)
        .build();
    let (addr, _) = common::serve(server.clone()).await;
    let client = within("connect", Client::connect(addr)).await.unwrap();
    (server, client)
}

/// `name` panics; its call gets the panic error, calls around it succeed,
/// and the server is left with nothing in flight.
async fn panic_is_contained(server: Server, client: Client, name: &'static str) {
    let c = client.clone();
    let before = tokio::spawn(async move { c.call("sleep").arg("ms", "200").send().await });
    let err = within("the panicking call", client.call(name).send())
        .await
        .unwrap_err();
    assert_eq!(err, Error::Application(PANICKED.into()));
    let after = within("an echo", client.call("echo").data("fine").send())
        .await
        .unwrap();
    assert_eq!(after.body, "fine");
    assert_eq!(
        within("the sleep", before).await.unwrap().unwrap().body,
        "200"
    );
    // Twice: the first panic did not break anything. With data this time,
    // so that the command comes in two frames and takes the executor's
    // shortest path (lent by the lifecycle, admitted when not answered).
    let err = within("the panicking call", client.call(name).data("x").send())
        .await
        .unwrap_err();
    assert_eq!(err, Error::Application(PANICKED.into()));
    drop(client);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_failed, 2, "{stats:?}");
    assert_eq!(stats.requests_completed, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panicking_after_an_await() {
    let (server, client) = with_command("boom", |_req: Request| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        panic!("boom after an await");
        #[allow(unreachable_code)]
        Ok(Response::bytes(""))
    })
    .await;
    panic_is_contained(server, client, "boom").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panicking_at_its_first_poll() {
    let (server, client) = with_command("boom", |_req: Request| async move {
        if true {
            panic!("boom at once");
        }
        Ok(Response::bytes(""))
    })
    .await;
    panic_is_contained(server, client, "boom").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panicking_before_returning_its_future() {
    // A plain closure that checks its request synchronously and panics
    // before it even builds the future.
    let (server, client) = with_command("boom", |req: Request| {
        let n: u64 = req.arg_str("n").unwrap().parse().unwrap();
        async move { Ok(Response::bytes(n.to_string())) }
    })
    .await;
    panic_is_contained(server, client, "boom").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_handler_panicking() {
    // A synchronous handler runs on the connection's own task: its panic
    // must still end only its own request.
    let (server, client) = with_command(
        "boom",
        SyncHandler(|_req: Request| -> Result<Response, CommandError> { panic!("boom in sync") }),
    )
    .await;
    panic_is_contained(server, client, "boom").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_body_panicking_midway() {
    let (server, client) = with_command("boom", |_req: Request| async move {
        let chunks = futures::stream::iter(0..3).map(|i| {
            if i == 2 {
                panic!("boom in the stream");
            }
            Ok::<_, CommandError>(Bytes::from(vec![b'x'; 100]))
        });
        Ok(Response::stream(chunks))
    })
    .await;
    panic_is_contained(server, client, "boom").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_gives_a_timeout_error() {
    let (server, addr) = common::start(Config {
        request_deadline: Some(Duration::from_millis(200)),
        ..Config::default()
    })
    .await;
    let client = within("connect", Client::connect(addr)).await.unwrap();
    let err = within(
        "the long sleep",
        client.call("sleep").arg("ms", "60000").send(),
    )
    .await
    .unwrap_err();
    assert_eq!(err, Error::Application("timed out after 200 ms".into()));
    let ok = within("a short sleep", client.call("sleep").arg("ms", "5").send())
        .await
        .unwrap();
    assert_eq!(ok.body, "5");
    drop(client);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_failed, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let server = Server::builder().registry(demo::registry()).build();
    let (addr, serving) = common::serve(server.clone()).await;
    let client = within("connect", Client::connect(addr)).await.unwrap();
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.call("sleep").arg("ms", "500").send().await })
        })
        .collect();
    wait_stats(&server, "three sleeps in flight", |s| {
        s.requests_in_flight == 3
    })
    .await;
    server.shutdown();
    assert!(server.is_shutting_down());
    for call in calls {
        assert_eq!(within("a sleep", call).await.unwrap().unwrap().body, "500");
    }
    within("serve_tcp to return", serving)
        .await
        .unwrap()
        .unwrap();
    // The listener is gone: new connections are refused.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // The client's connection was closed by the server.
    let err = within("a call after shutdown", client.call("echo").send())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_completed, 3, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_after_the_drain_timeout_cancels_what_is_left() {
    let server = Server::builder()
        .registry(demo::registry())
        .config(Config {
            drain_timeout: Duration::from_millis(300),
            ..Config::default()
        })
        .build();
    let (addr, serving) = common::serve(server.clone()).await;
    let client = within("connect", Client::connect(addr)).await.unwrap();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.call("sleep").arg("ms", "600000").send().await })
        })
        .collect();
    wait_stats(&server, "four sleeps in flight", |s| {
        s.requests_in_flight == 4
    })
    .await;
    server.shutdown();
    for call in calls {
        let err = within("a sleep to fail", call).await.unwrap().unwrap_err();
        assert_eq!(
            err,
            Error::ConnectionLost(
                "the server closed the connection with requests in flight".into()
            )
        );
    }
    within("serve_tcp to return", serving)
        .await
        .unwrap()
        .unwrap();
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_cancelled, 4, "{stats:?}");
}

/// Requests queued behind `max_executing` wait in the read buffer; that
/// wait is the server's own backpressure, not a slow client, so the
/// assembly timeout must not cut the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_is_not_mistaken_for_a_slow_client() {
    let (server, addr) = common::start(Config {
        max_executing: 1,
        assembly_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let mut raw = Raw::connect(addr).await;
    // One write: the echo arrives with the sleep and waits for its turn.
    let mut both = Vec::new();
    for (id, command) in [(1, sleep(1500)), (3, CommandBuilder::new("echo").data("x"))] {
        for frame in command.frames(id, 32768).unwrap() {
            frame.encode(&mut both);
        }
    }
    raw.write(&both).await;
    assert_eq!(
        sorted(raw.lines(2).await),
        ["1 bytes-response eos 1500", "3 bytes-response eos x"]
    );
    drop(raw);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_is_cut_by_the_assembly_timeout() {
    let (server, addr) = common::start(Config {
        assembly_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let mut raw = Raw::connect(addr).await;
    raw.send(&["1 command-name have-args sleep"]).await;
    assert_eq!(
        raw.until_closed().await,
        ["0 error-response protocol request not complete within the assembly timeout of 300 ms"]
    );
    drop(raw);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.protocol_errors, 1, "{stats:?}");
}
