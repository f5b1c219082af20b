//! `Lifecycle::on_name_and_data`, the one-step intake of a command in two
//! frames (command-name `have-data`, then its data frame with `eos`),
//! must be exactly `Lifecycle::on_frame` with each frame in turn. Random
//! reads of random frames (well-formed pairs, near misses, refused IDs,
//! bad flags, tight limits) go into two lifecycles: one frame at a time,
//! and the way the TCP driver reads (`decode_batched`, pairs taken with
//! `FrameRun::take_sole_data`). Every byte out, every event and every
//! counter must agree after every step. The same holds one level down,
//! for `ServerReactor::start_whole` against `ServerReactor::on_frame`.
//!
//! And one level up: a command lent to the executor by
//! `Lifecycle::on_frame_lending`, answered there (`answer_lent`) or
//! admitted (`admit_lent`), must leave everything as the `Event::Run` it
//! replaces would have, answered at the same point.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use std::time::{Duration, Instant};
use wiremux_proto::codec::FrameRun;
use wiremux_proto::flood::FloodLimits;
use wiremux_proto::human::format_frame;
use wiremux_proto::lifecycle::{Event, Lifecycle, LifecycleConfig, Token};
use wiremux_proto::server::{Action, Limits, ServerReactor, State};
use wiremux_proto::{decode_all, Flags, Frame, FrameCodec, FrameType, Request};

/// Request IDs: mostly odd ones reused often, one even.
const IDS: [u16; 5] = [1, 3, 5, 7, 2];
/// Command names: a plain one, one the lifecycle answers itself, and a
/// reserved one it refuses.
const NAMES: [&[u8]; 3] = [b"echo", b"@capabilities", b"@nosuch"];

#[derive(Debug, Clone)]
enum Step {
    /// Frames that arrive in one read.
    Read(Vec<Frame>),
    /// The executor answers the `k`-th run it holds (modulo how many).
    Answer { k: usize, fail: bool },
    /// Time passes.
    Tick(u64),
}

fn frame(id: u16, frame_type: FrameType, flags: u8, payload: Vec<u8>) -> Frame {
    Frame {
        request_id: id,
        frame_type,
        flags: Flags::new(flags),
        payload: Bytes::from(payload),
    }
}

/// An argument frame with `eoa` holding `a=` + value.
fn arg_frame(id: u16, value: Vec<u8>) -> Frame {
    named_arg_frame(id, b"a", &value)
}

/// An argument frame with `eoa` holding `name=value`.
fn named_arg_frame(id: u16, name: &[u8], value: &[u8]) -> Frame {
    let mut payload = (name.len() as u16).to_le_bytes().to_vec();
    payload.extend_from_slice(&(value.len() as u16).to_le_bytes());
    payload.extend_from_slice(name);
    payload.extend_from_slice(value);
    frame(id, FrameType::COMMAND_ARGUMENT, Flags::EOA, payload)
}

fn arb_id() -> impl Strategy<Value = u16> {
    prop::sample::select(&IDS[..])
}

fn arb_data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..24)
}

/// One or two frames: a command in the two-frame shape most often, else
/// something that looks like it and is not, or another kind of frame.
fn arb_frames() -> impl Strategy<Value = Vec<Frame>> {
    let name = prop::sample::select(&NAMES[..]);
    prop_oneof![
        6 => (arb_id(), name.clone(), arb_data()).prop_map(|(id, name, data)| vec![
            frame(id, FrameType::COMMAND_NAME, Flags::HAVE_DATA, name.to_vec()),
            frame(id, FrameType::COMMAND_DATA, Flags::DATA_EOS, data),
        ]),
        // The name frame alone; its data may come in a later read.
        1 => (arb_id(), name.clone()).prop_map(|(id, name)| vec![
            frame(id, FrameType::COMMAND_NAME, Flags::HAVE_DATA, name.to_vec()),
        ]),
        // The data frame of another ID, or with other flags.
        1 => (arb_id(), arb_id(), name.clone(), 0u8..4, arb_data()).prop_map(
            |(id, other, name, flags, data)| vec![
                frame(id, FrameType::COMMAND_NAME, Flags::HAVE_DATA, name.to_vec()),
                frame(other, FrameType::COMMAND_DATA, flags, data),
            ]
        ),
        // Other command-name flags.
        1 => (arb_id(), name.clone(), 0u8..16, arb_data()).prop_map(
            |(id, name, flags, data)| vec![
                frame(id, FrameType::COMMAND_NAME, flags, name.to_vec()),
                frame(id, FrameType::COMMAND_DATA, Flags::DATA_EOS, data),
            ]
        ),
        1 => (arb_id(), arb_data()).prop_map(|(id, value)| vec![arg_frame(id, value)]),
        // A command that runs after another ID's request (what that
        // request's end left behind decides it), its argument frame
        // perhaps in a later read.
        1 => (arb_id(), arb_id(), any::<bool>()).prop_map(|(id, after, whole)| {
            let name = frame(id, FrameType::COMMAND_NAME, Flags::HAVE_ARGS, b"echo".to_vec());
            let arg = named_arg_frame(id, b"@after", after.to_string().as_bytes());
            if whole { vec![name, arg] } else { vec![name] }
        }),
        1 => (arb_id(), arb_id()).prop_map(|(id, after)| {
            vec![named_arg_frame(id, b"@after", after.to_string().as_bytes())]
        }),
        1 => (arb_id(), 0u8..16, arb_data())
            .prop_map(|(id, flags, data)| vec![frame(id, FrameType::COMMAND_DATA, flags, data)]),
        1 => (arb_id(), 6u8..16).prop_map(|(id, t)| vec![frame(id, FrameType::new(t), 0, vec![])]),
    ]
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop::collection::vec(arb_frames(), 1..5)
            .prop_map(|groups| Step::Read(groups.concat())),
        3 => (any::<usize>(), prop::bool::weighted(0.2))
            .prop_map(|(k, fail)| Step::Answer { k, fail }),
        1 => (1u64..40).prop_map(Step::Tick),
    ]
}

fn arb_config() -> impl Strategy<Value = LifecycleConfig> {
    (
        1usize..4,
        0usize..40,
        0usize..60,
        any::<bool>(),
        prop::option::of(1u64..30),
        prop::bool::weighted(0.3),
    )
        .prop_map(
            |(
                max_receiving,
                max_request_bytes,
                max_connection_bytes,
                in_order,
                deadline,
                flood,
            )| {
                LifecycleConfig {
                    limits: Limits {
                        max_receiving,
                        max_request_bytes,
                        max_connection_bytes,
                        flood: if flood {
                            FloodLimits {
                                window: 8,
                                max_errors: 2,
                                max_cancelled: 2,
                                cancel_burst: 0,
                            }
                        } else {
                            FloodLimits::default()
                        },
                        ..Limits::default()
                    },
                    in_order,
                    request_deadline: deadline.map(Duration::from_millis),
                    ..LifecycleConfig::default()
                }
            },
        )
}

/// One lifecycle and the runs its executor holds.
struct Side {
    lc: Lifecycle,
    held: Vec<(Token, Bytes)>,
}

impl Side {
    fn new(config: &LifecycleConfig) -> Side {
        Side {
            lc: Lifecycle::new(config.clone()),
            held: Vec::new(),
        }
    }

    /// What came out since the last look: the bytes, the events, the
    /// counters and the counts, as text.
    fn observe(&mut self) -> String {
        let mut seen = Vec::new();
        while let Some(event) = self.lc.poll_event() {
            seen.push(format!("{event:?}"));
            match event {
                Event::Run(token, request) => {
                    self.held.push((token, request.data.unwrap_or_default()));
                }
                Event::Cancel(token) => self.held.retain(|(t, _)| *t != token),
            }
        }
        let out = self.lc.poll_transmit(usize::MAX).split().freeze();
        let out: Vec<String> = decode_all(&out).unwrap().iter().map(format_frame).collect();
        format!(
            "out {out:?}\nevents {seen:?}\ncounters {:?}\nfailed {} executing {} receiving {} in flight {} kept {}",
            self.lc.take_counters(),
            self.lc.is_failed(),
            self.lc.executing(),
            self.lc.receiving(),
            self.lc.in_flight(),
            self.lc.kept_bytes(),
        )
    }

    fn answer(&mut self, k: usize, fail: bool) {
        if self.held.is_empty() {
            return;
        }
        let (token, data) = self.held.remove(k % self.held.len());
        if fail {
            self.lc.on_error(token, "failed");
        } else {
            self.lc.on_body(token, data);
        }
    }
}

/// Runs `steps` through both sides, comparing after each; returns how many
/// pairs the paired side was handed in one call, and what was observed
/// after each step.
fn run(config: LifecycleConfig, steps: Vec<Step>) -> (usize, Vec<String>) {
    let t0 = Instant::now();
    let mut now = t0;
    let (mut single, mut paired) = (Side::new(&config), Side::new(&config));
    let (mut codec, mut run, mut buf) = (FrameCodec::new(), FrameRun::default(), BytesMut::new());
    let (mut pairs, mut seen) = (0, Vec::new());
    for (n, step) in steps.iter().enumerate() {
        match step {
            Step::Read(frames) => {
                for frame in frames {
                    single.lc.on_frame(frame.clone(), now);
                    frame.encode(&mut buf);
                }
                while let Some(frame) = codec.decode_batched(&mut run, &mut buf).unwrap() {
                    match run.take_sole_data(&frame) {
                        Some(data) => {
                            pairs += 1;
                            paired.lc.on_name_and_data(frame, data, now);
                        }
                        None => paired.lc.on_frame(frame, now),
                    }
                }
            }
            Step::Answer { k, fail } => {
                single.answer(*k, *fail);
                paired.answer(*k, *fail);
            }
            Step::Tick(ms) => {
                now += Duration::from_millis(*ms);
                single.lc.handle_timeout(now);
                paired.lc.handle_timeout(now);
            }
        }
        let (one, other) = (single.observe(), paired.observe());
        assert_eq!(one, other, "after step {n}: {step:?}");
        seen.push(one);
    }
    (pairs, seen)
}

fn pair(id: u16, name: &[u8], data: &[u8]) -> Vec<Frame> {
    vec![
        frame(id, FrameType::COMMAND_NAME, Flags::HAVE_DATA, name.to_vec()),
        frame(id, FrameType::COMMAND_DATA, Flags::DATA_EOS, data.to_vec()),
    ]
}

#[test]
fn pairs_read_together_are_taken_together_and_answered_alike() {
    let answer = |k| Step::Answer { k, fail: false };
    let steps = vec![
        Step::Read([pair(1, b"echo", b"a"), pair(3, b"echo", b"")].concat()),
        answer(1),
        answer(0),
        // The second command on 1 reuses an ID still in flight.
        Step::Read([pair(1, b"echo", b"b"), pair(1, b"echo", b"c")].concat()),
    ];
    let (pairs, seen) = run(LifecycleConfig::default(), steps);
    assert_eq!(pairs, 4);
    assert!(seen[0].starts_with("out []\nevents [\"Run("), "{}", seen[0]);
    assert!(
        seen[0].contains("frames_in: 4, requests_started: 2,"),
        "{}",
        seen[0]
    );
    assert!(
        seen[1].starts_with(r#"out ["3 bytes-response eos "]"#),
        "{}",
        seen[1]
    );
    assert!(
        seen[2].starts_with(r#"out ["1 bytes-response eos a"]"#),
        "{}",
        seen[2]
    );
    assert!(
        seen[3].starts_with(
            "out [\"1 error-response protocol request 1: \
             command-name frame for an ID whose command is still running\"]"
        ),
        "{}",
        seen[3]
    );
    assert!(seen[3].contains("failed true"), "{}", seen[3]);

    // Over the per-request limit: refused as the frames would be.
    let tight = LifecycleConfig {
        limits: Limits {
            max_request_bytes: 1,
            ..Limits::default()
        },
        ..LifecycleConfig::default()
    };
    let steps = vec![Step::Read(
        [pair(1, b"echo", b"ab"), pair(3, b"echo", b"a")].concat(),
    )];
    let (pairs, seen) = run(tight, steps);
    assert_eq!(pairs, 2);
    assert!(
        seen[0].starts_with(
            r#"out ["1 error-response application request 1: more than 1 bytes of arguments and data"]"#
        ),
        "{}",
        seen[0]
    );
    assert!(seen[0].contains("executing 1"), "{}", seen[0]);
}

/// The same for the reactor alone: `ServerReactor::start_whole` must
/// accept exactly the pairs `on_frame` would take as a running request,
/// and leave the reactor as the two frames would.
fn run_reactor(limits: Limits, steps: Vec<Step>) {
    let (mut single, mut paired) = (
        ServerReactor::with_limits(limits.clone()),
        ServerReactor::with_limits(limits),
    );
    // Requests running, in the order they started: the same on both.
    let mut running: Vec<u16> = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        let (mut one, mut other) = (Vec::new(), Vec::new());
        match step {
            Step::Read(frames) => {
                for frame in frames {
                    one.push(single.on_frame(frame.clone()));
                }
                let mut rest = frames.iter().peekable();
                while let Some(frame) = rest.next() {
                    let sole = rest.peek().is_some_and(|data| {
                        frame.frame_type == FrameType::COMMAND_NAME
                            && frame.flags.bits() == Flags::HAVE_DATA
                            && data.request_id == frame.request_id
                            && data.frame_type == FrameType::COMMAND_DATA
                            && data.flags.bits() == Flags::DATA_EOS
                    });
                    if sole {
                        let data = rest.next().unwrap();
                        if paired.start_whole(frame, data) {
                            other.push(Action::WantFrame {
                                state: State::CommandReceiving,
                            });
                            other.push(Action::RunCommand(Request {
                                request_id: frame.request_id,
                                name: frame.payload.clone(),
                                args: Vec::new(),
                                data: Some(data.payload.clone()),
                                deadline: None,
                            }));
                        } else {
                            other.push(paired.on_frame(frame.clone()));
                            other.push(paired.on_frame(data.clone()));
                        }
                    } else {
                        // Any other two frames are not started together.
                        if let Some(next) = rest.peek() {
                            assert!(!paired.start_whole(frame, next), "{frame:?} {next:?}");
                        }
                        other.push(paired.on_frame(frame.clone()));
                    }
                }
                for action in &one {
                    if let Action::RunCommand(request) = action {
                        running.push(request.request_id);
                    }
                }
            }
            Step::Answer { k, .. } => {
                if !running.is_empty() {
                    let id = running.remove(k % running.len());
                    single.on_response_finished(id);
                    paired.on_response_finished(id);
                }
            }
            Step::Tick(_) => {}
        }
        let state = |r: &ServerReactor| (r.state(), r.receiving(), r.active(), r.buffered_bytes());
        assert_eq!(one, other, "after step {n}: {step:?}");
        assert_eq!(state(&single), state(&paired), "after step {n}: {step:?}");
    }
}

/// One lifecycle fed as the engine feeds it, with an executor that starts
/// every command as soon as the frame that completes it is taken: one
/// whose data has a length of 0 modulo 3 answers with its data at once,
/// 1 fails at once, 2 goes on (held until an `Answer` step).
struct Feeder {
    side: Side,
    codec: FrameCodec,
    run: FrameRun,
    buf: BytesMut,
    /// Every command started and every stop, in order.
    log: Vec<String>,
    lending: bool,
    lent: usize,
}

impl Feeder {
    fn new(config: &LifecycleConfig, lending: bool) -> Feeder {
        Feeder {
            side: Side::new(config),
            codec: FrameCodec::new(),
            run: FrameRun::default(),
            buf: BytesMut::new(),
            log: Vec::new(),
            lending,
            lent: 0,
        }
    }

    fn read(&mut self, frames: &[Frame], now: Instant) {
        frames.iter().for_each(|frame| frame.encode(&mut self.buf));
        while let Some(frame) = self
            .codec
            .decode_batched(&mut self.run, &mut self.buf)
            .unwrap()
        {
            if !self.lending {
                self.side.lc.on_frame_in_run(frame, &mut self.run, now);
            } else if let Some((token, request)) =
                self.side.lc.on_frame_lending(frame, &mut self.run, now)
            {
                self.lent += 1;
                self.start(token, request, true);
            }
            self.run_events();
        }
    }

    fn run_events(&mut self) {
        while let Some(event) = self.side.lc.poll_event() {
            match event {
                Event::Run(token, request) => self.start(token, request, false),
                Event::Cancel(token) => {
                    self.log.push(format!("{event:?}"));
                    self.side.held.retain(|(t, _)| *t != token);
                }
            }
        }
    }

    fn start(&mut self, token: Token, request: Request, lent: bool) {
        self.log.push(format!("Run({token:?}, {request:?})"));
        let data = request.data.unwrap_or_default();
        let lc = &mut self.side.lc;
        match data.len() % 3 {
            0 if lent => lc.answer_lent(token, data),
            0 => lc.on_body(token, data),
            n => {
                if lent {
                    lc.admit_lent(token);
                }
                if n == 1 {
                    lc.on_error(token, "failed at its start");
                } else {
                    self.side.held.push((token, data));
                }
            }
        }
    }
}

/// Runs `steps` through a lifecycle whose commands come out as events and
/// one that lends them, comparing after each step; returns how many were
/// lent, and what was observed after each step.
fn run_lending(config: LifecycleConfig, steps: Vec<Step>) -> (usize, Vec<String>) {
    let t0 = Instant::now();
    let mut now = t0;
    let (mut events, mut lending) = (Feeder::new(&config, false), Feeder::new(&config, true));
    let mut seen = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        for feeder in [&mut events, &mut lending] {
            match step {
                Step::Read(frames) => feeder.read(frames, now),
                Step::Answer { k, fail } => feeder.side.answer(*k, *fail),
                Step::Tick(ms) => feeder
                    .side
                    .lc
                    .handle_timeout(now + Duration::from_millis(*ms)),
            }
            feeder.run_events();
        }
        if let Step::Tick(ms) = step {
            now += Duration::from_millis(*ms);
        }
        let (one, other) = (events.side.observe(), lending.side.observe());
        assert_eq!(one, other, "after step {n}: {step:?}");
        assert_eq!(events.log, lending.log, "after step {n}: {step:?}");
        assert_eq!(
            events.side.held, lending.side.held,
            "after step {n}: {step:?}"
        );
        seen.push(one);
    }
    assert_eq!(events.lent, 0);
    (lending.lent, seen)
}

#[test]
fn a_lent_command_is_answered_as_its_event_would_be() {
    let steps = vec![
        // Answered at once, fails at once, goes on; then a reserved name,
        // which is not lent.
        Step::Read(
            [
                pair(1, b"echo", b""),
                pair(3, b"echo", b"a"),
                pair(5, b"echo", b"ab"),
                pair(7, b"@capabilities", b""),
            ]
            .concat(),
        ),
        // What the lent ones left behind: 1 ended, 3 failed.
        Step::Read(vec![
            frame(
                9,
                FrameType::COMMAND_NAME,
                Flags::HAVE_ARGS,
                b"echo".to_vec(),
            ),
            named_arg_frame(9, b"@after", b"1"),
            frame(
                11,
                FrameType::COMMAND_NAME,
                Flags::HAVE_ARGS,
                b"echo".to_vec(),
            ),
            named_arg_frame(11, b"@after", b"3"),
        ]),
        // A request still arriving cannot name one that began after it,
        // lent and answered meanwhile.
        Step::Read(vec![frame(
            13,
            FrameType::COMMAND_NAME,
            Flags::HAVE_ARGS,
            b"echo".to_vec(),
        )]),
        Step::Read(pair(15, b"echo", b"")),
        Step::Read(vec![named_arg_frame(13, b"@after", b"15")]),
        // The running one's ID is refused, as it would be.
        Step::Read(pair(5, b"echo", b"")),
    ];
    let (lent, seen) = run_lending(LifecycleConfig::default(), steps.clone());
    assert_eq!(lent, 4);
    assert!(
        seen[0].starts_with(
            "out [\"1 bytes-response eos \", \"3 error-response application failed at its start\", \
             \"7 bytes-response eos "
        ),
        "{}",
        seen[0]
    );
    assert!(seen[0].contains("executing 1 "), "{}", seen[0]);
    assert!(
        seen[1].starts_with(
            "out [\"9 bytes-response eos \", \"11 error-response application dependency 3 failed\"]"
        ),
        "{}",
        seen[1]
    );
    assert!(
        seen[3].starts_with(r#"out ["15 bytes-response eos "]"#),
        "{}",
        seen[3]
    );
    assert!(
        seen[4].starts_with(r#"out ["13 error-response application unknown dependency 15"]"#),
        "{}",
        seen[4]
    );
    assert!(seen[5].contains("failed true"), "{}", seen[5]);
    let mut small = LifecycleConfig::default();
    small.limits.max_send_payload = 2;
    let big = vec![Step::Read(pair(1, b"echo", b"abc"))];
    // A body of more than a frame is admitted and framed as usual.
    let (lent, seen) = run_lending(small, big);
    assert_eq!(lent, 1);
    assert!(
        seen[0]
            .starts_with(r#"out ["1 bytes-response continuation ab", "1 bytes-response eos c"]"#),
        "{}",
        seen[0]
    );
    let in_order = LifecycleConfig {
        in_order: true,
        ..LifecycleConfig::default()
    };
    assert_eq!(
        run_lending(in_order, steps).0,
        0,
        "in-order mode lends nothing"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_lent_command_decides_what_its_event_would_have(
        mut config in arb_config(),
        small_frames in prop::bool::weighted(0.3),
        steps in prop::collection::vec(arb_step(), 1..40),
    ) {
        if small_frames {
            config.limits.max_send_payload = 4;
        }
        run_lending(config, steps);
    }

    #[test]
    fn the_reactor_starts_a_whole_command_as_its_two_frames_would(
        config in arb_config(),
        steps in prop::collection::vec(arb_step(), 1..40),
    ) {
        run_reactor(config.limits, steps);
    }

    #[test]
    fn a_two_frame_command_taken_in_one_step_is_the_same_as_frame_by_frame(
        config in arb_config(),
        steps in prop::collection::vec(arb_step(), 1..40),
    ) {
        run(config, steps);
    }
}
