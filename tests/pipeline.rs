//! The client's `Pipeline`: calls started without a future each, answers
//! back tagged and in completion order, every call answered exactly once
//! whatever happens to the connection.

mod common;
// Only its frame splitter is used here.
#[allow(dead_code)]
#[path = "../benches/support/raw_frame.rs"]
mod raw_frame;

use common::{wait_idle, wait_stats, within};
use std::collections::BTreeMap;
use std::time::Duration;
use wiremux::engine::client::{Error, Response};
use wiremux::engine::{Client, Config, Pipeline};
use wiremux::proto::builder::{BuildError, CommandBuilder};

async fn connect(addr: std::net::SocketAddr) -> Client {
    within("connect", Client::connect(addr)).await.unwrap()
}

/// Every answer left on `pipeline`, in the order they came, failing the
/// test if a tag comes back twice.
async fn drain(pipeline: &mut Pipeline) -> Vec<(u64, Result<Response, Error>)> {
    let mut answers = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while let Some((tag, result)) = within("an answer", pipeline.next()).await {
        assert!(seen.insert(tag), "tag {tag} answered twice");
        answers.push((tag, result));
    }
    assert_eq!(pipeline.in_flight(), 0);
    answers
}

fn echo(tag: u64) -> CommandBuilder {
    CommandBuilder::new("echo").data(format!("echo {tag}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_come_back_tagged_in_completion_order() {
    let (_server, addr) = common::start_default().await;
    let client = connect(addr).await;
    let mut pipeline = client.pipeline();
    const SLEEP: u64 = 1000;
    pipeline
        .start(SLEEP, CommandBuilder::new("sleep").arg("ms", "200"))
        .unwrap();
    for tag in 0..100 {
        pipeline.start(tag, echo(tag)).unwrap();
    }
    assert_eq!(pipeline.in_flight(), 101);
    let answers = drain(&mut pipeline).await;
    assert_eq!(answers.len(), 101);
    // The sleep was sent first and answered last: the echoes overtook it.
    let (last, result) = answers.last().unwrap();
    assert_eq!(*last, SLEEP);
    assert_eq!(result.as_ref().unwrap().body, "200");
    for (tag, result) in &answers[..100] {
        assert_eq!(result.as_ref().unwrap().body, format!("echo {tag}"));
    }
    // Nothing left: `next` says so at once, and the pipeline can go on.
    assert!(pipeline.next().await.is_none());
    pipeline.start(7, echo(7)).unwrap();
    let (tag, result) = within("one more", pipeline.next()).await.unwrap();
    assert_eq!((tag, result.unwrap().body), (7, "echo 7".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_answers_and_the_rest_still_run() {
    let (_server, addr) = common::start_default().await;
    let client = connect(addr).await;
    let mut pipeline = client.pipeline();
    let long = vec![b'v'; 70_000];
    let cases: Vec<(CommandBuilder, Result<&str, Error>)> = vec![
        (
            CommandBuilder::new("fail").arg("message", "boom"),
            Err(Error::Application("boom".into())),
        ),
        (
            CommandBuilder::new("nope"),
            Err(Error::Application("unknown command: nope".into())),
        ),
        (
            CommandBuilder::new("sleep"),
            Err(Error::Application("missing argument: ms".into())),
        ),
        // Cannot be put into frames: fails in the client, never sent.
        (
            CommandBuilder::new("put").arg("key", long),
            Err(Error::Build(BuildError::ValueTooLong {
                name: "key".into(),
                len: 70_000,
            })),
        ),
        // A command name longer than a frame: refused in the client too.
        (
            CommandBuilder::new("n".repeat(40_000)),
            Err(Error::Build(BuildError::CommandNameTooLong {
                len: 40_000,
                max: 32768,
            })),
        ),
        (CommandBuilder::new("echo").data("fine"), Ok("fine")),
    ];
    let mut expected = BTreeMap::new();
    for (tag, (command, outcome)) in cases.into_iter().enumerate() {
        pipeline.start(tag as u64, command).unwrap();
        expected.insert(tag as u64, outcome);
    }
    let got: BTreeMap<_, _> = drain(&mut pipeline)
        .await
        .into_iter()
        .map(|(tag, result)| (tag, result.map(|r| r.body)))
        .collect();
    let expected: BTreeMap<_, _> = expected
        .into_iter()
        .map(|(tag, outcome)| (tag, outcome.map(bytes::Bytes::from)))
        .collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_calls_than_request_ids_wait_their_turn() {
    let (server, addr) = common::start(Config {
        max_executing: 40_000,
        ..Config::default()
    })
    .await;
    let client = connect(addr).await;
    let mut pipeline = client.pipeline();
    // More than the 32768 odd IDs: the rest wait in the client for an ID.
    const CALLS: u64 = 40_000;
    for tag in 0..CALLS {
        pipeline.start(tag, echo(tag)).unwrap();
    }
    let answers = drain(&mut pipeline).await;
    assert_eq!(answers.len() as u64, CALLS);
    for (tag, result) in answers {
        assert_eq!(result.unwrap().body, format!("echo {tag}"));
    }
    let stats = server.stats();
    assert_eq!(stats.requests_completed, CALLS, "{stats:?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_answers_every_call_once() {
    let (server, addr) = common::start(Config {
        drain_timeout: Duration::from_millis(100),
        ..Config::default()
    })
    .await;
    let client = connect(addr).await;
    let mut pipeline = client.pipeline();
    for tag in 0..10 {
        let command = CommandBuilder::new("sleep").arg("ms", "600000");
        pipeline.start(tag, command).unwrap();
    }
    pipeline.flush();
    wait_stats(&server, "ten sleeps in flight", |s| {
        s.requests_in_flight == 10
    })
    .await;
    server.shutdown();
    let answers = drain(&mut pipeline).await;
    let mut tags: Vec<u64> = answers.iter().map(|(tag, _)| *tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..10).collect::<Vec<_>>());
    for (tag, result) in answers {
        let err = result.unwrap_err();
        assert!(matches!(err, Error::ConnectionLost(_)), "{tag}: {err:?}");
    }
    within("the client to close", async {
        while !client.is_closed() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(
        pipeline.start(10, echo(10)).unwrap_err(),
        Error::ConnectionLost("the connection has closed".into())
    );
    assert_eq!(pipeline.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_pipeline_leaves_the_connection_sound() {
    let (server, addr) = common::start_default().await;
    let client = connect(addr).await;
    let mut pipeline = client.pipeline();
    for tag in 0..100 {
        let ms = (100 + tag % 50).to_string();
        pipeline
            .start(tag, CommandBuilder::new("sleep").arg("ms", ms))
            .unwrap();
    }
    let blob = CommandBuilder::new("blob").arg("size", "20000000");
    pipeline.start(100, blob).unwrap();
    pipeline.flush();
    wait_stats(&server, "the calls to run and the blob to stream", |s| {
        s.requests_started == 101 && s.bytes_out > 1 << 20
    })
    .await;
    // Some calls answered, some running, one streaming; and some queued
    // but never sent.
    for tag in 101..111 {
        pipeline.start(tag, echo(tag)).unwrap();
    }
    drop(pipeline);
    // A new pipeline and single calls on the same connection are fine.
    let mut pipeline = client.pipeline();
    for tag in 0..1000 {
        pipeline.start(tag, echo(tag)).unwrap();
    }
    for (tag, result) in drain(&mut pipeline).await {
        assert_eq!(result.unwrap().body, format!("echo {tag}"));
    }
    let r = within("a call", client.call("echo").data("after").send()).await;
    assert_eq!(r.unwrap().body, "after");
    // The dropped pipeline's calls finished on the server and freed their
    // IDs; its queued calls were never sent.
    drop((pipeline, client));
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_started, 101 + 1000 + 1, "{stats:?}");
    assert_eq!(stats.requests_failed, 0, "{stats:?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_and_single_calls_share_a_connection_without_mixing_answers() {
    let (_server, addr) = common::start_default().await;
    let client = connect(addr).await;
    // Several rounds, so pipeline slots in the client are freed and reused.
    for round in 0..3 {
        let tasks: Vec<_> = (0..3)
            .map(|p| {
                let client = client.clone();
                tokio::spawn(async move {
                    let mut pipeline = client.pipeline();
                    for tag in 0..2000u64 {
                        let data = format!("{round}/{p}/{tag}");
                        pipeline
                            .start(tag, CommandBuilder::new("echo").data(data))
                            .unwrap();
                        if tag % 100 == 99 {
                            pipeline.flush();
                        }
                    }
                    for (tag, result) in drain(&mut pipeline).await {
                        assert_eq!(result.unwrap().body, format!("{round}/{p}/{tag}"));
                    }
                })
            })
            .collect();
        for i in 0..200 {
            let data = format!("{round}/single/{i}");
            let r = within(
                "a single call",
                client.call("echo").data(data.clone()).send(),
            )
            .await;
            assert_eq!(r.unwrap().body, data);
        }
        for task in tasks {
            within("a pipeline", task).await.unwrap();
        }
    }
}

/// A byte stream whose read panics once anything has been written to it:
/// a stand-in for a bug inside the client's connection task.
struct PanicsOnRead {
    written: bool,
    reader: Option<std::task::Waker>,
}

impl tokio::io::AsyncRead for PanicsOnRead {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.written {
            panic!("a bug in the connection task");
        }
        self.reader = Some(cx.waker().clone());
        std::task::Poll::Pending
    }
}

impl tokio::io::AsyncWrite for PanicsOnRead {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.written = true;
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_connection_task_still_answers_every_call() {
    let client = Client::new(PanicsOnRead {
        written: false,
        reader: None,
    });
    let mut pipeline = client.pipeline();
    for tag in 0..5 {
        pipeline.start(tag, echo(tag)).unwrap();
    }
    // The calls are written, then the read panics: each is answered with
    // an error instead of waiting forever.
    let answers = drain(&mut pipeline).await;
    assert_eq!(answers.len(), 5);
    for (tag, result) in answers {
        assert_eq!(
            result.unwrap_err(),
            Error::ConnectionLost("the client's connection task failed".into()),
            "call {tag}"
        );
    }
    let err = within("a call after the failure", client.call("echo").send())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        Error::ConnectionLost("the connection has closed".into())
    );
}

/// A peer that answers every command's data frame with it, as a
/// bytes-response, and returns the data it was sent in the order it came.
async fn recording_echo_peer(mut io: tokio::io::DuplexStream) -> Vec<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wiremux::proto::FrameType;
    let (mut rbuf, mut out) = (bytes::BytesMut::new(), bytes::BytesMut::new());
    let mut written = Vec::new();
    loop {
        rbuf.reserve(16 << 10);
        if io.read_buf(&mut rbuf).await.expect("read") == 0 {
            return written;
        }
        raw_frame::for_each_frame(&mut rbuf, |header, data| {
            if header.frame_type != FrameType::COMMAND_DATA {
                return;
            }
            written.push(String::from_utf8(data.to_vec()).unwrap());
            raw_frame::put_answer(&mut out, header.request_id, data);
        });
        io.write_all(&out).await.expect("write");
        out.clear();
    }
}

/// Calls are written in the order they were started, whether they go out
/// as they come or wait in the client's queue: here two batches, each
/// more than the client buffers for writing, and more calls in all than
/// there are request IDs, so that IDs are reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_written_in_the_order_they_were_started() {
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let peer = tokio::spawn(recording_echo_peer(theirs));
    let client = Client::new(ours);
    let mut pipeline = client.pipeline();
    const CALLS: u64 = 40_000;
    for tag in 0..CALLS / 2 {
        pipeline.start(tag, echo(tag)).unwrap();
    }
    pipeline.flush();
    for tag in CALLS / 2..CALLS {
        pipeline.start(tag, echo(tag)).unwrap();
    }
    let answers = drain(&mut pipeline).await;
    assert_eq!(answers.len() as u64, CALLS);
    for (tag, result) in answers {
        assert_eq!(result.unwrap().body, format!("echo {tag}"));
    }
    drop(pipeline);
    drop(client);
    let written = within("the peer's end", peer).await.unwrap();
    let expected: Vec<String> = (0..CALLS).map(|tag| format!("echo {tag}")).collect();
    assert!(written == expected, "the calls were written out of order");
}
