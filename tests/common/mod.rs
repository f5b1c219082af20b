//! Helpers shared by the end-to-end tests: a demo server on a loopback port,
//! a raw-frame connection, and bounded waits so that a hang fails a test
//! instead of blocking CI.

#![allow(dead_code)]

use bytes::BytesMut;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use wiremux::engine::{demo, Config, Server, StatsSnapshot};
use wiremux::proto::builder::CommandBuilder;
use wiremux::proto::human::{format_frame, parse_frame};
use wiremux::proto::{Frame, FrameCodec};

/// How long any single wait in a test may take before the test fails.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A demo server with `config`, serving on an ephemeral loopback port.
pub async fn start(config: Config) -> (Server, SocketAddr) {
    let server = Server::builder()
        .registry(demo::registry())
        .config(config)
        .build();
    let (addr, _) = serve(server.clone()).await;
    (server, addr)
}

/// A demo server with default settings.
pub async fn start_default() -> (Server, SocketAddr) {
    start(Config::default()).await
}

/// Serves `server` on an ephemeral loopback port; the handle gives what
/// `serve_tcp` returned.
pub async fn serve(server: Server) -> (SocketAddr, JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = tokio::spawn(async move { server.serve_tcp(listener).await });
    (addr, handle)
}

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    within_for(LIMIT, what, fut).await
}

/// Awaits `fut`, failing the test if it takes longer than `limit`: a
/// guard against a hang for work that is long by design, not a measure.
#[allow(dead_code)] // not every test binary has such work
pub async fn within_for<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls the server's counters until `done` holds; fails the test with the
/// last snapshot if it does not within [`LIMIT`].
pub async fn wait_stats(
    server: &Server,
    what: &str,
    done: impl Fn(&StatsSnapshot) -> bool,
) -> StatsSnapshot {
    let until = tokio::time::Instant::now() + LIMIT;
    loop {
        let s = server.stats();
        if done(&s) {
            return s;
        }
        if tokio::time::Instant::now() > until {
            panic!("timed out waiting for {what}; stats: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the server has nothing in flight and no connection open.
pub async fn wait_idle(server: &Server) -> StatsSnapshot {
    wait_stats(server, "no request in flight and no connection open", |s| {
        s.requests_in_flight == 0 && s.connections_open == 0
    })
    .await
}

/// A connection that speaks raw frames: lines of human syntax or raw bytes
/// out, decoded frames in. Counts what it sends and receives.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            codec: FrameCodec::new().max_recv_payload(1 << 20),
            frames_sent: 0,
            bytes_sent: 0,
            frames_received: 0,
            bytes_received: 0,
        }
    }

    /// Sends frames written in human syntax, all in one write.
    pub async fn send(&mut self, lines: &[&str]) {
        let mut out = Vec::new();
        for line in lines {
            parse_frame(line)
                .unwrap_or_else(|e| panic!("bad test frame {line:?}: {e}"))
                .encode(&mut out);
        }
        self.frames_sent += lines.len() as u64;
        self.write(&out).await;
    }

    /// Sends a command built with the proto builder on `id`.
    pub async fn send_command(&mut self, id: u16, command: CommandBuilder) {
        let frames = command.frames(id, 32768).unwrap();
        let mut out = Vec::new();
        for f in &frames {
            f.encode(&mut out);
        }
        self.frames_sent += frames.len() as u64;
        self.write(&out).await;
    }

    /// Sends raw bytes (not counted as frames).
    pub async fn write(&mut self, bytes: &[u8]) {
        within("write", self.stream.write_all(bytes)).await.unwrap();
        self.bytes_sent += bytes.len() as u64;
    }

    /// Closes the sending side; the server sees end of input.
    pub async fn shutdown_write(&mut self) {
        within("shutdown", self.stream.shutdown()).await.unwrap();
    }

    /// The next frame, or `None` when the server closed the connection.
    pub async fn frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.codec.decode_frame(&mut self.buf).unwrap() {
                self.frames_received += 1;
                return Some(frame);
            }
            self.buf.reserve(64 << 10);
            let n = match within("a frame", self.stream.read_buf(&mut self.buf)).await {
                Ok(n) => n,
                // The server reset the connection: it is closed.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
                Err(e) => panic!("read failed: {e}"),
            };
            if n == 0 {
                assert!(
                    self.buf.is_empty(),
                    "connection closed inside a frame: {:?}",
                    &self.buf[..]
                );
                return None;
            }
            self.bytes_received += n as u64;
        }
    }

    /// The next frame in human syntax; fails the test at end of stream.
    pub async fn line(&mut self) -> String {
        let frame = self.frame().await.expect("a frame, not end of stream");
        format_frame(&frame)
    }

    /// The next `n` frames in human syntax.
    pub async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.frame().await {
                Some(frame) => out.push(format_frame(&frame)),
                None => panic!("connection closed after {out:?}; expected {n} frames"),
            }
        }
        out
    }

    /// Every frame until the server closes the connection.
    pub async fn until_closed(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(frame) = self.frame().await {
            out.push(format_frame(&frame));
        }
        out
    }
}

/// Sorts lines so that tests can compare responses whose order is free.
pub fn sorted(mut lines: Vec<String>) -> Vec<String> {
    lines.sort();
    lines
}

/// A connection served with [`Server::serve_io`] over an in-memory pipe
/// (`tokio::io::duplex`), for tests on paused time: frames out, decoded
/// frames in, and a check that does not wait (so that no timer is moved
/// on by waiting).
pub struct Duplex {
    pub stream: tokio::io::DuplexStream,
    /// What `serve_io` returned, once it has.
    pub served: JoinHandle<std::io::Result<()>>,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Duplex {
    /// Serves `server` on one end of a pipe of `capacity` bytes each way.
    pub fn serve(server: &Server, capacity: usize) -> Duplex {
        let (stream, theirs) = tokio::io::duplex(capacity);
        let server = server.clone();
        let served = tokio::spawn(async move { server.serve_io(theirs).await });
        Duplex {
            stream,
            served,
            buf: BytesMut::new(),
            codec: FrameCodec::new().max_recv_payload(1 << 20),
        }
    }

    /// Sends frames written in human syntax, all in one write.
    pub async fn send(&mut self, lines: &[&str]) {
        let mut out = Vec::new();
        for line in lines {
            parse_frame(line)
                .unwrap_or_else(|e| panic!("bad test frame {line:?}: {e}"))
                .encode(&mut out);
        }
        self.write(&out).await;
    }

    /// Sends a command built with the proto builder on `id`.
    pub async fn send_command(&mut self, id: u16, command: CommandBuilder) {
        let mut out = BytesMut::new();
        command.encode(id, 32768, &mut out).unwrap();
        self.write(&out).await;
    }

    /// Sends raw bytes.
    pub async fn write(&mut self, bytes: &[u8]) {
        within("write", self.stream.write_all(bytes)).await.unwrap();
    }

    /// The next frame in human syntax, waiting (on paused time, the clock
    /// runs on to the next timer); `None` when the server closed.
    pub async fn frame(&mut self) -> Option<String> {
        loop {
            if let Some(frame) = self.codec.decode_frame(&mut self.buf).unwrap() {
                return Some(format_frame(&frame));
            }
            self.buf.reserve(64 << 10);
            let n = within("a frame", self.stream.read_buf(&mut self.buf))
                .await
                .unwrap();
            if n == 0 {
                assert!(self.buf.is_empty(), "closed inside a frame");
                return None;
            }
        }
    }

    /// The next `n` frames in human syntax.
    pub async fn lines(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.frame().await {
                Some(line) => out.push(line),
                None => panic!("closed after {} frames; expected {n}", out.len()),
            }
        }
        out
    }

    /// Lets every other task run until none can, without moving the
    /// clock; then what has arrived: frames, and whether the server closed
    /// its end.
    pub async fn settle(&mut self) -> (Vec<String>, bool) {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let mut lines = Vec::new();
        let mut closed = false;
        loop {
            if let Some(frame) = self.codec.decode_frame(&mut self.buf).unwrap() {
                lines.push(format_frame(&frame));
                continue;
            }
            self.buf.reserve(64 << 10);
            use futures::FutureExt;
            match self.stream.read_buf(&mut self.buf).now_or_never() {
                Some(Ok(0)) | Some(Err(_)) => {
                    closed = true;
                    break;
                }
                Some(Ok(_)) => {}
                None => break,
            }
        }
        (lines, closed)
    }
}
