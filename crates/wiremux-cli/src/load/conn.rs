//! One connection of the generator: a single task that writes requests
//! and reads answers on one socket, with no other task, channel or future
//! per request between it and the kernel.
//!
//! The task keeps its requests in a table indexed by request ID, encodes
//! them from templates ([`super::requests::Template`]) into one write
//! buffer, and decodes every whole frame of a read in place, in one pass
//! over the read buffer, without a copy or an allocation per answer. It
//! waits on the socket (and, in the open loop, on its thread's
//! dispatcher) and writes whatever is buffered whenever the socket takes
//! it, so reading never waits behind writing.
//!
//! Reads go through tokio's `poll_read`, which knows that a short read
//! drained the socket: the next wait goes straight to the event loop
//! instead of costing a read that would block. Times are nanoseconds
//! since the run's start ([`Shared::now`]): one clock read per batch of
//! answers, integer arithmetic per request.

use super::mix::Entry;
use super::requests::{self, Link};
use super::run::{failure, Measured, Shared};
use bytes::BytesMut;
use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, ReadBuf};
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
    /// tokio's `poll_read`: after a short read it takes the socket as
    /// drained, so the next poll waits for the event loop without a read
    /// that would block.
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_write_ready(cx),
            #[cfg(unix)]
            Stream::Unix(s) => s.poll_write_ready(cx),
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

/// Wakes a connection's task from another task of the same generator
/// thread (the dispatcher, the end of the run); a wake before the task
/// waits is kept, like a permit.
#[derive(Default)]
pub struct Wake {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Wake {
    /// Wakes the connection (or makes its next wait return at once).
    pub fn wake(&self) {
        self.set.set(true);
        if let Some(w) = &*self.waker.borrow() {
            w.wake_by_ref();
        }
    }

    /// Whether a wake came since the last call; registers `cx`'s waker
    /// for the next one when none did.
    fn poll(&self, cx: &mut Context<'_>) -> bool {
        if self.set.replace(false) {
            return true;
        }
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
        false
    }
}

/// What woke the connection's task.
enum Event {
    /// Bytes came in (or the peer closed: 0 bytes).
    Read(usize),
    /// The socket takes bytes again.
    Writable,
    /// The dispatcher or the end of the run.
    Woken,
}

/// The read buffer: whole frames are decoded from `buf[start..end]` in
/// place; a frame cut by the end of a read stays for the next one.
struct ReadBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The length (header included) of the frame cut at `start`, or 0.
    need: usize,
}

impl ReadBuffer {
    const SIZE: usize = 64 << 10;
    /// Less free room than this at the end, and the buffer is compacted
    /// (or grown, for a frame longer than it) before the next read.
    const MIN_ROOM: usize = 16 << 10;

    fn new() -> ReadBuffer {
        ReadBuffer {
            buf: vec![0; Self::SIZE],
            start: 0,
            end: 0,
            need: 0,
        }
    }

    /// Makes room for a read of at least `MIN_ROOM` bytes, and for the
    /// whole of the frame cut at `start`.
    fn make_room(&mut self) {
        let need = self.need;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 1 << 20 && need <= Self::SIZE {
                self.buf = vec![0; Self::SIZE];
            }
        }
        if self.buf.len() - self.end < Self::MIN_ROOM || self.start + need > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let want = (self.end + Self::MIN_ROOM).max(need);
        if self.buf.len() < want {
            self.buf.resize(want.next_power_of_two(), 0);
        }
    }
}

/// A request (or a whole chain) while it is out. Times are nanoseconds
/// since the run's start ([`Shared::now`]).
#[derive(Clone, Copy)]
pub struct Call {
    pub seq: u64,
    /// When it was due (open loop) or started (closed loop).
    pub due: u64,
    /// When its first bytes went into the write buffer.
    pub sent: u64,
    pub entry: u32,
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
/// bit each, in a ring of words from the oldest word with one out.
pub struct Outstanding {
    /// Word `w` (sequence numbers `64 w ..`) is `words[w & mask]`; the
    /// ring holds the words from `first_word` to the one of `next`.
    words: Vec<u64>,
    mask: u64,
    first_word: u64,
    next: u64,
}

impl Default for Outstanding {
    fn default() -> Outstanding {
        Outstanding {
            words: vec![0; 16],
            mask: 15,
            first_word: 0,
            next: 0,
        }
    }
}

impl Outstanding {
    /// Marks the next sequence number as out and returns it.
    #[inline]
    pub fn push(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        let w = seq / 64;
        if w - self.first_word > self.mask {
            self.grow();
        }
        self.words[(w & self.mask) as usize] |= 1 << (seq % 64);
        seq
    }

    /// Doubles the ring, keeping every word at its place for the new mask.
    #[cold]
    fn grow(&mut self) {
        let mut words = vec![0; self.words.len() * 2];
        let mask = words.len() as u64 - 1;
        for w in self.first_word..=(self.next - 1) / 64 {
            words[(w & mask) as usize] = self.words[(w & self.mask) as usize];
        }
        // The word of `next - 1` is new: it was not in the old ring.
        words[(((self.next - 1) / 64) & mask) as usize] = 0;
        self.words = words;
        self.mask = mask;
    }

    /// Marks `seq` answered; returns how many earlier requests are still
    /// out (the ones it overtook), or `None` if `seq` was not out.
    #[inline]
    pub fn remove(&mut self, seq: u64) -> Option<u64> {
        let w = seq / 64;
        if seq >= self.next || w < self.first_word {
            return None;
        }
        let bit = 1u64 << (seq % 64);
        let word = &mut self.words[(w & self.mask) as usize];
        if *word & bit == 0 {
            return None;
        }
        *word &= !bit;
        let below = *word & (bit - 1);
        let earlier = if w == self.first_word && below == 0 {
            // The oldest one out: answers in order cost no counting.
            0
        } else {
            (self.first_word..w)
                .map(|x| u64::from(self.words[(x & self.mask) as usize].count_ones()))
                .sum::<u64>()
                + u64::from(below.count_ones())
        };
        while self.first_word < self.next / 64
            && self.words[(self.first_word & self.mask) as usize] == 0
        {
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
    pub notify: Rc<Wake>,
    /// Free request IDs; the next one is at the end.
    free_ids: Vec<u16>,
    /// Bodies of multi-frame answers so far, by request ID.
    partial: Vec<Option<Vec<u8>>>,
    /// How many of `partial` are `Some` (none, in an echo run: the
    /// lookup is skipped).
    partials: usize,
    slots: Vec<Slot>,
    chains: Vec<Option<Chain>>,
    free_chains: Vec<usize>,
    rbuf: ReadBuffer,
    wbuf: BytesMut,
    outstanding: Outstanding,
    /// Mix items out (a chain counts once).
    in_flight: usize,
    m: Measured,
}

impl Conn {
    pub fn new(stream: Stream, shared: Rc<Shared>, notify: Rc<Wake>) -> Conn {
        let m = Measured::empty(shared.plan.mix.entries().len());
        Conn {
            stream,
            shared,
            notify,
            free_ids: (0..1u16 << 15).rev().map(|i| 2 * i + 1).collect(),
            partial: (0..1 << 15).map(|_| None).collect(),
            partials: 0,
            slots: (0..1 << 15).map(|_| Slot::Free).collect(),
            chains: Vec::new(),
            free_chains: Vec::new(),
            rbuf: ReadBuffer::new(),
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
        let mut drain_since: Option<u64> = None;
        loop {
            let now = self.shared.now();
            if !stopping && self.shared.stopping.get() {
                stopping = true;
            }
            if !stopping && !open {
                if self.shared.deadline_ns.is_some_and(|d| now >= d) {
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
            let event = if stopping {
                let since = *drain_since.get_or_insert(now);
                let left = DRAIN_TIMEOUT.saturating_sub(Duration::from_nanos(now - since));
                tokio::select! {
                    event = self.wait() => event,
                    _ = tokio::time::sleep(left) => {
                        self.m.errors[failure::LOST] += self.in_flight as u64;
                        self.m.fatal.get_or_insert_with(|| format!(
                            "{} request(s) had no answer {} s after the run ended",
                            self.in_flight, DRAIN_TIMEOUT.as_secs()));
                        break;
                    }
                }
            } else {
                self.wait().await
            };
            match event {
                Err(e) => {
                    self.fail(format!("connection lost: {e}"));
                    break;
                }
                Ok(Event::Read(0)) => {
                    let why = match self.frames() {
                        Err(why) => why,
                        Ok(()) => "connection lost: the server closed the connection".into(),
                    };
                    self.fail(why);
                    break;
                }
                Ok(Event::Read(_)) => {
                    if let Err(why) = self.frames() {
                        self.fail(why);
                        break;
                    }
                    drain_since = None;
                }
                Ok(Event::Writable | Event::Woken) => {}
            }
        }
        self.m.finish();
        self.m
    }

    /// Waits until bytes came in (they are then in the read buffer), the
    /// socket takes bytes again while some wait to go, or a wake.
    async fn wait(&mut self) -> io::Result<Event> {
        self.rbuf.make_room();
        poll_fn(|cx| {
            let rb = &mut self.rbuf;
            let mut buf = ReadBuf::new(&mut rb.buf[rb.end..]);
            match self.stream.poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    rb.end += n;
                    return Poll::Ready(Ok(Event::Read(n)));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            if !self.wbuf.is_empty() {
                match self.stream.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => return Poll::Ready(Ok(Event::Writable)),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if self.notify.poll(cx) {
                return Poll::Ready(Ok(Event::Woken));
            }
            Poll::Pending
        })
        .await
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
    fn start(&mut self, due: u64, now: u64) -> bool {
        let shared = &*self.shared;
        let measured = due >= shared.measure_from_ns;
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
            entry: entry as u32,
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

    /// Handles every whole frame of the read buffer, in one pass. Headers
    /// are parsed in place; a one-frame answer is checked where it lies,
    /// without a copy; longer answers are gathered per request ID. One
    /// clock read stands for the arrival of all of them: they came in the
    /// same read.
    fn frames(&mut self) -> Result<(), String> {
        let now = self.shared.now();
        let rbuf = std::mem::take(&mut self.rbuf.buf);
        let (mut at, end) = (self.rbuf.start, self.rbuf.end);
        self.rbuf.need = 0;
        let mut result = Ok(());
        let mut done = 0;
        while end - at >= HEADER_LEN {
            let head: &[u8; HEADER_LEN] = rbuf[at..at + HEADER_LEN].try_into().expect("6 bytes");
            let header = Header::parse(head);
            let stop = at + HEADER_LEN + header.length;
            if stop > end {
                self.rbuf.need = stop - at;
                break;
            }
            match self.on_frame(header, &rbuf[at + HEADER_LEN..stop], now) {
                Ok(finished) => done += u64::from(finished),
                Err(why) => {
                    result = Err(why);
                    break;
                }
            }
            at = stop;
        }
        self.rbuf.buf = rbuf;
        self.rbuf.start = at;
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
    fn on_frame(&mut self, header: Header, payload: &[u8], now: u64) -> Result<bool, String> {
        let id = header.request_id;
        let index = usize::from(id >> 1);
        // The common answer first: the one frame of a right echo.
        if header.frame_type == FrameType::BYTES_RESPONSE
            && header.flags.bits() == Flags::DATA_EOS
            && id % 2 == 1
            && self.partials == 0
        {
            if let Slot::Call(call) = self.slots[index] {
                let template = &self.shared.templates[call.entry as usize];
                if template.echo && template.echoed(call.seq, payload) {
                    self.slots[index] = Slot::Free;
                    self.free_ids.push(id);
                    self.complete(call, Verdict::Ok(payload.len()), now);
                    return Ok(true);
                }
            }
        }
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
                    let part = &mut self.partial[index];
                    if part.is_none() {
                        self.partials += 1;
                    }
                    part.get_or_insert_with(Vec::new).extend_from_slice(payload);
                    return Ok(false);
                }
                Flags::DATA_EOS => match self.take_partial(index) {
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
                self.take_partial(index);
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
                let template = &self.shared.templates[call.entry as usize];
                let verdict = match answer {
                    Answer::Bytes(body) if template.echo => {
                        if template.echoed(call.seq, body) {
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
                        let entry = &self.shared.plan.mix.entries()[call.entry as usize];
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

    /// The gathered body of a multi-frame answer to request `index`, if
    /// one was started (a lookup only while some are).
    #[inline]
    fn take_partial(&mut self, index: usize) -> Option<Vec<u8>> {
        if self.partials == 0 {
            return None;
        }
        let part = self.partial[index].take();
        self.partials -= usize::from(part.is_some());
        part
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
    fn complete(&mut self, call: Call, verdict: Verdict, now: u64) {
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
    now: u64,
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
            let sent = if shared.templates[call.entry as usize].echo {
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
    let total = micros(now.saturating_sub(call.due));
    if m.per_command.len() > 1 {
        // (With one command, its histogram is `all`, filled at the end.)
        m.per_command[call.entry as usize].saturating_record(total);
    }
    if shared.plan.rate.is_some() {
        // Closed loop, a request is sent when it is due: nothing to split.
        m.wire
            .saturating_record(micros(now.saturating_sub(call.sent)));
        m.queued
            .saturating_record(micros(call.sent.saturating_sub(call.due)));
    }
    // By the second the request was due in, so the last second holds
    // what was started in it, not only the stragglers of the end. `all`
    // is the sum of these ([`Measured::finish`]), so each answer is
    // recorded once, and into a flat tally ([`super::histo::Tally`]).
    let second = (call.due.saturating_sub(shared.measure_from_ns) / 1_000_000_000) as usize;
    m.tally.record(&mut m.timeline, second, total);
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

/// Nanoseconds in whole microseconds, clamped to the histograms' range.
#[inline]
pub fn micros(nanos: u64) -> u64 {
    (nanos / 1000).clamp(1, 100_000_000)
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

    #[test]
    fn outstanding_grows_around_a_request_that_stays_out() {
        let mut o = Outstanding::default();
        assert_eq!(o.push(), 0);
        // Far more than the ring's first size go out and come back while
        // request 0 (and, from 2500 on, 2500) stays out.
        for s in 1..5000 {
            assert_eq!(o.push(), s);
            match s {
                2500 => {}
                ..2500 => assert_eq!(o.remove(s), Some(1), "overtakes 0 only"),
                _ => assert_eq!(o.remove(s), Some(2), "overtakes 0 and 2500"),
            }
        }
        assert_eq!(o.remove(4999), None, "answered already");
        assert_eq!(o.remove(2500), Some(1));
        assert_eq!(o.remove(0), Some(0));
        assert_eq!(o.remove(0), None);
        assert_eq!(o.push(), 5000);
        assert_eq!(o.remove(5000), Some(0));
    }
}
