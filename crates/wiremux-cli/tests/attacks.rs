//! Hostile peers against a real `wiremux serve` process with default
//! settings. Each test shows that the limit holds, that the server's memory
//! stays under a cap, and that another client is still served afterwards.
//!
//! Memory is the server process's resident set (VmRSS), read from /proc.
//! Figures are printed (run with `--nocapture`) for docs/RELIABILITY.md.

use bytes::BytesMut;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use wiremux_proto::builder::CommandBuilder;
use wiremux_proto::human::{format_frame, parse_frame};
use wiremux_proto::{Frame, FrameCodec};

mod common;

/// A `wiremux serve --listen 127.0.0.1:0` process with default settings.
struct ServeProcess {
    serve: common::Serve,
    addr: SocketAddr,
}

impl ServeProcess {
    fn start() -> ServeProcess {
        let serve = common::Serve::start(&["--listen", "127.0.0.1:0"]);
        let addr = serve.listening.parse().unwrap();
        ServeProcess { serve, addr }
    }

    fn rss_kib(&self) -> u64 {
        self.serve.rss_kib()
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// A fresh client's `echo` is answered: the server still serves.
    fn assert_serving(&self) {
        let mut s = self.connect();
        send_lines(
            &mut s,
            &[
                "1 command-name have-data echo",
                "1 command-data eos still here",
            ],
        );
        assert_eq!(
            read_frame(&mut s, &mut BytesMut::new()).map(|f| format_frame(&f)),
            Some("1 bytes-response eos still here".into())
        );
    }
}

fn send_lines(stream: &mut TcpStream, lines: &[&str]) {
    let mut out = Vec::new();
    for line in lines {
        parse_frame(line).unwrap().encode(&mut out);
    }
    stream.write_all(&out).unwrap();
}

/// The next frame, or `None` once the server has closed.
fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    let mut codec = FrameCodec::new();
    loop {
        if let Some(frame) = codec.decode_frame(buf).unwrap() {
            return Some(frame);
        }
        let mut chunk = [0u8; 65536];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads frames until the server closes; returns them as human lines.
fn read_until_closed(stream: &mut TcpStream) -> Vec<String> {
    let mut buf = BytesMut::new();
    std::iter::from_fn(|| read_frame(stream, &mut buf))
        .map(|f| format_frame(&f))
        .collect()
}

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

#[test]
fn a_data_stream_that_never_ends_is_cut_at_the_request_limit() {
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let mut s = server.connect();
    send_lines(&mut s, &["1 command-name have-data echo"]);
    // 64 MiB of continuation frames: eight times the 8 MiB request limit.
    let chunk = Frame::new(
        1,
        wiremux_proto::FrameType::COMMAND_DATA,
        wiremux_proto::Flags::new(1),
        vec![7u8; 32768],
    );
    let mut block = BytesMut::new();
    for _ in 0..32 {
        chunk.encode(&mut block);
    }
    let reader = {
        let mut r = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut buf = BytesMut::new();
            read_frame(&mut r, &mut buf).map(|f| format_frame(&f))
        })
    };
    let mut peak = before;
    for i in 0..64 {
        s.write_all(&block).unwrap();
        if i % 8 == 7 {
            peak = peak.max(server.rss_kib());
        }
    }
    let first = reader.join().unwrap();
    assert_eq!(
        first.as_deref(),
        Some(
            "1 error-response application request 1: more than 8388608 bytes of arguments and data"
        )
    );
    // The rest of the request is dropped as it arrives; the connection goes on.
    send_lines(
        &mut s,
        &[
            "1 command-data eos ",
            "3 command-name have-data echo",
            "3 command-data eos after",
        ],
    );
    let mut buf = BytesMut::new();
    assert_eq!(
        read_frame(&mut s, &mut buf)
            .map(|f| format_frame(&f))
            .as_deref(),
        Some("3 bytes-response eos after")
    );
    println!("endless data stream: server RSS {before} KiB, peak {peak} KiB");
    assert!(
        peak < before + 48 * 1024,
        "server grew by {} KiB",
        peak - before
    );
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
