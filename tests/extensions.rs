//! PROTOCOL.md section 8 through a real socket, with raw frames: each
//! example of the section, cancellation of a running, a held and a
//! still-receiving request, deadlines, and a chain of 10 000 `@use` links
//! sent in one write.

mod common;

use common::{sorted, wait_idle, wait_stats, Raw};
use wiremux::proto::builder::CommandBuilder;

fn add(a: &'static str, b: &'static str) -> CommandBuilder {
    CommandBuilder::new("add").arg("a", a).arg("b", b)
}

fn sleep(ms: u64) -> CommandBuilder {
    CommandBuilder::new("sleep").arg("ms", ms.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_lists_every_extension() {
    let (_server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send(&["1 command-name eos @capabilities"]).await;
    assert_eq!(
        raw.line().await,
        "1 bytes-response eos after use keep cancel deadline"
    );
}

/// Section 8.7's example: three `add`s in one write, answered 3, 13, 113.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_chain_is_answered_in_one_round_trip() {
    let (server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    let mut wire = bytes::BytesMut::new();
    add("1", "2")
        .arg("@keep", "")
        .encode(1, 32768, &mut wire)
        .unwrap();
    CommandBuilder::new("add")
        .arg("@use:a", "1")
        .arg("b", "10")
        .arg("@keep", "")
        .encode(3, 32768, &mut wire)
        .unwrap();
    CommandBuilder::new("add")
        .arg("@use:a", "3")
        .arg("b", "100")
        .encode(5, 32768, &mut wire)
        .unwrap();
    raw.write(&wire).await;
    assert_eq!(
        raw.lines(3).await,
        [
            "1 bytes-response eos 3",
            "3 bytes-response eos 13",
            "5 bytes-response eos 113"
        ]
    );
    raw.shutdown_write().await;
    assert!(raw.until_closed().await.is_empty());
    let stats = wait_idle(&server).await;
    assert_eq!((stats.requests_completed, stats.requests_failed), (3, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_holds_a_get_until_its_put_has_ended() {
    let (_server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    // The put waits 100 ms behind a sleep it runs after; the get runs
    // after the put, so it sees the value although all were sent at once.
    raw.send_command(1, sleep(100)).await;
    raw.send_command(
        3,
        CommandBuilder::new("put")
            .arg("key", "k")
            .arg("@after", "1")
            .data("v1"),
    )
    .await;
    raw.send_command(
        5,
        CommandBuilder::new("get")
            .arg("key", "k")
            .arg("@after", "3"),
    )
    .await;
    assert_eq!(
        raw.lines(3).await,
        [
            "1 bytes-response eos 100",
            "3 bytes-response eos ok",
            "5 bytes-response eos v1"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_unknown_dependencies_give_their_errors() {
    let (_server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send_command(1, CommandBuilder::new("fail").arg("message", "no"))
        .await;
    raw.send_command(3, add("1", "1").arg("@after", "1")).await;
    raw.send_command(5, add("1", "1").arg("@after", "7")).await;
    raw.send_command(7, add("1", "1").arg("@after", "7")).await;
    let use_11 = || CommandBuilder::new("add").arg("@use:a", "11").arg("b", "1");
    raw.send_command(9, use_11()).await;
    raw.send_command(11, add("1", "1")).await;
    raw.send_command(13, use_11()).await;
    raw.send_command(19, add("1", "1").arg("@use:a", "11"))
        .await;
    raw.send_command(15, add("1", "1").arg("@after", "1,x"))
        .await;
    raw.send_command(17, add("1", "1").arg("@frobnicate", ""))
        .await;
    assert_eq!(
        sorted(raw.lines(10).await),
        sorted(vec![
            "1 error-response application no".into(),
            "3 error-response application dependency 1 failed".into(),
            "5 error-response application unknown dependency 7".into(),
            "7 error-response application unknown dependency 7".into(),
            "9 error-response application unknown dependency 11".into(),
            "11 bytes-response eos 2".into(),
            "13 error-response application response 11 was not kept".into(),
            "15 error-response application malformed @after: 1,x".into(),
            "17 error-response application unknown reserved argument: @frobnicate".into(),
            "19 error-response application argument `a` given twice".into(),
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_sleep_and_its_dependents() {
    let (server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send_command(1, sleep(60_000)).await;
    raw.send_command(3, add("1", "2").arg("@after", "1")).await;
    wait_stats(&server, "the sleep to run", |s| s.requests_in_flight == 2).await;
    raw.send_command(5, CommandBuilder::new("@cancel").arg("id", "1"))
        .await;
    // The target's error comes before the answer to @cancel, and its
    // dependent fails with it.
    assert_eq!(
        raw.lines(3).await,
        [
            "1 error-response application cancelled",
            "3 error-response application dependency 1 failed",
            "5 bytes-response eos cancelled"
        ]
    );
    // Too late now: nothing to cancel. ID 1 is free again.
    raw.send_command(7, CommandBuilder::new("@cancel").arg("id", "1"))
        .await;
    assert_eq!(raw.line().await, "7 bytes-response eos not running");
    raw.send_command(1, add("2", "2")).await;
    assert_eq!(raw.line().await, "1 bytes-response eos 4");
    raw.shutdown_write().await;
    assert!(raw.until_closed().await.is_empty());
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_in_flight, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_request_still_receiving_and_a_held_one() {
    let (_server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send(&[
        "1 command-name have-data echo",
        "1 command-data continuation part",
    ])
    .await;
    raw.send_command(3, sleep(60_000)).await;
    raw.send_command(5, add("1", "1").arg("@after", "3")).await;
    raw.send_command(7, CommandBuilder::new("@cancel").arg("id", "1"))
        .await;
    raw.send_command(9, CommandBuilder::new("@cancel").arg("id", "5"))
        .await;
    raw.send_command(11, CommandBuilder::new("@cancel").arg("id", "3"))
        .await;
    assert_eq!(
        raw.lines(6).await,
        [
            "1 error-response application cancelled",
            "7 bytes-response eos cancelled",
            "5 error-response application cancelled",
            "9 bytes-response eos cancelled",
            "3 error-response application cancelled",
            "11 bytes-response eos cancelled"
        ]
    );
    // The rest of the cancelled request 1 is dropped, and the connection
    // goes on.
    raw.send(&[
        "1 command-data eos rest",
        "13 command-name have-data echo",
        "13 command-data eos on",
    ])
    .await;
    assert_eq!(raw.line().await, "13 bytes-response eos on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_stops_a_sleep_and_counts_time_held() {
    let (server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send_command(1, sleep(60_000).arg("@deadline", "50"))
        .await;
    // Held behind a 60 s sleep, with 80 ms to live: held time counts.
    raw.send_command(3, sleep(60_000)).await;
    raw.send_command(5, add("1", "1").arg("@after", "3").arg("@deadline", "80"))
        .await;
    raw.send_command(7, add("1", "1").arg("@deadline", "soon"))
        .await;
    assert_eq!(
        raw.lines(3).await,
        [
            "7 error-response application malformed @deadline: soon",
            "1 error-response application timed out after 50 ms",
            "5 error-response application timed out after 80 ms"
        ]
    );
    raw.send_command(9, CommandBuilder::new("@cancel").arg("id", "3"))
        .await;
    assert_eq!(raw.lines(2).await.len(), 2);
    raw.shutdown_write().await;
    assert!(raw.until_closed().await.is_empty());
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_in_flight, 0, "{stats:?}");
}

/// 10 000 links, each adding 1 to the one before, in one write: one
/// round trip, every answer right, and no stack overflow anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_ten_thousand_links_in_one_write() {
    let (server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    let links = 10_000u16;
    let mut wire = bytes::BytesMut::new();
    add("0", "1")
        .arg("@keep", "")
        .encode(1, 32768, &mut wire)
        .unwrap();
    for i in 1..links {
        CommandBuilder::new("add")
            .arg("@use:a", (2 * i - 1).to_string())
            .arg("b", "1")
            .arg("@keep", "")
            .encode(2 * i + 1, 32768, &mut wire)
            .unwrap();
    }
    raw.write(&wire).await;
    let lines = raw.lines(usize::from(links)).await;
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, &format!("{} bytes-response eos {}", 2 * i + 1, i + 1));
    }
    raw.shutdown_write().await;
    assert!(raw.until_closed().await.is_empty());
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_completed, u64::from(links));
}
