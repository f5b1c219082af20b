//! Raw frames through a real socket: every malformed frame gives its exact
//! error frame; request-level errors leave the other requests running,
//! connection-level errors close the connection (DESIGN.md, "Rules of the
//! house"; the scopes are `wiremux_proto::server::ErrorKind::scope`).

mod common;

use common::{sorted, wait_idle, wait_stats, Raw};
use wiremux::engine::{Config, Server};
use wiremux::proto::builder::CommandBuilder;

fn sleep(ms: u64) -> CommandBuilder {
    CommandBuilder::new("sleep").arg("ms", ms.to_string())
}

/// A request-level error: request 3 gets `error` (application flag); a
/// sleep started before it and an echo sent after it are answered; the
/// frames in `rest` (the rest of the broken request) are dropped silently;
/// ID 3 can then be used again, and the connection stays open.
async fn request_level(bad: &[&str], rest: &[&str], error: &str) {
    let (server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send_command(101, sleep(300)).await;
    raw.send(bad).await;
    raw.send(&["5 command-name have-data echo", "5 command-data eos after"])
        .await;
    let expected = sorted(vec![
        format!("3 error-response application {error}"),
        "5 bytes-response eos after".into(),
        "101 bytes-response eos 300".into(),
    ]);
    assert_eq!(sorted(raw.lines(3).await), expected);
    raw.send(rest).await;
    raw.send(&["3 command-name have-data echo", "3 command-data eos again"])
        .await;
    assert_eq!(raw.line().await, "3 bytes-response eos again");
    raw.shutdown_write().await;
    assert_eq!(raw.until_closed().await, Vec::<String>::new());
    let stats = wait_idle(&server).await;
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    assert_eq!(stats.requests_failed, 1, "{stats:?}");
    assert_eq!(stats.requests_completed, 3, "{stats:?}");
}

/// A connection-level error: a sleep is in flight, then `bad` arrives; the
/// one frame before the close is `error` and the sleep is never answered.
async fn connection_level(bad: &[&str], error: &str) {
    connection_level_bytes(&encode(bad), error).await
}

fn encode(lines: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        wiremux::proto::human::parse_frame(line)
            .unwrap()
            .encode(&mut out);
    }
    out
}

async fn connection_level_bytes(bad: &[u8], error: &str) {
    let (server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send_command(101, sleep(20_000)).await;
    wait_stats(&server, "the sleep to start", |s| s.requests_in_flight == 1).await;
    raw.write(bad).await;
    assert_eq!(raw.until_closed().await, [error]);
    drop(raw);
    let stats = wait_idle(&server).await;
    assert_eq!(stats.protocol_errors, 1, "{stats:?}");
    assert_eq!(stats.requests_cancelled, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn even_request_id_is_a_protocol_error() {
    connection_level(
        &["2 command-name eos echo"],
        "2 error-response protocol request 2: a client command must use an odd request ID",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_a_running_id_is_a_protocol_error() {
    // 101 is the sleep still running.
    connection_level(
        &["101 command-name eos echo"],
        "101 error-response protocol request 101: command-name frame for an ID whose command is still running",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reusing_an_id_still_receiving_is_a_protocol_error() {
    connection_level(
        &["1 command-name have-args sleep", "1 command-name eos echo"],
        "1 error-response protocol request 1: command-name frame for an ID whose command is still being received",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_type_is_a_protocol_error() {
    connection_level(
        &["3 7 0 what"],
        "3 error-response protocol request 3: frame of unknown type 7",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_for_a_request_never_started_is_a_protocol_error() {
    connection_level(
        &["3 command-data eos x"],
        "3 error-response protocol request 3: command-data frame for a request that was never started",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_for_a_complete_request_is_a_protocol_error() {
    connection_level(
        &[r"101 command-argument eoa \x01\x00\x01\x00ab"],
        "101 error-response protocol request 101: command-argument frame for a request whose command is already complete",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_length_header_is_refused_before_buffering() {
    // 16 MiB - 1 declared, request 1, command-name eos: no payload follows.
    connection_level_bytes(
        &[0xff, 0xff, 0xff, 0x01, 0x00, 0x11],
        "1 error-response protocol frame for request 1 declares a 16777215-byte payload; the maximum is 65535",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_frame_not_expected() {
    request_level(
        &[
            "3 command-name have-data echo",
            r"3 command-argument eoa \x01\x00\x01\x00ab",
        ],
        &["3 command-data eos dropped"],
        "request 3: unexpected command-argument frame; expected command-data",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_frame_not_expected() {
    request_level(
        &[
            "3 command-name have-args sleep",
            "3 command-data continuation x",
        ],
        &[r"3 command-argument eoa \x02\x00\x01\x00ms1"],
        "request 3: unexpected command-data frame; expected command-argument",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_frame_without_flags() {
    request_level(
        &["3 command-name have-data echo", "3 command-data 0 abc"],
        &["3 command-data continuation more", "3 command-data eos end"],
        "request 3: command-data frame needs exactly one of continuation or eos; got 0",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argument_frame_shorter_than_its_header() {
    request_level(
        &[
            "3 command-name have-args sleep",
            r"3 command-argument eoa \x01\x00",
        ],
        &[],
        "request 3: command-argument frame of 2 bytes is shorter than its 4-byte header",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_argument_name() {
    request_level(
        &[
            "3 command-name have-args sleep",
            r"3 command-argument 0 \x05\x00\x01\x00ab",
        ],
        &[r"3 command-argument eoa \x01\x00\x01\x00xy"],
        "request 3: argument name of 5 bytes does not fit in its first frame (2 bytes follow the header)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_argument_value() {
    request_level(
        &[
            "3 command-name have-args sleep",
            r"3 command-argument eoa \x02\x00\x05\x00ms12",
        ],
        &[],
        "request 3: argument `ms`: frame ends with 2 of 5 value bytes and no continuation flag",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_name_without_flags() {
    request_level(
        &["3 command-name 0 echo"],
        &[],
        "request 3: command-name flags must be eos alone, or have-args and/or have-data; got 0",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_header_at_eof() {
    let (server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send(&["1 command-name have-data echo", "1 command-data eos ok"])
        .await;
    assert_eq!(raw.line().await, "1 bytes-response eos ok");
    raw.write(&[0x04, 0x00, 0x00]).await;
    raw.shutdown_write().await;
    assert_eq!(
        raw.until_closed().await,
        ["0 error-response protocol input ended inside a frame: 3 of 6 header bytes"]
    );
    let stats = wait_idle(&server).await;
    assert_eq!(stats.protocol_errors, 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_payload_at_eof() {
    let (_server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    // A header for request 5 announcing 4 payload bytes, and 2 of them.
    raw.write(&[0x04, 0x00, 0x00, 0x05, 0x00, 0x11, b'e', b'c'])
        .await;
    raw.shutdown_write().await;
    assert_eq!(
        raw.until_closed().await,
        ["5 error-response protocol input ended inside a frame: 2 of 4 payload bytes of a frame for request 5"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_frames_of_several_commands() {
    let (_server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send(&[
        "1 command-name have-args|have-data echo",
        "3 command-name have-args sleep",
        "5 command-name have-data echo",
        "7 command-name have-args sleep",
        r"1 command-argument 0 \x01\x00\x01\x00ab",
        r"3 command-argument eoa \x02\x00\x02\x00ms50",
        "5 command-data continuation hello",
        // An argument value continued in a second frame (wiremux).
        r"7 command-argument continuation \x02\x00\x02\x00ms1",
        r"1 command-argument eoa \x01\x00\x01\x00cd",
        "5 command-data eos  world",
        "7 command-argument eoa 0",
        "1 command-data continuation one",
        "1 command-data eos two",
    ])
    .await;
    assert_eq!(
        sorted(raw.lines(4).await),
        [
            "1 bytes-response eos onetwo",
            "3 bytes-response eos 50",
            "5 bytes-response eos hello world",
            "7 bytes-response eos 10",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_come_in_completion_order() {
    let (_server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send_command(1, sleep(2000)).await;
    let mut expected = Vec::new();
    for i in 0..100u16 {
        let id = 3 + 2 * i;
        raw.send_command(id, CommandBuilder::new("echo").data(format!("e{id}")))
            .await;
        expected.push(format!("{id} bytes-response eos e{id}"));
    }
    let echoes = raw.lines(100).await;
    assert_eq!(sorted(echoes), sorted(expected));
    assert_eq!(raw.line().await, "1 bytes-response eos 2000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_client_gets_every_answer() {
    let (server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send_command(1, sleep(300)).await;
    raw.send_command(3, CommandBuilder::new("echo").data("quick"))
        .await;
    raw.send_command(5, CommandBuilder::new("blob").arg("size", "100000"))
        .await;
    raw.shutdown_write().await;
    let mut lines = Vec::new();
    let mut blob = Vec::new();
    while let Some(frame) = raw.frame().await {
        if frame.request_id == 5 {
            blob.extend_from_slice(&frame.payload);
            if frame.flags.bits() == wiremux::proto::Flags::DATA_EOS {
                lines.push("5 blob done".to_string());
            }
        } else {
            lines.push(wiremux::proto::human::format_frame(&frame));
        }
    }
    assert_eq!(
        sorted(lines.clone()),
        [
            "1 bytes-response eos 300",
            "3 bytes-response eos quick",
            "5 blob done"
        ]
    );
    assert_eq!(lines.last().unwrap(), "1 bytes-response eos 300");
    assert_eq!(blob.len(), 100_000);
    assert!(blob.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_completed, 3, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_requests_at_eof_get_their_errors() {
    let (server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send_command(7, sleep(300)).await;
    raw.send(&[
        "1 command-name have-args sleep",
        "3 command-name have-data echo",
        "3 command-data eos x",
        "5 command-name have-data echo",
        "5 command-data continuation abc",
        "9 command-name have-args sleep",
        r"9 command-argument continuation \x02\x00\x04\x00ms1",
    ])
    .await;
    raw.shutdown_write().await;
    assert_eq!(
        raw.until_closed().await,
        [
            "3 bytes-response eos x",
            "1 error-response application request 1: input ended before the command was complete (receiving arguments)",
            "5 error-response application request 5: input ended before the command was complete (receiving data)",
            "9 error-response application request 9: input ended before the command was complete (receiving arguments)",
            "7 bytes-response eos 300",
        ]
    );
    let stats = wait_idle(&server).await;
    assert_eq!(stats.requests_failed, 3, "{stats:?}");
    assert_eq!(stats.requests_completed, 2, "{stats:?}");
    assert_eq!(stats.protocol_errors, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_server_refuses_writes() {
    let (server, addr) = common::start(Config {
        read_only: true,
        ..Config::default()
    })
    .await;
    let mut raw = Raw::connect(addr).await;
    raw.send_command(1, CommandBuilder::new("put").arg("key", "k").data("v"))
        .await;
    assert_eq!(
        raw.line().await,
        "1 error-response application permission denied: put needs write access and this connection is read-only"
    );
    raw.send_command(3, CommandBuilder::new("get").arg("key", "k"))
        .await;
    assert_eq!(
        raw.line().await,
        "3 error-response application no such key: k"
    );
    raw.send_command(5, CommandBuilder::new("echo").data("still reads"))
        .await;
    assert_eq!(raw.line().await, "5 bytes-response eos still reads");
    drop(raw);
    wait_idle(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_server_stores_values() {
    let (_server, addr) = common::start_default().await;
    let mut raw = Raw::connect(addr).await;
    raw.send_command(1, CommandBuilder::new("put").arg("key", "k").data("v"))
        .await;
    assert_eq!(raw.line().await, "1 bytes-response eos ok");
    raw.send_command(1, CommandBuilder::new("get").arg("key", "k"))
        .await;
    assert_eq!(raw.line().await, "1 bytes-response eos v");
}

/// Counters after a known workload equal what the peer saw on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_add_up_after_a_known_workload() {
    let server = Server::builder()
        .registry(wiremux::engine::demo::registry())
        .build();
    let (addr, _) = common::serve(server.clone()).await;
    let mut raw = Raw::connect(addr).await;
    let mut id = 1u16;
    let mut next = || {
        id += 2;
        id
    };
    for i in 0..10 {
        raw.send_command(next(), CommandBuilder::new("echo").data(format!("{i}")))
            .await;
    }
    raw.send_command(next(), CommandBuilder::new("blob").arg("size", "200000"))
        .await;
    raw.send_command(next(), CommandBuilder::new("fail").arg("message", "no"))
        .await;
    raw.send_command(next(), CommandBuilder::new("nope")).await;
    raw.send_command(next(), sleep(10)).await;
    // A request-level reactor error counts as a request that failed.
    raw.send(&["99 command-name 0 echo"]).await;
    raw.shutdown_write().await;
    let mut completed = 0;
    let mut failed = 0;
    while let Some(frame) = raw.frame().await {
        match frame.frame_type {
            wiremux::proto::FrameType::ERROR_RESPONSE => failed += 1,
            _ if frame.flags.bits() == wiremux::proto::Flags::DATA_EOS => completed += 1,
            _ => {}
        }
    }
    assert_eq!((completed, failed), (12, 3));
    let (frames_sent, bytes_sent) = (raw.frames_sent, raw.bytes_sent);
    let (frames_received, bytes_received) = (raw.frames_received, raw.bytes_received);
    drop(raw);
    let s = wait_idle(&server).await;
    assert_eq!(s.connections_accepted, 1, "{s:?}");
    assert_eq!(s.connections_closed, 1, "{s:?}");
    assert_eq!(s.frames_in, frames_sent, "{s:?}");
    assert_eq!(s.bytes_in, bytes_sent, "{s:?}");
    assert_eq!(s.frames_out, frames_received, "{s:?}");
    assert_eq!(s.bytes_out, bytes_received, "{s:?}");
    assert_eq!(s.requests_started, 15, "{s:?}");
    assert_eq!(s.requests_completed, 12, "{s:?}");
    assert_eq!(s.requests_failed, 3, "{s:?}");
    assert_eq!(s.requests_cancelled, 0, "{s:?}");
    assert_eq!(s.protocol_errors, 0, "{s:?}");
}
