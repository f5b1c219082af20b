//! Hostile peers against a real `wiremux serve` process with default
//! settings. Each test shows that the limit holds, that the server's memory
//! stays under a cap, and that another client is still served afterwards.
//!
//! Memory is the server process's resident set (VmRSS), read from /proc.
//! Figures are printed (run with `--nocapture`) for docs/RELIABILITY.md.

use bytes::BytesMut;
use common::hostile::{read_frame, read_until_closed, send_lines, Sampler, ServeProcess, Victim};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use wiremux_proto::builder::CommandBuilder;
use wiremux_proto::human::{format_frame, parse_frame};
use wiremux_proto::Frame;

mod common;

#[test]
fn a_header_announcing_16_mib_is_refused_before_buffering() {
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let mut s = server.connect();
    // 0xffffff bytes declared for request 1; send 1 MiB of it.
    s.write_all(&[0xff, 0xff, 0xff, 0x01, 0x00, 0x32]).unwrap();
    let _ = s.write_all(&vec![0u8; 1 << 20]);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let frames = read_until_closed(&mut s);
    assert_eq!(
        frames,
        ["1 error-response protocol frame for request 1 declares a 16777215-byte payload; the maximum is 65535"]
    );
    let after = server.rss_kib();
    println!("16 MiB header: server RSS {before} KiB -> {after} KiB");
    assert!(
        after < before + 8 * 1024,
        "server grew by {} KiB",
        after - before
    );
    server.assert_serving();
}

/// Writes `block` over and over (at most `max_bytes`) until a
/// `protocol` error-response arrives, while a thread reads every frame
/// until the server closes. Returns the bytes written when the protocol
/// error arrived (the server may have read fewer: the rest were in socket
/// buffers, and while the server drains input after the error, writing
/// goes on until the reader sees it) and the frames read, as human lines.
fn stream_until_cut(s: &mut TcpStream, block: &[u8], max_bytes: usize) -> (usize, Vec<String>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let sent = Arc::new(AtomicUsize::new(0));
    // usize::MAX until the protocol error has arrived.
    let cut_at = Arc::new(AtomicUsize::new(usize::MAX));
    let reader = {
        let mut r = s.try_clone().unwrap();
        let (sent, cut_at) = (sent.clone(), cut_at.clone());
        std::thread::spawn(move || {
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            while let Some(frame) = read_frame(&mut r, &mut buf) {
                if frame.frame_type == wiremux_proto::FrameType::ERROR_RESPONSE
                    && frame.flags.contains(wiremux_proto::Flags::PROTOCOL)
                {
                    cut_at.store(sent.load(Ordering::SeqCst), Ordering::SeqCst);
                }
                frames.push(format_frame(&frame));
            }
            frames
        })
    };
    while sent.load(Ordering::SeqCst) < max_bytes && cut_at.load(Ordering::SeqCst) == usize::MAX {
        if s.write_all(block).is_err() {
            break;
        }
        sent.fetch_add(block.len(), Ordering::SeqCst);
    }
    // The server drains input for a while after a protocol error; our end
    // of input lets it close at once.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let frames = reader.join().unwrap();
    (cut_at.load(Ordering::SeqCst), frames)
}

/// One encoded block of `count` continuation frames of `frame_type`, each
/// `len` bytes, for request 1.
fn continuation_block(frame_type: wiremux_proto::FrameType, len: usize, count: usize) -> Vec<u8> {
    let chunk = Frame::new(
        1,
        frame_type,
        wiremux_proto::Flags::new(wiremux_proto::Flags::CONTINUATION),
        vec![7u8; len],
    );
    let mut block = Vec::new();
    for _ in 0..count {
        chunk.encode(&mut block);
    }
    block
}

const DISCARD_CUT: &str = "1 error-response protocol request 1: more than 8388608 bytes sent for a request after it was refused; closing the connection";

#[test]
fn a_data_stream_that_never_ends_is_cut_at_the_discard_limit() {
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let read_before = server.bytes_read_when_idle();
    let sampler = Sampler::rss(&server);
    let victim = Victim::start(&server);
    let mut s = server.connect();
    send_lines(&mut s, &["1 command-name have-data echo"]);
    // Endless 32 KiB continuation frames; at most 256 MiB are offered.
    let block = continuation_block(wiremux_proto::FrameType::COMMAND_DATA, 32768, 32);
    let (sent, frames) = stream_until_cut(&mut s, &block, 256 << 20);
    let (calls, p50, p99, max) = victim.stop();
    // What the server read from the attacker: the count a timing of the
    // socket buffers or of the reader thread does not change.
    let read = server.bytes_read_when_idle() - read_before - calls as u64 * Victim::CALL_BYTES;
    let peak = sampler.peak().max(before);
    // The request is refused at 8 MiB, its frames are dropped for 8 MiB
    // more, and then the connection is cut (less than one read buffer
    // after).
    assert_eq!(
        frames,
        [
            "1 error-response application request 1: more than 8388608 bytes of arguments and data",
            DISCARD_CUT,
        ]
    );
    assert!(
        (16 << 20..17 << 20).contains(&read),
        "the server read {read} bytes before the cut"
    );
    println!(
        "endless refused data stream: cut after {} KiB read ({} KiB sent); server RSS {before} KiB, peak {peak} KiB; \
         victim {calls} calls, p50 {p50:?}, p99 {p99:?}, max {max:?}",
        read / 1024,
        sent / 1024
    );
    assert!(
        peak < before + 48 * 1024,
        "server grew by {} KiB",
        peak - before
    );
    server.assert_serving();
}

#[test]
fn an_argument_streaming_past_its_declared_length_is_cut_at_the_discard_limit() {
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let read_before = server.bytes_read_when_idle();
    let sampler = Sampler::rss(&server);
    let victim = Victim::start(&server);
    let mut s = server.connect();
    // Argument `k` declares a 10-byte value, sends 1 byte of it, then keeps
    // sending continuation frames.
    send_lines(
        &mut s,
        &[
            "1 command-name have-args echo",
            r"1 command-argument continuation \x01\x00\x0a\x00kv",
        ],
    );
    let block = continuation_block(wiremux_proto::FrameType::COMMAND_ARGUMENT, 32768, 32);
    let (sent, frames) = stream_until_cut(&mut s, &block, 256 << 20);
    let (calls, p50, p99, max) = victim.stop();
    // What the server read from the attacker: the count a timing of the
    // socket buffers or of the reader thread does not change.
    let read = server.bytes_read_when_idle() - read_before - calls as u64 * Victim::CALL_BYTES;
    let peak = sampler.peak().max(before);
    assert_eq!(
        frames,
        [
            "1 error-response application request 1: argument `k`: 32769 value bytes, but 10 declared",
            DISCARD_CUT,
        ]
    );
    // Refused at its first continuation, its frames dropped for 8 MiB,
    // then the connection is cut (less than one read buffer after).
    assert!(
        (8 << 20..9 << 20).contains(&read),
        "the server read {read} bytes before the cut"
    );
    println!(
        "argument past its value_len: cut after {} KiB read ({} KiB sent); server RSS {before} KiB, peak {peak} KiB; \
         victim {calls} calls, p50 {p50:?}, p99 {p99:?}, max {max:?}",
        read / 1024,
        sent / 1024
    );
    assert!(peak < before + 48 * 1024);
    server.assert_serving();
}

#[test]
fn a_flood_of_malformed_requests_is_cut_at_the_error_limit() {
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let sampler = Sampler::rss(&server);
    let victim = Victim::start(&server);
    let mut s = server.connect();
    // Command-name frames with no flags, each a request-level error, on
    // every odd ID, as fast as the socket takes them: 16384 requests.
    let mut wire = Vec::new();
    for id in (1..32768u16).step_by(2) {
        Frame::new(
            id,
            wiremux_proto::FrameType::COMMAND_NAME,
            wiremux_proto::Flags::NONE,
            "echo",
        )
        .encode(&mut wire);
    }
    let (_, frames) = stream_until_cut(&mut s, &wire, 1);
    let (calls, p50, p99, max) = victim.stop();
    let peak = sampler.peak().max(before);
    // The default allows a burst of 128 and one in 8 after: the 147th
    // request in a row that fails closes the connection, and each request
    // before it got exactly one answer.
    assert_eq!(frames.len(), 147);
    for (n, frame) in frames[..146].iter().enumerate() {
        let id = 2 * n + 1;
        assert_eq!(
            *frame,
            format!("{id} error-response application request {id}: command-name flags must be eos alone, or have-args and/or have-data; got 0")
        );
    }
    assert_eq!(
        frames[146],
        "293 error-response protocol request 293: more than 128 requests refused with an error within 1024 requests started"
    );
    println!(
        "malformed-request flood: cut after 147 requests; server RSS {before} KiB, peak {peak} KiB; \
         victim {calls} calls, p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    assert!(peak < before + 16 * 1024);
    server.assert_serving();
}

#[test]
fn commands_opened_on_every_odd_id_hit_the_receiving_limit() {
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let mut s = server.connect();
    let mut out = Vec::new();
    for id in (1..=u16::MAX).step_by(2) {
        parse_frame(&format!("{id} command-name have-args echo"))
            .unwrap()
            .encode(&mut out);
    }
    // The server may close before it has read everything.
    let _ = s.write_all(&out);
    let frames = read_until_closed(&mut s);
    assert_eq!(frames, ["2049 error-response protocol request 2049: more than 1024 requests being received at once"]);
    let after = server.rss_kib();
    println!("32768 open commands: server RSS {before} KiB -> {after} KiB");
    assert!(after < before + 16 * 1024);
    server.assert_serving();
}

#[test]
fn a_slowloris_client_is_cut_off_by_the_assembly_timeout() {
    let server = ServeProcess::start();
    let mut s = server.connect();
    let mut wire = BytesMut::new();
    CommandBuilder::new("echo")
        .data(vec![b'x'; 200])
        .encode(1, 32768, &mut wire)
        .unwrap();
    let started = Instant::now();
    let mut sent = 0;
    // One byte a second; the default assembly timeout is 30 s.
    let mut closed = false;
    for byte in wire.iter() {
        if s.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        sent += 1;
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut probe = [0u8; 512];
        match s.read(&mut probe) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                let frames = wiremux_proto::decode_all(&probe[..n]).unwrap();
                assert_eq!(
                    format_frame(&frames[0]),
                    "0 error-response protocol request not complete within the assembly timeout of 30000 ms"
                );
                closed = true;
                break;
            }
            Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(90), "never cut off");
    }
    assert!(
        closed,
        "the whole request was sent before the timeout ({sent} bytes)"
    );
    println!(
        "slowloris: cut off after {sent} bytes, {:?}",
        started.elapsed()
    );
    server.assert_serving();
}

#[test]
fn thousands_of_held_connections_do_not_stop_service() {
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let held: Vec<TcpStream> = (0..5000)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    // Make sure the server has accepted them all before measuring.
    server.assert_serving();
    let after = server.rss_kib();
    println!(
        "5000 held connections: server RSS {before} KiB -> {after} KiB ({} bytes per connection)",
        (after - before) * 1024 / 5000
    );
    assert!(after < before + 200 * 1024);
    drop(held);
}

#[test]
fn a_flooding_client_does_not_starve_another() {
    let server = ServeProcess::start();
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    // The flood: 1024 tiny requests in flight at all times, on one connection.
    let flood = {
        let mut s = server.connect();
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            let mut r = s.try_clone().unwrap();
            let mut batch = BytesMut::new();
            for id in (1..2048u16).step_by(2) {
                CommandBuilder::new("echo")
                    .data("x")
                    .encode(id, 32768, &mut batch)
                    .unwrap();
            }
            s.write_all(&batch).unwrap();
            let mut buf = BytesMut::new();
            let mut answered = 0u64;
            while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                let frame = read_frame(&mut r, &mut buf).expect("flood answered");
                answered += 1;
                let mut again = BytesMut::new();
                CommandBuilder::new("echo")
                    .data("x")
                    .encode(frame.request_id, 32768, &mut again)
                    .unwrap();
                s.write_all(&again).unwrap();
            }
            answered
        })
    };
    // The victim: sequential calls on its own connection.
    let mut victim = server.connect();
    let mut buf = BytesMut::new();
    let mut latencies = Vec::new();
    for i in 0..300 {
        let id = (i % 1000) * 2 + 1;
        let started = Instant::now();
        let mut wire = BytesMut::new();
        CommandBuilder::new("echo")
            .data("victim")
            .encode(id, 32768, &mut wire)
            .unwrap();
        victim.write_all(&wire).unwrap();
        let frame = read_frame(&mut victim, &mut buf).expect("victim answered");
        assert_eq!(
            format_frame(&frame),
            format!("{id} bytes-response eos victim")
        );
        latencies.push(started.elapsed());
    }
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let answered = flood.join().unwrap();
    latencies.sort();
    println!(
        "flood of {answered} requests alongside 300 victim calls: victim p50 {:?}, p99 {:?}, max {:?}",
        latencies[150],
        latencies[297],
        latencies[299]
    );
    assert!(answered > 0);
}

#[test]
fn a_start_and_cancel_flood_answers_every_request_once() {
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let sampler = Sampler::rss(&server);
    let victim = Victim::start(&server);
    let s = server.connect();
    let mut r = s.try_clone().unwrap();
    let mut buf = BytesMut::new();
    // 4 rounds of 8192 pairs: a `sleep ms=60000` on ID 4k+1 and its
    // `@cancel` on 4k+3. A round's IDs are used again only once it is
    // answered.
    let (rounds, pairs) = (4u32, 8192u16);
    let mut answered = 0u64;
    let mut cut = None;
    'rounds: for _ in 0..rounds {
        let mut wire = BytesMut::new();
        for k in 0..pairs {
            let (target, cancel) = (4 * k + 1, 4 * k + 3);
            CommandBuilder::new("sleep")
                .arg("ms", "60000")
                .encode(target, 32768, &mut wire)
                .unwrap();
            CommandBuilder::new("@cancel")
                .arg("id", target.to_string())
                .encode(cancel, 32768, &mut wire)
                .unwrap();
        }
        let writer = {
            let mut s = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let _ = s.write_all(&wire);
            })
        };
        let mut answers = std::collections::HashMap::new();
        while answers.len() < 2 * usize::from(pairs) {
            let Some(frame) = read_frame(&mut r, &mut buf) else {
                break;
            };
            let line = format_frame(&frame);
            if frame.flags.contains(wiremux_proto::Flags::PROTOCOL)
                && frame.frame_type == wiremux_proto::FrameType::ERROR_RESPONSE
            {
                cut = Some(line);
                break 'rounds;
            }
            let id = frame.request_id;
            let expected = if id % 4 == 1 {
                format!("{id} error-response application cancelled")
            } else {
                format!("{id} bytes-response eos cancelled")
            };
            assert_eq!(line, expected);
            assert!(
                answers.insert(id, ()).is_none(),
                "a second answer for request {id}"
            );
            answered += 1;
        }
        writer.join().unwrap();
        assert_eq!(answers.len(), 2 * usize::from(pairs), "requests unanswered");
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let (calls, p50, p99, max) = victim.stop();
    let peak = sampler.peak().max(before);
    println!(
        "start-and-cancel flood: {answered} answers (each request once), cut: {cut:?}; \
         server RSS {before} KiB, peak {peak} KiB; victim {calls} calls, p50 {p50:?}, p99 {p99:?}, max {max:?}"
    );
    // The cancellation limit of the core, once the lifecycle reports
    // cancellations to it, cuts the connection with this error; until then
    // every pair is answered.
    if let Some(cut) = cut {
        assert!(
            cut.ends_with("requests cancelled within 1024 requests started"),
            "{cut}"
        );
    } else {
        assert_eq!(answered, u64::from(rounds) * 2 * u64::from(pairs));
    }
    assert!(
        peak < before + 64 * 1024,
        "server grew by {} KiB",
        peak - before
    );
    server.assert_serving();
}
