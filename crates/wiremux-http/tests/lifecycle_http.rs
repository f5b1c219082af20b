//! The HTTP transport runs its commands through the same request lifecycle
//! and executor as a connection: the defects of the separate HTTP code it
//! replaced, each pinned by a test.
//!
//! - a panic inside a streamed response body ends that request with the
//!   panic error, and the rest of the multirequest and the hyper
//!   connection carry on;
//! - HTTP commands take the server-wide executing slot and are counted in
//!   `Server::stats()`;
//! - a stream is framed the same over TCP and over HTTP;
//! - in-order mode holds and releases many responses, errors included.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremux_engine::{demo, CommandError, Config, Permission, Request as Cmd, Response, Server};
use wiremux_http::{HttpOptions, MEDIA_TYPE};
use wiremux_proto::human::{format_frame, parse_frame};
use wiremux_proto::{Flags, FrameCodec, FrameType};

/// Any wait in these tests that takes longer fails the test.
const LIMIT: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {LIMIT:?} waiting for {what}"))
}

/// Counts handlers running at once, and the most seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The demo commands, plus:
/// - `crash`: a stream that yields `part`, then panics while polled;
/// - `drip`: a stream of `ab` and `cd` with pauses, ending after a pause;
/// - `count`: records itself in `gauge` while it sleeps 20 ms.
fn server(config: Config, gauge: Arc<Gauge>) -> Server {
    let mut registry = demo::registry();
    registry.insert("crash", Permission::Read, |_req: Cmd| async move {
        let chunks = futures::stream::iter(0..2).map(|i| {
            if i == 1 {
                panic!("inside the response stream");
            }
            Ok::<_, CommandError>(Bytes::from_static(b"part"))
        });
        Ok(Response::stream(chunks))
    });
    registry.insert("drip", Permission::Read, |_req: Cmd| async move {
        let chunks = futures::stream::unfold(0, |i| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let chunk = match i {
                0 => Bytes::from_static(b"ab"),
                1 => Bytes::from_static(b"cd"),
                _ => return None,
            };
            Some((Ok::<_, CommandError>(chunk), i + 1))
        });
        Ok(Response::stream(chunks))
    });
    registry.insert("count", Permission::Read, move |_req: Cmd| {
        let gauge = gauge.clone();
        async move {
            gauge.enter();
            tokio::time::sleep(Duration::from_millis(20)).await;
            gauge.leave();
            Ok::<_, CommandError>(Response::bytes("counted"))
        }
    });
    Server::builder().registry(registry).config(config).build()
}

/// Serves `server`'s HTTP API on a loopback port; its address.
async fn serve_http(server: &Server) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(wiremux_http::serve(
        listener,
        server.clone(),
        HttpOptions::default(),
    ));
    addr
}

/// Human-syntax lines as raw frames.
fn frames(lines: &[String]) -> Bytes {
    let mut out = BytesMut::new();
    for line in lines {
        parse_frame(line)
            .unwrap_or_else(|e| panic!("bad test frame {line:?}: {e}"))
            .encode(&mut out);
    }
    out.freeze()
}

fn owned(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|l| l.to_string()).collect()
}

/// Raw frames as human-syntax lines.
fn human(body: &[u8]) -> Vec<String> {
    wiremux_proto::decode_all(body)
        .unwrap()
        .iter()
        .map(format_frame)
        .collect()
}

/// The lines of each request ID, in the order they came.
fn by_id(lines: &[String]) -> BTreeMap<u16, Vec<String>> {
    let mut map: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for line in lines {
        let id = line.split(' ').next().unwrap().parse().unwrap();
        map.entry(id).or_default().push(line.clone());
    }
    map
}

/// A POST of `lines` to `path` under the API root, on one HTTP/1.1
/// connection's sender; the status and the whole body.
async fn post(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: std::net::SocketAddr,
    path: &str,
    lines: &[String],
) -> Result<(StatusCode, Bytes), hyper::Error> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}/api/exp-http-v2-0001/{path}"))
        .header("host", addr.to_string())
        .header(CONTENT_TYPE, MEDIA_TYPE)
        .header(ACCEPT, MEDIA_TYPE)
        .body(Full::new(frames(lines)))
        .unwrap();
    within("the sender to be ready", sender.ready()).await?;
    let response = within("a response", sender.send_request(request)).await?;
    let status = response.status();
    let body = within("a response body", response.into_body().collect()).await?;
    Ok((status, body.to_bytes()))
}

/// One HTTP/1.1 connection to `addr`, driven in its own task.
async fn connect(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn a_panic_inside_a_streamed_body_fails_its_request_and_the_connection_carries_on() {
    let server = server(Config::default(), Arc::default());
    let addr = serve_http(&server).await;
    let mut sender = connect(addr).await;
    let lines = owned(&[
        "1 command-name have-args sleep",
        "1 command-argument eoa \\x02\\x00\\x02\\x00ms30",
        "3 command-name eos crash",
        "5 command-name have-data echo",
        "5 command-data eos hello",
    ]);
    let (status, body) = post(&mut sender, addr, "ro/multirequest", &lines)
        .await
        .expect("the multirequest's response, whole");
    assert_eq!(status, StatusCode::OK);
    let got = by_id(&human(&body));
    assert_eq!(got[&1], ["1 bytes-response eos 30"]);
    assert_eq!(
        got[&3],
        [
            "3 bytes-response continuation part",
            "3 error-response application command failed: the handler panicked",
        ]
    );
    assert_eq!(got[&5], ["5 bytes-response eos hello"]);
    assert_eq!(got.len(), 3);
    // The same hyper connection answers the next request.
    let (status, body) = post(
        &mut sender,
        addr,
        "ro/echo",
        &owned(&["7 command-name have-data echo", "7 command-data eos again"]),
    )
    .await
    .expect("the connection survived the panic");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(human(&body), ["7 bytes-response eos again"]);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_commands_take_server_wide_slots_and_are_counted() {
    let gauge = Arc::new(Gauge::default());
    let config = Config {
        max_server_executing: 2,
        ..Config::default()
    };
    let server = server(config, gauge.clone());
    let addr = serve_http(&server).await;
    let mut sender = connect(addr).await;
    let mut lines = Vec::new();
    for i in 0..12u16 {
        lines.push(format!("{} command-name eos count", 2 * i + 1));
    }
    lines.push("25 command-name have-args fail".into());
    lines.push("25 command-argument eoa \\x07\\x00\\x04\\x00messagenope".into());
    let (status, body) = post(&mut sender, addr, "ro/multirequest", &lines)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let got = by_id(&human(&body));
    assert_eq!(got.len(), 13);
    for i in 0..12u16 {
        let id = 2 * i + 1;
        assert_eq!(got[&id], [format!("{id} bytes-response eos counted")]);
    }
    assert_eq!(got[&25], ["25 error-response application nope"]);
    // Twelve sleeping handlers, two server-wide slots: never more than two
    // at once, and two at once at some point (they do run concurrently).
    assert_eq!(gauge.max.load(Ordering::SeqCst), 2);
    assert_eq!(gauge.now.load(Ordering::SeqCst), 0);
    // And every request is in the server's counters.
    let until = tokio::time::Instant::now() + LIMIT;
    loop {
        let s = server.stats();
        if (s.requests_started, s.requests_completed, s.requests_failed) == (13, 12, 1) {
            assert_eq!(s.requests_in_flight, 0);
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the multirequest's 13 requests not counted: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rows = server.command_stats();
    let count = rows.iter().find(|r| r.command == "count").unwrap();
    assert_eq!(count.started, 12);
    server.shutdown();
}

/// Every frame of the requests in `lines` over one raw TCP connection,
/// until each of `ids` has had its terminal frame.
async fn over_tcp(addr: std::net::SocketAddr, lines: &[String], ids: &[u16]) -> Vec<String> {
    let mut stream = within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    within("write", stream.write_all(&frames(lines)))
        .await
        .unwrap();
    let mut codec = FrameCodec::new().max_recv_payload(1 << 20);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut open: Vec<u16> = ids.to_vec();
    while !open.is_empty() {
        if let Some(frame) = codec.decode_frame(&mut buf).unwrap() {
            let terminal = frame.frame_type == FrameType::ERROR_RESPONSE
                || frame.flags.contains(Flags::DATA_EOS);
            if terminal {
                open.retain(|&id| id != frame.request_id);
            }
            out.push(format_frame(&frame));
            continue;
        }
        let n = tokio::time::timeout(LIMIT, stream.read_buf(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{open:?} unanswered after {out:?}"))
            .unwrap();
        assert!(n > 0, "closed with {open:?} unanswered after {out:?}");
    }
    out
}

#[tokio::test]
async fn a_stream_is_framed_the_same_over_tcp_and_http() {
    let server = server(Config::default(), Arc::default());
    let http = serve_http(&server).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = listener.local_addr().unwrap();
    tokio::spawn({
        let server = server.clone();
        async move { server.serve_tcp(listener).await }
    });
    let blob = |id: u16, size: &str| {
        vec![
            format!("{id} command-name have-args blob"),
            format!(
                "{id} command-argument eoa \\x04\\x00\\x{:02x}\\x00size{size}",
                size.len()
            ),
        ]
    };
    // Sizes that end inside a frame, on a frame boundary, on a chunk
    // boundary, and an empty stream; and a stream whose end comes late.
    let mut lines = Vec::new();
    for (id, size) in [(1, "150000"), (3, "32768"), (5, "65536"), (7, "0")] {
        lines.extend(blob(id, size));
    }
    lines.push("9 command-name eos drip".into());
    let ids = [1, 3, 5, 7, 9];
    let tcp_lines = by_id(&over_tcp(tcp, &lines, &ids).await);
    let mut sender = connect(http).await;
    let (status, body) = post(&mut sender, http, "ro/multirequest", &lines)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let http_lines = by_id(&human(&body));
    // Frame for frame the same: boundaries, flags, `eos` placement, bytes.
    assert_eq!(tcp_lines, http_lines);
    let shape = |id: u16| -> Vec<(usize, String)> {
        let frames = wiremux_proto::decode_all(&frames(&tcp_lines[&id])).unwrap();
        frames
            .iter()
            .map(|f| {
                (
                    f.payload.len(),
                    wiremux_proto::human::format_flags(f.frame_type, f.flags),
                )
            })
            .collect()
    };
    let c = |n: usize| (n, "continuation".to_string());
    let e = |n: usize| (n, "eos".to_string());
    // The last piece of a stream carries `eos` when the stream's end is
    // known before that piece is framed (a piece under a frame asks the
    // stream for more at once) ...
    assert_eq!(shape(1), [c(32768), c(32768), c(32768), c(32768), e(18928)]);
    assert_eq!(shape(7), [e(0)]);
    // ... and a stream whose end is learnt only after its last piece was
    // framed (a full frame's worth is framed before the stream is polled
    // again, or the end comes late) ends with an empty `eos` frame, on
    // both transports.
    assert_eq!(shape(3), [c(32768), e(0)]);
    assert_eq!(shape(5), [c(32768), c(32768), e(0)]);
    assert_eq!(
        tcp_lines[&9],
        [
            "9 bytes-response continuation ab",
            "9 bytes-response continuation cd",
            "9 bytes-response eos ",
        ]
    );
    server.shutdown();
}

#[tokio::test]
async fn in_order_mode_releases_twenty_thousand_held_responses_errors_included() {
    const N: u16 = 20_000;
    let config = Config {
        in_order: true,
        max_executing: usize::from(N) + 10,
        ..Config::default()
    };
    let server = server(config, Arc::default());
    let addr = serve_http(&server).await;
    let mut sender = connect(addr).await;
    // A sleep first; every other response is ready at once and is held
    // behind it. A failing command in the middle is held in its turn too.
    let mut lines = owned(&[
        "1 command-name have-args sleep",
        "1 command-argument eoa \\x02\\x00\\x02\\x00ms50",
    ]);
    let failing = 2 * (N / 2) + 1;
    for i in 1..N {
        let id = 2 * i + 1;
        if id == failing {
            lines.push(format!("{id} command-name have-args fail"));
            lines.push(format!(
                "{id} command-argument eoa \\x07\\x00\\x04\\x00messagenope"
            ));
        } else {
            lines.push(format!("{id} command-name have-data echo"));
            lines.push(format!("{id} command-data eos {i}"));
        }
    }
    let (status, body) = post(&mut sender, addr, "ro/multirequest", &lines)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let got = human(&body);
    let mut want = vec!["1 bytes-response eos 50".to_string()];
    for i in 1..N {
        let id = 2 * i + 1;
        want.push(if id == failing {
            format!("{id} error-response application nope")
        } else {
            format!("{id} bytes-response eos {i}")
        });
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "first difference at {:?}", {
        let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
        (at, &got[at], &want[at])
    });
    server.shutdown();
}
