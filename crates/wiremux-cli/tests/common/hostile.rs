//! Helpers of the hostile-peer tests (`attacks.rs`, `attacks_ext.rs`): a
//! `wiremux serve` with default limits and a metrics listener, raw frame
//! reading and writing, a victim client measuring its latency while an
//! attack runs, an RSS sampler, and a small HTTP/1.1 client on raw sockets.

use super::Serve;
use bytes::BytesMut;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use wiremux_proto::builder::CommandBuilder;
use wiremux_proto::human::{format_frame, parse_frame};
use wiremux_proto::{Flags, Frame, FrameCodec, FrameType};

/// A `wiremux serve` process with default limits: TCP (and HTTP, if asked)
/// on 127.0.0.1, and its Prometheus metrics, from which the tests read the
/// server's in-flight count.
pub struct ServeProcess {
    pub serve: Serve,
    /// The TCP listener (frames).
    pub addr: SocketAddr,
    /// The HTTP API's listener, if started with [`ServeProcess::start_http`].
    pub http: Option<SocketAddr>,
    /// The metrics listener.
    pub metrics: SocketAddr,
}

impl ServeProcess {
    /// `wiremux serve --listen 127.0.0.1:0 --metrics 127.0.0.1:0`.
    pub fn start() -> ServeProcess {
        Self::start_with(false)
    }

    /// The same with `--http 127.0.0.1:0` beside it.
    pub fn start_http() -> ServeProcess {
        Self::start_with(true)
    }

    fn start_with(http: bool) -> ServeProcess {
        let mut args = vec!["--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"];
        if http {
            args.extend(["--http", "127.0.0.1:0"]);
        }
        let serve = Serve::start_announcing(&args, if http { 2 } else { 1 });
        let find = |prefix: &str| {
            serve
                .announced
                .iter()
                .find_map(|line| line.strip_prefix(prefix))
                .map(|rest| {
                    rest.split('/')
                        .next()
                        .unwrap()
                        .parse::<SocketAddr>()
                        .unwrap()
                })
        };
        let metrics = find("metrics on http://").expect("metrics announced");
        let http = find("HTTP API on http://");
        let addr = find("listening on ").expect("TCP announced");
        ServeProcess {
            serve,
            addr,
            http,
            metrics,
        }
    }

    pub fn pid(&self) -> u32 {
        self.serve.child.id()
    }

    pub fn rss_kib(&self) -> u64 {
        self.serve.rss_kib()
    }

    pub fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect(self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }

    /// A fresh client's `echo` is answered: the server still serves.
    pub fn assert_serving(&self) {
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

    /// One server-wide counter or gauge from `GET /metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        let mut s = TcpStream::connect(self.metrics).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no metric {name}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// `wiremux_requests_in_flight`.
    pub fn in_flight(&self) -> u64 {
        self.metric("wiremux_requests_in_flight")
    }

    /// Waits until the in-flight count is `n` (a hang guard of 60 s, not a
    /// time limit under test).
    pub fn wait_in_flight(&self, n: u64) {
        self.wait_metric("wiremux_requests_in_flight", n);
    }

    /// Waits until the metric `name` is `n` (a hang guard of 60 s, not a
    /// time limit under test).
    pub fn wait_metric(&self, name: &str, n: u64) {
        let started = Instant::now();
        loop {
            let now = self.metric(name);
            if now == n {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{name} stayed at {now}, not {n}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The bytes the server has read, counted once every connection has
    /// closed (a connection adds its count to the server's as it ends).
    /// Input drained after a protocol error is not counted.
    pub fn bytes_read_when_idle(&self) -> u64 {
        self.wait_metric("wiremux_connections_open", 0);
        self.metric("wiremux_bytes_in_total")
    }
}

/// Encodes human-syntax frame lines and writes them.
pub fn send_lines(stream: &mut TcpStream, lines: &[&str]) {
    let mut out = Vec::new();
    for line in lines {
        parse_frame(line).unwrap().encode(&mut out);
    }
    stream.write_all(&out).unwrap();
}

/// Appends one command's frames for `id` (frames of at most 32768 bytes).
pub fn encode(command: CommandBuilder, id: u16, wire: &mut BytesMut) {
    command.encode(id, 32768, wire).unwrap();
}

/// The next frame, or `None` once the server has closed.
pub fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
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
pub fn read_until_closed(stream: &mut TcpStream) -> Vec<String> {
    let mut buf = BytesMut::new();
    std::iter::from_fn(|| read_frame(stream, &mut buf))
        .map(|f| format_frame(&f))
        .collect()
}

/// The one outcome of a request: its whole body, or an application error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Body(Vec<u8>),
    Error(String),
}

impl Answer {
    /// The body as text (panics on an error), for short bodies.
    pub fn text(&self) -> String {
        match self {
            Answer::Body(body) => String::from_utf8_lossy(body).into_owned(),
            Answer::Error(e) => panic!("an error, not a body: {e}"),
        }
    }
}

/// Collects responses frame by frame; fails the test on a second terminal
/// frame for a request, on a frame for a request already answered, and on
/// a protocol error.
#[derive(Default)]
pub struct Answers {
    buf: BytesMut,
    partial: HashMap<u16, Vec<u8>>,
    /// Each request answered, in the order its terminal frame arrived.
    pub order: Vec<u16>,
    pub done: HashMap<u16, Answer>,
    /// Frames of each answered request (for shape checks).
    pub frames: HashMap<u16, Vec<usize>>,
}

impl Answers {
    /// Reads until `count` more requests have their answer. Panics if the
    /// connection closes first.
    pub fn read(&mut self, stream: &mut TcpStream, count: usize) {
        let want = self.done.len() + count;
        while self.done.len() < want {
            let frame = read_frame(stream, &mut self.buf).unwrap_or_else(|| {
                panic!(
                    "the server closed with {} of {want} requests answered",
                    self.done.len()
                )
            });
            self.take(frame);
        }
    }

    /// Takes one frame.
    pub fn take(&mut self, frame: Frame) {
        let id = frame.request_id;
        assert!(
            !self.done.contains_key(&id),
            "a frame for request {id} after its answer: {}",
            format_frame(&frame)
        );
        self.frames.entry(id).or_default().push(frame.payload.len());
        let answer = if frame.frame_type == FrameType::ERROR_RESPONSE {
            assert!(
                !frame.flags.contains(Flags::PROTOCOL),
                "protocol error: {}",
                format_frame(&frame)
            );
            Answer::Error(String::from_utf8_lossy(&frame.payload).into_owned())
        } else {
            assert_eq!(frame.frame_type, FrameType::BYTES_RESPONSE);
            let body = self.partial.entry(id).or_default();
            body.extend_from_slice(&frame.payload);
            if !frame.flags.contains(Flags::DATA_EOS) {
                return;
            }
            Answer::Body(self.partial.remove(&id).unwrap())
        };
        self.partial.remove(&id);
        self.order.push(id);
        self.done.insert(id, answer);
    }

    /// Forgets the answers (their IDs may be used again), keeps the buffer.
    pub fn clear(&mut self) {
        assert!(self.partial.is_empty(), "responses still arriving");
        self.order.clear();
        self.done.clear();
        self.frames.clear();
    }

    pub fn get(&self, id: u16) -> &Answer {
        self.done
            .get(&id)
            .unwrap_or_else(|| panic!("request {id} not answered"))
    }
}

/// Sends `wire` on a thread (the server may hold back reading while it
/// works), reads `count` answers, and joins the writer.
pub fn exchange(stream: &mut TcpStream, wire: BytesMut, count: usize, answers: &mut Answers) {
    let writer = {
        let mut s = stream.try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&wire).unwrap())
    };
    answers.read(stream, count);
    writer.join().unwrap();
}

/// Latencies of a victim client, and (calls, p50, p99, max) from them.
pub fn summary(mut latencies: Vec<Duration>) -> (usize, Duration, Duration, Duration) {
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    (latencies.len(), at(0.5), at(0.99), at(1.0))
}

/// A client making sequential calls on its own connection while an attack
/// runs, 2 ms apart; [`Victim::stop`] gives its latencies.
pub struct Victim {
    running: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Duration>>,
}

impl Victim {
    /// The bytes one TCP call sends: a 6-byte header with `echo`, and one
    /// with `victim`.
    pub const CALL_BYTES: u64 = 6 + 4 + 6 + 6;

    /// Sequential `echo` calls over the frame protocol (TCP), of
    /// [`Victim::CALL_BYTES`] each.
    pub fn start(server: &ServeProcess) -> Victim {
        let mut s = server.connect();
        let mut buf = BytesMut::new();
        let mut id = 1u16;
        Self::start_calls(move || {
            let mut wire = BytesMut::new();
            encode(CommandBuilder::new("echo").data("victim"), id, &mut wire);
            debug_assert_eq!(wire.len() as u64, Self::CALL_BYTES);
            s.write_all(&wire).unwrap();
            let frame = read_frame(&mut s, &mut buf).expect("victim answered");
            assert_eq!(
                format_frame(&frame),
                format!("{id} bytes-response eos victim")
            );
            id = if id >= 32765 { 1 } else { id + 2 };
        })
    }

    /// Sequential `POST rw/echo` calls on one kept-alive HTTP connection.
    pub fn start_http(server: &ServeProcess) -> Victim {
        let addr = server.http.expect("an HTTP listener");
        let mut s = http_connect(addr);
        let mut wire = BytesMut::new();
        encode(CommandBuilder::new("echo").data("victim"), 1, &mut wire);
        let request = http_post("rw/echo", &wire, false);
        let mut buf = Vec::new();
        Self::start_calls(move || {
            s.write_all(&request).unwrap();
            let response = read_http_response(&mut s, &mut buf).expect("victim answered");
            assert_eq!(response.status, 200, "{response:?}");
            let frames = wiremux_proto::decode_all(&response.body).unwrap();
            assert_eq!(format_frame(&frames[0]), "1 bytes-response eos victim");
        })
    }

    fn start_calls(mut call: impl FnMut() + Send + 'static) -> Victim {
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        let thread = std::thread::spawn(move || {
            let mut latencies = Vec::new();
            // At least 50 calls, so that a percentile means something.
            while flag.load(Ordering::Relaxed) || latencies.len() < 50 {
                let started = Instant::now();
                call();
                latencies.push(started.elapsed());
                std::thread::sleep(Duration::from_millis(2));
            }
            latencies
        });
        Victim { running, thread }
    }

    /// Stops the calls; returns (calls, p50, p99, max).
    pub fn stop(self) -> (usize, Duration, Duration, Duration) {
        self.running.store(false, Ordering::Relaxed);
        summary(self.thread.join().expect("victim served throughout"))
    }
}

/// Samples a value every 20 ms on a thread until stopped; the largest.
pub struct Sampler {
    running: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl Sampler {
    pub fn start(mut sample: impl FnMut() -> Option<u64> + Send + 'static) -> Sampler {
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while flag.load(Ordering::Relaxed) {
                if let Some(value) = sample() {
                    peak = peak.max(value);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        Sampler { running, thread }
    }

    /// The server's resident memory, in KiB.
    pub fn rss(server: &ServeProcess) -> Sampler {
        let pid = server.pid();
        Sampler::start(move || super::rss_kib_of(pid))
    }

    /// The server's in-flight count.
    pub fn in_flight(server: &ServeProcess) -> Sampler {
        let metrics = server.metrics;
        Sampler::start(move || {
            let mut s = TcpStream::connect(metrics).ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut text = String::new();
            s.read_to_string(&mut text).ok()?;
            text.lines()
                .find_map(|l| l.strip_prefix("wiremux_requests_in_flight "))?
                .trim()
                .parse()
                .ok()
        })
    }

    pub fn peak(self) -> u64 {
        self.running.store(false, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

// ---- HTTP/1.1 on raw sockets ----

pub fn http_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// A whole `POST /api/exp-http-v2-0001/PATH` with `body` (Content-Length).
pub fn http_post(path: &str, body: &[u8], close: bool) -> Vec<u8> {
    let mut request = format!(
        "POST /api/exp-http-v2-0001/{path} HTTP/1.1\r\nHost: t\r\n\
         Accept: application/mercurial-exp-framing-0002\r\n\
         Content-Type: application/mercurial-exp-framing-0002\r\n\
         Content-Length: {}\r\n{}\r\n",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// A response: status, headers (names lower-cased), the de-chunked body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response; `None` if the connection closed before its head.
/// `buf` keeps what was read past it.
pub fn read_http_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<HttpResponse> {
    fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 65536];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if !fill(s, buf) {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let mut body = Vec::new();
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let line_end = loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                if !fill(s, buf) {
                    panic!("the connection closed inside a chunked body");
                }
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .expect("a chunk size");
            while buf.len() < line_end + 2 + size + 2 {
                if !fill(s, buf) {
                    panic!("the connection closed inside a chunk");
                }
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().unwrap();
        while buf.len() < len {
            if !fill(s, buf) {
                panic!("the connection closed inside a body");
            }
        }
        body = buf.drain(..len).collect();
    }
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}
