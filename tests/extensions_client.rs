//! The client side of PROTOCOL.md section 8 against fake servers written
//! here: the exact frames the client sends (the capability probe, reserved
//! arguments, `@cancel`), when it sends them, and which request IDs it
//! reuses; and the fallback against a server without the extensions.

mod common;

use bytes::BytesMut;
use common::within;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use wiremux::engine::client::{Call, Error};
use wiremux::engine::Client;
use wiremux::proto::builder::CommandBuilder;
use wiremux::proto::human::{format_frame, parse_frame};
use wiremux::proto::FrameCodec;

const ALL: &str = "after use keep cancel deadline";

/// The server end of a client's connection, answered by hand.
struct Fake {
    io: DuplexStream,
    buf: BytesMut,
    codec: FrameCodec,
}

fn pair() -> (Client, Fake) {
    let (near, far) = tokio::io::duplex(4 << 20);
    let fake = Fake {
        io: far,
        buf: BytesMut::new(),
        codec: FrameCodec::new(),
    };
    (Client::new(near), fake)
}

impl Fake {
    /// The next `n` frames the client sends, one human-readable line each.
    async fn frames(&mut self, n: usize) -> Vec<String> {
        let mut lines = Vec::with_capacity(n);
        while lines.len() < n {
            match self.codec.decode_frame(&mut self.buf).unwrap() {
                Some(frame) => lines.push(format_frame(&frame)),
                None => {
                    let read = within("a frame", self.io.read_buf(&mut self.buf)).await;
                    assert_ne!(read.unwrap(), 0, "the client closed; got {lines:?}");
                }
            }
        }
        lines
    }

    /// Writes frames given as human-readable lines, in one write.
    async fn answer(&mut self, lines: &[&str]) {
        let mut out = Vec::new();
        for line in lines {
            parse_frame(line).unwrap().encode(&mut out);
        }
        self.io.write_all(&out).await.unwrap();
    }

    /// Fails if the client sends anything more within `wait` (paused time:
    /// this only lets the client run until it is idle).
    async fn nothing_more(&mut self, wait: Duration) {
        if let Some(frame) = self.codec.decode_frame(&mut self.buf).unwrap() {
            panic!("unexpected frame {}", format_frame(&frame));
        }
        let read = tokio::time::timeout(wait, self.io.read_buf(&mut self.buf)).await;
        if let Ok(n) = read {
            let n = n.unwrap();
            let frame = self.codec.decode_frame(&mut self.buf).unwrap();
            panic!(
                "unexpected bytes ({n}): {:?}",
                frame.as_ref().map(format_frame)
            );
        }
    }
}

/// A call polled once, so it goes to the connection.
async fn sent(mut call: Call) -> Call {
    let _ = futures::poll!(&mut call);
    call
}

fn add<'c>(client: &'c Client, a: &str, b: &str) -> wiremux::engine::client::CallBuilder<'c> {
    client
        .call("add")
        .arg("a", a.to_owned())
        .arg("b", b.to_owned())
}

#[tokio::test(start_paused = true)]
async fn plain_calls_send_no_probe_and_a_chain_probes_once() {
    let (client, mut fake) = pair();
    // Nothing that needs an extension: the frames are what they always were.
    let echo = sent(client.call("echo").data("x").start()).await;
    assert_eq!(
        fake.frames(2).await,
        ["1 command-name have-data echo", "1 command-data eos x"]
    );
    fake.answer(&["1 bytes-response eos x"]).await;
    assert_eq!(echo.await.unwrap().body, "x");

    // A chain: first the probe, and the chain waits for its answer.
    let a = add(&client, "1", "2").start();
    let b = client
        .call("add")
        .use_result("a", &a)
        .arg("b", "10")
        .start();
    let b = sent(b).await;
    assert_eq!(fake.frames(1).await, ["3 command-name eos @capabilities"]);
    fake.nothing_more(Duration::from_millis(50)).await;
    fake.answer(&[&format!("3 bytes-response eos {ALL}")]).await;
    // Then both links in one go; `a` is kept because `b` uses it.
    assert_eq!(
        fake.frames(7).await,
        [
            "5 command-name have-args add",
            r"5 command-argument 0 \x05\x00\x00\x00@keep",
            r"5 command-argument 0 \x01\x00\x01\x00a1",
            r"5 command-argument eoa \x01\x00\x01\x00b2",
            "7 command-name have-args add",
            r"7 command-argument 0 \x06\x00\x01\x00@use:a5",
            r"7 command-argument eoa \x01\x00\x02\x00b10",
        ]
    );
    fake.answer(&["7 bytes-response eos 13", "5 bytes-response eos 3"])
        .await;
    assert_eq!(b.await.unwrap().body, "13");
    assert_eq!(a.await.unwrap().body, "3");

    // Known now: no second probe, and `after` names the ID.
    let c = sent(client.call("sleep").arg("ms", "5").start()).await;
    let d = sent(client.call("echo").after(&c).start()).await;
    assert_eq!(
        fake.frames(4).await,
        [
            "9 command-name have-args sleep",
            r"9 command-argument eoa \x02\x00\x01\x00ms5",
            "11 command-name have-args echo",
            r"11 command-argument eoa \x06\x00\x01\x00@after9",
        ]
    );
    let caps = within("capabilities", client.capabilities()).await.unwrap();
    assert!(caps.pipelining() && caps.cancel() && caps.deadline());
    fake.answer(&["9 bytes-response eos 5", "11 bytes-response eos "])
        .await;
    assert_eq!(c.await.unwrap().body, "5");
    assert_eq!(d.await.unwrap().body, "");
    fake.nothing_more(Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn without_extensions_a_dependent_waits_for_the_answer_it_uses() {
    let (client, mut fake) = pair();
    let a = add(&client, "1", "2").start();
    let b = client
        .call("add")
        .use_result("a", &a)
        .arg("b", "10")
        .start();
    let c = client.call("echo").data("last").after(&b).start();
    let c = sent(c).await;
    assert_eq!(fake.frames(1).await, ["1 command-name eos @capabilities"]);
    fake.answer(&["1 error-response application unknown command: @capabilities"])
        .await;
    // No reserved argument: `a` alone, as an ordinary command.
    assert_eq!(
        fake.frames(3).await,
        [
            "3 command-name have-args add",
            r"3 command-argument 0 \x01\x00\x01\x00a1",
            r"3 command-argument eoa \x01\x00\x01\x00b2",
        ]
    );
    fake.nothing_more(Duration::from_millis(50)).await;
    fake.answer(&["3 bytes-response eos 3"]).await;
    // `b` gets `a`'s answer as an ordinary argument.
    assert_eq!(
        fake.frames(3).await,
        [
            "5 command-name have-args add",
            r"5 command-argument 0 \x01\x00\x01\x00a3",
            r"5 command-argument eoa \x01\x00\x02\x00b10",
        ]
    );
    fake.nothing_more(Duration::from_millis(50)).await;
    fake.answer(&["5 bytes-response eos 13"]).await;
    assert_eq!(
        fake.frames(2).await,
        ["7 command-name have-data echo", "7 command-data eos last"]
    );
    fake.answer(&["7 bytes-response eos last"]).await;
    assert_eq!(c.await.unwrap().body, "last");
    assert_eq!(b.await.unwrap().body, "13");
    assert_eq!(a.await.unwrap().body, "3");
    let caps = within("capabilities", client.capabilities()).await.unwrap();
    assert_eq!(caps.names().count(), 0);
}

#[tokio::test(start_paused = true)]
async fn without_extensions_a_failed_dependency_fails_its_dependents_unsent() {
    let (client, mut fake) = pair();
    let a = client.call("fail").arg("message", "boom").start();
    let b = client.call("echo").after(&a).start();
    let c = client.call("add").use_result("a", &b).arg("b", "1").start();
    let c = sent(c).await;
    // `a` needs no extension (nothing uses its body): it goes at once; `b`
    // waits for the probe.
    assert_eq!(
        fake.frames(3).await,
        [
            "1 command-name have-args fail",
            r"1 command-argument eoa \x07\x00\x04\x00messageboom",
            "3 command-name eos @capabilities",
        ]
    );
    fake.answer(&["3 error-response application unknown command: @capabilities"])
        .await;
    fake.nothing_more(Duration::from_millis(50)).await;
    fake.answer(&["1 error-response application boom"]).await;
    assert_eq!(
        within("b", b).await,
        Err(Error::Application("dependency 1 failed".into()))
    );
    // `c` depends on `b`, which never got an ID.
    assert_eq!(
        within("c", c).await,
        Err(Error::Application("dependency failed".into()))
    );
    assert_eq!(a.await, Err(Error::Application("boom".into())));
    fake.nothing_more(Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn a_call_sent_without_keep_is_used_through_the_client() {
    let (client, mut fake) = pair();
    within("capabilities", async {
        let caps = client.capabilities();
        tokio::pin!(caps);
        let _ = futures::poll!(&mut caps);
        assert_eq!(fake.frames(1).await, ["1 command-name eos @capabilities"]);
        fake.answer(&[&format!("1 bytes-response eos {ALL}")]).await;
        caps.await.unwrap()
    })
    .await;
    // `a` is written before anything uses it, so without @keep...
    let a = sent(client.call("echo").data("v").start()).await;
    assert_eq!(
        fake.frames(2).await,
        ["3 command-name have-data echo", "3 command-data eos v"]
    );
    // ...and `b`, started later, waits for its answer instead of `@use`.
    let b = sent(client.call("echo").use_result("x", &a).start()).await;
    fake.nothing_more(Duration::from_millis(50)).await;
    fake.answer(&["3 bytes-response eos v"]).await;
    assert_eq!(
        fake.frames(2).await,
        [
            "5 command-name have-args echo",
            r"5 command-argument eoa \x01\x00\x01\x00xv"
        ]
    );
    fake.answer(&["5 bytes-response eos v"]).await;
    assert_eq!(within("b", b).await.unwrap().body, "v");
    assert_eq!(a.await.unwrap().body, "v");
    fake.nothing_more(Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn a_timeout_goes_as_deadline_and_fails_the_call_if_no_answer_comes() {
    let (client, mut fake) = pair();
    let slow = client
        .call("sleep")
        .arg("ms", "60000")
        .timeout(Duration::from_millis(250))
        .start();
    let slow = sent(slow).await;
    assert_eq!(fake.frames(1).await, ["1 command-name eos @capabilities"]);
    fake.answer(&[&format!("1 bytes-response eos {ALL}")]).await;
    assert_eq!(
        fake.frames(3).await,
        [
            "3 command-name have-args sleep",
            r"3 command-argument 0 \t\x00\x03\x00@deadline250",
            r"3 command-argument eoa \x02\x00\x05\x00ms60000",
        ]
    );
    // The server never answers: the client gives up at the timeout.
    let started = tokio::time::Instant::now();
    assert_eq!(slow.await, Err(Error::TimedOut(Duration::from_millis(250))));
    assert_eq!(started.elapsed(), Duration::from_millis(250));
    // The server's own answer, when it comes, is read and discarded, and
    // only then is ID 3 free again.
    let next = sent(client.call("echo").data("n").start()).await;
    assert_eq!(fake.frames(2).await[0], "5 command-name have-data echo");
    fake.answer(&[
        "3 error-response application timed out after 250 ms",
        "5 bytes-response eos n",
    ])
    .await;
    assert_eq!(next.await.unwrap().body, "n");

    // When the server's answer comes first, it is the same error.
    let quick = client
        .call("sleep")
        .arg("ms", "60000")
        .timeout(Duration::from_millis(100))
        .start();
    let quick = sent(quick).await;
    let frames = fake.frames(3).await;
    assert_eq!(
        frames[1],
        r"7 command-argument 0 \t\x00\x03\x00@deadline100"
    );
    fake.answer(&["7 error-response application timed out after 100 ms"])
        .await;
    assert_eq!(
        quick.await,
        Err(Error::TimedOut(Duration::from_millis(100)))
    );
}

#[tokio::test(start_paused = true)]
async fn without_deadline_support_the_timeout_is_local_and_cancels() {
    let (client, mut fake) = pair();
    let slow = client
        .call("sleep")
        .arg("ms", "60000")
        .timeout(Duration::from_millis(100))
        .start();
    let slow = sent(slow).await;
    assert_eq!(fake.frames(1).await, ["1 command-name eos @capabilities"]);
    fake.answer(&["1 bytes-response eos cancel"]).await;
    assert_eq!(
        fake.frames(2).await,
        [
            "3 command-name have-args sleep",
            r"3 command-argument eoa \x02\x00\x05\x00ms60000",
        ]
    );
    assert_eq!(slow.await, Err(Error::TimedOut(Duration::from_millis(100))));
    assert_eq!(
        fake.frames(2).await,
        [
            "5 command-name have-args @cancel",
            r"5 command-argument eoa \x02\x00\x01\x00id3",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_is_cancelled_and_its_id_waits_for_the_terminal_frame() {
    let (client, mut fake) = pair();
    within("capabilities", async {
        let caps = client.capabilities();
        tokio::pin!(caps);
        let _ = futures::poll!(&mut caps);
        assert_eq!(fake.frames(1).await, ["1 command-name eos @capabilities"]);
        fake.answer(&[&format!("1 bytes-response eos {ALL}")]).await;
        caps.await.unwrap()
    })
    .await;
    // Fill the IDs after the probe's with calls the server holds: 3..=65531.
    let mut pipeline = client.pipeline();
    const HELD: usize = 32768 - 3;
    for tag in 0..HELD as u64 {
        pipeline.start(tag, CommandBuilder::new("h")).unwrap();
    }
    pipeline.flush();
    let held = fake.frames(HELD).await;
    assert_eq!(held[0], "3 command-name eos h");
    assert_eq!(held[HELD - 1], "65531 command-name eos h");
    // The target takes 65533, one more held call the last ID, 65535.
    let target = sent(client.call("sleep").arg("ms", "60000").start()).await;
    assert_eq!(
        fake.frames(2).await[0],
        "65533 command-name have-args sleep"
    );
    assert_eq!(target.request_id(), Some(65533));
    pipeline
        .start(HELD as u64, CommandBuilder::new("h"))
        .unwrap();
    pipeline.flush();
    assert_eq!(fake.frames(1).await, ["65535 command-name eos h"]);
    // Dropping the target cancels it, on the one free ID, the probe's.
    drop(target);
    assert_eq!(
        fake.frames(2).await,
        [
            "1 command-name have-args @cancel",
            r"1 command-argument eoa \x02\x00\x05\x00id65533",
        ]
    );
    // No ID is free: a new call waits.
    let next = sent(client.call("echo").data("n").start()).await;
    fake.nothing_more(Duration::from_millis(50)).await;
    // The target's terminal frame alone does not free 65533: the @cancel
    // still names it.
    fake.answer(&["65533 error-response application cancelled"])
        .await;
    fake.nothing_more(Duration::from_millis(50)).await;
    // @cancel's answer frees both; the allocator goes on from 3 and finds
    // 65533, the target's ID, free at last.
    fake.answer(&["1 bytes-response eos cancelled"]).await;
    assert_eq!(
        fake.frames(2).await,
        [
            "65533 command-name have-data echo",
            "65533 command-data eos n"
        ]
    );
    fake.answer(&["65533 bytes-response eos n"]).await;
    assert_eq!(next.await.unwrap().body, "n");
    drop(pipeline);
}

#[tokio::test(start_paused = true)]
async fn pipeline_cancel_by_tag() {
    let (client, mut fake) = pair();
    let mut pipeline = client.pipeline();
    pipeline
        .start(1, CommandBuilder::new("sleep").arg("ms", "60000"))
        .unwrap();
    pipeline.start(2, CommandBuilder::new("echo")).unwrap();
    pipeline.flush();
    assert_eq!(
        fake.frames(3).await,
        [
            "1 command-name have-args sleep",
            r"1 command-argument eoa \x02\x00\x05\x00ms60000",
            "3 command-name eos echo",
        ]
    );
    // Queued, never flushed: cancelled in the pipeline, nothing sent.
    pipeline.start(3, CommandBuilder::new("echo")).unwrap();
    pipeline.cancel(3);
    let (tag, result) = within("answer", pipeline.next()).await.unwrap();
    assert_eq!((tag, result), (3, Err(Error::Cancelled)));
    // Sent: answered at once, and the server is asked to stop it.
    pipeline.cancel(1);
    let (tag, result) = within("answer", pipeline.next()).await.unwrap();
    assert_eq!((tag, result), (1, Err(Error::Cancelled)));
    assert_eq!(fake.frames(1).await, ["5 command-name eos @capabilities"]);
    fake.answer(&[&format!("5 bytes-response eos {ALL}")]).await;
    assert_eq!(
        fake.frames(2).await,
        [
            "7 command-name have-args @cancel",
            r"7 command-argument eoa \x02\x00\x01\x00id1",
        ]
    );
    fake.answer(&[
        "1 error-response application cancelled",
        "7 bytes-response eos cancelled",
        "3 bytes-response eos ",
    ])
    .await;
    let (tag, result) = within("answer", pipeline.next()).await.unwrap();
    assert_eq!((tag, result.unwrap().body), (2, "".into()));
    assert_eq!(pipeline.in_flight(), 0);
    // Cancelling a tag that is answered already does nothing.
    pipeline.cancel(2);
    assert!(pipeline.next().await.is_none());
    fake.nothing_more(Duration::from_millis(50)).await;
}

#[tokio::test(start_paused = true)]
async fn a_chain_of_ten_thousand_is_written_before_any_answer() {
    let (client, mut fake) = pair();
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
    pipeline.flush();
    assert_eq!(fake.frames(1).await, ["1 command-name eos @capabilities"]);
    fake.answer(&[&format!("1 bytes-response eos {ALL}")]).await;
    // Every link, each using the one before, the last one not kept.
    let frames = fake.frames(4 * LINKS as usize - 1).await;
    let mut expected = vec![
        "3 command-name have-args add".to_string(),
        r"3 command-argument 0 \x05\x00\x00\x00@keep".to_string(),
        r"3 command-argument 0 \x01\x00\x01\x00a0".to_string(),
        r"3 command-argument eoa \x01\x00\x01\x00b1".to_string(),
    ];
    for link in 1..LINKS {
        let (id, prev) = (2 * link + 3, 2 * link + 1);
        let prev_len = prev.to_string().len();
        expected.push(format!("{id} command-name have-args add"));
        if link + 1 < LINKS {
            expected.push(format!(r"{id} command-argument 0 \x05\x00\x00\x00@keep"));
        }
        expected.push(format!(
            r"{id} command-argument 0 \x06\x00\x{prev_len:02x}\x00@use:a{prev}"
        ));
        expected.push(format!(r"{id} command-argument eoa \x01\x00\x01\x00b1"));
    }
    assert_eq!(frames.len(), expected.len());
    for (got, want) in frames.iter().zip(&expected) {
        assert_eq!(got, want);
    }
    // Answered in reverse, all in one write.
    let answers: Vec<String> = (0..LINKS)
        .rev()
        .map(|link| format!("{} bytes-response eos {}", 2 * link + 3, link + 1))
        .collect();
    let answers: Vec<&str> = answers.iter().map(String::as_str).collect();
    fake.answer(&answers).await;
    let mut got = 0;
    while let Some((tag, result)) = within("an answer", pipeline.next()).await {
        assert_eq!(result.unwrap().body, (tag + 1).to_string());
        got += 1;
    }
    assert_eq!(got, LINKS);
    assert_eq!(last.request_id(), Some(2 * LINKS as u16 + 1));
}
