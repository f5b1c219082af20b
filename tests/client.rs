//! The async client against real servers (and fake ones that misbehave):
//! abandoned calls, lost connections, typed errors, other transports, and
//! running out of request IDs.

mod common;

use common::{wait_idle, wait_stats, within};
use futures::stream::{FuturesUnordered, StreamExt};
use std::error::Error as _;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use wiremux::engine::client::Error;
use wiremux::engine::{demo, Client, Config, Permission, Request, Response, Server};
use wiremux::proto::human::parse_frame;
use wiremux::proto::FrameCodec;

async fn connect(addr: std::net::SocketAddr) -> Client {
    within("connect", Client::connect(addr)).await.unwrap()
}

/// Echoes and a blob on `client`, all checked.
async fn all_correct(client: &Client) {
    let calls: FuturesUnordered<_> = (0..1000u32)
        .map(|i| async move {
            let r = client.call("echo").data(format!("after {i}")).send().await;
            assert_eq!(r.unwrap().body, format!("after {i}"));
        })
        .collect();
    within("1000 echoes", calls.collect::<()>()).await;
    let r = within("a blob", client.call("blob").arg("size", "1000000").send())
        .await
        .unwrap();
    assert_eq!(r.body.len(), 1_000_000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 251) as u8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_calls_never_corrupt_the_connection() {
    let (server, addr) = common::start_default().await;
    let client = connect(addr).await;
    // Calls abandoned while their handlers run.
    let sleeps: Vec<_> = (0..200)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                // Long enough to be running whenever the cancel arrives,
                // however loaded the machine.
                let ms = (60_000 + i % 50).to_string();
                client.call("sleep").arg("ms", ms).send().await
            })
        })
        .collect();
    // A call abandoned while its response streams in.
    let blob = {
        let client = client.clone();
        tokio::spawn(async move { client.call("blob").arg("size", "20000000").send().await })
    };
    wait_stats(&server, "the blob to stream", |s| {
        s.requests_started == 201 && s.bytes_out > 1 << 20
    })
    .await;
    for call in &sleeps {
        call.abort();
    }
    blob.abort();
    // Calls abandoned once queued, whether or not the driver sent them yet.
    for _ in 0..100 {
        let mut call = Box::pin(client.call("echo").data("maybe").send());
        let _ = futures::poll!(&mut call);
    }
    all_correct(&client).await;
    // The abandoned calls' responses still arrived and freed their IDs.
    drop(client);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    assert_eq!(stats.requests_in_flight, 0, "{stats:?}");
    // The sleeps and the blob still running when their callers went were
    // cancelled (each with an @cancel of its own), after one capability
    // probe; of the 100 echoes abandoned once queued, the ones sent and
    // not yet answered may have been cancelled too. The 1001 calls after
    // them all succeeded (all_correct checked them).
    assert!(stats.requests_started >= 1203, "{stats:?}");
    assert!(stats.requests_completed >= 1002, "{stats:?}");
    assert!(stats.requests_failed <= 301, "{stats:?}");
}

/// A fake server: takes one connection, reads `frames` frames, then does
/// `then` to the socket.
async fn fake_server<F, Fut>(frames: usize, then: F) -> std::net::SocketAddr
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        if read_frames(&mut stream, &mut bytes::BytesMut::new(), frames).await {
            then(stream).await;
        }
    });
    addr
}

/// Reads until `n` whole frames have arrived; false if the peer closed
/// first.
async fn read_frames(
    stream: &mut tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
    n: usize,
) -> bool {
    use tokio::io::AsyncReadExt;
    let mut codec = FrameCodec::new();
    let mut seen = 0;
    while seen < n {
        if codec.decode_frame(buf).unwrap().is_some() {
            seen += 1;
        } else if stream.read_buf(buf).await.unwrap() == 0 {
            return false;
        }
    }
    true
}

/// Closes the sending side, then reads until the client goes, so that
/// the close is clean rather than a reset.
async fn close_and_drain(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    stream.shutdown().await.unwrap();
    let _ = stream.read_to_end(&mut Vec::new()).await;
}

/// The frames of `ten_calls`: each echo with data is a command-name frame
/// and a data frame. A fake server that waits for all of them knows every
/// call is in flight before it misbehaves.
const TEN_CALLS_FRAMES: usize = 20;

/// Ten pending calls on `client`, spawned.
fn ten_calls(
    client: &Client,
) -> Vec<tokio::task::JoinHandle<Result<wiremux::engine::client::Response, Error>>> {
    (0..10)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.call("echo").data(format!("{i}")).send().await })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_fails_every_pending_call() {
    let addr = fake_server(TEN_CALLS_FRAMES, close_and_drain).await;
    let client = connect(addr).await;
    for call in ten_calls(&client) {
        let err = within("a call to fail", call).await.unwrap().unwrap_err();
        assert_eq!(
            err,
            Error::ConnectionLost(
                "the server closed the connection with requests in flight".into()
            )
        );
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        assert!(err.source().is_none());
    }
    within("the client to close", async {
        while !client.is_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let err = client.call("echo").send().await.unwrap_err();
    assert_eq!(
        err,
        Error::ConnectionLost("the connection has closed".into())
    );
    assert_eq!(
        err.to_string(),
        "connection lost: the connection has closed"
    );
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_fails_every_pending_call() {
    let addr = fake_server(TEN_CALLS_FRAMES, |stream| async move {
        stream.set_zero_linger().unwrap();
        drop(stream);
    })
    .await;
    let client = connect(addr).await;
    for call in ten_calls(&client) {
        let err = within("a call to fail", call).await.unwrap().unwrap_err();
        assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
        // The socket's own error, kind and all.
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err:?}");
        let source = err.source().unwrap().downcast_ref::<std::io::Error>();
        assert_eq!(
            source.map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionReset)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_says_why_with_the_socket_error() {
    // A port that was just free: nothing listens there.
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let err = Client::connect(addr).await.unwrap_err();
    assert!(matches!(err, Error::Connect(_)), "{err:?}");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let source = err.source().unwrap().downcast_ref::<std::io::Error>();
    assert_eq!(
        source.map(|e| e.kind()),
        Some(std::io::ErrorKind::ConnectionRefused)
    );
    assert!(err.to_string().starts_with("cannot connect: "), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_response_fails_the_calls_with_invalid_data() {
    let addr = fake_server(TEN_CALLS_FRAMES, |mut stream| async move {
        let mut out = Vec::new();
        // A response to a request the client never started.
        parse_frame("9999 bytes-response eos x")
            .unwrap()
            .encode(&mut out);
        stream.write_all(&out).await.unwrap();
        close_and_drain(stream).await;
    })
    .await;
    let client = connect(addr).await;
    for call in ten_calls(&client) {
        let err = within("a call to fail", call).await.unwrap().unwrap_err();
        assert_eq!(
            err,
            Error::ConnectionLost(
                "invalid response from the server: request 9999: bytes-response frame \
                 for a request this client is not waiting on"
                    .into()
            )
        );
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        let source = err.source().unwrap();
        assert!(
            source
                .downcast_ref::<wiremux::proto::client::ClientError>()
                .is_some(),
            "{source:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_error_fails_every_pending_call() {
    let addr = fake_server(TEN_CALLS_FRAMES, |mut stream| async move {
        let mut out = Vec::new();
        parse_frame("0 error-response protocol go away")
            .unwrap()
            .encode(&mut out);
        stream.write_all(&out).await.unwrap();
        close_and_drain(stream).await;
    })
    .await;
    let client = connect(addr).await;
    for call in ten_calls(&client) {
        let err = within("a call to fail", call).await.unwrap().unwrap_err();
        assert_eq!(err, Error::Protocol("go away".into()));
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_shut_down_fails_pending_calls() {
    let (server, addr) = common::start(Config {
        drain_timeout: Duration::from_millis(100),
        ..Config::default()
    })
    .await;
    let client = connect(addr).await;
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call("sleep").arg("ms", "600000").send().await })
        })
        .collect();
    wait_stats(&server, "ten sleeps in flight", |s| {
        s.requests_in_flight == 10
    })
    .await;
    server.shutdown();
    for call in calls {
        let err = within("a call to fail", call).await.unwrap().unwrap_err();
        assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_errors_come_back_typed() {
    let (_server, addr) = common::start_default().await;
    let client = connect(addr).await;
    let cases = [
        (client.call("fail").arg("message", "boom"), "boom"),
        (client.call("nope"), "unknown command: nope"),
        // In two frames: refused on the executor's shortest path.
        (client.call("nope").data("x"), "unknown command: nope"),
        (client.call("sleep"), "missing argument: ms"),
        (
            client.call("sleep").arg("ms", "abc"),
            "malformed argument ms: `abc` is not a valid value",
        ),
        (client.call("get").arg("key", "zz"), "no such key: zz"),
        (client.call("get"), "missing argument: key"),
    ];
    for (call, message) in cases {
        let err = within("a failing call", call.send()).await.unwrap_err();
        assert_eq!(err, Error::Application(message.into()));
    }
    let err = client.call("nope").send().await.unwrap_err();
    assert_eq!(err.to_string(), "application error: unknown command: nope");
    // The connection is fine after all of them.
    let put = client.call("put").arg("key", "zz").data("value").send();
    assert_eq!(within("put", put).await.unwrap().body, "ok");
    let get = client.call("get").arg("key", "zz").send();
    assert_eq!(within("get", get).await.unwrap().body, "value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_refusal_through_the_client() {
    let (_server, addr) = common::start(Config {
        read_only: true,
        ..Config::default()
    })
    .await;
    let client = connect(addr).await;
    let put = client.call("put").arg("key", "k").data("v").send();
    assert_eq!(
        within("put", put).await.unwrap_err(),
        Error::Application(
            "permission denied: put needs write access and this connection is read-only".into()
        )
    );
    let get = client.call("get").arg("key", "k").send();
    assert_eq!(
        within("get", get).await.unwrap_err(),
        Error::Application("no such key: k".into())
    );
    let echo = client.call("echo").data("read").send();
    assert_eq!(within("echo", echo).await.unwrap().body, "read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_byte_stream_and_unix_sockets() {
    let server = Server::builder().registry(demo::registry()).build();
    // An in-memory pipe pair, as stdin/stdout would be.
    let (near, far) = tokio::io::duplex(4096);
    let serving = {
        let server = server.clone();
        tokio::spawn(async move { server.serve_io(far).await })
    };
    let client = Client::new(near);
    all_correct(&client).await;
    drop(client);
    within("serve_io to return", serving)
        .await
        .unwrap()
        .unwrap();

    let dir = std::env::temp_dir().join(format!("wiremux-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let serving = {
        let server = server.clone();
        tokio::spawn(async move { server.serve_unix(listener).await })
    };
    let client = within("connect", Client::connect_unix(&path))
        .await
        .unwrap();
    all_correct(&client).await;
    drop(client);
    server.shutdown();
    within("serve_unix to return", serving)
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.connections_accepted, 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_wait_when_every_request_id_is_busy() {
    const IDS: usize = 32768;
    let (release, released) = tokio::sync::watch::channel(false);
    let server = Server::builder()
        .registry(demo::registry())
        .command("hold", Permission::Read, move |_req: Request| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                Ok(Response::bytes("held"))
            }
        })
        .config(Config {
            max_executing: IDS + 100,
            ..Config::default()
        })
        .build();
    let (addr, _) = common::serve(server.clone()).await;
    let client = connect(addr).await;
    let holds: FuturesUnordered<_> = (0..IDS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.call("hold").send().await })
        })
        .collect();
    wait_stats(&server, "every ID held", |s| {
        s.requests_in_flight == IDS as u64
    })
    .await;
    let extra: Vec<_> = (0..10)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.call("echo").data(format!("{i}")).send().await })
        })
        .collect();
    // No ID is free: the extra calls wait in the client, unsent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.stats().requests_started, IDS as u64);
    assert!(extra.iter().all(|c| !c.is_finished()));
    release.send(true).unwrap();
    for (i, call) in extra.into_iter().enumerate() {
        let r = within("an extra call", call).await.unwrap().unwrap();
        assert_eq!(r.body, format!("{i}"));
    }
    let holds: Vec<_> = within("the held calls", holds.collect()).await;
    assert!(holds
        .into_iter()
        .all(|r| r.unwrap().unwrap().body == "held"));
    assert_eq!(server.stats().protocol_errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dropped_with_abandoned_calls_closes_its_connection() {
    // A server that takes the commands and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = connect(addr).await;
    let (mut stream, _) = within("accept", listener.accept()).await.unwrap();
    let calls = ten_calls(&client);
    drop(client);
    let mut buf = bytes::BytesMut::new();
    assert!(
        within(
            "commands",
            read_frames(&mut stream, &mut buf, TEN_CALLS_FRAMES)
        )
        .await,
        "the client closed before sending its calls"
    );
    for call in &calls {
        call.abort();
    }
    // Nobody can receive an answer any more: the client closes the
    // connection instead of waiting forever.
    // (It may first ask for the capabilities, to cancel the calls, and
    // then send the cancels without waiting for the answer.)
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    within("the client to close", stream.read_to_end(&mut rest))
        .await
        .unwrap();
    let frames = wiremux::proto::decode_all(&rest).unwrap();
    let lines: Vec<String> = frames
        .iter()
        .map(wiremux::proto::human::format_frame)
        .collect();
    if lines.is_empty() {
        return;
    }
    assert_eq!(lines[0], "21 command-name eos @capabilities", "{lines:?}");
    // Each call's @cancel: a command-name and an `id` argument.
    let mut targets: Vec<u16> = lines[1..]
        .chunks(2)
        .map(|pair| {
            assert!(
                pair[0].ends_with(" command-name have-args @cancel"),
                "{lines:?}"
            );
            let (_, target) = pair[1].rsplit_once("id").expect("an id argument");
            target.parse().expect("a request ID")
        })
        .collect();
    targets.sort_unstable();
    assert_eq!(
        targets,
        (1..20).step_by(2).collect::<Vec<u16>>(),
        "{lines:?}"
    );
}
