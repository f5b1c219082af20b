//! Property tests of the decoder and the server reactor together:
//! - random commands, interleaved at random and cut into pieces at random,
//!   come out of the reactor exactly as they went into the builder;
//! - arbitrary bytes and arbitrary frame sequences never panic either;
//! - the reactor agrees, action by action, with a plain reference model.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use wiremux_proto::builder::CommandBuilder;
use wiremux_proto::flood::FloodLimits;
use wiremux_proto::server::{Action, ErrorKind, Limits, Scope, ServerReactor, State};
use wiremux_proto::Request;
use wiremux_proto::{Flags, Frame, FrameCodec, FrameType};

// ------------------------------------------------ random commands, interleaved

/// One command: a name, arguments with distinct names, maybe data.
#[derive(Debug, Clone)]
struct Spec {
    name: Vec<u8>,
    args: BTreeMap<Vec<u8>, Vec<u8>>,
    data: Option<Vec<u8>>,
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    (
        prop::collection::vec(any::<u8>(), 0..12),
        prop::collection::btree_map(
            prop::collection::vec(any::<u8>(), 0..8),
            prop::collection::vec(any::<u8>(), 0..200),
            0..5,
        ),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..300)),
    )
        .prop_map(|(name, args, data)| Spec { name, args, data })
}

/// The largest frame payload: small enough that values and data span many
/// frames (at least 4 + the longest argument name), or the usual 32768.
fn arb_max_payload() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 12usize..40, 1 => Just(32768usize)]
}

/// Merges per-request frame lists into one stream, keeping each request's
/// own order; `choices` pick which request goes next.
fn interleave(mut queues: Vec<Vec<Frame>>, choices: &[usize]) -> Vec<Frame> {
    for q in &mut queues {
        q.reverse();
    }
    let mut out = Vec::new();
    let mut n = 0;
    loop {
        queues.retain(|q| !q.is_empty());
        if queues.is_empty() {
            return out;
        }
        let pick = choices.get(n).copied().unwrap_or(0) % queues.len();
        n += 1;
        out.push(queues[pick].pop().expect("non-empty"));
    }
}

/// Feeds `wire` cut at `cuts` through a codec into `reactor`; returns every
/// action, and checks the codec consumed everything.
fn feed_stream(reactor: &mut ServerReactor, wire: &[u8], cuts: &[usize]) -> Vec<Action> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.push(wire.len());
    cuts.sort_unstable();
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let mut actions = Vec::new();
    let mut at = 0;
    for cut in cuts {
        buf.extend_from_slice(&wire[at..cut]);
        at = cut;
        while let Some(frame) = codec.decode_frame(&mut buf).expect("valid stream") {
            actions.push(reactor.on_frame(frame));
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    actions
}

proptest! {
    #[test]
    fn interleaved_commands_come_out_exactly(
        specs in prop::collection::vec(arb_spec(), 1..8),
        id_seeds in prop::collection::btree_set(0u16..32768, 8),
        max in arb_max_payload(),
        choices in prop::collection::vec(any::<usize>(), 0..400),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let ids: Vec<u16> = id_seeds.iter().map(|s| s * 2 + 1).collect();
        let mut expected = BTreeMap::new();
        let mut queues = Vec::new();
        for (spec, &id) in specs.iter().zip(&ids) {
            let mut builder = CommandBuilder::new(spec.name.clone());
            for (n, v) in &spec.args {
                builder = builder.arg(n.clone(), v.clone());
            }
            if let Some(data) = &spec.data {
                builder = builder.data(data.clone());
            }
            queues.push(builder.frames(id, max).expect("buildable"));
            expected.insert(id, Request {
                request_id: id,
                name: Bytes::from(spec.name.clone()),
                // The builder sends arguments sorted by name, and they keep
                // their arrival order.
                args: spec.args.iter().map(|(n, v)| (Bytes::from(n.clone()), Bytes::from(v.clone()))).collect(),
                data: spec.data.clone().map(Bytes::from),
                deadline: None,
            });
        }
        let mut wire = Vec::new();
        for frame in interleave(queues, &choices) {
            prop_assert!(frame.payload.len() <= max);
            frame.encode(&mut wire);
        }
        let mut reactor = ServerReactor::new();
        let mut got = BTreeMap::new();
        for action in feed_stream(&mut reactor, &wire, &cuts) {
            match action {
                Action::WantFrame { state } => prop_assert_eq!(state, State::CommandReceiving),
                Action::RunCommand(cmd) => {
                    let previous = got.insert(cmd.request_id, cmd);
                    prop_assert!(previous.is_none(), "a request ran twice");
                }
                other => prop_assert!(false, "unexpected action {:?}", other),
            }
        }
        prop_assert_eq!(got, expected);
        prop_assert_eq!(reactor.on_input_eof(), Action::Noop);
        prop_assert_eq!((reactor.receiving(), reactor.buffered_bytes()), (0, 0));
        prop_assert_eq!(reactor.active(), specs.len());
    }
}

// --------------------------------------------------------------- never panic

fn small_limits() -> Limits {
    Limits {
        max_receiving: 3,
        max_args: 2,
        max_request_bytes: 40,
        max_connection_bytes: 64,
        max_send_payload: 8,
        max_discard_bytes: 48,
        flood: FloodLimits {
            window: 8,
            max_errors: 2,
            max_cancelled: 2,
            cancel_burst: 0,
        },
    }
}

/// A frame with a small request ID, any type and flags, and a payload that
/// is sometimes a well-formed argument.
fn arb_any_frame() -> impl Strategy<Value = Frame> {
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..24),
        (
            "[a-c]{0,2}",
            prop::collection::vec(any::<u8>(), 0..8),
            0u16..12
        )
            .prop_map(|(name, value, declared)| {
                let mut p = (name.len() as u16).to_le_bytes().to_vec();
                p.extend_from_slice(&declared.to_le_bytes());
                p.extend_from_slice(name.as_bytes());
                p.extend_from_slice(&value);
                p
            }),
    ];
    (0u16..8, 0u8..8, 0u8..16, payload)
        .prop_map(|(id, t, f, p)| Frame::new(id, FrameType::new(t), Flags::new(f), p))
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_the_decoder_or_the_reactor(
        input in prop::collection::vec(any::<u8>(), 0..3000),
        defer in any::<bool>(),
    ) {
        let mut codec = FrameCodec::new().max_recv_payload(256);
        let mut reactor = ServerReactor::with_limits(small_limits()).defer_output(defer);
        let mut buf = BytesMut::from(&input[..]);
        while let Ok(Some(frame)) = codec.decode_frame_eof(&mut buf) {
            if let Action::RunCommand(cmd) = reactor.on_frame(frame) {
                let _ = reactor.on_bytes_response(cmd.request_id, Bytes::from_static(b"a response"));
            }
        }
        let _ = reactor.on_input_eof();
        prop_assert_eq!(reactor.receiving(), 0);
    }

    #[test]
    fn arbitrary_frame_sequences_never_panic_the_reactor(
        frames in prop::collection::vec((arb_any_frame(), any::<bool>()), 0..60),
        defer in any::<bool>(),
    ) {
        let limits = small_limits();
        let mut reactor = ServerReactor::with_limits(limits.clone()).defer_output(defer);
        let mut running = Vec::new();
        for (frame, finish_one) in frames {
            if finish_one && !running.is_empty() {
                let id = running.remove(0);
                let _ = reactor.on_application_error(id, "done");
            }
            match reactor.on_frame(frame) {
                Action::RunCommand(cmd) => {
                    prop_assert!(cmd.request_id % 2 == 1);
                    prop_assert!(cmd.args.len() <= limits.max_args);
                    running.push(cmd.request_id);
                }
                Action::Error(err) if err.scope() == Scope::Connection => {
                    prop_assert_eq!(reactor.state(), State::Errored);
                }
                Action::SendFrames(_) => prop_assert!(false, "frames to send after a frame"),
                _ => {}
            }
            prop_assert!(reactor.receiving() <= limits.max_receiving);
            prop_assert!(reactor.buffered_bytes() <= limits.max_connection_bytes);
            prop_assert_eq!(reactor.active(), running.len());
        }
        let _ = reactor.on_input_eof();
        prop_assert_eq!((reactor.receiving(), reactor.buffered_bytes()), (0, 0));
    }
}

// ------------------------------------------------------------ the model

/// What the model knows of one request ID.
#[derive(Debug, Clone, PartialEq)]
enum Model {
    /// Arguments (`in_data == false`) or data are still arriving.
    Receiving {
        command: Vec<u8>,
        have_data: bool,
        in_data: bool,
    },
    /// Complete and running until its response is finished.
    Active,
    /// Failed; dropping frames until the one that ends the request, and
    /// counting the bytes dropped (headers too).
    Discarding { have_data: bool, dropped: usize },
}

/// What the model expects of an action.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    Want(State),
    Run { id: u16, command: Vec<u8> },
    Error { id: u16, scope: Scope },
    Noop,
}

/// The flood rule, written out plainly: allowances in 1/window units.
#[derive(Debug)]
struct ModelFlood {
    window: u64,
    max_errors: u64,
    max_cancelled: u64,
    errors_left: u64,
    cancelled_left: u64,
}

impl ModelFlood {
    fn new(limits: FloodLimits) -> ModelFlood {
        let window = u64::from(limits.window.max(1));
        let (max_errors, max_cancelled) = (
            u64::from(limits.max_errors),
            u64::from(limits.max_cancelled),
        );
        ModelFlood {
            window,
            max_errors,
            max_cancelled,
            errors_left: max_errors * window,
            cancelled_left: max_cancelled * window,
        }
    }

    fn started(&mut self) {
        self.errors_left = (self.errors_left + self.max_errors).min(self.max_errors * self.window);
        self.cancelled_left =
            (self.cancelled_left + self.max_cancelled).min(self.max_cancelled * self.window);
    }

    /// Whether one more is allowed; spends it if so.
    fn spend(left: &mut u64, max: u64, window: u64) -> bool {
        if max == 0 {
            return true;
        }
        if *left < window {
            return false;
        }
        *left -= window;
        true
    }
}

#[derive(Debug)]
struct ModelReactor {
    requests: BTreeMap<u16, Model>,
    errored: bool,
    max_discard_bytes: usize,
    flood: ModelFlood,
}

impl Default for ModelReactor {
    fn default() -> Self {
        ModelReactor::with_limits(&Limits::default())
    }
}

impl ModelReactor {
    /// A model of a reactor with `limits`; only the discard and flood
    /// limits may differ from the defaults (the steps never reach the
    /// others).
    fn with_limits(limits: &Limits) -> ModelReactor {
        ModelReactor {
            requests: BTreeMap::new(),
            errored: false,
            max_discard_bytes: limits.max_discard_bytes,
            flood: ModelFlood::new(limits.flood),
        }
    }

    /// A frame for a request being discarded: dropped, or a connection
    /// error once the request has dropped more than the limit; `ends`
    /// says whether it is the request's last frame.
    fn drop_frame(&mut self, frame: &Frame, ends: bool) -> Expect {
        let id = frame.request_id;
        let Some(Model::Discarding { dropped, .. }) = self.requests.get_mut(&id) else {
            unreachable!("only for requests being discarded")
        };
        *dropped += 6 + frame.payload.len();
        if *dropped > self.max_discard_bytes {
            return self.connection_error(id);
        }
        if ends {
            self.requests.remove(&id);
        }
        Expect::Noop
    }

    /// `on_cancelled`: whether the cancellation limit allows it.
    fn on_cancelled(&mut self) -> bool {
        let f = &mut self.flood;
        let ok = ModelFlood::spend(&mut f.cancelled_left, f.max_cancelled, f.window);
        if !ok {
            self.errored = true;
        }
        ok
    }

    fn state(&self) -> State {
        if self.errored {
            State::Errored
        } else if self
            .requests
            .values()
            .any(|m| matches!(m, Model::Receiving { .. }))
        {
            State::CommandReceiving
        } else {
            State::Idle
        }
    }

    fn want(&self) -> Expect {
        Expect::Want(self.state())
    }

    fn connection_error(&mut self, id: u16) -> Expect {
        self.errored = true;
        Expect::Error {
            id,
            scope: Scope::Connection,
        }
    }

    /// A request-level error: the request is dropped; if the failing frame
    /// was not its last, its later frames are discarded.
    fn request_error(&mut self, id: u16, have_data: bool, was_last: bool) -> Expect {
        let f = &mut self.flood;
        if !ModelFlood::spend(&mut f.errors_left, f.max_errors, f.window) {
            // The request is refused all the same, and then the connection.
            self.requests.remove(&id);
            return self.connection_error(id);
        }
        if was_last {
            self.requests.remove(&id);
        } else {
            self.requests.insert(
                id,
                Model::Discarding {
                    have_data,
                    dropped: 0,
                },
            );
        }
        Expect::Error {
            id,
            scope: Scope::Request,
        }
    }

    fn on_frame(&mut self, frame: &Frame) -> Expect {
        let id = frame.request_id;
        let flags = frame.flags.bits();
        if self.errored {
            return self.connection_error(id);
        }
        match frame.frame_type {
            FrameType::COMMAND_NAME => {
                if id % 2 == 0 {
                    return self.connection_error(id);
                }
                if matches!(
                    self.requests.get(&id),
                    Some(Model::Receiving { .. } | Model::Active)
                ) {
                    return self.connection_error(id);
                }
                self.flood.started();
                let command = frame.payload.to_vec();
                match flags {
                    1 => {
                        self.requests.insert(id, Model::Active);
                        Expect::Run { id, command }
                    }
                    2 | 4 | 6 => {
                        self.requests.insert(
                            id,
                            Model::Receiving {
                                command,
                                have_data: flags & 4 != 0,
                                in_data: flags == 4,
                            },
                        );
                        self.want()
                    }
                    // No flag, or eos with something announced: the request
                    // fails, and what it announced is dropped.
                    _ => self.request_error(id, flags & 4 != 0, false),
                }
            }
            FrameType::COMMAND_ARGUMENT => {
                // The generator only makes well-formed single-frame
                // arguments with eoa.
                match self.requests.get(&id).cloned() {
                    None | Some(Model::Active) => self.connection_error(id),
                    Some(Model::Discarding { have_data, .. }) => self.drop_frame(frame, !have_data),
                    Some(Model::Receiving {
                        command,
                        have_data,
                        in_data,
                    }) => {
                        if in_data {
                            self.request_error(id, have_data, false)
                        } else if have_data {
                            self.requests.insert(
                                id,
                                Model::Receiving {
                                    command,
                                    have_data,
                                    in_data: true,
                                },
                            );
                            self.want()
                        } else {
                            self.requests.insert(id, Model::Active);
                            Expect::Run { id, command }
                        }
                    }
                }
            }
            FrameType::COMMAND_DATA => {
                let eos = flags == 2;
                match self.requests.get(&id).cloned() {
                    None | Some(Model::Active) => self.connection_error(id),
                    Some(Model::Discarding { .. }) => self.drop_frame(frame, eos),
                    Some(Model::Receiving {
                        command,
                        have_data,
                        in_data,
                    }) => {
                        if !in_data {
                            self.request_error(id, have_data, eos)
                        } else if eos {
                            self.requests.insert(id, Model::Active);
                            Expect::Run { id, command }
                        } else {
                            self.want()
                        }
                    }
                }
            }
            // Response frames are defined types, just not for a client to
            // send: wrong for a request being received, dropped for one
            // being discarded.
            FrameType::BYTES_RESPONSE | FrameType::ERROR_RESPONSE => {
                match self.requests.get(&id).cloned() {
                    None | Some(Model::Active) => self.connection_error(id),
                    Some(Model::Discarding { .. }) => self.drop_frame(frame, false),
                    Some(Model::Receiving { have_data, .. }) => {
                        self.request_error(id, have_data, false)
                    }
                }
            }
            _ => self.connection_error(id),
        }
    }

    fn on_response_finished(&mut self, id: u16) {
        if self.requests.get(&id) == Some(&Model::Active) {
            self.requests.remove(&id);
        }
    }

    /// The IDs still receiving at end of input, which the reactor must report.
    fn on_input_eof(&mut self) -> Vec<u16> {
        let ids = self
            .requests
            .iter()
            .filter(|(_, m)| matches!(m, Model::Receiving { .. }))
            .map(|(id, _)| *id)
            .collect();
        self.requests.retain(|_, m| *m == Model::Active);
        ids
    }
}

#[derive(Debug, Clone)]
enum Step {
    Frame(Frame),
    Finished(u16),
    Cancelled(u16),
}

fn arb_step() -> impl Strategy<Value = Step> {
    let id = || 0u16..8;
    prop_oneof![
        // command-name: valid flag sets and invalid ones.
        3 => (id(), prop::sample::select(vec![1u8, 2, 4, 6, 1, 2, 4, 6, 0, 3, 5, 7]), "[a-z]{0,4}")
            .prop_map(|(id, f, name)| Step::Frame(Frame::new(id, FrameType::COMMAND_NAME, Flags::new(f), name))),
        // A well-formed argument with eoa.
        3 => (id(), "[a-c]", "[a-z]{0,3}").prop_map(|(id, name, value)| {
            let mut p = vec![name.len() as u8, 0, value.len() as u8, 0];
            p.extend_from_slice(name.as_bytes());
            p.extend_from_slice(value.as_bytes());
            Step::Frame(Frame::new(id, FrameType::COMMAND_ARGUMENT, Flags::new(Flags::EOA), p))
        }),
        // Data with eos or continuation.
        3 => (id(), any::<bool>(), "[a-z]{0,3}").prop_map(|(id, eos, data)| {
            let f = if eos { Flags::DATA_EOS } else { Flags::CONTINUATION };
            Step::Frame(Frame::new(id, FrameType::COMMAND_DATA, Flags::new(f), data))
        }),
        2 => id().prop_map(Step::Finished),
        1 => id().prop_map(Step::Cancelled),
        // Types a client must not send, or that are not defined.
        1 => (id(), prop::sample::select(vec![0u8, 4, 5, 6, 15]))
            .prop_map(|(id, t)| Step::Frame(Frame::new(id, FrameType::new(t), Flags::new(2), "x"))),
    ]
}

fn observe(action: &Action) -> Expect {
    match action {
        Action::WantFrame { state } => Expect::Want(*state),
        Action::RunCommand(cmd) => Expect::Run {
            id: cmd.request_id,
            command: cmd.name.to_vec(),
        },
        Action::Error(err) => Expect::Error {
            id: err.request_id,
            scope: err.scope(),
        },
        Action::Noop => Expect::Noop,
        Action::SendFrames(frames) => panic!("frames to send after a frame: {frames:?}"),
    }
}

/// Runs `steps` through a reactor with `limits` and through the model,
/// comparing every action.
fn agree_with_the_model(limits: &Limits, steps: &[Step]) -> Result<(), TestCaseError> {
    let mut reactor = ServerReactor::with_limits(limits.clone());
    let mut model = ModelReactor::with_limits(limits);
    for (n, step) in steps.iter().enumerate() {
        match step {
            Step::Frame(frame) => {
                let expected = model.on_frame(frame);
                let got = observe(&reactor.on_frame(frame.clone()));
                prop_assert_eq!(got, expected, "step {} {:?}", n, frame);
            }
            Step::Finished(id) => {
                reactor.on_response_finished(*id);
                model.on_response_finished(*id);
            }
            Step::Cancelled(id) => {
                let got = reactor.on_cancelled(*id);
                prop_assert_eq!(
                    got.is_ok(),
                    model.on_cancelled(),
                    "step {} cancel {}",
                    n,
                    id
                );
                if let Err(err) = got {
                    prop_assert_eq!(err.scope(), Scope::Connection);
                }
            }
        }
        prop_assert_eq!(reactor.state(), model.state());
        let active = model
            .requests
            .values()
            .filter(|m| **m == Model::Active)
            .count();
        prop_assert_eq!(reactor.active(), active);
    }
    let incomplete = model.on_input_eof();
    match reactor.on_input_eof() {
        Action::Noop => prop_assert!(incomplete.is_empty(), "missed {:?}", incomplete),
        Action::Error(err) => {
            prop_assert_eq!(err.scope(), Scope::Request);
            let ErrorKind::IncompleteAtEof(list) = &err.kind else {
                panic!("unexpected error at eof: {err}");
            };
            let ids: Vec<u16> = list.iter().map(|(id, _)| *id).collect();
            prop_assert_eq!(ids, incomplete);
            prop_assert_eq!(err.frames(32768).len(), list.len());
        }
        other => prop_assert!(false, "unexpected {:?} at eof", other),
    }
    prop_assert_eq!(reactor.receiving(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn reactor_agrees_with_the_model(steps in prop::collection::vec(arb_step(), 0..80)) {
        agree_with_the_model(&Limits::default(), &steps)?;
    }

    /// Limits the steps reach: a refused request may drop 24 bytes (two or
    /// three small frames), and a burst of 2 errors or 2 cancellations is
    /// allowed, then one per 3 requests started.
    #[test]
    fn reactor_agrees_with_the_model_at_the_discard_and_flood_limits(
        steps in prop::collection::vec(arb_step(), 0..80),
        max_discard_bytes in 0usize..30,
        max_errors in 0u32..4,
        max_cancelled in 0u32..4,
    ) {
        let limits = Limits {
            max_discard_bytes,
            flood: FloodLimits { window: 6, max_errors, max_cancelled, cancel_burst: 0 },
            ..Limits::default()
        };
        agree_with_the_model(&limits, &steps)?;
    }
}

/// The model's ID space: IDs reused after their response, all at once, are
/// never mixed up. (A fixed case the generator reaches only by chance.)
#[test]
fn model_and_reactor_agree_on_heavy_id_reuse() {
    let mut reactor = ServerReactor::new();
    let mut model = ModelReactor::default();
    let ids: BTreeSet<u16> = (0..200).map(|i| i * 2 + 1).collect();
    for round in 0..3u8 {
        for &id in &ids {
            let frame = Frame::new(
                id,
                FrameType::COMMAND_NAME,
                Flags::new(Flags::EOS),
                vec![round],
            );
            assert_eq!(
                observe(&reactor.on_frame(frame.clone())),
                model.on_frame(&frame)
            );
        }
        for &id in &ids {
            reactor.on_response_finished(id);
            model.on_response_finished(id);
        }
        assert_eq!(reactor.active(), 0);
    }
}
