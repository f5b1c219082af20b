//! Chaos between the engine `Client` and a server: a proxy of this test's
//! own that cuts connections at random byte offsets (with a plain close or
//! a reset), stalls them and trickles bytes one at a time, under a mixed
//! load with the extensions of PROTOCOL.md section 8:
//!
//! - plain calls: `echo`, `sleep`, `blob`, `fail`, and `sleep` under a raw
//!   `@deadline` shorter than itself;
//! - deadlines through the client: timeouts shorter than the work (the
//!   call must time out) and much longer (it must not);
//! - dependencies: `add` chains through `use_result` whose sums are known,
//!   some with a link that fails or times out (the links after it must fail
//!   with `dependency N failed`), some with handles of links dropped while
//!   a later link still depends on them (they must not be cancelled);
//!   a `put` and a `get` held `after` it;
//! - cancellations: calls dropped before they are sent, and after (a
//!   60-second `sleep` where no cut can leave it running on the server, so
//!   a cancel that does not reach the server fails the run), and
//!   `Pipeline::cancel` of calls, chain heads among them;
//! - a `ReconnectingClient` through a proxy of its own whose first
//!   connections are all cut: it must carry on, and every call after the
//!   last cut must succeed.
//!
//! Afterwards:
//! - every call had exactly one outcome, within a bound (never none; a
//!   pipeline gives every tag back exactly once), and it is a right one:
//!   the exact body, the exact error, or the loss of a connection that the
//!   proxy really cut; anything else fails the test;
//! - the server never sent two terminal frames for one request (the proxy
//!   decodes both directions and checks it as the bytes pass);
//! - the server's in-flight count returns to zero, every connection is
//!   closed, and no task is left behind on the runtime.
//!
//! Seeded: the seed is printed; `CHAOS_SEED=N` replays a run (the faults
//! and the load follow from it; which bytes a cut lands in, and which calls
//! win a race with a cancel or a timeout, still depend on timing).
//! `CHAOS_ROUNDS=N` runs longer (default 24 connections, a few seconds; e.g.
//! `CHAOS_ROUNDS=2000` for a long run). To narrow a failure down,
//! `CHAOS_PLAN=1` prints each connection's load and `CHAOS_ONLY=N` runs
//! only connection N's (the others connect and close at once).

mod common;

use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wiremux::engine::client::{Call, CallRef, Error, Response};
use wiremux::engine::reconnect::{ReconnectOptions, ReconnectingClient};
use wiremux::engine::Client;
use wiremux::proto::builder::CommandBuilder;
use wiremux::proto::{Flags, FrameCodec, FrameType};

/// splitmix64: a small, good, seedable generator of our own.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    /// A small signed number, for `add`.
    fn small(&mut self) -> i64 {
        self.below(2001) as i64 - 1000
    }
}

/// How a cut connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// A plain close: the server sees the end of its input and still
    /// finishes what is running.
    Fin,
    /// A reset: the server drops what the connection was running.
    Reset,
}

/// What the proxy does to one direction of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Pass every byte.
    None,
    /// Close both sides once this many bytes have passed.
    CutAt(u64, Close),
    /// Pause this long once this many bytes have passed.
    StallAt(u64, Duration),
    /// Pass bytes one at a time, each in its own write, from this offset
    /// for this many bytes.
    Trickle(u64, u64),
}

impl Fault {
    fn pick(rng: &mut Rng) -> Fault {
        match rng.below(8) {
            0..=2 => Fault::None,
            3 | 4 => {
                let close = if rng.one_in(2) {
                    Close::Fin
                } else {
                    Close::Reset
                };
                Fault::CutAt(rng.below(20_000), close)
            }
            _ => Fault::gentle(rng),
        }
    }

    /// A fault that loses nothing: a stall or a trickle.
    fn gentle(rng: &mut Rng) -> Fault {
        if rng.one_in(2) {
            Fault::StallAt(
                rng.below(20_000),
                Duration::from_millis(20 + rng.below(200)),
            )
        } else {
            Fault::Trickle(rng.below(5_000), 50 + rng.below(400))
        }
    }

    fn is_plain_cut(self) -> bool {
        matches!(self, Fault::CutAt(_, Close::Fin))
    }
}

/// Terminal frames the server sent per request ID on one connection,
/// against command-name frames the client sent: never more answers than
/// requests.
#[derive(Default)]
struct Ledger {
    names: Vec<(u16, String)>,
    started: HashMap<u16, u64>,
    answered: HashMap<u16, u64>,
}

impl Ledger {
    /// The IDs whose commands have had fewer terminal frames, and the
    /// commands sent.
    fn summary(&self) -> String {
        let mut unanswered: Vec<u16> = self
            .started
            .iter()
            .filter(|(id, n)| self.answered.get(id).copied().unwrap_or(0) < **n)
            .map(|(id, _)| *id)
            .collect();
        unanswered.sort_unstable();
        format!("no answer for {unanswered:?}; sent {:?}", self.names)
    }
}

/// What every connection's ledger adds up to.
#[derive(Default)]
struct Totals {
    commands: u64,
    answers: u64,
    cancels: u64,
    duplicates: Vec<String>,
}

/// Decodes the bytes that pass one way and records the frames that matter.
struct Tap {
    codec: FrameCodec,
    buf: BytesMut,
    to_server: bool,
    ledger: Arc<Mutex<Ledger>>,
    totals: Arc<Mutex<Totals>>,
    connection: String,
}

impl Tap {
    fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while let Ok(Some(frame)) = self.codec.decode_frame(&mut self.buf) {
            let mut ledger = self.ledger.lock().unwrap();
            let mut totals = self.totals.lock().unwrap();
            let id = frame.request_id;
            if self.to_server {
                if frame.frame_type == FrameType::COMMAND_NAME {
                    ledger
                        .names
                        .push((id, String::from_utf8_lossy(&frame.payload).into()));
                    *ledger.started.entry(id).or_default() += 1;
                    totals.commands += 1;
                    if frame.payload[..] == b"@cancel"[..] {
                        totals.cancels += 1;
                    }
                }
                continue;
            }
            let terminal = frame.frame_type == FrameType::ERROR_RESPONSE
                || (frame.frame_type == FrameType::BYTES_RESPONSE
                    // A bytes-response ends with the same bit as data eos.
                    && frame.flags.contains(Flags::DATA_EOS));
            // A protocol error on ID 0 answers no request.
            if terminal && id != 0 {
                let answered = {
                    let n = ledger.answered.entry(id).or_default();
                    *n += 1;
                    *n
                };
                let started = ledger.started.get(&id).copied().unwrap_or(0);
                totals.answers += 1;
                if answered > started {
                    totals.duplicates.push(format!(
                        "connection {}, request {id}: {answered} answers for {started} commands",
                        self.connection
                    ));
                }
            }
        }
    }
}

/// Copies one direction, applying `fault`; returns how it cut, if it did.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    fault: Fault,
    mut tap: Tap,
) -> Option<Close> {
    let mut passed = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    let mut stalled = false;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return None;
            }
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            let take = match fault {
                Fault::CutAt(at, close) if passed + chunk.len() as u64 > at => {
                    let keep = (at - passed) as usize;
                    tap.feed(&chunk[..keep]);
                    let _ = to.write_all(&chunk[..keep]).await;
                    return Some(close);
                }
                Fault::StallAt(at, pause) if !stalled && passed + chunk.len() as u64 > at => {
                    let keep = (at - passed) as usize;
                    if keep == 0 {
                        stalled = true;
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    keep
                }
                Fault::Trickle(from_at, len) if passed >= from_at && passed < from_at + len => 1,
                Fault::Trickle(from_at, _) if passed < from_at => {
                    chunk.len().min((from_at - passed) as usize)
                }
                _ => chunk.len(),
            };
            tap.feed(&chunk[..take]);
            if to.write_all(&chunk[..take]).await.is_err() {
                return None;
            }
            passed += take as u64;
            chunk = &chunk[take..];
            if matches!(fault, Fault::Trickle(..)) && take == 1 {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// The proxy's open connections: their faults and ledgers.
type OpenConnections = BTreeMap<u64, ((Fault, Fault), Arc<Mutex<Ledger>>)>;

/// A proxy in front of the server.
struct Proxy {
    addr: std::net::SocketAddr,
    /// The connections (numbered in the order accepted) that were cut.
    cut: Arc<Mutex<BTreeSet<u64>>>,
    /// The connections still open, their faults and ledgers.
    open: Arc<Mutex<OpenConnections>>,
    /// The connections that closed with requests unanswered.
    unanswered: Arc<Mutex<Vec<String>>>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Takes connections until `stop`; connection `n` (counted from 0 in
    /// the order accepted) gets the faults `faults(n)` (client to server,
    /// server to client).
    async fn start(
        name: &'static str,
        server: std::net::SocketAddr,
        faults: impl Fn(u64) -> (Fault, Fault) + Send + 'static,
        totals: Arc<Mutex<Totals>>,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let cut_log = cut.clone();
        let open: Arc<Mutex<OpenConnections>> = Arc::default();
        let open_log = open.clone();
        let unanswered: Arc<Mutex<Vec<String>>> = Arc::default();
        let unanswered_log = unanswered.clone();
        let task = tokio::spawn(async move {
            let mut pumps = tokio::task::JoinSet::new();
            for connection in 0u64.. {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => break,
                    },
                    _ = &mut stopped => break,
                };
                let (up, down) = faults(connection);
                let upstream = TcpStream::connect(server).await.unwrap();
                let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
                let (cr, cw) = client.into_split();
                let (sr, sw) = upstream.into_split();
                let ledger = Arc::new(Mutex::new(Ledger::default()));
                let tap = |to_server| Tap {
                    codec: FrameCodec::new().max_recv_payload(1 << 24),
                    buf: BytesMut::new(),
                    to_server,
                    ledger: ledger.clone(),
                    totals: totals.clone(),
                    connection: format!("{name} {connection}"),
                };
                let (up_tap, down_tap) = (tap(true), tap(false));
                let cut_log = cut_log.clone();
                let open_log = open_log.clone();
                let unanswered_log = unanswered_log.clone();
                open_log
                    .lock()
                    .unwrap()
                    .insert(connection, ((up, down), ledger.clone()));
                pumps.spawn(async move {
                    let (mut cr, mut cw, mut sr, mut sw) = (cr, cw, sr, sw);
                    // When one direction is cut, the other goes too.
                    let cut = {
                        let mut up = std::pin::pin!(pump(&mut cr, &mut sw, up, up_tap));
                        let mut down = std::pin::pin!(pump(&mut sr, &mut cw, down, down_tap));
                        tokio::select! {
                            cut = &mut up => match cut {
                                Some(close) => Some(close),
                                None => down.await,
                            },
                            cut = &mut down => match cut {
                                Some(close) => Some(close),
                                None => up.await,
                            },
                        }
                    };
                    if let Some(close) = cut {
                        cut_log.lock().unwrap().insert(connection);
                        if close == Close::Reset {
                            // A reset and nothing before it: no linger, and
                            // the write halves put back together so that
                            // dropping them sends no FIN first.
                            for (r, w) in [(cr, cw), (sr, sw)] {
                                let stream = r.reunite(w).expect("halves of one stream");
                                let _ = stream.set_zero_linger();
                            }
                        }
                        // Otherwise dropping the halves closes both ways.
                    }
                    if let Some((faults, ledger)) = open_log.lock().unwrap().remove(&connection) {
                        let summary = ledger.lock().unwrap().summary();
                        if !summary.starts_with("no answer for [];") {
                            unanswered_log.lock().unwrap().push(format!(
                                "{name} connection {connection} ({faults:?}): {summary}"
                            ));
                        }
                    }
                });
            }
            // Every connection's pumps end once both of its ends have closed.
            while pumps.join_next().await.is_some() {}
        });
        Proxy {
            addr,
            cut,
            open,
            unanswered,
            stop,
            task,
        }
    }

    /// Stops taking connections and waits until every one has ended;
    /// returns the connections that were cut, and those that closed with
    /// requests unanswered.
    async fn finish(self) -> (BTreeSet<u64>, Vec<String>) {
        let _ = self.stop.send(());
        if tokio::time::timeout(common::LIMIT, self.task)
            .await
            .is_err()
        {
            let open = self.open.lock().unwrap();
            let open: Vec<String> = open
                .iter()
                .map(|(n, (faults, ledger))| {
                    format!(
                        "connection {n} ({faults:?}): {}",
                        ledger.lock().unwrap().summary()
                    )
                })
                .collect();
            panic!("the proxy's connections did not end: {open:#?}");
        }
        let cut = self.cut.lock().unwrap().clone();
        let unanswered = self.unanswered.lock().unwrap().clone();
        (cut, unanswered)
    }
}

/// How a call ended, once judged right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The right answer.
    Right,
    /// The exact application error the call must get.
    RightError,
    /// Timed out, as a call with a timeout shorter than its work must.
    TimedOut,
    /// Cancelled by `Pipeline::cancel`.
    Cancelled,
    /// `dependency N failed`, N the call it depends on, which failed.
    DependencyFailed,
    /// Lost with its connection.
    Lost,
    /// Dropped by the caller: no outcome to see.
    Dropped,
}

/// A call's judgement: what it ended as, or what was wrong.
type Judged = Result<Seen, String>;

/// The right bodies.
#[derive(Debug, Clone)]
enum Body {
    Exact(Bytes),
    /// `blob size=N`: N bytes of the demo pattern.
    Blob(usize),
}

impl Body {
    fn number(n: i64) -> Body {
        Body::Exact(n.to_string().into())
    }

    fn matches(&self, body: &[u8]) -> bool {
        match self {
            Body::Exact(want) => body == &want[..],
            Body::Blob(size) => {
                body.len() == *size
                    && body
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == wiremux::engine::demo::blob_byte(i))
            }
        }
    }
}

/// What a call may end as, besides the loss of its connection.
#[derive(Debug, Clone, Default)]
struct Want {
    /// The right answer.
    body: Option<Body>,
    /// Or this exact application error.
    error: Option<String>,
    /// Or `Error::TimedOut` of this.
    timeout: Option<Duration>,
    /// Or `Error::Cancelled`.
    cancelled: bool,
}

/// What a call's dependency ended as, as far as the dependent may tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dep {
    /// No dependency, or one that succeeded (or must have).
    Fine,
    /// It failed: the dependent may only fail with `dependency N failed`.
    Failed(Option<u16>),
    /// It may have failed (cancelled by the caller, and the cancel may
    /// lose its race; or judged wrong itself): either is right.
    Either(Option<u16>),
    /// Lost with the connection: so is the dependent.
    Lost,
}

impl Dep {
    /// From the dependency's own judgement and request ID.
    fn from(seen: &Judged, id: Option<u16>) -> Dep {
        match seen {
            Ok(Seen::Right) => Dep::Fine,
            Ok(Seen::Lost) => Dep::Lost,
            Ok(Seen::Cancelled) | Ok(Seen::Dropped) | Err(_) => Dep::Either(id),
            Ok(Seen::RightError) | Ok(Seen::TimedOut) | Ok(Seen::DependencyFailed) => {
                Dep::Failed(id)
            }
        }
    }

    /// For the call after a dropped one (seen by nobody) that depended on
    /// `self`: a dropped call that others use is not cancelled, so it ends
    /// as its own dependency makes it.
    fn through_dropped(self, id: Option<u16>) -> Dep {
        match self {
            Dep::Fine => Dep::Fine,
            Dep::Lost => Dep::Lost,
            Dep::Failed(_) => Dep::Failed(id),
            Dep::Either(_) => Dep::Either(id),
        }
    }
}

/// The client's or the server's text for a failed dependency.
fn dependency_failed(id: Option<u16>) -> String {
    match id {
        Some(id) => format!("dependency {id} failed"),
        None => "dependency failed".to_string(),
    }
}

impl Want {
    fn body(body: Body) -> Want {
        Want {
            body: Some(body),
            ..Want::default()
        }
    }

    fn error(message: String) -> Want {
        Want {
            error: Some(message),
            ..Want::default()
        }
    }

    fn judge(&self, what: &str, dep: Dep, outcome: &Result<Response, Error>) -> Judged {
        if let Err(e) = outcome {
            if e.is_connection_error() {
                return Ok(Seen::Lost);
            }
        }
        let wrong = || {
            Err(format!(
                "{what} ({self:?}, dependency {dep:?}): {outcome:?}"
            ))
        };
        match outcome {
            Err(Error::Cancelled) if self.cancelled => return Ok(Seen::Cancelled),
            Err(Error::TimedOut(t)) if Some(*t) == self.timeout => return Ok(Seen::TimedOut),
            _ => {}
        }
        if dep == Dep::Lost {
            // Its dependency was lost with the connection: so is it (unless
            // its own timeout or cancel came first).
            return wrong();
        }
        let failed_dep = match dep {
            Dep::Failed(id) => Some((id, false)),
            Dep::Either(id) => Some((id, true)),
            _ => None,
        };
        if let Some((id, may_succeed)) = failed_dep {
            return match outcome {
                Err(Error::Application(m)) if *m == dependency_failed(id) => {
                    Ok(Seen::DependencyFailed)
                }
                Ok(r) if may_succeed && self.body.as_ref().is_some_and(|b| b.matches(&r.body)) => {
                    Ok(Seen::Right)
                }
                _ => wrong(),
            };
        }
        match (outcome, &self.body, &self.error) {
            (Ok(r), Some(body), _) if body.matches(&r.body) => Ok(Seen::Right),
            (Err(Error::Application(m)), _, Some(want)) if m == want => Ok(Seen::RightError),
            _ => wrong(),
        }
    }
}

/// Bytes to send, shown by their length.
#[derive(Clone)]
struct Data(Vec<u8>);

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

/// A call on its own.
#[derive(Debug, Clone)]
enum Single {
    Echo(Data),
    Sleep(u64),
    Blob(usize),
    Fail(String),
    /// `sleep ms` with a raw `@deadline` of `deadline` ms, shorter.
    RawDeadline {
        ms: u64,
        deadline: u64,
    },
    /// `sleep ms` with a client timeout shorter than it.
    Impatient {
        ms: u64,
        timeout: Duration,
    },
    /// `sleep ms` or `echo` with a client timeout far longer.
    Patient {
        ms: u64,
        timeout: Duration,
    },
}

impl Single {
    fn pick(rng: &mut Rng, n: u64) -> Single {
        match rng.below(12) {
            0..=3 => Single::Echo(Data((0..rng.below(3000)).map(|i| (i ^ n) as u8).collect())),
            4 | 5 => Single::Sleep(rng.below(30)),
            6 => Single::Blob(rng.below(200_000) as usize),
            7 => Single::Fail(format!("failure {n}")),
            8 => Single::RawDeadline {
                ms: 200 + rng.below(200),
                deadline: 1 + rng.below(20),
            },
            9 | 10 => Single::Impatient {
                ms: 300 + rng.below(300),
                timeout: Duration::from_millis(1 + rng.below(40)),
            },
            _ => Single::Patient {
                ms: rng.below(20),
                timeout: Duration::from_secs(10),
            },
        }
    }

    fn spec(&self) -> Spec {
        let plain = |name, args: Vec<(&'static str, String)>, want| Spec {
            name,
            args,
            data: None,
            timeout: None,
            want,
        };
        let sleep = |ms: &u64| vec![("ms", ms.to_string())];
        match self {
            Single::Echo(Data(data)) => Spec {
                data: Some(data.clone().into()),
                ..plain("echo", vec![], Want::body(Body::Exact(data.clone().into())))
            },
            Single::Sleep(ms) => plain("sleep", sleep(ms), Want::body(Body::number(*ms as i64))),
            Single::Blob(size) => plain(
                "blob",
                vec![("size", size.to_string())],
                Want::body(Body::Blob(*size)),
            ),
            Single::Fail(message) => plain(
                "fail",
                vec![("message", message.clone())],
                Want::error(message.clone()),
            ),
            Single::RawDeadline { ms, deadline } => plain(
                "sleep",
                vec![("ms", ms.to_string()), ("@deadline", deadline.to_string())],
                Want::error(format!("timed out after {deadline} ms")),
            ),
            Single::Impatient { ms, timeout } => Spec {
                timeout: Some(*timeout),
                ..plain(
                    "sleep",
                    sleep(ms),
                    Want {
                        timeout: Some(*timeout),
                        ..Want::default()
                    },
                )
            },
            Single::Patient { ms, timeout } => Spec {
                timeout: Some(*timeout),
                ..plain("sleep", sleep(ms), Want::body(Body::number(*ms as i64)))
            },
        }
    }
}

/// A call's command, timeout and right outcomes.
struct Spec {
    name: &'static str,
    args: Vec<(&'static str, String)>,
    data: Option<Bytes>,
    timeout: Option<Duration>,
    want: Want,
}

impl Spec {
    fn command(&self) -> CommandBuilder {
        let mut command = CommandBuilder::new(self.name);
        for (name, value) in &self.args {
            command = command.arg(*name, value.clone());
        }
        if let Some(data) = &self.data {
            command = command.data(data.clone());
        }
        command
    }

    fn start(&self, client: &Client) -> Call {
        let mut call = client.call(self.name);
        for (name, value) in &self.args {
            call = call.arg(*name, value.clone());
        }
        if let Some(data) = &self.data {
            call = call.data(data.clone());
        }
        if let Some(t) = self.timeout {
            call = call.timeout(t);
        }
        call.start()
    }
}

/// A link of a chain that fails, so the links after it must fail too.
#[derive(Debug, Clone)]
enum Poison {
    /// `fail`, held after the link before it.
    Fail(String),
    /// `sleep ms`, held after the link before it, under a shorter timeout.
    Timeout { ms: u64, timeout: Duration },
}

/// A group of calls that belong together, run as one task.
#[derive(Debug, Clone)]
enum Group {
    Single(Single),
    /// `add a=start b=adds[0]`, then `add @use:a=<previous> b=adds[k]`;
    /// the link at `poison.0` is replaced by a failing one; the handles at
    /// `dropped` are dropped once every link has started.
    Chain {
        start: i64,
        adds: Vec<i64>,
        poison: Option<(usize, Poison)>,
        dropped: Vec<usize>,
    },
    /// A `put` and a `get` of the same key held `@after` it.
    PutThenGet {
        key: String,
        value: Data,
    },
    /// A `sleep` dropped without its answer: at once (never sent) or
    /// after `wait_ms`.
    Drop {
        short_ms: u64,
        wait_ms: Option<u64>,
    },
    /// Calls on a `Pipeline`: plain ones, and a chain headed by a `sleep`;
    /// the tags in `cancel` are cancelled, before the calls are sent or
    /// `wait_ms` after.
    Pipeline {
        plain: Vec<Single>,
        head_ms: u64,
        adds: Vec<i64>,
        cancel_head: bool,
        cancel_plain: Option<usize>,
        wait_ms: Option<u64>,
    },
}

impl Group {
    fn pick(rng: &mut Rng, n: u64) -> Group {
        match rng.below(20) {
            0..=7 => Group::Single(Single::pick(rng, n)),
            8..=11 => {
                let links = 1 + rng.below(12) as usize;
                let adds: Vec<i64> = (0..links).map(|_| rng.small()).collect();
                let poison = (links > 1 && rng.one_in(3)).then(|| {
                    let at = 1 + rng.below(links as u64 - 1) as usize;
                    let poison = if rng.one_in(2) {
                        Poison::Fail(format!("broken link {n}"))
                    } else {
                        Poison::Timeout {
                            ms: 300 + rng.below(300),
                            timeout: Duration::from_millis(1 + rng.below(30)),
                        }
                    };
                    (at, poison)
                });
                // Links other than the last and the poisoned one.
                let dropped = (0..links - 1)
                    .filter(|k| poison.as_ref().map(|p| p.0) != Some(*k) && rng.one_in(4))
                    .collect();
                Group::Chain {
                    start: rng.small(),
                    adds,
                    poison,
                    dropped,
                }
            }
            12 | 13 => Group::PutThenGet {
                key: format!("chaos-{n}"),
                value: Data((0..rng.below(2000)).map(|i| (i * 7 + n) as u8).collect()),
            },
            14..=16 => Group::Drop {
                short_ms: 300 + rng.below(500),
                wait_ms: (!rng.one_in(4)).then(|| rng.below(30)),
            },
            _ => {
                let plain = (0..rng.below(8))
                    .map(|i| Single::pick(rng, n * 100 + i))
                    .collect::<Vec<_>>();
                let cancel_head = rng.one_in(2);
                let cancel_plain =
                    (!plain.is_empty() && rng.one_in(2)).then(|| rng.below(plain.len() as u64));
                Group::Pipeline {
                    cancel_plain: cancel_plain.map(|i| i as usize),
                    plain,
                    head_ms: rng.below(30),
                    adds: (0..rng.below(6)).map(|_| rng.small()).collect(),
                    cancel_head,
                    wait_ms: (!rng.one_in(4)).then(|| rng.below(20)),
                }
            }
        }
    }

    /// Runs the group on `client`. `long_ok`: no cut on this connection can
    /// leave a request running on the server (no plain close), so a
    /// cancelled `sleep` may be long enough that only its cancel ends it.
    async fn run(self, client: Client, long_ok: bool) -> Vec<Judged> {
        let long = |short: u64| if long_ok { 60_000 } else { short };
        match self {
            Group::Single(single) => {
                let spec = single.spec();
                let what = format!("{single:?}");
                let outcome = settle(&what, &mut spec.start(&client)).await;
                vec![spec.want.judge(&what, Dep::Fine, &outcome)]
            }
            Group::Chain {
                start,
                adds,
                poison,
                dropped,
            } => run_chain(&client, start, &adds, poison, &dropped).await,
            Group::PutThenGet {
                key,
                value: Data(value),
            } => {
                let mut put = client
                    .call("put")
                    .arg("key", key.clone())
                    .data(value.clone())
                    .start();
                let mut get = client
                    .call("get")
                    .arg("key", key.clone())
                    .after(&put)
                    .start();
                let put_seen = Want::body(Body::Exact("ok".into())).judge(
                    &format!("put {key}"),
                    Dep::Fine,
                    &settle("put", &mut put).await,
                );
                let dep = Dep::from(&put_seen, put.request_id());
                let get_seen = Want::body(Body::Exact(value.into())).judge(
                    &format!("get {key} after its put"),
                    dep,
                    &settle("get", &mut get).await,
                );
                vec![put_seen, get_seen]
            }
            Group::Drop { short_ms, wait_ms } => {
                let ms = long(short_ms);
                let mut call = client.call("sleep").arg("ms", ms.to_string()).start();
                let mut seen = Ok(Seen::Dropped);
                if let Some(wait) = wait_ms {
                    if let Ok(outcome) =
                        tokio::time::timeout(Duration::from_millis(wait), &mut call).await
                    {
                        // Only a lost connection ends it this soon.
                        seen = Want::default().judge(&format!("sleep {ms}"), Dep::Fine, &outcome);
                    }
                }
                drop(call);
                vec![seen]
            }
            Group::Pipeline {
                plain,
                head_ms,
                adds,
                cancel_head,
                cancel_plain,
                wait_ms,
            } => {
                let head_ms = if cancel_head { long(400) } else { head_ms };
                run_pipeline(
                    &client,
                    plain,
                    head_ms,
                    adds,
                    cancel_head,
                    cancel_plain,
                    wait_ms,
                )
                .await
            }
        }
    }
}

/// Awaits a call's outcome: never none, within the bound.
async fn settle(what: &str, call: &mut Call) -> Result<Response, Error> {
    tokio::time::timeout(common::LIMIT, call)
        .await
        .unwrap_or_else(|_| panic!("{what} had no outcome"))
}

async fn run_chain(
    client: &Client,
    start: i64,
    adds: &[i64],
    poison: Option<(usize, Poison)>,
    dropped: &[usize],
) -> Vec<Judged> {
    let mut calls: Vec<Option<Call>> = Vec::new();
    let mut wants = Vec::new();
    let mut sum = start;
    for (k, b) in adds.iter().enumerate() {
        sum += b;
        let (call, want) = match (&poison, k) {
            (Some((at, Poison::Fail(message))), k) if *at == k => (
                client
                    .call("fail")
                    .arg("message", message.clone())
                    .after(calls[k - 1].as_ref().unwrap())
                    .start(),
                Want::error(message.clone()),
            ),
            (Some((at, Poison::Timeout { ms, timeout })), k) if *at == k => (
                client
                    .call("sleep")
                    .arg("ms", ms.to_string())
                    .after(calls[k - 1].as_ref().unwrap())
                    .timeout(*timeout)
                    .start(),
                Want {
                    timeout: Some(*timeout),
                    ..Want::default()
                },
            ),
            (_, 0) => (
                client
                    .call("add")
                    .arg("a", start.to_string())
                    .arg("b", b.to_string())
                    .start(),
                Want::body(Body::number(sum)),
            ),
            (_, k) => (
                client
                    .call("add")
                    .use_result("a", calls[k - 1].as_ref().unwrap())
                    .arg("b", b.to_string())
                    .start(),
                Want::body(Body::number(sum)),
            ),
        };
        calls.push(Some(call));
        wants.push(want);
    }
    // A dropped link that a later one depends on must not be cancelled.
    let names: Vec<CallRef> = calls.iter().map(|c| c.as_ref().unwrap().into()).collect();
    for &k in dropped {
        calls[k] = None;
    }
    let mut judged: Vec<Judged> = Vec::new();
    let mut dep = Dep::Fine;
    for (k, (call, want)) in calls.into_iter().zip(wants).enumerate() {
        let what = format!("chain link {k} of {} from {start}", adds.len());
        let seen = match call {
            None => {
                dep = dep.through_dropped(names[k].request_id());
                Ok(Seen::Dropped)
            }
            Some(mut call) => {
                let outcome = settle(&what, &mut call).await;
                let seen = want.judge(&what, dep, &outcome);
                dep = Dep::from(&seen, call.request_id());
                seen
            }
        };
        judged.push(seen);
    }
    judged
}

async fn run_pipeline(
    client: &Client,
    plain: Vec<Single>,
    head_ms: u64,
    adds: Vec<i64>,
    cancel_head: bool,
    cancel_plain: Option<usize>,
    wait_ms: Option<u64>,
) -> Vec<Judged> {
    let mut pipeline = client.pipeline();
    let mut wants: BTreeMap<u64, (String, Want)> = BTreeMap::new();
    // Calls that could not start: the connection had closed (or a link
    // before them could not start).
    let mut unstarted: Vec<Error> = Vec::new();
    // Tags: the plain calls 0.., the head 1000, its chain 1001...
    for (tag, single) in (0u64..).zip(&plain) {
        let spec = single.spec();
        let mut want = spec.want.clone();
        want.cancelled = cancel_plain == Some(tag as usize);
        let mut call = pipeline.call(tag, spec.command());
        if let Some(t) = spec.timeout {
            call = call.timeout(t);
        }
        match call.start() {
            Ok(_) => {
                wants.insert(tag, (format!("pipeline {single:?}"), want));
            }
            Err(e) => unstarted.push(e),
        }
    }
    let mut links = Vec::new();
    let head = CommandBuilder::new("sleep").arg("ms", head_ms.to_string());
    match pipeline.call(1000, head).start() {
        Ok(head) => {
            let mut want = Want::body(Body::number(head_ms as i64));
            want.cancelled = cancel_head;
            wants.insert(1000, (format!("pipeline head sleep {head_ms}"), want));
            links.push(head);
        }
        Err(e) => unstarted.push(e),
    }
    let mut sum = head_ms as i64;
    for (tag, b) in (1001u64..).zip(&adds) {
        sum += b;
        let add = CommandBuilder::new("add").arg("b", b.to_string());
        let Some(last) = links.last().filter(|_| links.len() as u64 == tag - 1000) else {
            unstarted.push(Error::Cancelled); // its chain was cut short
            continue;
        };
        match pipeline.call(tag, add).use_result("a", last).start() {
            Ok(link) => {
                links.push(link);
                let want = Want::body(Body::number(sum));
                wants.insert(tag, (format!("pipeline link {tag}"), want));
            }
            Err(e) => unstarted.push(e),
        }
    }
    let cancel = |pipeline: &mut wiremux::engine::Pipeline| {
        if cancel_head {
            pipeline.cancel(1000);
        }
        if let Some(i) = cancel_plain {
            pipeline.cancel(i as u64);
        }
    };
    match wait_ms {
        None => cancel(&mut pipeline),
        Some(wait) => {
            pipeline.flush();
            tokio::time::sleep(Duration::from_millis(wait)).await;
            cancel(&mut pipeline);
        }
    }
    // Every tag exactly once, then the end.
    let mut answers: BTreeMap<u64, Vec<Result<Response, Error>>> = BTreeMap::new();
    while let Some((tag, result)) = common::within("a pipeline answer", pipeline.next()).await {
        answers.entry(tag).or_default().push(result);
    }
    let mut judged = Vec::new();
    let mut dep = Dep::Fine;
    for (tag, (what, want)) in wants {
        let Some(mut got) = answers.remove(&tag) else {
            judged.push(Err(format!("{what}: no answer")));
            continue;
        };
        if got.len() != 1 {
            judged.push(Err(format!("{what}: {} answers: {got:?}", got.len())));
            continue;
        }
        let outcome = got.pop().unwrap();
        let this_dep = if tag > 1000 { dep } else { Dep::Fine };
        let seen = want.judge(&what, this_dep, &outcome);
        if tag >= 1000 {
            let link = &links[(tag - 1000) as usize];
            dep = Dep::from(&seen, link.request_id());
        }
        judged.push(seen);
    }
    if !answers.is_empty() {
        judged.push(Err(format!("answers for tags never started: {answers:?}")));
    }
    for e in unstarted {
        judged.push(match e {
            Error::Cancelled => Ok(Seen::Lost),
            e if e.is_connection_error() => Ok(Seen::Lost),
            e => Err(format!("a pipeline call could not start: {e}")),
        });
    }
    judged
}

/// Calls of one connection: `groups` at once, each its own task.
async fn run_connection(client: Client, groups: Vec<Group>, long_ok: bool) -> Vec<Judged> {
    let mut each = tokio::task::JoinSet::new();
    for group in groups {
        each.spawn(group.run(client.clone(), long_ok));
    }
    drop(client);
    let mut judged = Vec::new();
    while let Some(j) = each.join_next().await {
        judged.extend(j.expect("a group's task"));
    }
    judged
}

/// The counts of a run.
#[derive(Debug, Default)]
struct Tally {
    /// Connections made (the reconnecting client's).
    connects: u64,
    calls: u64,
    right: u64,
    timed_out: u64,
    cancelled: u64,
    dependency_failed: u64,
    lost: u64,
    dropped: u64,
    wrong: Vec<String>,
}

impl Tally {
    fn add(&mut self, judged: &Judged) {
        self.calls += 1;
        match judged {
            Ok(Seen::Right) | Ok(Seen::RightError) => self.right += 1,
            Ok(Seen::TimedOut) => self.timed_out += 1,
            Ok(Seen::Cancelled) => self.cancelled += 1,
            Ok(Seen::DependencyFailed) => self.dependency_failed += 1,
            Ok(Seen::Lost) => self.lost += 1,
            Ok(Seen::Dropped) => self.dropped += 1,
            Err(e) => self.wrong.push(e.clone()),
        }
    }

    fn lost(judged: &[Judged]) -> usize {
        judged.iter().filter(|j| **j == Ok(Seen::Lost)).count()
    }
}

/// The reconnecting client's proxy cuts each of its first `cuts`
/// connections, in one direction at a random offset; later ones only
/// stall or trickle.
fn reconnect_faults(seed: u64, cuts: u64) -> impl Fn(u64) -> (Fault, Fault) {
    move |connection| {
        let mut rng = Rng(seed ^ connection.wrapping_mul(0x2545_f491_4f6c_dd1d));
        if connection < cuts {
            let close = if rng.one_in(2) {
                Close::Fin
            } else {
                Close::Reset
            };
            let cut = Fault::CutAt(200 + rng.below(8_000), close);
            if rng.one_in(2) {
                (cut, Fault::None)
            } else {
                (Fault::None, cut)
            }
        } else {
            let gentle = |rng: &mut Rng| {
                if rng.one_in(2) {
                    Fault::None
                } else {
                    Fault::gentle(rng)
                }
            };
            (gentle(&mut rng), gentle(&mut rng))
        }
    }
}

/// The reconnecting client's run: rounds of a `send`, a `send_idempotent`
/// and a group on its current connection, until it has had `cuts`
/// connections cut under it and made `after` right calls since, on a
/// connection that nothing cuts.
async fn run_reconnecting(addr: std::net::SocketAddr, seed: u64, cuts: u64, after: u64) -> Tally {
    let options = ReconnectOptions {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..ReconnectOptions::default()
    };
    let client = ReconnectingClient::tcp(addr.to_string(), options);
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    let mut right_after = 0u64;
    for round in 0u64.. {
        assert!(
            round < 5_000,
            "the reconnecting client made {} connections in 5000 rounds; {} expected to be cut",
            client.connects(),
            cuts
        );
        // Past the connections that are cut: nothing may be lost now.
        let uncut = client.connects() > cuts;
        let mut judged = Vec::new();
        let data: Vec<u8> = (0..rng.below(3000)).map(|i| (i + round) as u8).collect();
        let want = Want::body(Body::Exact(data.clone().into()));
        let outcome = client
            .send(CommandBuilder::new("echo").data(data.clone()))
            .await;
        judged.push(want.judge("reconnecting send", Dep::Fine, &outcome));
        let outcome = client
            .send_idempotent(CommandBuilder::new("echo").data(data))
            .await;
        judged.push(want.judge("reconnecting send_idempotent", Dep::Fine, &outcome));
        match client.client().await {
            Ok(connection) => {
                let group = Group::pick(&mut rng, 1_000_000 + round);
                judged.extend(group.run(connection, false).await);
            }
            Err(err) => judged.push(Err(format!("reconnecting: no connection: {err}"))),
        }
        for j in &judged {
            tally.add(j);
            if uncut {
                match j {
                    Ok(Seen::Lost) => tally.wrong.push(format!(
                        "reconnecting client, round {round}: a call lost after the last cut"
                    )),
                    Ok(Seen::Right) | Ok(Seen::RightError) => right_after += 1,
                    _ => {}
                }
            }
        }
        if uncut && right_after >= after {
            break;
        }
    }
    tally.connects = client.connects();
    if tally.connects <= cuts {
        tally.wrong.push(format!(
            "the reconnecting client made {} connections, {cuts} of them cut",
            tally.connects
        ));
    }
    tally
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_has_exactly_one_outcome_through_a_chaos_proxy() {
    let seed = env_u64("CHAOS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let rounds = env_u64("CHAOS_ROUNDS").unwrap_or(24);
    let reconnect_cuts = (rounds / 6).clamp(3, 50);
    println!(
        "chaos: seed {seed} (replay with CHAOS_SEED={seed}), {rounds} connections, \
         a reconnecting client through {reconnect_cuts} cuts"
    );
    let mut rng = Rng(seed);

    let (server, server_addr) = common::start_default().await;
    let faults: Vec<(Fault, Fault)> = (0..rounds)
        .map(|_| (Fault::pick(&mut rng), Fault::pick(&mut rng)))
        .collect();
    let totals = Arc::new(Mutex::new(Totals::default()));
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let plain_faults = faults.clone();
    let plain = Proxy::start(
        "plain",
        server_addr,
        move |n| {
            plain_faults
                .get(n as usize)
                .copied()
                .unwrap_or((Fault::None, Fault::None))
        },
        totals.clone(),
    )
    .await;
    let reconnect_seed = rng.next();
    let reconnecting_proxy = Proxy::start(
        "reconnecting",
        server_addr,
        reconnect_faults(reconnect_seed, reconnect_cuts),
        totals.clone(),
    )
    .await;
    let reconnecting = tokio::spawn(run_reconnecting(
        reconnecting_proxy.addr,
        reconnect_seed,
        reconnect_cuts,
        30,
    ));

    let mut tally = Tally::default();
    let mut lost_per_round: Vec<(u64, usize)> = Vec::new();
    // Three connections at a time. They connect one after the other, so
    // that the proxy numbers them as the rounds go and each gets its own
    // faults.
    for batch in (0..rounds).collect::<Vec<_>>().chunks(3) {
        let mut conns = tokio::task::JoinSet::new();
        for &round in batch {
            let groups: Vec<Group> = (0..3 + rng.below(10))
                .map(|n| Group::pick(&mut rng, round * 1000 + n))
                .collect();
            if std::env::var_os("CHAOS_PLAN").is_some() {
                println!("chaos: connection {round}: {groups:?}");
            }
            // To narrow a failure down: only this connection's load runs.
            let groups = match env_u64("CHAOS_ONLY") {
                Some(only) if only != round => Vec::new(),
                _ => groups,
            };
            let (up, down) = faults[round as usize];
            let long_ok = !up.is_plain_cut() && !down.is_plain_cut();
            let client = Client::connect(plain.addr).await.expect("proxy accepts");
            conns.spawn(async move { (round, run_connection(client, groups, long_ok).await) });
        }
        while let Some(done) = conns.join_next().await {
            let (round, done) = done.expect("connection task");
            lost_per_round.push((round, Tally::lost(&done)));
            for j in &done {
                tally.add(j);
            }
        }
    }
    let reconnected = common::within("the reconnecting client", reconnecting)
        .await
        .expect("the reconnecting client's task");
    let (plain_cut, mut unanswered) = plain.finish().await;
    let (reconnect_cut, more) = reconnecting_proxy.finish().await;
    unanswered.extend(more);
    // Calls lost only where a connection was cut.
    for (round, lost) in lost_per_round {
        if lost > 0 && !plain_cut.contains(&round) {
            tally.wrong.push(format!(
                "connection {round} ({:?}): {lost} calls lost, never cut",
                faults[round as usize]
            ));
        }
    }
    // Every request ends on the server, whatever became of its connection.
    let until = tokio::time::Instant::now() + common::LIMIT;
    let stats = loop {
        let stats = server.stats();
        if stats.requests_in_flight == 0 && stats.connections_open == 0 {
            break stats;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "seed {seed}: the server did not go idle: {stats:?}; connections that closed \
             with requests unanswered: {unanswered:#?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (requests, answers, cancels, duplicates) = {
        let totals = totals.lock().unwrap();
        let t = &*totals;
        (t.commands, t.answers, t.cancels, t.duplicates.clone())
    };
    for t in [&tally, &reconnected] {
        println!(
            "chaos: {} calls: {} right, {} timed out, {} cancelled, {} failed for a failed \
             dependency, {} lost with a cut connection, {} dropped, {} wrong",
            t.calls,
            t.right,
            t.timed_out,
            t.cancelled,
            t.dependency_failed,
            t.lost,
            t.dropped,
            t.wrong.len()
        );
    }
    println!(
        "chaos: {} plain connections cut, the reconnecting client's {} cut over {} connections; \
         the server saw {requests} commands ({cancels} @cancel) and sent {answers} answers; \
         server: {} started, {} torn down with their connection, {} in flight",
        plain_cut.len(),
        reconnect_cut.len(),
        reconnected.connects,
        stats.requests_started,
        stats.requests_cancelled,
        stats.requests_in_flight,
    );
    assert!(
        tally.wrong.is_empty(),
        "seed {seed}: wrong outcomes: {:#?}",
        tally.wrong
    );
    assert!(
        reconnected.wrong.is_empty(),
        "seed {seed}: wrong outcomes of the reconnecting client: {:#?}",
        reconnected.wrong
    );
    assert!(duplicates.is_empty(), "seed {seed}: {duplicates:?}");
    assert_eq!(stats.requests_in_flight, 0);
    assert_eq!(
        reconnect_cut.len() as u64,
        reconnect_cuts,
        "seed {seed}: the reconnecting client's connections cut"
    );
    // No task left behind: the client drivers, handlers and proxy pumps
    // are gone (the server's accept task remains, as before the run).
    let until = tokio::time::Instant::now() + common::LIMIT;
    while metrics.num_alive_tasks() > tasks_before {
        assert!(
            tokio::time::Instant::now() < until,
            "seed {seed}: {} tasks alive, {tasks_before} before the run",
            metrics.num_alive_tasks()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A call that was sent before the client knew the server's extensions
/// (no call had needed one), dropped together with the last handle of
/// its client: the client must still cancel it on the server rather than
/// close the connection with the cancel unsent (a server goes on running
/// what it was sent after a plain close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_with_its_client_before_the_capabilities_are_known_is_cancelled() {
    let (server, addr) = common::start_default().await;
    let client = Client::connect(addr).await.unwrap();
    let mut call = client.call("sleep").arg("ms", "60000").start();
    assert!(futures::poll!(&mut call).is_pending());
    common::wait_stats(&server, "the sleep to run", |s| s.requests_in_flight == 1).await;
    assert!(call.request_id().is_some());
    drop(call);
    drop(client);
    let stats = common::wait_stats(&server, "the dropped sleep to be cancelled", |s| {
        s.requests_in_flight == 0
    })
    .await;
    // Started: the sleep, `@capabilities` and `@cancel`; the sleep ended
    // with its `cancelled` error (a failure in the counters), not torn
    // down with the connection (which would count it cancelled).
    assert_eq!(
        (
            stats.requests_started,
            stats.requests_completed,
            stats.requests_failed,
            stats.requests_cancelled
        ),
        (3, 2, 1, 0),
        "{stats:?}"
    );
}

/// The handle of a chain's middle link dropped while the next link still
/// depends on it: the middle link must not be cancelled, and the last
/// link gets the whole sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_link_that_a_later_link_uses_is_not_cancelled() {
    let (server, addr) = common::start_default().await;
    let client = Client::connect(addr).await.unwrap();
    let add = |a: &str, b: &str| {
        client
            .call("add")
            .arg("a", a.to_string())
            .arg("b", b.to_string())
    };
    let first = add("1", "2").start();
    let middle = client
        .call("add")
        .use_result("a", &first)
        .arg("b", "10")
        .start();
    let last = client
        .call("add")
        .use_result("a", &middle)
        .arg("b", "100")
        .start();
    drop(middle);
    assert_eq!(
        common::within("the last link", last).await.unwrap().body,
        "113"
    );
    assert_eq!(
        common::within("the first link", first).await.unwrap().body,
        "3"
    );
    let stats =
        common::wait_stats(&server, "the chain to end", |s| s.requests_in_flight == 0).await;
    assert_eq!(stats.requests_cancelled, 0);
}

/// A peer that closes its sending side (FIN) and then resets the
/// connection while a long request runs: the server should notice the
/// reset and abort the handler, as it does for a reset alone
/// (`tests/faults.rs`). Today it sees only the end of input, keeps the
/// handler running for a peer that is gone, and notices the reset only
/// when it next writes (here: after 60 s). The chaos proxy found it (a
/// cut whose write halves sent a FIN before the reset); it now resets
/// without a FIN, so this test stands alone until the server is changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the server does not notice a reset that follows the peer's FIN"]
async fn a_reset_after_the_peers_fin_aborts_its_handlers() {
    let (server, addr) = common::start_default().await;
    let mut raw = common::Raw::connect(addr).await;
    raw.send_command(1, CommandBuilder::new("sleep").arg("ms", "60000"))
        .await;
    common::wait_stats(&server, "the sleep to run", |s| s.requests_in_flight == 1).await;
    raw.shutdown_write().await;
    // Let the server read the end of input before the reset comes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    raw.stream.set_zero_linger().unwrap();
    drop(raw);
    let stats = common::wait_stats(&server, "the reset connection's handler to stop", |s| {
        s.requests_in_flight == 0 && s.connections_open == 0
    })
    .await;
    assert_eq!(stats.requests_cancelled, 1, "{stats:?}");
}
