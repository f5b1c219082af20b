//! One connection of the generator: a single task that writes requests
//! and reads answers on one socket, with no other task, channel or future
//! per request between it and the kernel.
//!
//! The task keeps its requests in a table indexed by request ID, encodes
//! them from templates ([`super::requests::Template`]) into one write
//! buffer, and assembles answers with wiremux-proto's
//! [`ResponseAssembler`]. It waits on the socket's readiness (and, in the
//! open loop, on its thread's dispatcher) and writes whatever is buffered
//! whenever the socket takes it, so reading never waits behind writing.

use super::requests::{self, Link};
use super::run::{failure, Measured, Shared};
use bytes::BytesMut;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::sync::Notify;
use wiremux_proto::client::{IdAllocator, Outcome, ResponseAssembler};
use wiremux_proto::FrameCodec;

/// How long a connection waits for any answer, once the run is over,
/// before it counts what is still out as lost.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A connected socket.
pub enum Stream {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

impl Stream {
    async fn ready(&self, interest: Interest) -> io::Result<tokio::io::Ready> {
        match self {
            Stream::Tcp(s) => s.ready(interest).await,
            #[cfg(unix)]
            Stream::Unix(s) => s.ready(interest).await,
        }
    }

    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read_buf(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.try_read_buf(buf),
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.try_write(buf),
        }
    }
}

/// A request (or a whole chain) while it is out.
#[derive(Clone, Copy)]
struct Call {
    seq: u64,
    entry: usize,
    /// When it was due (open loop) or started (closed loop).
    due: Instant,
    /// When its first bytes went into the write buffer.
    sent: Instant,
    measured: bool,
}

/// What a request ID is out for.
enum Slot {
    Free,
    Call(Call),
    Link { chain: usize, index: usize },
}

/// A `chain(len=K)` in flight.
struct Chain {
    call: Call,
    len: usize,
    start: i64,
    ids: Vec<u16>,
    answered: usize,
    /// Sequential (`--compare-round-trips`): the next link to send.
    next: usize,
    failed: Option<String>,
    /// A failure the mix did not expect (as opposed to a wrong answer).
    unexpected: Option<String>,
}

/// Requests of this connection still unanswered, by sequence number: one
/// bit each, from the oldest one out.
#[derive(Default)]
pub struct Outstanding {
    first_word: u64,
    words: VecDeque<u64>,
    next: u64,
}

impl Outstanding {
    /// Marks the next sequence number as out and returns it.
    pub fn push(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        let w = (seq / 64 - self.first_word) as usize;
        while self.words.len() <= w {
            self.words.push_back(0);
        }
        self.words[w] |= 1 << (seq % 64);
        seq
    }

    /// Marks `seq` answered; returns how many earlier requests are still
    /// out (the ones it overtook), or `None` if `seq` was not out.
    pub fn remove(&mut self, seq: u64) -> Option<u64> {
        let w = (seq / 64).checked_sub(self.first_word)? as usize;
        let bit = 1u64 << (seq % 64);
        let word = self.words.get_mut(w)?;
        if *word & bit == 0 {
            return None;
        }
        *word &= !bit;
        let earlier = self
            .words
            .iter()
            .take(w)
            .map(|x| u64::from(x.count_ones()))
            .sum::<u64>()
            + u64::from((self.words[w] & (bit - 1)).count_ones());
        while self.words.front() == Some(&0) && (self.first_word + 1) * 64 <= self.next {
            self.words.pop_front();
            self.first_word += 1;
        }
        Some(earlier)
    }
}

/// The per-connection driver.
pub struct Conn {
    stream: Stream,
    shared: Rc<Shared>,
    /// Woken by the dispatcher (open loop) and at the end of the run.
    pub notify: Rc<Notify>,
    ids: IdAllocator,
    assembler: ResponseAssembler,
    codec: FrameCodec,
    slots: Vec<Slot>,
    chains: Vec<Option<Chain>>,
    free_chains: Vec<usize>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    outstanding: Outstanding,
    /// Mix items out (a chain counts once).
    in_flight: usize,
    m: Measured,
}

impl Conn {
    pub fn new(stream: Stream, shared: Rc<Shared>, notify: Rc<Notify>) -> Conn {
        let m = Measured::empty(shared.plan.mix.entries().len());
        Conn {
            stream,
            shared,
            notify,
            ids: IdAllocator::new(),
            assembler: ResponseAssembler::new(),
            codec: FrameCodec::new(),
            slots: (0..1 << 15).map(|_| Slot::Free).collect(),
            chains: Vec::new(),
            free_chains: Vec::new(),
            rbuf: BytesMut::with_capacity(64 << 10),
            wbuf: BytesMut::with_capacity(16 << 10),
            outstanding: Outstanding::default(),
            in_flight: 0,
            m,
        }
    }

    /// Runs until the run is over and every request is answered (or the
    /// connection failed); returns what it measured.
    pub async fn run(mut self) -> Measured {
        let window = self.shared.plan.inflight;
        let open = self.shared.plan.rate.is_some();
        let mut stopping = false;
        let mut drain_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if !stopping && self.shared.stopping.get() {
                stopping = true;
            }
            if !stopping && !open {
                if self.shared.deadline.is_some_and(|d| now >= d) {
                    stopping = true;
                }
                while !stopping && self.in_flight < window {
                    if !self.start(now, now) {
                        stopping = true;
                    }
                }
            } else if open && self.m.fatal.is_none() {
                // Open loop: take what is due, whichever connection frees
                // up first; requests of the backlog are sent even after the
                // schedule ended, so none is silently dropped.
                while self.in_flight < window {
                    let Some(due) = self.shared.take_due() else {
                        break;
                    };
                    if !self.start(due, now) {
                        self.shared.stopping.set(true);
                        self.shared.clear_backlog();
                        stopping = true;
                        break;
                    }
                }
            }
            if let Err(e) = self.flush() {
                self.fail(format!("connection lost: {e}"));
                break;
            }
            if self.m.fatal.is_some() {
                break;
            }
            let backlog_empty = !open || self.shared.backlog_empty();
            if stopping && self.in_flight == 0 && backlog_empty {
                break;
            }
            let interest = if self.wbuf.is_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            let ready = if stopping {
                let since = *drain_since.get_or_insert(now);
                let left = DRAIN_TIMEOUT.saturating_sub(now - since);
                tokio::select! {
                    ready = self.stream.ready(interest) => Some(ready),
                    _ = self.notify.notified() => None,
                    _ = tokio::time::sleep(left) => {
                        self.m.errors[failure::LOST] += self.in_flight as u64;
                        self.m.fatal.get_or_insert_with(|| format!(
                            "{} request(s) had no answer {} s after the run ended",
                            self.in_flight, DRAIN_TIMEOUT.as_secs()));
                        break;
                    }
                }
            } else {
                tokio::select! {
                    ready = self.stream.ready(interest) => Some(ready),
                    _ = self.notify.notified() => None,
                }
            };
            match ready {
                None => continue,
                Some(Err(e)) => {
                    self.fail(format!("connection lost: {e}"));
                    break;
                }
                Some(Ok(r)) if r.is_readable() || r.is_read_closed() => {
                    if let Err(why) = self.read() {
                        self.fail(why);
                        break;
                    }
                    drain_since = None;
                }
                Some(Ok(_)) => {}
            }
        }
        self.m
    }

    /// Counts every request still out as failed with the connection.
    fn fail(&mut self, why: String) {
        self.m.errors[failure::CONNECTION] += self.in_flight as u64;
        self.m.fatal.get_or_insert(why);
        self.in_flight = 0;
    }

    /// Writes as much of the buffer as the socket takes now.
    fn flush(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match self.stream.try_write(&self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let _ = self.wbuf.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if self.wbuf.is_empty() && self.wbuf.capacity() > 1 << 20 {
            self.wbuf = BytesMut::with_capacity(16 << 10);
        }
        Ok(())
    }

    /// Starts the next mix item, due at `due`. False when the run must
    /// stop starting requests (`--requests` reached).
    fn start(&mut self, due: Instant, now: Instant) -> bool {
        let shared = &*self.shared;
        let measured = due >= shared.measure_from;
        if measured {
            if let Some(n) = shared.plan.requests {
                if shared.issued.fetch_add(1, Relaxed) >= n {
                    return false;
                }
            }
        }
        let seq = self.outstanding.push();
        let entry = shared.plan.mix.pick(seq);
        let call = Call {
            seq,
            entry,
            due,
            sent: now,
            measured,
        };
        if let Some(len) = requests::chain_len(&shared.plan.mix.entries()[entry]) {
            self.start_chain(call, len);
        } else {
            let id = self.ids.allocate().expect("the window fits the ID space");
            shared.templates[entry].write(id, seq, shared.plan.payload, &mut self.wbuf);
            self.assembler.expect(id);
            self.slots[usize::from(id >> 1)] = Slot::Call(call);
        }
        self.in_flight += 1;
        true
    }

    fn start_chain(&mut self, call: Call, len: usize) {
        let start = requests::chain_start(call.seq);
        let pipelined = !self.shared.plan.sequential_chains;
        let chain = self.free_chains.pop().unwrap_or_else(|| {
            self.chains.push(None);
            self.chains.len() - 1
        });
        let mut ids = Vec::with_capacity(len);
        let links = if pipelined { len } else { 1 };
        for index in 0..links {
            let id = self.ids.allocate().expect("the window fits the ID space");
            let a = match ids.last() {
                Some(&previous) => Link::Use(previous),
                None => Link::Value(start),
            };
            requests::write_link(a, pipelined && index + 1 < len, id, &mut self.wbuf);
            self.assembler.expect(id);
            self.slots[usize::from(id >> 1)] = Slot::Link { chain, index };
            ids.push(id);
        }
        self.chains[chain] = Some(Chain {
            call,
            len,
            start,
            ids,
            answered: 0,
            next: links,
            failed: None,
            unexpected: None,
        });
    }

    /// Reads what the socket has and handles every whole answer in it.
    fn read(&mut self) -> Result<(), String> {
        loop {
            self.rbuf.reserve(32 << 10);
            match self.stream.try_read_buf(&mut self.rbuf) {
                Ok(0) => {
                    self.frames()?;
                    return Err("connection lost: the server closed the connection".to_string());
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(format!("connection lost: {e}")),
            }
            if self.rbuf.len() < self.rbuf.capacity() {
                break;
            }
            self.frames()?;
        }
        self.frames()
    }

    fn frames(&mut self) -> Result<(), String> {
        let now = Instant::now();
        let mut done = 0;
        while let Some(frame) = self
            .codec
            .decode_frame(&mut self.rbuf)
            .map_err(|e| format!("bad frame from the server: {e}"))?
        {
            let response = match self.assembler.on_frame(frame) {
                Ok(Some(response)) => response,
                Ok(None) => continue,
                Err(e) => {
                    self.m.errors[failure::MISMATCH] += 1;
                    return Err(format!("unexpected frame from the server: {e}"));
                }
            };
            let id = response.request_id;
            let slot = std::mem::replace(&mut self.slots[usize::from(id >> 1)], Slot::Free);
            match slot {
                Slot::Free => {
                    self.m.duplicates += 1;
                }
                Slot::Call(call) => {
                    self.ids.release(id);
                    let entry = &self.shared.plan.mix.entries()[call.entry];
                    let verdict = match response.outcome {
                        Outcome::Bytes(body) => {
                            match requests::check(entry, call.seq, self.shared.plan.payload, &body)
                            {
                                Ok(()) => Verdict::Ok(body.len()),
                                Err(why) => Verdict::Mismatch(why),
                            }
                        }
                        Outcome::ApplicationError(message)
                            if requests::expected_error(entry, &message) =>
                        {
                            Verdict::Expected
                        }
                        Outcome::ApplicationError(message) => Verdict::Application(format!(
                            "{}: the server answered `{message}`",
                            entry.label()
                        )),
                        Outcome::ProtocolError(message) => Verdict::Protocol(message),
                    };
                    done += 1;
                    self.complete(call, verdict, now);
                }
                Slot::Link { chain, index } => {
                    if let Some(verdict) = self.on_link(chain, index, response.outcome) {
                        done += 1;
                        let c = self.chains[chain].take().expect("chain in flight");
                        for id in &c.ids {
                            self.ids.release(*id);
                        }
                        self.free_chains.push(chain);
                        self.complete(c.call, verdict, now);
                    }
                }
            }
            if let Some(fatal) = &self.m.fatal {
                return Err(fatal.clone());
            }
        }
        if done > 0 {
            self.shared.live.completed.fetch_add(done, Relaxed);
        }
        Ok(())
    }

    /// One link of a chain answered; the chain's verdict once it is over.
    fn on_link(&mut self, chain: usize, index: usize, outcome: Outcome) -> Option<Verdict> {
        let c = self.chains[chain].as_mut().expect("chain in flight");
        c.answered += 1;
        let label = || format!("chain(len={}) link {}", c.len, index + 1);
        let want = requests::chain_value(c.start, index);
        match outcome {
            Outcome::Bytes(body) if body == want.to_string().as_bytes() => {}
            Outcome::Bytes(body) => {
                let why = format!(
                    "wrong response to {}: `{}`, expected {want}",
                    label(),
                    String::from_utf8_lossy(&body)
                );
                c.failed.get_or_insert(why);
            }
            Outcome::ApplicationError(message) => {
                let why = format!("{}: the server answered `{message}`", label());
                c.unexpected.get_or_insert(why);
            }
            Outcome::ProtocolError(message) => return Some(Verdict::Protocol(message)),
        }
        let pipelined = !self.shared.plan.sequential_chains;
        let finished = if pipelined {
            c.answered == c.len
        } else {
            c.failed.is_some() || c.unexpected.is_some() || c.next == c.len
        };
        if !finished {
            if !pipelined {
                // Link by link: the next one carries the value itself.
                let id = self.ids.allocate().expect("the window fits the ID space");
                requests::write_link(Link::Value(want), false, id, &mut self.wbuf);
                self.assembler.expect(id);
                self.slots[usize::from(id >> 1)] = Slot::Link {
                    chain,
                    index: c.next,
                };
                c.ids.push(id);
                c.next += 1;
            }
            return None;
        }
        Some(match (c.failed.take(), c.unexpected.take()) {
            (Some(why), _) => Verdict::Mismatch(why),
            (None, Some(why)) => Verdict::Application(why),
            (None, None) => Verdict::Ok(0),
        })
    }

    /// Books a finished request (or chain).
    fn complete(&mut self, call: Call, verdict: Verdict, now: Instant) {
        self.in_flight -= 1;
        let Some(overtaken) = self.outstanding.remove(call.seq) else {
            self.m.duplicates += 1;
            return;
        };
        if !call.measured {
            if let Verdict::Protocol(message) = verdict {
                self.m
                    .fatal
                    .get_or_insert(format!("protocol error from the server: {message}"));
            }
            return;
        }
        let m = &mut self.m;
        m.answered += 1;
        if overtaken > 0 {
            m.overtook += 1;
            m.overtaken_sum += overtaken;
            m.overtaken_max = m.overtaken_max.max(overtaken);
        }
        let bytes = match verdict {
            Verdict::Ok(body) => {
                let sent = if self.shared.plan.mix.entries()[call.entry].name == "echo" {
                    self.shared.plan.payload
                } else {
                    0
                };
                (sent + body) as u64
            }
            Verdict::Expected => {
                m.expected_errors += 1;
                0
            }
            Verdict::Application(why) => {
                m.errors[failure::APPLICATION] += 1;
                m.first_error.get_or_insert(why);
                return;
            }
            Verdict::Mismatch(why) => {
                m.errors[failure::MISMATCH] += 1;
                m.first_error.get_or_insert(why);
                return;
            }
            Verdict::Protocol(message) => {
                m.errors[failure::PROTOCOL] += 1;
                m.fatal
                    .get_or_insert(format!("protocol error from the server: {message}"));
                return;
            }
        };
        m.ok += 1;
        m.bytes += bytes;
        let total = micros(now.saturating_duration_since(call.due));
        m.per_command[call.entry].saturating_record(total);
        m.all.saturating_record(total);
        m.wire
            .saturating_record(micros(now.saturating_duration_since(call.sent)));
        m.queued
            .saturating_record(micros(call.sent.saturating_duration_since(call.due)));
        // By the second the request was due in, so the last second holds
        // what was started in it, not only the stragglers of the end.
        let second = call
            .due
            .saturating_duration_since(self.shared.measure_from)
            .as_secs() as usize;
        while m.timeline.len() <= second {
            m.timeline.push(super::run::histogram());
        }
        m.timeline[second].saturating_record(total);
    }
}

/// How one request ended.
enum Verdict {
    /// A correct answer with a body of this many bytes.
    Ok(usize),
    /// The application error the mix expected.
    Expected,
    /// An application error the mix did not expect.
    Application(String),
    /// A wrong answer.
    Mismatch(String),
    /// The server's protocol error.
    Protocol(String),
}

/// Microseconds, clamped to the histograms' range.
pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, 100_000_000)
}

#[cfg(test)]
mod tests {
    use super::Outstanding;

    #[test]
    fn outstanding_counts_the_earlier_requests_still_out() {
        let mut o = Outstanding::default();
        let seqs: Vec<u64> = (0..200).map(|_| o.push()).collect();
        assert_eq!(seqs[199], 199);
        assert_eq!(o.remove(150), Some(150), "overtakes everything before it");
        assert_eq!(o.remove(0), Some(0));
        assert_eq!(o.remove(0), None, "answered twice");
        assert_eq!(o.remove(199), Some(197));
        for s in 1..150 {
            assert_eq!(o.remove(s), Some(0), "in order from here");
        }
        assert_eq!(o.remove(151), Some(0));
        assert_eq!(o.remove(500), None, "never sent");
        assert_eq!(o.push(), 200);
        assert_eq!(o.remove(200), Some(47), "152..=198 are still out");
    }
}
