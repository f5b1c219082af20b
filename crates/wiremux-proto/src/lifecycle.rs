//! The life of every request of one connection, from its first frame to
//! its terminal frame, for every transport.
//!
//! [`Lifecycle`] joins the receive side ([`ServerReactor`]), the scheduler
//! of PROTOCOL.md section 8 (dependencies, kept results, cancellation,
//! deadlines) and the send side ([`SendQueue`]). It owns no socket and no
//! clock: frames and `now` go in; what to run or stop comes out of
//! [`Lifecycle::poll_event`], bytes to write out of
//! [`Lifecycle::poll_transmit`], and the next moment it needs attention out
//! of [`Lifecycle::poll_timeout`]. A transport moves bytes, runs the
//! commands it is told to run, and reports their outcomes back.
//!
//! One state per request, held in one place:
//!
//! ```text
//! receiving ──complete──▶ held (waits for @after / @use) ──▶ running ──▶ answering (a stream)
//!     │                     │                                  │             │
//!     └──── error, @cancel, deadline, failed dependency ───────┴─────────────┴──▶ ending ──terminal frame framed──▶ ended
//! ```
//!
//! Every request ends exactly once, through its terminal frame (a final
//! `eos` bytes-response or an error-response), and only then is its ID
//! free again, its success or failure remembered (a bit per ID) for later
//! `@after`, its body kept if it asked for `@keep`, and the requests
//! waiting for it released or failed.
//!
//! ```
//! use std::time::Instant;
//! use wiremux_proto::human::parse_frame;
//! use wiremux_proto::lifecycle::{Event, Lifecycle, LifecycleConfig};
//!
//! let now = Instant::now();
//! let mut lc = Lifecycle::new(LifecycleConfig::default());
//! for line in ["1 command-name have-args add", "1 command-argument eoa \\x01\\x00\\x01\\x00a1"] {
//!     lc.on_frame(parse_frame(line).unwrap(), now);
//! }
//! let Some(Event::Run(token, request)) = lc.poll_event() else { panic!() };
//! assert_eq!(request.arg("a").unwrap(), "1");
//! lc.on_body(token, "answer".into());
//! let wire = lc.poll_transmit(usize::MAX).split().freeze();
//! let frames = wiremux_proto::decode_all(&wire).unwrap();
//! assert_eq!(wiremux_proto::human::format_frame(&frames[0]), "1 bytes-response eos answer");
//! ```

use crate::builder::{error_response_frame, ErrorFlag};
use crate::codec::FrameRun;
use crate::frame::{Frame, FrameType};
use crate::schedule::{self, Reserved};
use crate::send::{End, SendQueue};
use crate::server::{Action, ErrorKind, Limits, ReactorError, Scope, ServerReactor};
use crate::{IdMap, IdTable, Request};
use bytes::{Bytes, BytesMut};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

/// The settings of a [`Lifecycle`], each with its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleConfig {
    /// The reactor's limits; `max_send_payload` is the one frame size of
    /// every response (default 32768).
    pub limits: Limits,
    /// Send responses in request order, the order their command-name
    /// frames arrived (head-of-line blocking), as an in-order baseline.
    /// Default false.
    pub in_order: bool,
    /// The server's own deadline for every request, from its last frame.
    /// Default none.
    pub request_deadline: Option<Duration>,
    /// A request whose frames are still arriving this long after the last
    /// command completed (or after arrival began) fails the connection
    /// (slowloris defence). Default 30 s; `None` turns it off.
    pub assembly_timeout: Option<Duration>,
    /// Nothing in flight and nothing arriving for this long: the
    /// connection should close ([`Lifecycle::idle_expired`]). Default 300 s.
    pub idle_timeout: Option<Duration>,
    /// Most IDs one request may depend on (`@after` and `@use`). Default 64.
    pub max_dependencies: usize,
    /// Most bytes of `@keep` bodies kept at once. Default 8 MiB.
    pub max_kept_bytes: usize,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            limits: Limits::default(),
            in_order: false,
            request_deadline: None,
            assembly_timeout: Some(Duration::from_secs(30)),
            idle_timeout: Some(Duration::from_secs(300)),
            max_dependencies: schedule::DEFAULT_MAX_DEPENDENCIES,
            max_kept_bytes: schedule::DEFAULT_MAX_KEPT_BYTES,
        }
    }
}

/// Names one run of a request: its ID and which request on that ID. A
/// transport hands it back with the outcome; an outcome for a request that
/// has already ended (cancelled, timed out) is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    /// The request ID.
    pub id: u16,
    seq: u32,
}

/// What the transport must do.
#[derive(Debug)]
pub enum Event {
    /// Run this command (check its permission, start its handler) and
    /// report its outcome with the token.
    Run(Token, Request),
    /// Stop the command run for this token, now: its request has already
    /// been answered (cancelled, timed out); its result is not wanted.
    Cancel(Token),
}

/// Counts since the last [`Lifecycle::take_counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames taken in.
    pub frames_in: u64,
    /// Requests taken in: complete, or refused while still arriving.
    pub requests_started: u64,
    /// Requests that ended with a final bytes-response.
    pub requests_completed: u64,
    /// Requests that ended with an error-response.
    pub requests_failed: u64,
    /// Of those, requests stopped by `@cancel`.
    pub requests_cancelled: u64,
    /// Requests taken in and dropped unanswered because the connection
    /// ended (ones whose frames were still arriving are not counted).
    pub requests_abandoned: u64,
    /// Frames framed for sending.
    pub frames_out: u64,
    /// Connection-level protocol errors.
    pub protocol_errors: u64,
}

/// The request of a command-name frame and the sole data frame that
/// completes it ([`FrameRun::take_sole_data`]).
#[inline]
fn whole_request(name: Frame, data: Frame) -> Request {
    Request {
        request_id: name.request_id,
        name: name.payload,
        args: Vec::new(),
        data: Some(data.payload),
        deadline: None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Frames are still arriving.
    Receiving,
    /// Complete, waiting for requests it depends on (in `Extra::held`).
    Held,
    /// The transport runs it.
    Running,
    /// Its response is a stream, being answered.
    Answering,
    /// Its terminal frame is queued.
    Ending,
}

#[derive(Debug)]
struct Held {
    request: Request,
    waiting: usize,
    uses: Vec<Use>,
}

/// A `@use:NAME` of a request: the argument name, the ID it names, and,
/// once that request has ended, its kept body taken then (`None` inside:
/// it was not kept). Taken when the named request ends, not when this one
/// runs: a new command on that ID meanwhile is not the one named.
type Use = (Bytes, u16, Option<Option<Bytes>>);

/// One request's state: 16 bytes, what most requests need; the rest
/// (`@keep`, a deadline, a held request) is boxed, for the requests that
/// have it.
#[derive(Debug)]
struct Entry {
    seq: u32,
    phase: Phase,
    extra: Option<Box<Extra>>,
}

#[derive(Debug, Default)]
struct Extra {
    /// `@keep`: the body so far (`None` once it no longer fits).
    keep: Option<Option<Kept>>,
    /// The milliseconds the deadline's error names, if it has one.
    deadline_ms: Option<u64>,
    /// In phase `Held`: the request and what it waits for.
    held: Option<Held>,
}

impl Entry {
    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    fn has_deadline(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.deadline_ms.is_some())
    }

    /// The `@keep` body so far, if it is being kept and still fits.
    fn kept(&mut self) -> Option<&mut Option<Kept>> {
        self.extra.as_mut().and_then(|e| e.keep.as_mut())
    }
}

#[derive(Debug, Default)]
struct Kept {
    parts: Vec<Bytes>,
    len: usize,
}

/// How the last request on each odd ID ended, two bits per ID (ended at
/// all, failed), 64 IDs to a pair of words: what a later `@after` or
/// `@use` of the ID finds.
#[derive(Debug, Default)]
struct Outcomes(Vec<[u64; 2]>);

impl Outcomes {
    /// `None` if no request on `id` has ended, else whether the last failed.
    fn get(&self, id: u16) -> Option<bool> {
        let i = usize::from(id >> 1);
        let [ended, failed] = *self.0.get(i / 64)?;
        (ended >> (i % 64) & 1 == 1).then_some(failed >> (i % 64) & 1 == 1)
    }

    #[inline]
    fn set(&mut self, id: u16, failed: bool) {
        let i = usize::from(id >> 1);
        if self.0.len() <= i / 64 {
            self.0.resize(i / 64 + 1, [0, 0]);
        }
        let (words, bit) = (&mut self.0[i / 64], i % 64);
        words[0] |= 1 << bit;
        words[1] = words[1] & !(1 << bit) | u64::from(failed) << bit;
    }
}

/// The lifecycle of every request of one connection. See the module
/// documentation.
#[derive(Debug)]
pub struct Lifecycle {
    config: LifecycleConfig,
    reactor: ServerReactor,
    send: SendQueue,
    entries: IdTable<Entry>,
    next_seq: u32,
    /// Which odd IDs have had a request end, and whether it failed.
    outcomes: Outcomes,
    kept: IdMap<Bytes>,
    kept_bytes: usize,
    /// Requests that ended while others were still arriving, with the
    /// `seq` they began as: one of those others cannot name them if they
    /// began after it. Empty whenever nothing is arriving.
    ended_while_receiving: IdMap<u32>,
    /// Requests held for each ID they wait for.
    waiters: IdMap<Vec<Token>>,
    deadlines: BinaryHeap<Reverse<(Instant, u16, u32)>>,
    live_deadlines: usize,
    events: VecDeque<Event>,
    /// `send`'s ended responses being processed (kept to reuse its
    /// allocation).
    ended: Vec<(u16, End)>,
    /// The request lent by [`Lifecycle::on_frame_lending`], until it is
    /// answered or admitted.
    lent: Option<Token>,
    errored: bool,
    input_ended: bool,
    /// When the assembly timeout passes for what is arriving now (its
    /// clock starts when arrival begins and again at each completion).
    assembly_at: Option<Instant>,
    /// When the idle timeout passes, if nothing happens before.
    idle_at: Option<Instant>,
    idle_expired: bool,
    processing: bool,
    counters: Counters,
}

impl Lifecycle {
    /// A lifecycle with these settings.
    pub fn new(config: LifecycleConfig) -> Lifecycle {
        Lifecycle {
            reactor: ServerReactor::with_limits(config.limits.clone()),
            send: SendQueue::new(config.limits.max_send_payload, config.in_order),
            config,
            entries: IdTable::default(),
            next_seq: 0,
            outcomes: Outcomes::default(),
            kept: IdMap::default(),
            kept_bytes: 0,
            ended_while_receiving: IdMap::default(),
            waiters: IdMap::default(),
            deadlines: BinaryHeap::new(),
            live_deadlines: 0,
            events: VecDeque::new(),
            ended: Vec::new(),
            lent: None,
            errored: false,
            input_ended: false,
            assembly_at: None,
            idle_at: None,
            idle_expired: false,
            processing: false,
            counters: Counters::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &LifecycleConfig {
        &self.config
    }

    // ---- input ----

    /// Takes one frame that arrived at `now`.
    pub fn on_frame(&mut self, frame: Frame, now: Instant) {
        debug_assert!(self.lent.is_none(), "a lent request was not given back");
        if self.errored {
            return;
        }
        self.counters.frames_in += 1;
        // Not idle: the idle clock starts again at the next `set_input`
        // that finds nothing in flight, even if this frame's request
        // is answered before then.
        self.idle_at = None;
        let id = frame.request_id;
        let is_name = frame.frame_type == FrameType::COMMAND_NAME;
        if is_name {
            if let Some(entry) = self.entries.get(id) {
                // The reactor knows receiving and running requests; a
                // request whose error is still queued (in-order mode) is
                // known only here, and its ID is not free yet either.
                if !matches!(entry.phase, Phase::Receiving | Phase::Running) {
                    return self.fail_connection(&ReactorError {
                        request_id: id,
                        kind: ErrorKind::IdStillActive,
                    });
                }
            }
        }
        let action = self.reactor.on_frame(frame);
        if is_name && !matches!(&action, Action::Error(e) if e.scope() == Scope::Connection) {
            self.begin(id);
        }
        match action {
            // Most frames: a request goes on arriving, or is complete.
            Action::Noop | Action::WantFrame { .. } => {}
            Action::RunCommand(request) => self.on_complete(request, now),
            action => self.on_action(action, now),
        }
        self.process_ended();
        if self.reactor.receiving() == 0 && !self.ended_while_receiving.is_empty() {
            // Every request begun before those ended is complete.
            self.ended_while_receiving.clear();
        }
    }

    /// Takes `frame`, decoded from `run`, and with it the next frame of
    /// `run` when the two are a whole command (see
    /// [`Lifecycle::on_name_and_data`]): how a transport that decodes with
    /// [`FrameCodec::decode_batched`](crate::FrameCodec::decode_batched)
    /// feeds its frames.
    #[inline]
    pub fn on_frame_in_run(&mut self, frame: Frame, run: &mut FrameRun, now: Instant) {
        match run.take_sole_data(&frame) {
            Some(data) => self.on_name_and_data(frame, data, now),
            None => self.on_frame(frame, now),
        }
    }

    /// [`Lifecycle::on_frame_in_run`] for a transport that starts commands
    /// where it reads them: a whole command in two frames (as
    /// [`FrameRun::take_sole_data`] pairs them) that can start now, with no
    /// reserved name, no deadline and no in-order answer to wait for, is
    /// not queued as an [`Event::Run`] but lent to the caller, with no
    /// state here yet. Before anything else on this lifecycle the caller
    /// gives it back, either answered, with [`Lifecycle::answer_lent`]
    /// (most commands: the request begins and ends in that call), or
    /// started and still to answer, with [`Lifecycle::admit_lent`] (it is
    /// then running, as if it had come out of [`Lifecycle::poll_event`]).
    /// Both ways decide what the event would have: the same frames go out
    /// and the same outcome is remembered.
    ///
    /// ```
    /// use std::time::Instant;
    /// use wiremux_proto::codec::{FrameCodec, FrameRun};
    /// use wiremux_proto::lifecycle::{Lifecycle, LifecycleConfig};
    ///
    /// let now = Instant::now();
    /// let mut lc = Lifecycle::new(LifecycleConfig::default());
    /// let mut input = bytes::BytesMut::new();
    /// for line in ["1 command-name have-data echo", "1 command-data eos hello"] {
    ///     wiremux_proto::human::parse_frame(line).unwrap().encode(&mut input);
    /// }
    /// let (mut codec, mut run) = (FrameCodec::new(), FrameRun::default());
    /// let frame = codec.decode_batched(&mut run, &mut input).unwrap().unwrap();
    /// let (token, request) = lc.on_frame_lending(frame, &mut run, now).unwrap();
    /// assert_eq!((&request.name[..], request.data.as_deref()), (&b"echo"[..], Some(&b"hello"[..])));
    /// assert!(!lc.has_event());
    /// lc.answer_lent(token, request.data.unwrap());
    /// let wire = lc.poll_transmit(usize::MAX).split().freeze();
    /// let frames = wiremux_proto::decode_all(&wire).unwrap();
    /// assert_eq!(wiremux_proto::human::format_frame(&frames[0]), "1 bytes-response eos hello");
    /// assert!(lc.is_done());
    /// ```
    #[inline]
    pub fn on_frame_lending(
        &mut self,
        frame: Frame,
        run: &mut FrameRun,
        now: Instant,
    ) -> Option<(Token, Request)> {
        let Some(data) = run.take_sole_data(&frame) else {
            self.on_frame(frame, now);
            return None;
        };
        let id = frame.request_id;
        debug_assert!(self.lent.is_none(), "a lent request was not given back");
        let lendable = !self.errored
            && !self.config.in_order
            && self.config.request_deadline.is_none()
            && frame.payload.first() != Some(&b'@')
            && self.entries.get(id).is_none()
            && self.reactor.lend_whole(&frame, &data);
        if !lendable {
            self.on_name_and_data(frame, data, now);
            return None;
        }
        self.counters.frames_in += 2;
        self.counters.requests_started += 1;
        self.idle_at = None;
        let seq = self.begin_unrecorded(id);
        if self.reactor.receiving() > 0 {
            self.assembly_at = self.config.assembly_timeout.map(|limit| now + limit);
        }
        let token = Token { id, seq };
        self.lent = Some(token);
        Some((token, whole_request(frame, data)))
    }

    /// The whole answer of the request lent as `token` (see
    /// [`Lifecycle::on_frame_lending`]).
    pub fn answer_lent(&mut self, token: Token, body: Bytes) {
        self.give_back(token);
        if self.processing || self.send.has_ended() || !self.send.push_body_now(token.id, &body) {
            // Framed later (more than a frame, or behind other ends).
            self.admit_lent_now(token);
            return self.on_body(token, body);
        }
        // Ended here: what `ended` does for a request with nothing kept,
        // no deadline and, its ID having been free, no one waiting for it.
        debug_assert!(!self.waiters.contains_key(&token.id));
        self.outcomes.set(token.id, false);
        self.counters.requests_completed += 1;
        if self.reactor.receiving() > 0 {
            self.ended_while_receiving.insert(token.id, token.seq);
        }
    }

    /// The request lent as `token` (see [`Lifecycle::on_frame_lending`])
    /// was started and is not answered yet: it is running from now on, and
    /// its outcome comes back as any other's.
    pub fn admit_lent(&mut self, token: Token) {
        self.give_back(token);
        self.admit_lent_now(token);
    }

    #[inline]
    fn give_back(&mut self, token: Token) {
        let lent = self.lent.take();
        debug_assert_eq!(lent, Some(token), "not the request lent");
    }

    fn admit_lent_now(&mut self, token: Token) {
        self.reactor.register_whole(token.id);
        self.entries.insert(
            token.id,
            Entry {
                seq: token.seq,
                phase: Phase::Running,
                extra: None,
            },
        );
    }

    /// Takes two frames that arrived one after the other: the same as
    /// [`Lifecycle::on_frame`] with each in turn, in one step when they are
    /// a command-name frame and the data frame that completes it (as
    /// [`FrameRun::take_sole_data`] pairs them), the common case of a
    /// request in two frames.
    pub fn on_name_and_data(&mut self, name: Frame, data: Frame, now: Instant) {
        let id = name.request_id;
        // An entry here is a request the reactor knows (refused below) or
        // an error still queued (refused by `on_frame`).
        if self.errored || self.entries.get(id).is_some() || !self.reactor.start_whole(&name, &data)
        {
            self.on_frame(name, now);
            return self.on_frame(data, now);
        }
        self.counters.frames_in += 2;
        self.idle_at = None;
        self.begin(id);
        self.on_complete(whole_request(name, data), now);
        self.process_ended();
        if self.reactor.receiving() == 0 && !self.ended_while_receiving.is_empty() {
            self.ended_while_receiving.clear();
        }
    }

    /// The input has ended: requests still arriving get their errors; the
    /// others are answered as usual.
    pub fn on_input_eof(&mut self, now: Instant) {
        if self.errored || self.input_ended {
            return;
        }
        self.input_ended = true;
        let action = self.reactor.on_input_eof();
        self.on_action(action, now);
        self.process_ended();
        self.ended_while_receiving.clear();
    }

    /// A connection-level error found outside the reactor (a bad header, a
    /// truncated frame): the `protocol` error-response is queued, every
    /// request is dropped, and nothing more is taken in.
    pub fn fail(&mut self, request_id: u16, message: &str) {
        if self.errored {
            return;
        }
        self.errored = true;
        self.counters.protocol_errors += 1;
        self.abandon();
        error_response_frame(
            request_id,
            ErrorFlag::Protocol,
            message,
            self.send.max_payload(),
        )
        .encode(self.send.output());
        self.counters.frames_out += 1;
    }

    fn fail_connection(&mut self, err: &ReactorError) {
        self.fail(err.request_id, &err.message());
    }

    /// A command-name frame began request `id`.
    fn begin(&mut self, id: u16) {
        let seq = self.begin_unrecorded(id);
        // In-order mode answers in the order requests began: a request's
        // dependencies began before it, so they are never queued behind it.
        self.send.expect(id);
        self.entries.insert(
            id,
            Entry {
                seq,
                phase: Phase::Receiving,
                extra: None,
            },
        );
    }

    /// What beginning request `id` changes besides its entry; its `seq`.
    #[inline]
    fn begin_unrecorded(&mut self, id: u16) -> u32 {
        // A new command on an ID frees the body kept from its last one.
        if !self.kept.is_empty() {
            if let Some(body) = self.kept.remove(&id) {
                self.kept_bytes -= body.len();
            }
        }
        if !self.ended_while_receiving.is_empty() {
            self.ended_while_receiving.remove(&id);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    fn on_action(&mut self, action: Action, now: Instant) {
        match action {
            Action::RunCommand(request) => self.on_complete(request, now),
            Action::Error(err) if err.scope() == Scope::Connection => self.fail_connection(&err),
            Action::Error(err) => {
                for frame in err.frames(self.send.max_payload()) {
                    let message = String::from_utf8_lossy(&frame.payload).into_owned();
                    self.fail_request(frame.request_id, &message);
                }
            }
            // Output is the send side's: the reactor never defers here.
            Action::SendFrames(_) | Action::WantFrame { .. } | Action::Noop => {}
        }
    }

    /// A request's frames are all here: run it, or (with reserved
    /// arguments, a deadline or a reserved name) take the slow path.
    #[inline]
    fn on_complete(&mut self, request: Request, now: Instant) {
        let plain = self.config.request_deadline.is_none()
            && request.name.first() != Some(&b'@')
            && !schedule::has_reserved(&request);
        if !plain {
            return self.on_complete_reserved(request, now);
        }
        // Most requests: nothing to take out, wait for or answer here.
        if let Some(token) = self.take_in(request.request_id, now) {
            self.events.push_back(Event::Run(token, request));
        }
    }

    /// A complete request is taken in: it is running from now on.
    #[inline]
    fn take_in(&mut self, id: u16, now: Instant) -> Option<Token> {
        if self.reactor.receiving() > 0 {
            self.assembly_at = self.config.assembly_timeout.map(|limit| now + limit);
        }
        self.counters.requests_started += 1;
        let entry = self.entries.get_mut(id)?;
        entry.phase = Phase::Running;
        Some(Token { id, seq: entry.seq })
    }

    /// [`Lifecycle::on_complete`] for a request that may have reserved
    /// arguments or a deadline: take the arguments, set the deadline, and
    /// run it, hold it, or fail it.
    #[inline(never)]
    fn on_complete_reserved(&mut self, mut request: Request, now: Instant) {
        let id = request.request_id;
        let Some(Token { seq, .. }) = self.take_in(id, now) else {
            return;
        };
        let entry = self.entries.get_mut(id).expect("taken in");
        let reserved = match schedule::take_reserved(&mut request, self.config.max_dependencies) {
            Ok(reserved) => reserved,
            Err(message) => return self.fail_request(id, &message),
        };
        let mut deadline = self
            .config
            .request_deadline
            .map(|d| (now + d, d.as_millis() as u64));
        if let Some(ms) = reserved.as_ref().and_then(|r| r.deadline_ms) {
            let at = now + Duration::from_millis(ms);
            if deadline.map_or(true, |(earlier, _)| at < earlier) {
                deadline = Some((at, ms));
            }
        }
        if let Some((at, ms)) = deadline {
            request.deadline = Some(at);
            entry.extra().deadline_ms = Some(ms);
            self.deadlines.push(Reverse((at, id, seq)));
            self.live_deadlines += 1;
        }
        let Some(reserved) = reserved else {
            // A plain request: nothing to substitute, nothing to wait for.
            return self.run(Token { id, seq }, request);
        };
        if reserved.keep {
            entry.extra().keep = Some(Some(Kept::default()));
        }
        let mut waiting = Vec::new();
        for dep in reserved.dependencies() {
            match self.dependency_state(dep, id, seq) {
                DepState::Ended => {}
                DepState::Pending => waiting.push(dep),
                DepState::Failed => {
                    return self.fail_request(id, &format!("dependency {dep} failed"))
                }
                DepState::Unknown => {
                    return self.fail_request(id, &format!("unknown dependency {dep}"))
                }
            }
        }
        let Reserved { uses, .. } = reserved;
        let uses: Vec<Use> = uses
            .into_iter()
            .map(|(name, dep)| {
                let body = (!waiting.contains(&dep)).then(|| self.kept.get(&dep).cloned());
                (name, dep, body)
            })
            .collect();
        if waiting.is_empty() {
            return self.release(Token { id, seq }, request, uses);
        }
        for &dep in &waiting {
            self.waiters.entry(dep).or_default().push(Token { id, seq });
        }
        let entry = self.entries.get_mut(id).expect("present");
        entry.phase = Phase::Held;
        entry.extra().held = Some(Held {
            request,
            waiting: waiting.len(),
            uses,
        });
    }

    /// Where dependency `dep` of request `id` (begun as `seq`) stands.
    fn dependency_state(&self, dep: u16, id: u16, seq: u32) -> DepState {
        // Even IDs are never client requests (and share their bits in
        // `outcomes` with the odd ID above them).
        if dep == id || dep % 2 == 0 {
            return DepState::Unknown;
        }
        if let Some(entry) = self.entries.get(dep) {
            // Begun after this request: not one it could have named.
            return if entry.seq.wrapping_sub(seq) as i32 > 0 {
                DepState::Unknown
            } else {
                DepState::Pending
            };
        }
        if let Some(&began) = self.ended_while_receiving.get(&dep) {
            if began.wrapping_sub(seq) as i32 > 0 {
                return DepState::Unknown;
            }
        }
        match self.outcomes.get(dep) {
            None => DepState::Unknown,
            Some(true) => DepState::Failed,
            Some(false) => DepState::Ended,
        }
    }

    /// Every dependency has ended (the request is in phase `Running`
    /// again): substitute used results and run.
    fn release(&mut self, token: Token, mut request: Request, uses: Vec<Use>) {
        let id = token.id;
        if !uses.is_empty() {
            for (name, dep, body) in uses {
                let Some(Some(body)) = body else {
                    return self.fail_request(id, &format!("response {dep} was not kept"));
                };
                request.args.push((name, body));
            }
            // The reactor bounded what arrived; the results put in may
            // make it larger.
            let size: usize = request
                .args
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
                + request.data.as_ref().map_or(0, Bytes::len);
            let max = self.config.limits.max_request_bytes;
            if size > max {
                return self
                    .fail_request(id, &format!("more than {max} bytes of arguments and data"));
            }
        }
        self.run(token, request);
    }

    /// A request in phase `Running` starts: the lifecycle answers its own
    /// commands, the transport runs the others.
    fn run(&mut self, token: Token, request: Request) {
        if request.name.first() == Some(&b'@') {
            match &request.name[..] {
                schedule::CAPABILITIES_COMMAND => {
                    let body = Bytes::from_static(schedule::CAPABILITIES.as_bytes());
                    return self.on_body(token, body);
                }
                schedule::CANCEL_COMMAND => return self.cancel_command(token, &request),
                _ => {}
            }
        }
        self.events.push_back(Event::Run(token, request));
    }

    /// `@cancel id=N`: stop request N if it has not ended.
    fn cancel_command(&mut self, token: Token, request: &Request) {
        let target = match request.arg_parse::<u16>("id") {
            Ok(target) => target,
            Err(err) => return self.fail_request(token.id, err.message()),
        };
        // A request whose terminal frame is decided but not yet framed
        // (the rest of a large body waits its turn) has not ended either.
        let stoppable = target != token.id
            && self
                .entries
                .get(target)
                .is_some_and(|e| !matches!(e.phase, Phase::Ending) || self.send.is_pending(target));
        let answer = if stoppable {
            // Too many cancellations for the requests started: a flood
            // (see `crate::flood`); the connection ends here.
            if let Err(err) = self.reactor.on_cancelled(token.id) {
                return self.fail_connection(&err);
            }
            self.send.move_before(target, token.id);
            self.stop(target, "cancelled");
            self.counters.requests_cancelled += 1;
            // The target's end, and the failures of what depended on it,
            // go out before the answer: a client that reads `cancelled`
            // knows the ID is free and what else ended with it.
            self.process_ended();
            "cancelled"
        } else {
            "not running"
        };
        self.on_body(token, Bytes::from_static(answer.as_bytes()));
    }

    /// Ends request `id` now with `message`, whatever it was doing: a
    /// running command is stopped ([`Event::Cancel`]), one still receiving
    /// has its further frames dropped.
    fn stop(&mut self, id: u16, message: &str) {
        let Some(entry) = self.entries.get(id) else {
            return;
        };
        match entry.phase {
            Phase::Receiving => {
                self.reactor.stop_receiving(id);
            }
            Phase::Running | Phase::Answering => {
                let token = Token { id, seq: entry.seq };
                self.events.push_back(Event::Cancel(token));
            }
            Phase::Held | Phase::Ending => {}
        }
        self.fail_request(id, message);
    }

    /// Request `id` ends with an application error-response.
    fn fail_request(&mut self, id: u16, message: &str) {
        match self.entries.get_mut(id) {
            Some(entry) => {
                match entry.phase {
                    // Taken in only now, to be refused.
                    Phase::Receiving => self.counters.requests_started += 1,
                    // Its request is not wanted any more.
                    Phase::Held => drop(entry.extra().held.take()),
                    _ => {}
                }
                entry.phase = Phase::Ending;
            }
            None => self.counters.requests_started += 1,
        }
        self.send.push_error(id, message);
    }

    // ---- outcomes from the transport ----

    fn live(&mut self, token: Token) -> Option<&mut Entry> {
        self.entries
            .get_mut(token.id)
            .filter(|e| e.seq == token.seq && matches!(e.phase, Phase::Running | Phase::Answering))
    }

    /// The whole response body of a command run for `token`.
    pub fn on_body(&mut self, token: Token, body: Bytes) {
        let Some(entry) = self.live(token) else {
            return;
        };
        entry.phase = Phase::Ending;
        if let Some(Some(kept)) = entry.kept() {
            kept.len = body.len();
            kept.parts = vec![body.clone()];
        }
        // Most answers: framed here, and the request ends here, ahead of
        // nothing else still to be processed. What its end releases is
        // processed by the loop below, not by recursion.
        if !self.processing && !self.send.has_ended() && self.send.push_body_now(token.id, &body) {
            self.processing = true;
            self.ended(token.id, End::Ok);
            self.processing = false;
        } else {
            self.send.push_body(token.id, body);
        }
        self.process_ended();
    }

    /// The command run for `token` failed with `message`.
    pub fn on_error(&mut self, token: Token, message: &str) {
        if self.live(token).is_none() {
            return;
        }
        self.fail_request(token.id, message);
        self.process_ended();
    }

    /// The command run for `token` answers with a stream: chunks follow.
    pub fn on_stream(&mut self, token: Token) {
        let Some(entry) = self.live(token) else {
            return;
        };
        entry.phase = Phase::Answering;
        self.send.open_stream(token.id);
    }

    /// A stream's chunk or end for `token`, whose stream a transport may
    /// not have opened with [`Lifecycle::on_stream`]: it is opened here,
    /// so that the request still ends (and its ID is freed).
    fn live_stream(&mut self, token: Token) -> Option<&mut Entry> {
        let entry = self.live(token)?;
        if matches!(entry.phase, Phase::Running) {
            entry.phase = Phase::Answering;
            self.send.open_stream(token.id);
        }
        self.entries.get_mut(token.id)
    }

    /// The next chunk of `token`'s stream.
    pub fn on_chunk(&mut self, token: Token, chunk: Bytes) {
        let budget = self.config.max_kept_bytes.saturating_sub(self.kept_bytes);
        let Some(entry) = self.live_stream(token) else {
            return;
        };
        if let Some(keep) = entry.kept() {
            if let Some(kept) = keep {
                if kept.len + chunk.len() > budget {
                    *keep = None;
                } else {
                    kept.len += chunk.len();
                    kept.parts.push(chunk.clone());
                }
            }
        }
        self.send.push_chunk(token.id, chunk);
    }

    /// `token`'s stream has ended, or failed with a message.
    pub fn on_stream_end(&mut self, token: Token, result: Result<(), &str>) {
        let Some(entry) = self.live_stream(token) else {
            return;
        };
        entry.phase = Phase::Ending;
        self.send
            .end_stream(token.id, result.map_err(str::to_string));
        self.process_ended();
    }

    /// Whether `token`'s stream should be polled for another chunk (less
    /// than a frame of it waits to be framed).
    pub fn wants_chunk(&self, token: Token) -> bool {
        self.is_streaming(token) && self.send.wants_chunk(token.id)
    }

    /// Whether `token`'s stream is still being answered (not ended,
    /// cancelled or timed out).
    pub fn is_streaming(&self, token: Token) -> bool {
        self.entries
            .get(token.id)
            .is_some_and(|e| e.seq == token.seq && matches!(e.phase, Phase::Answering))
    }

    // ---- output ----

    /// What to do next: run a command, or stop one.
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether [`Lifecycle::poll_event`] has something.
    #[inline]
    pub fn has_event(&self) -> bool {
        !self.events.is_empty()
    }

    /// Frames queued responses (round robin) until at least `high_water`
    /// bytes wait to be written, and gives the bytes to write. The
    /// transport writes from the front and `advance`s past what it wrote.
    pub fn poll_transmit(&mut self, high_water: usize) -> &mut BytesMut {
        debug_assert!(self.lent.is_none(), "a lent request was not given back");
        // A request ending here may release others whose answers the
        // lifecycle gives itself (`@capabilities`, a failed dependency):
        // those are framed in the same call.
        while self.send.frame(high_water) {
            self.process_ended();
            if self.send.output().len() >= high_water {
                break;
            }
        }
        self.send.output()
    }

    /// Bytes framed and not yet taken by the transport.
    pub fn pending_output(&mut self) -> usize {
        self.send.output().len()
    }

    /// Requests whose terminal frame was framed: the ID is free, the
    /// outcome remembered, the body kept, the dependents told. A loop, not
    /// recursion: a chain of 10 000 failing dependents is 10 000 turns.
    #[inline]
    fn process_ended(&mut self) {
        // Nothing ended, or an outer call is looping and takes these too.
        if !self.processing && self.send.has_ended() {
            self.process_ended_now();
        }
    }

    fn process_ended_now(&mut self) {
        self.processing = true;
        let mut ended = std::mem::take(&mut self.ended);
        while self.send.has_ended() {
            self.send.swap_ended(&mut ended);
            for (id, how) in ended.drain(..) {
                self.ended(id, how);
            }
        }
        self.ended = ended;
        self.processing = false;
    }

    fn ended(&mut self, id: u16, how: End) {
        let entry = self.entries.remove(id);
        self.reactor.on_response_finished(id);
        self.outcomes.set(id, how == End::Failed);
        match how {
            End::Ok => self.counters.requests_completed += 1,
            End::Failed => self.counters.requests_failed += 1,
        }
        if let Some(entry) = entry {
            if self.reactor.receiving() > 0 {
                self.ended_while_receiving.insert(id, entry.seq);
            }
            if entry.has_deadline() {
                self.live_deadlines -= 1;
            }
            let keep = entry.extra.and_then(|e| e.keep);
            if let (End::Ok, Some(Some(kept))) = (how, keep) {
                if self.kept_bytes + kept.len <= self.config.max_kept_bytes {
                    let body = match kept.parts.len() {
                        1 => kept.parts.into_iter().next().expect("one part"),
                        _ => {
                            let mut all = BytesMut::with_capacity(kept.len);
                            kept.parts.iter().for_each(|p| all.extend_from_slice(p));
                            all.freeze()
                        }
                    };
                    self.kept_bytes += body.len();
                    self.kept.insert(id, body);
                }
            }
        }
        if self.waiters.is_empty() {
            return;
        }
        let Some(waiters) = self.waiters.remove(&id) else {
            return;
        };
        for waiter in waiters {
            let Some(entry) = self.entries.get_mut(waiter.id) else {
                continue;
            };
            if entry.seq != waiter.seq {
                continue;
            }
            if entry.phase != Phase::Held {
                continue;
            }
            if how == End::Failed {
                self.fail_request(waiter.id, &format!("dependency {id} failed"));
                continue;
            }
            let held = entry.extra().held.as_mut().expect("a held request's");
            for (_, dep, body) in &mut held.uses {
                if *dep == id && body.is_none() {
                    *body = Some(self.kept.get(&id).cloned());
                }
            }
            held.waiting -= 1;
            if held.waiting == 0 {
                let Held { request, uses, .. } = entry.extra().held.take().expect("held above");
                entry.phase = Phase::Running;
                self.release(waiter, request, uses);
            }
        }
    }

    // ---- time ----

    /// Tells the lifecycle whether the transport is reading (not paused for
    /// backpressure, input not ended) and whether part of a frame waits in
    /// its read buffer, at `now`. The assembly and idle timers run only
    /// while reading: while the server holds back, the wait is its own.
    pub fn set_input(&mut self, reading: bool, partial_frame: bool, now: Instant) {
        let assembling = reading && (self.reactor.receiving() > 0 || partial_frame);
        if !assembling {
            self.assembly_at = None;
        } else if self.assembly_at.is_none() {
            self.assembly_at = self.config.assembly_timeout.map(|limit| now + limit);
        }
        let idle = reading && !partial_frame && self.entries.is_empty() && self.send.is_idle();
        if !idle {
            self.idle_at = None;
        } else if self.idle_at.is_none() {
            self.idle_at = self.config.idle_timeout.map(|limit| now + limit);
        }
    }

    /// The next moment [`Lifecycle::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.deadlines.peek().map(|Reverse((at, _, _))| *at);
        [self.assembly_at, self.idle_at, deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Time has come to `now`: requests past their deadline end with
    /// `timed out after N ms` (and are stopped), a request assembling too
    /// long fails the connection, and a connection idle too long is marked
    /// [`Lifecycle::idle_expired`].
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, id, seq))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(entry) = self.entries.get(id) else {
                continue;
            };
            if entry.seq != seq || matches!(entry.phase, Phase::Ending) {
                continue;
            }
            let ms = entry
                .extra
                .as_ref()
                .and_then(|e| e.deadline_ms)
                .unwrap_or(0);
            self.stop(id, &format!("timed out after {ms} ms"));
        }
        if self.deadlines.len() > 64 && self.deadlines.len() > 2 * self.live_deadlines {
            let entries = &self.entries;
            self.deadlines.retain(|Reverse((_, id, seq))| {
                entries
                    .get(*id)
                    .is_some_and(|e| e.seq == *seq && !matches!(e.phase, Phase::Ending))
            });
        }
        if let (Some(at), Some(limit)) = (self.assembly_at, self.config.assembly_timeout) {
            if at <= now {
                self.assembly_at = None;
                let ms = limit.as_millis();
                self.fail(
                    0,
                    &format!("request not complete within the assembly timeout of {ms} ms"),
                );
            }
        }
        if self.idle_at.is_some_and(|at| at <= now) {
            self.idle_at = None;
            self.idle_expired = true;
        }
        self.process_ended();
    }

    /// Whether the idle timeout has passed: the transport should stop
    /// reading and close.
    pub fn idle_expired(&self) -> bool {
        self.idle_expired
    }

    // ---- state ----

    /// Requests begun and not ended (receiving, held, running, answering,
    /// or with their terminal frame queued).
    pub fn in_flight(&self) -> usize {
        self.entries.len()
    }

    /// Requests complete and not ended: what counts against the
    /// per-connection limit of requests executing (held ones included).
    pub fn executing(&self) -> usize {
        self.reactor.active()
    }

    /// Requests whose frames are still arriving.
    pub fn receiving(&self) -> usize {
        self.reactor.receiving()
    }

    /// Whether a connection-level error ended the connection: write what is
    /// framed (the error last), then close.
    pub fn is_failed(&self) -> bool {
        self.errored
    }

    /// Whether every request has ended and all output has been taken.
    pub fn is_done(&self) -> bool {
        self.entries.is_empty() && self.send.is_idle()
    }

    /// Bytes of `@keep` bodies kept now.
    pub fn kept_bytes(&self) -> usize {
        self.kept_bytes
    }

    /// The counts since the last call.
    pub fn take_counters(&mut self) -> Counters {
        self.counters.frames_out += self.send.take_frames_out();
        std::mem::take(&mut self.counters)
    }

    /// The connection is gone: every request not ended is dropped
    /// unanswered (counted as abandoned). Commands still running must be
    /// stopped by the transport.
    pub fn abandon(&mut self) {
        self.counters.requests_abandoned += self
            .entries
            .iter()
            .filter(|(_, e)| !matches!(e.phase, Phase::Receiving))
            .count() as u64;
        self.entries.clear();
        self.waiters.clear();
        self.ended_while_receiving.clear();
        self.deadlines.clear();
        self.live_deadlines = 0;
        self.events.clear();
        self.send.clear();
        self.reactor.abandon_active();
    }
}

enum DepState {
    Ended,
    Pending,
    Failed,
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::human::{format_frame, parse_frame};

    #[test]
    fn a_stream_never_opened_still_ends_and_frees_its_id() {
        let now = Instant::now();
        let mut lc = Lifecycle::new(LifecycleConfig::default());
        for id in [1, 3] {
            lc.on_frame(
                parse_frame(&format!("{id} command-name eos blob")).unwrap(),
                now,
            );
        }
        let mut tokens = Vec::new();
        while let Some(Event::Run(token, _)) = lc.poll_event() {
            tokens.push(token);
        }
        // Neither is opened with on_stream: one sends a chunk, the other
        // only its end.
        lc.on_chunk(tokens[0], Bytes::from_static(b"part"));
        lc.on_stream_end(tokens[0], Ok(()));
        lc.on_stream_end(tokens[1], Err("gone"));
        let wire = lc.poll_transmit(usize::MAX).split().freeze();
        let lines: Vec<String> = crate::decode_all(&wire)
            .unwrap()
            .iter()
            .map(format_frame)
            .collect();
        assert_eq!(
            lines,
            [
                "1 bytes-response eos part",
                "3 error-response application gone"
            ]
        );
        assert!(lc.is_done(), "both IDs are free");
    }

    #[test]
    fn one_transmit_frames_what_the_end_of_a_request_releases() {
        let now = Instant::now();
        let mut config = LifecycleConfig {
            in_order: true,
            ..LifecycleConfig::default()
        };
        config.limits.max_send_payload = 8;
        let mut lc = Lifecycle::new(config);
        lc.on_frame(parse_frame("1 command-name eos blob").unwrap(), now);
        lc.on_frame(
            parse_frame("3 command-name have-args @capabilities").unwrap(),
            now,
        );
        lc.on_frame(
            parse_frame(r"3 command-argument eoa \x06\x00\x01\x00@after1").unwrap(),
            now,
        );
        let Some(Event::Run(token, _)) = lc.poll_event() else {
            panic!("expected a run")
        };
        lc.on_body(token, Bytes::from_static(b"twelve bytes"));
        // One call frames 1's answer, whose end releases 3, and 3's answer.
        let wire = lc.poll_transmit(usize::MAX).split().freeze();
        let lines: Vec<String> = crate::decode_all(&wire)
            .unwrap()
            .iter()
            .map(format_frame)
            .collect();
        let caps = schedule::CAPABILITIES;
        assert_eq!(
            lines,
            [
                "1 bytes-response continuation twelve b".to_string(),
                "1 bytes-response eos ytes".to_string(),
                format!("3 bytes-response continuation {}", &caps[..8]),
                format!("3 bytes-response continuation {}", &caps[8..16]),
                format!("3 bytes-response continuation {}", &caps[16..24]),
                format!("3 bytes-response eos {}", &caps[24..]),
            ]
        );
        assert!(lc.is_done());
    }

    #[test]
    fn a_large_body_still_being_framed_can_be_cancelled() {
        let now = Instant::now();
        let mut config = LifecycleConfig::default();
        config.limits.max_send_payload = 16;
        let mut lc = Lifecycle::new(config);
        lc.on_frame(parse_frame("1 command-name eos blob").unwrap(), now);
        let Some(Event::Run(token, _)) = lc.poll_event() else {
            panic!("expected a run")
        };
        lc.on_body(token, Bytes::from(vec![b'a'; 40]));
        // One frame of it goes out; the rest waits its turn.
        let first = lc.poll_transmit(1).split().freeze();
        let lines = |wire: &[u8]| -> Vec<String> {
            crate::decode_all(wire)
                .unwrap()
                .iter()
                .map(format_frame)
                .collect()
        };
        assert_eq!(
            lines(&first),
            [format!("1 bytes-response continuation {}", "a".repeat(16))]
        );
        lc.on_frame(
            parse_frame("3 command-name have-args @cancel").unwrap(),
            now,
        );
        lc.on_frame(
            parse_frame(r"3 command-argument eoa \x02\x00\x01\x00id1").unwrap(),
            now,
        );
        let rest = lc.poll_transmit(usize::MAX).split().freeze();
        assert_eq!(
            lines(&rest),
            [
                "1 error-response application cancelled",
                "3 bytes-response eos cancelled"
            ]
        );
        assert!(lc.is_done());
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn a_request_entry_is_16_bytes() {
        // The per-request memory figures of docs/PERFORMANCE.md rest on it.
        assert_eq!(std::mem::size_of::<Entry>(), 16);
    }
}
