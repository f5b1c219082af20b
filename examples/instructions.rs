//! A deterministic driver for counting the instructions a request costs,
//! under `valgrind --tool=callgrind` (this machine's VM has no hardware
//! counters, and wall-clock figures swing with its vCPU regime; an
//! instruction count is the same on every run of the same binary).
//!
//! Run: `cargo build --release --example instructions`, then
//! `valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/instructions SERVER N W`
//! for N = 20000 and N = 120000: the difference of the two totals divided
//! by 100 000 is the cost of one request, with start-up and the runtime's
//! set-up cancelled out. SERVER is `wiremux` (the engine with the demo
//! commands and the default configuration) or `raw` (the hand-written
//! raw-frame echo of benches/support/raw_frame.rs). W (default 256)
//! requests are kept in flight; figures in docs/PERFORMANCE.md.
//!
//! Both sides run on one current-thread runtime and talk through
//! `tokio::io::duplex`, so no system call is counted and the run is the
//! same every time: the client writes a batch, the server answers all it
//! can, the client reads and refills. This is the user-space half of what
//! `benches/e2e.rs` measures over loopback TCP.
//!
//! A fourth argument `client` drives the same server through the
//! engine's async client (`wiremux::engine::client::Client`, one future
//! per call) instead of the hand-written one, and `pipeline` through its
//! `Pipeline`, as `wiremux load` does: what a call costs the client.
//!
//! A fourth argument `tcp` puts the server on its own thread behind a
//! loopback connection instead, as benches/e2e.rs does, to count its
//! system calls: `strace -c -f target/release/examples/instructions
//! wiremux 20000 1 tcp` (instruction counts of that mode vary with how
//! the two threads interleave).

#[path = "../benches/support/raw_frame.rs"]
mod raw_frame;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wiremux::engine::Server;
use wiremux::proto::builder::CommandBuilder;
use wiremux::proto::{Flags, FrameType};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let server = args.first().map(String::as_str).unwrap_or("wiremux");
    let n: u64 = args.get(1).map_or(100_000, |s| s.parse().expect("N"));
    let w: usize = args.get(2).map_or(256, |s| s.parse().expect("W"));
    assert!((1..=16_384).contains(&w), "W is 1 to 16384");
    let (tcp, client) = match args.get(3).map(String::as_str) {
        None | Some("duplex") => (false, None),
        Some("tcp") => (true, None),
        Some(mode @ ("client" | "pipeline")) => (false, Some(mode.to_string())),
        Some(other) => panic!("the transport is duplex, client, pipeline or tcp, not {other:?}"),
    };
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    if tcp {
        // The server on its own thread and runtime, as in benches/e2e.rs:
        // for counting its system calls (`strace -c -f`), not instructions.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let name = server.to_string();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                listener.set_nonblocking(true).expect("nonblocking");
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let (stream, _) = listener.accept().await.expect("accept");
                stream.set_nodelay(true).expect("nodelay");
                serve(&name, stream).await;
            })
        });
        runtime().block_on(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            drive(stream, n, w).await;
        });
    } else {
        let client_mode = client;
        runtime().block_on(async move {
            let (client, end) = tokio::io::duplex(64 << 10);
            let name = server.to_string();
            tokio::spawn(async move { serve(&name, end).await });
            let engine = wiremux::engine::client::Client::new;
            match client_mode.as_deref() {
                Some("client") => drive_client(engine(client), n, w).await,
                Some(_) => drive_pipeline(engine(client), n, w).await,
                None => drive(client, n, w).await,
            }
        });
    }
    println!("{server}: {n} requests answered, {w} in flight");
}

/// Serves one connection with the named server.
async fn serve<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(server: &str, io: IO) {
    match server {
        "wiremux" => {
            let server = Server::builder()
                .registry(wiremux::engine::demo::registry())
                .build();
            let _ = server.serve_io(io).await;
        }
        "raw" => raw_frame::serve(io).await,
        other => panic!("SERVER is wiremux or raw, not {other:?}"),
    }
}

/// As [`drive`], through the engine's async client: `w` calls in flight,
/// a new one started as each answer arrives.
async fn drive_client(client: wiremux::engine::client::Client, n: u64, w: usize) {
    use futures::StreamExt;
    let payload = bytes::Bytes::from(vec![b'x'; 32]);
    let mut calls = futures::stream::iter(0..n)
        .map(|_| client.call("echo").data(payload.clone()).send())
        .buffer_unordered(w);
    while let Some(response) = calls.next().await {
        assert_eq!(response.expect("echo call").body.len(), 32);
    }
}

/// As [`drive`], through the engine's client's `Pipeline`
/// (`wiremux::engine::Pipeline`): `w` tagged calls in flight, a new one
/// started as each answer arrives, as `wiremux load` drives it.
async fn drive_pipeline(client: wiremux::engine::client::Client, n: u64, w: usize) {
    let mut pipeline = client.pipeline();
    let echo = CommandBuilder::new("echo").data(vec![b'x'; 32]);
    let mut issued = 0;
    while issued < n.min(w as u64) {
        pipeline.start(issued, echo.clone()).expect("start");
        issued += 1;
    }
    while let Some((tag, result)) = pipeline.next().await {
        assert_eq!(result.expect("echo call").body.len(), 32);
        if issued < n {
            pipeline.start(tag, echo.clone()).expect("start");
            issued += 1;
        }
    }
}

/// Keeps `w` 32-byte echoes in flight until `n` are answered; checks that
/// each answer is the one whole `bytes-response` frame it expects.
async fn drive<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO, n: u64, w: usize) {
    let echo = CommandBuilder::new("echo").data(vec![b'x'; 32]);
    let mut free: Vec<u16> = (0..w as u16).rev().map(|i| 2 * i + 1).collect();
    let (mut rbuf, mut wbuf) = (BytesMut::with_capacity(64 << 10), BytesMut::new());
    let (mut issued, mut done) = (0u64, 0u64);
    while done < n {
        while issued < n {
            let Some(id) = free.pop() else { break };
            echo.encode(id, 32768, &mut wbuf).expect("encode");
            issued += 1;
        }
        if !wbuf.is_empty() {
            io.write_all(&wbuf).await.expect("write");
            wbuf.clear();
        }
        rbuf.reserve(16 << 10);
        assert!(io.read_buf(&mut rbuf).await.expect("read") > 0, "closed");
        raw_frame::for_each_frame(&mut rbuf, |header, payload| {
            assert_eq!(header.frame_type, FrameType::BYTES_RESPONSE);
            assert!(header.flags.contains(Flags::DATA_EOS), "one frame");
            assert_eq!(payload.len(), 32);
            free.push(header.request_id);
            done += 1;
        });
    }
}
