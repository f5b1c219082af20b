//! The request lifecycle (PROTOCOL.md section 8) driven by an arbitrary
//! script: raw frames, commands with reserved arguments (some cut short),
//! outcomes for what it runs (bodies, errors, streams), time steps, partial
//! framing and end of input, with small limits. Checks that it never
//! panics, that no response frame belongs to a request not begun, that no
//! request gets two terminal frames, and, unless the connection failed,
//! that once everything has run every request begun has exactly one.
//!
//! And the rules of section 8, for the commands it builds (not raw frames):
//! a command runs only once every request its `@after` and `@use` name has
//! its terminal frame out, and none of them failed; a `@use:NAME` argument
//! is the whole body of the request it names; a malformed reserved
//! argument or an unknown one never runs; and a `@cancel` answers only once its target has
//! its terminal frame out (an error-response, if it answered `cancelled`).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wiremux_proto::builder::CommandBuilder;
use wiremux_proto::lifecycle::{Event, Lifecycle, LifecycleConfig, Token};
use wiremux_proto::server::Limits;
use wiremux_proto::{decode_all, Flags, Frame, FrameType};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Running {
    Plain,
    Stream,
}

/// What the harness knows of a command it built: the requests it names,
/// as of when its command-name frame went in.
#[derive(Debug, Default, Clone)]
struct Meta {
    /// `@after` and `@use` IDs, with the number of requests begun on each
    /// by then (0: none, so "unknown dependency").
    deps: Vec<(u16, u32)>,
    /// `@use:NAME` arguments: the name and the ID.
    uses: Vec<(&'static str, u16)>,
    /// Plain argument names (a plain `a` beside `@use:a` muddles the check).
    plain: Vec<&'static str>,
    /// A malformed `@after`, `@deadline` or `@keep`, or an unknown reserved
    /// argument: must never run.
    malformed: bool,
    /// For `@cancel`: the target, with its begun count then.
    cancel: Option<(u16, u32)>,
    /// The number of requests begun on its own ID, counting it.
    seq: u32,
}

/// A command ran; the request `dep` (the `count`th on its ID) must have
/// had its terminal frame among the first `framed_by` bytes, must not have
/// failed (`check_failed`), and its body must be `used`, if given.
struct Waiting {
    ran: u16,
    dep: u16,
    count: u32,
    framed_by: usize,
    check_failed: bool,
    used: Option<Option<Vec<u8>>>,
}

struct Harness {
    lc: Lifecycle,
    /// The command each ID last took in through `command`, while it is
    /// still the latest request on that ID.
    meta: BTreeMap<u16, Meta>,
    /// Per ID: how the last request ended (true: an error-response), and
    /// the body of its last final bytes-response.
    last_failed: BTreeMap<u16, bool>,
    last_body: BTreeMap<u16, Vec<u8>>,
    /// Bytes-response payloads of the response being framed, per ID.
    body: BTreeMap<u16, Vec<u8>>,
    /// Bytes taken from the lifecycle so far.
    taken: usize,
    /// Checks of commands that ran while what they wait for had its
    /// terminal frame framed but not yet taken.
    waiting: Vec<Waiting>,
    t0: Instant,
    ms: u64,
    /// Command-name frames taken in per ID, and terminal frames seen.
    begun: BTreeMap<u16, u32>,
    ended: BTreeMap<u16, u32>,
    live: Vec<(Token, Running)>,
    eof: bool,
}

impl Waiting {
    /// The request it waits for has ended, with its terminal frame ending
    /// at byte `end` of the output.
    fn resolve(&self, end: usize, failed: bool, body: Option<&[u8]>) {
        let (ran, dep) = (self.ran, self.dep);
        assert!(
            end <= self.framed_by,
            "{ran} ran before {dep}, which it waits for, had ended"
        );
        if self.check_failed {
            assert!(
                !failed,
                "{ran} ran although {dep}, which it waits for, failed"
            );
        }
        if let Some(used) = &self.used {
            assert_eq!(
                used.as_deref(),
                body,
                "{ran}: its @use of {dep} is not the body of {dep}"
            );
        }
    }
}

impl Harness {
    fn now(&self) -> Instant {
        self.t0 + Duration::from_millis(self.ms)
    }

    fn feed(&mut self, frame: Frame) {
        if self.eof {
            // Nothing arrives after the end of input.
            return;
        }
        let (id, name) = (
            frame.request_id,
            frame.frame_type == FrameType::COMMAND_NAME,
        );
        let failed = self.lc.is_failed();
        self.lc.on_frame(frame, self.now());
        if name && !failed && !self.lc.is_failed() {
            *self.begun.entry(id).or_default() += 1;
        }
        self.events();
    }

    /// Feeds a command built here (its first `n` frames), remembering what
    /// section 8 says of it if all of it went in.
    fn feed_command(&mut self, id: u16, frames: Vec<Frame>, n: usize, mut meta: Meta) {
        let whole = n == frames.len();
        let begun = |h: &Harness, d: u16| h.begun.get(&d).copied().unwrap_or(0);
        // What it names, as of its command-name frame.
        for (d, count) in &mut meta.deps {
            *count = begun(self, *d);
        }
        if let Some((t, count)) = &mut meta.cancel {
            *count = begun(self, *t);
        }
        meta.seq = begun(self, id) + 1;
        self.meta.remove(&id);
        let mut frames = frames.into_iter().take(n);
        if let Some(first) = frames.next() {
            let before = begun(self, id);
            self.feed(first);
            // Known once it has begun, before the frame that completes it
            // (a command of one frame has no reserved arguments).
            if whole && begun(self, id) == before + 1 {
                self.meta.insert(id, meta);
            }
        }
        for frame in frames {
            self.feed(frame);
        }
    }

    /// Section 8's rules for a command about to run: what it waits for
    /// has its terminal frame framed (checked now, or once taken).
    fn check_run(&mut self, token: Token, request: &wiremux_proto::Request) {
        let Some(meta) = self.meta.get(&token.id).cloned() else {
            return;
        };
        if self.begun.get(&token.id).copied() != Some(meta.seq) {
            return; // a later request on the ID
        }
        assert!(
            !meta.malformed,
            "{}: ran with a malformed reserved argument",
            token.id
        );
        let framed_by = self.taken + self.lc.pending_output();
        for &(d, count) in &meta.deps {
            assert!(
                count > 0 && d != token.id,
                "{} ran with the unknown dependency {d}",
                token.id
            );
            // A later request on that ID has begun since: what it was is
            // not the harness's to tell.
            let check_failed = self.begun.get(&d) == Some(&count);
            let used = meta
                .uses
                .iter()
                .find(|(_, u)| *u == d)
                .filter(|(name, _)| {
                    check_failed
                        && !meta.plain.contains(name)
                        && meta.uses.iter().filter(|(n, _)| n == name).count() == 1
                })
                .map(|(name, _)| request.arg(name).map(|v| v.to_vec()));
            let waiting = Waiting {
                ran: token.id,
                dep: d,
                count,
                framed_by,
                check_failed,
                used,
            };
            if self.ended.get(&d).copied().unwrap_or(0) >= count {
                if let Some(failed) = self.last_failed.get(&d).copied() {
                    let body = self.last_body.get(&d).cloned();
                    waiting.resolve(0, failed, body.as_deref());
                }
            } else {
                self.waiting.push(waiting);
            }
        }
    }

    /// Section 8's rule for a `@cancel` that has just answered `body`.
    fn check_cancel(&self, id: u16, body: &[u8]) {
        let Some(meta) = self.meta.get(&id) else {
            return;
        };
        let Some((target, count)) = meta.cancel else {
            return;
        };
        // The answer must be this command's, and name a request begun.
        if self.ended.get(&id).copied() != Some(meta.seq) || count == 0 || target == id {
            return;
        }
        let ended = self.ended.get(&target).copied().unwrap_or(0);
        assert!(
            ended >= count,
            "@cancel {id} answered {:?} before its target {target} had ended",
            String::from_utf8_lossy(body)
        );
        if body == b"cancelled" && self.begun.get(&target) == Some(&count) {
            assert_eq!(
                self.last_failed.get(&target),
                Some(&true),
                "@cancel {id} answered cancelled, but {target} ended well"
            );
        }
    }

    fn events(&mut self) {
        while let Some(event) = self.lc.poll_event() {
            match event {
                Event::Run(token, request) => {
                    assert!(self.live.iter().all(|(t, _)| *t != token), "run twice");
                    self.check_run(token, &request);
                    self.live.push((token, Running::Plain));
                }
                Event::Cancel(token) => self.live.retain(|(t, _)| *t != token),
            }
        }
    }

    /// Takes what the lifecycle frames; returns how many frames.
    fn transmit(&mut self, high_water: usize) -> usize {
        let out = self.lc.poll_transmit(high_water).split().freeze();
        let frames = decode_all(&out).expect("the lifecycle frames what it sends");
        let framed = frames.len();
        let mut end = self.taken;
        self.taken += out.len();
        for frame in frames {
            end += 6 + frame.payload.len();
            let id = frame.request_id;
            if frame.frame_type == FrameType::ERROR_RESPONSE
                && frame.flags.contains(Flags::PROTOCOL)
            {
                assert!(self.lc.is_failed());
                continue;
            }
            let begun = self.begun.get(&id).copied().unwrap_or(0);
            let ended = self.ended.entry(id).or_default();
            assert!(
                *ended < begun,
                "a response frame for {id}, which has no request open"
            );
            let terminal = frame.frame_type == FrameType::ERROR_RESPONSE
                || (frame.frame_type == FrameType::BYTES_RESPONSE
                    && frame.flags.contains(Flags::DATA_EOS));
            if terminal {
                *ended += 1;
            }
            if frame.frame_type == FrameType::BYTES_RESPONSE {
                self.body
                    .entry(id)
                    .or_default()
                    .extend_from_slice(&frame.payload);
            }
            if terminal {
                let failed = frame.frame_type == FrameType::ERROR_RESPONSE;
                let body = self.body.remove(&id).unwrap_or_default();
                self.last_failed.insert(id, failed);
                let count = self.ended.get(&id).copied().unwrap_or(0);
                let (done, still): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
                    .into_iter()
                    .partition(|w| w.dep == id && w.count == count);
                self.waiting = still;
                for w in done {
                    w.resolve(end, failed, (!failed).then_some(&body[..]));
                }
                if failed {
                    self.last_body.remove(&id);
                } else {
                    self.check_cancel(id, &body);
                    self.last_body.insert(id, body);
                }
            }
        }
        self.events();
        framed
    }

    /// An outcome for the `which`th command running.
    fn outcome(&mut self, which: u8, how: u8, input: &mut Input) {
        if self.live.is_empty() {
            return;
        }
        let at = usize::from(which) % self.live.len();
        let (token, running) = self.live[at];
        let len = usize::from(input.byte().unwrap_or(0) % 80);
        let payload = Bytes::copy_from_slice(input.bytes(len));
        match (running, how % 4) {
            (Running::Plain, 0) => {
                self.lc.on_body(token, payload);
                self.live.remove(at);
            }
            (Running::Plain, 1) => {
                self.lc.on_error(token, "failed");
                self.live.remove(at);
            }
            (Running::Plain, _) => {
                self.lc.on_stream(token);
                self.live[at].1 = Running::Stream;
                self.lc.on_chunk(token, payload);
            }
            (Running::Stream, 0 | 1) => {
                let _ = self.lc.wants_chunk(token);
                self.lc.on_chunk(token, payload);
            }
            (Running::Stream, 2) => {
                self.lc.on_stream_end(token, Ok(()));
                self.live.remove(at);
            }
            (Running::Stream, _) => {
                self.lc.on_stream_end(token, Err("broke"));
                self.live.remove(at);
            }
        }
        self.events();
    }
}

/// A command with arguments chosen from reserved and plain ones, and what
/// section 8 makes of it.
fn command(input: &mut Input) -> (u16, CommandBuilder, Meta) {
    let id = u16::from(input.byte().unwrap_or(1) % 40);
    let names: [&str; 5] = ["add", "@cancel", "@capabilities", "x", "@nope"];
    let name = names[usize::from(input.byte().unwrap_or(0)) % names.len()];
    let mut cmd = CommandBuilder::new(name);
    let mut meta = Meta::default();
    let mut ids_named = 0;
    let small = |input: &mut Input| input.byte().unwrap_or(0) % 40;
    for _ in 0..input.byte().unwrap_or(0) % 5 {
        let kind = input.byte().unwrap_or(0);
        cmd = match kind % 9 {
            0 => {
                let n = 1 + input.byte().unwrap_or(0) % 3;
                let ids: Vec<u8> = (0..n).map(|_| small(input)).collect();
                meta.deps.extend(ids.iter().map(|d| (u16::from(*d), 0)));
                let ids: Vec<String> = ids.iter().map(u8::to_string).collect();
                cmd.arg("@after", ids.join(","))
            }
            1 => {
                let arg = if kind & 0x80 != 0 { "a" } else { "b" };
                let d = small(input);
                meta.deps.push((u16::from(d), 0));
                meta.uses.push((arg, u16::from(d)));
                cmd.arg(format!("@use:{arg}"), d.to_string())
            }
            2 => cmd.arg("@keep", ""),
            3 => cmd.arg("@deadline", input.byte().unwrap_or(0).to_string()),
            4 => {
                let target = small(input);
                ids_named += 1;
                if name == "@cancel" {
                    meta.cancel = Some((u16::from(target), 0));
                }
                meta.plain.push("id");
                cmd.arg("id", target.to_string())
            }
            5 => {
                meta.plain.push("a");
                cmd.arg("a", small(input).to_string())
            }
            // Refused, never run: malformed values, an unknown reserved name.
            6 => {
                meta.malformed = true;
                match kind & 0x80 {
                    0 => cmd.arg("@after", "1,,x"),
                    _ => cmd.arg("@frob", ""),
                }
            }
            7 => {
                meta.malformed = true;
                match kind & 0x80 {
                    0 => cmd.arg("@deadline", "soon"),
                    _ => cmd.arg("@keep", "please"),
                }
            }
            _ => cmd.data(Bytes::copy_from_slice(input.bytes(8))),
        };
    }
    if ids_named > 1 {
        meta.cancel = None; // which `id` counts is not this test's business
    }
    (id, cmd, meta)
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let knobs = input.byte().unwrap_or(0);
    let config = LifecycleConfig {
        limits: Limits {
            max_receiving: 4,
            max_args: 4,
            max_request_bytes: 256,
            max_connection_bytes: 1024,
            max_send_payload: 8 + usize::from(knobs & 0x7) * 8,
            max_discard_bytes: 512,
            ..Limits::default()
        },
        in_order: knobs & 0x08 != 0,
        request_deadline: (knobs & 0x10 != 0).then(|| Duration::from_millis(50)),
        assembly_timeout: Some(Duration::from_millis(200)),
        idle_timeout: Some(Duration::from_millis(500)),
        max_dependencies: 4,
        max_kept_bytes: 64,
    };
    let mut h = Harness {
        lc: Lifecycle::new(config),
        meta: BTreeMap::new(),
        last_failed: BTreeMap::new(),
        last_body: BTreeMap::new(),
        body: BTreeMap::new(),
        taken: 0,
        waiting: Vec::new(),
        t0: Instant::now(),
        ms: 0,
        begun: BTreeMap::new(),
        ended: BTreeMap::new(),
        live: Vec::new(),
        eof: false,
    };
    while let Some(op) = input.byte() {
        match op % 8 {
            0 => {
                // A raw frame: any ID, type and flags.
                let id = u16::from(input.byte().unwrap_or(0) % 40);
                let tf = input.byte().unwrap_or(0);
                let len = usize::from(input.byte().unwrap_or(0) % 24);
                let payload = Bytes::copy_from_slice(input.bytes(len));
                let frame = Frame::new(id, FrameType::new(tf >> 4), Flags::new(tf & 0xf), payload);
                // A raw frame on the ID: nothing is known of its request.
                h.meta.remove(&id);
                h.feed(frame);
            }
            1 | 2 => {
                let (id, cmd, meta) = command(&mut input);
                let cut = input.byte().unwrap_or(0);
                let Ok(frames) = cmd.frames(id, 64) else {
                    continue;
                };
                // Some commands stop short: they stay arriving.
                let n = if cut & 0x80 != 0 {
                    usize::from(cut & 0x7f) % (frames.len() + 1)
                } else {
                    frames.len()
                };
                h.feed_command(id, frames, n, meta);
            }
            3 => {
                let which = input.byte().unwrap_or(0);
                let how = input.byte().unwrap_or(0);
                h.outcome(which, how, &mut input);
            }
            4 => {
                h.ms += u64::from(input.byte().unwrap_or(0));
                let now = h.now();
                if let Some(at) = h.lc.poll_timeout() {
                    assert!(at >= h.t0);
                }
                h.lc.handle_timeout(now);
                h.events();
            }
            5 => {
                let high_water = usize::from(input.byte().unwrap_or(0));
                h.transmit(high_water);
            }
            6 => {
                let bits = input.byte().unwrap_or(0);
                let now = h.now();
                h.lc.set_input(bits & 1 != 0, bits & 2 != 0, now);
            }
            _ => {
                let now = h.now();
                h.lc.on_input_eof(now);
                h.events();
                h.eof = true;
            }
        }
        if h.lc.is_failed() {
            break;
        }
    }
    if !h.eof && !h.lc.is_failed() {
        let now = h.now();
        h.lc.on_input_eof(now);
        h.events();
    }
    // Let everything run to its end: held commands are released (or fail)
    // as the ones they wait for end. A request released while one call of
    // `poll_transmit` frames the end of what it waited for may be framed
    // only by the next call, so this goes on until a call frames nothing.
    for _ in 0..10_000 {
        let framed = h.transmit(usize::MAX);
        if h.live.is_empty() && framed == 0 {
            break;
        }
        for (token, running) in std::mem::take(&mut h.live) {
            match running {
                Running::Plain => h.lc.on_body(token, Bytes::from_static(b"done")),
                Running::Stream => h.lc.on_stream_end(token, Ok(())),
            }
        }
        h.events();
    }
    h.transmit(usize::MAX);
    if h.lc.is_failed() {
        return;
    }
    assert!(h.live.is_empty());
    for (id, begun) in &h.begun {
        let ended = h.ended.get(id).copied().unwrap_or(0);
        assert_eq!(
            ended, *begun,
            "request {id}: {begun} begun, {ended} terminal frames"
        );
    }
    assert_eq!(h.lc.in_flight(), 0, "requests left in flight");
    if let Some(w) = h.waiting.first() {
        panic!(
            "{} ran, but {}, which it waits for, never ended",
            w.ran, w.dep
        );
    }
    assert!(h.lc.is_done());
});
