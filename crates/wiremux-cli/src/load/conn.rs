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

use super::mix::Entry;
use super::requests::{self, Link};
use super::run::{failure, Measured, Shared};
use bytes::Buf;
use bytes::BytesMut;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::sync::Notify;
use wiremux_proto::{Flags, FrameType, Header, HEADER_LEN};

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
pub struct Call {
    pub seq: u64,
    pub entry: usize,
    /// When it was due (open loop) or started (closed loop).
    pub due: Instant,
    /// When its first bytes went into the write buffer.
    pub sent: Instant,
    pub measured: bool,
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
    /// Free request IDs; the next one is at the end.
    free_ids: Vec<u16>,
    /// Bodies of multi-frame answers so far, by request ID.
    partial: Vec<Option<Vec<u8>>>,
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
            free_ids: (0..1u16 << 15).rev().map(|i| 2 * i + 1).collect(),
            partial: (0..1 << 15).map(|_| None).collect(),
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
        if self.m.per_command.len() == 1 {
            self.m.per_command[0] = self.m.all.clone();
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
        if let Some(len) = shared.templates[entry].chain {
            self.start_chain(call, len);
        } else {
            let id = self.free_ids.pop().expect("the window fits the ID space");
            shared.templates[entry].write(id, seq, shared.plan.payload, &mut self.wbuf);
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
            let id = self.free_ids.pop().expect("the window fits the ID space");
            let a = match ids.last() {
                Some(&previous) => Link::Use(previous),
                None => Link::Value(start),
            };
            requests::write_link(a, pipelined && index + 1 < len, id, &mut self.wbuf);
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

    /// Handles every whole frame at the front of the read buffer. Headers
    /// are parsed in place; a one-frame answer is checked where it lies,
    /// without a copy; longer answers are gathered per request ID.
    fn frames(&mut self) -> Result<(), String> {
        let now = Instant::now();
        let rbuf = std::mem::take(&mut self.rbuf);
        let mut at = 0;
        let mut result = Ok(());
        let mut done = 0;
        while rbuf.len() - at >= HEADER_LEN {
            let head: &[u8; HEADER_LEN] = rbuf[at..at + HEADER_LEN].try_into().expect("6 bytes");
            let header = Header::parse(head);
            let end = at + HEADER_LEN + header.length;
            if end > rbuf.len() {
                break;
            }
            match self.on_frame(header, &rbuf[at + HEADER_LEN..end], now) {
                Ok(finished) => done += u64::from(finished),
                Err(why) => {
                    result = Err(why);
                    break;
                }
            }
            at = end;
        }
        self.rbuf = rbuf;
        self.rbuf.advance(at);
        if done > 0 {
            self.shared.live.completed.fetch_add(done, Relaxed);
        }
        result?;
        match &self.m.fatal {
            Some(fatal) => Err(fatal.clone()),
            None => Ok(()),
        }
    }

    /// One frame from the server; true when it finished a mix item.
    fn on_frame(&mut self, header: Header, payload: &[u8], now: Instant) -> Result<bool, String> {
        let id = header.request_id;
        let index = usize::from(id >> 1);
        let unexpected = |what: &str| {
            format!(
                "unexpected frame from the server: request {id}: {} frame {what}",
                header.frame_type
            )
        };
        if id % 2 == 0 || matches!(self.slots[index], Slot::Free) {
            self.m.errors[failure::MISMATCH] += 1;
            return Err(unexpected("for a request this client is not waiting on"));
        }
        let gathered;
        let answer = match header.frame_type {
            FrameType::BYTES_RESPONSE => match header.flags.bits() {
                Flags::CONTINUATION => {
                    self.partial[index]
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(payload);
                    return Ok(false);
                }
                Flags::DATA_EOS => match self.partial[index].take() {
                    None => Answer::Bytes(payload),
                    Some(mut body) => {
                        body.extend_from_slice(payload);
                        gathered = body;
                        Answer::Bytes(&gathered)
                    }
                },
                _ => {
                    self.m.errors[failure::MISMATCH] += 1;
                    return Err(unexpected(
                        "with flags other than one of continuation or eos",
                    ));
                }
            },
            FrameType::ERROR_RESPONSE => {
                self.partial[index] = None;
                let message = String::from_utf8_lossy(payload).into_owned();
                if header.flags.contains(Flags::PROTOCOL) {
                    Answer::Protocol(message)
                } else {
                    Answer::Application(message)
                }
            }
            _ => {
                self.m.errors[failure::MISMATCH] += 1;
                return Err(unexpected("(a server does not send those)"));
            }
        };
        let slot = std::mem::replace(&mut self.slots[index], Slot::Free);
        match slot {
            Slot::Free => unreachable!("checked above"),
            Slot::Call(call) => {
                self.free_ids.push(id);
                let verdict = match answer {
                    Answer::Bytes(body) if self.shared.templates[call.entry].echo => {
                        if self.shared.templates[call.entry].echoed(call.seq, body) {
                            Verdict::Ok(body.len())
                        } else {
                            Verdict::Mismatch(format!(
                                "wrong response to echo (request number {}): {} bytes",
                                call.seq,
                                body.len()
                            ))
                        }
                    }
                    answer => {
                        let entry = &self.shared.plan.mix.entries()[call.entry];
                        verdict_of(entry, call.seq, self.shared.plan.payload, answer)
                    }
                };
                self.complete(call, verdict, now);
                Ok(true)
            }
            Slot::Link { chain, index } => {
                let Some(verdict) = self.on_link(chain, index, answer) else {
                    return Ok(false);
                };
                let c = self.chains[chain].take().expect("chain in flight");
                self.free_ids.extend(c.ids.iter().rev());
                self.free_chains.push(chain);
                self.complete(c.call, verdict, now);
                Ok(true)
            }
        }
    }

    /// One link of a chain answered; the chain's verdict once it is over.
    fn on_link(&mut self, chain: usize, index: usize, answer: Answer<'_>) -> Option<Verdict> {
        let c = self.chains[chain].as_mut().expect("chain in flight");
        c.answered += 1;
        let label = || format!("chain(len={}) link {}", c.len, index + 1);
        let want = requests::chain_value(c.start, index);
        match answer {
            Answer::Bytes(body) if body == want.to_string().as_bytes() => {}
            Answer::Bytes(body) => {
                let why = format!(
                    "wrong response to {}: `{}`, expected {want}",
                    label(),
                    String::from_utf8_lossy(body)
                );
                c.failed.get_or_insert(why);
            }
            Answer::Application(message) => {
                let why = format!("{}: the server answered `{message}`", label());
                c.unexpected.get_or_insert(why);
            }
            Answer::Protocol(message) => return Some(Verdict::Protocol(message)),
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
                let id = self.free_ids.pop().expect("the window fits the ID space");
                requests::write_link(Link::Value(want), false, id, &mut self.wbuf);
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
        book(
            &mut self.m,
            &self.shared,
            &mut self.outstanding,
            call,
            verdict,
            now,
        );
    }
}

/// What a plain request's answer says.
pub fn verdict_of(entry: &Entry, seq: u64, payload: usize, answer: Answer<'_>) -> Verdict {
    match answer {
        Answer::Bytes(body) => match requests::check(entry, seq, payload, body) {
            Ok(()) => Verdict::Ok(body.len()),
            Err(why) => Verdict::Mismatch(why),
        },
        Answer::Application(message) if requests::expected_error(entry, &message) => {
            Verdict::Expected
        }
        Answer::Application(message) => Verdict::Application(format!(
            "{}: the server answered `{message}`",
            entry.label()
        )),
        Answer::Protocol(message) => Verdict::Protocol(message),
    }
}

/// A whole answer from the server.
pub enum Answer<'a> {
    /// A bytes response's body.
    Bytes(&'a [u8]),
    /// An application error's message.
    Application(String),
    /// A protocol error's message.
    Protocol(String),
}

/// Books a finished request (or chain) into `m`.
pub fn book(
    m: &mut Measured,
    shared: &Shared,
    outstanding: &mut Outstanding,
    call: Call,
    verdict: Verdict,
    now: Instant,
) {
    let Some(overtaken) = outstanding.remove(call.seq) else {
        m.duplicates += 1;
        return;
    };
    if !call.measured {
        if let Verdict::Protocol(message) = verdict {
            m.fatal
                .get_or_insert(format!("protocol error from the server: {message}"));
        }
        return;
    }
    m.answered += 1;
    if overtaken > 0 {
        m.overtook += 1;
        m.overtaken_sum += overtaken;
        m.overtaken_max = m.overtaken_max.max(overtaken);
    }
    let bytes = match verdict {
        Verdict::Ok(body) => {
            let sent = if shared.templates[call.entry].echo {
                shared.plan.payload
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
    if m.per_command.len() > 1 {
        // (With one command, its histogram is `all`, copied at the end.)
        m.per_command[call.entry].saturating_record(total);
    }
    m.all.saturating_record(total);
    if shared.plan.rate.is_some() {
        // Closed loop, a request is sent when it is due: nothing to split.
        m.wire
            .saturating_record(micros(now.saturating_duration_since(call.sent)));
        m.queued
            .saturating_record(micros(call.sent.saturating_duration_since(call.due)));
    }
    // By the second the request was due in, so the last second holds
    // what was started in it, not only the stragglers of the end.
    let second = call
        .due
        .saturating_duration_since(shared.measure_from)
        .as_secs() as usize;
    while m.timeline.len() <= second {
        m.timeline.push(super::run::histogram());
    }
    m.timeline[second].saturating_record(total);
}
/// How one request ended.
pub enum Verdict {
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
