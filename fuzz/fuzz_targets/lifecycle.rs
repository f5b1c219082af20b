//! The request lifecycle (PROTOCOL.md section 8) driven by an arbitrary
//! script: raw frames, commands with reserved arguments (some cut short),
//! outcomes for what it runs (bodies, errors, streams), time steps, partial
//! framing and end of input, with small limits. Checks that it never
//! panics, that no response frame belongs to a request not begun, that no
//! request gets two terminal frames, and, unless the connection failed,
//! that once everything has run every request begun has exactly one.
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

struct Harness {
    lc: Lifecycle,
    t0: Instant,
    ms: u64,
    /// Command-name frames taken in per ID, and terminal frames seen.
    begun: BTreeMap<u16, u32>,
    ended: BTreeMap<u16, u32>,
    live: Vec<(Token, Running)>,
    eof: bool,
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

    fn events(&mut self) {
        while let Some(event) = self.lc.poll_event() {
            match event {
                Event::Run(token, _) => {
                    assert!(self.live.iter().all(|(t, _)| *t != token), "run twice");
                    self.live.push((token, Running::Plain));
                }
                Event::Cancel(token) => self.live.retain(|(t, _)| *t != token),
            }
        }
    }

    fn transmit(&mut self, high_water: usize) {
        let out = self.lc.poll_transmit(high_water).split().freeze();
        let frames = decode_all(&out).expect("the lifecycle frames what it sends");
        for frame in frames {
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
        }
        self.events();
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

/// A command with arguments chosen from reserved and plain ones.
fn command(input: &mut Input) -> (u16, CommandBuilder) {
    let id = u16::from(input.byte().unwrap_or(1) % 40);
    let names: [&str; 5] = ["add", "@cancel", "@capabilities", "x", "@nope"];
    let name = names[usize::from(input.byte().unwrap_or(0)) % names.len()];
    let mut cmd = CommandBuilder::new(name);
    let small = |input: &mut Input| (input.byte().unwrap_or(0) % 40).to_string();
    for _ in 0..input.byte().unwrap_or(0) % 5 {
        let kind = input.byte().unwrap_or(0);
        cmd = match kind % 9 {
            0 => {
                let n = 1 + input.byte().unwrap_or(0) % 3;
                let ids: Vec<String> = (0..n).map(|_| small(input)).collect();
                cmd.arg("@after", ids.join(","))
            }
            1 => cmd.arg(
                if kind & 0x80 != 0 { "@use:a" } else { "@use:b" },
                small(input),
            ),
            2 => cmd.arg("@keep", ""),
            3 => cmd.arg("@deadline", input.byte().unwrap_or(0).to_string()),
            4 => cmd.arg("id", small(input)),
            5 => cmd.arg("a", small(input)),
            6 => cmd.arg("@after", "1,,x"),
            7 => cmd.arg("@deadline", "soon"),
            _ => cmd.data(Bytes::copy_from_slice(input.bytes(8))),
        };
    }
    (id, cmd)
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
                h.feed(frame);
            }
            1 | 2 => {
                let (id, cmd) = command(&mut input);
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
                for frame in frames.into_iter().take(n) {
                    h.feed(frame);
                }
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
    // as the ones they wait for end.
    for _ in 0..10_000 {
        h.transmit(usize::MAX);
        if h.live.is_empty() {
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
    assert!(h.lc.is_done());
});
