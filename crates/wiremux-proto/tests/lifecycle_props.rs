//! Property test of the request lifecycle (PROTOCOL.md section 8) over
//! random dependency graphs of random requests, with random outcomes
//! (body, error, stream), cancellations, deadlines (`@deadline`, the
//! server's own per-request deadline, or both), malformed reserved
//! arguments, a small dependency limit, and requests whose frames arrive
//! in two parts, against a plain reference model.
//!
//! After every step the test checks that:
//! - what the lifecycle runs and stops (`Event::Run` with its arguments,
//!   `Event::Cancel`) is what the model decides;
//! - the requests that end, and how (bytes, then success or the exact
//!   error text), are what the model decides;
//! - no request is run before every request it depends on has its
//!   terminal frame out, and none gets a second terminal frame.
//!
//! At the end every request begun has exactly one terminal frame.
//!
//! The case count is modest by default (CI budget); `PROPTEST_CASES=5000`
//! runs more.

use bytes::Bytes;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};
use wiremux_proto::human::{escape, format_frame, parse_frame};
use wiremux_proto::lifecycle::{Event, Lifecycle, LifecycleConfig, Token};
use wiremux_proto::{decode_all, Flags, FrameType};

const MAX_PAYLOAD: usize = 100;
const NEVER_USED: u16 = 999;

// ------------------------------------------------------------ scenarios

#[derive(Debug, Clone, Copy)]
enum Dep {
    /// Another request of the scenario, by index (it may begin later).
    Req(usize),
    /// This request's own ID.
    Own,
    /// An even ID.
    Even,
    /// An ID no request uses.
    Never,
}

#[derive(Debug, Clone)]
enum Outcome {
    Body(usize),
    Error,
    /// Chunk sizes, then whether the stream ends well.
    Stream(Vec<usize>, bool),
}

#[derive(Debug, Clone)]
struct Spec {
    after: Vec<Dep>,
    uses: Vec<Dep>,
    keep: bool,
    deadline: Option<u64>,
    /// The command-name frame first, the arguments in a later step.
    split: bool,
    outcome: Outcome,
    /// One reserved argument the server refuses (index into `MALFORMED`).
    malformed: Option<usize>,
}

/// Reserved arguments that are malformed or unknown, and the error each
/// gets (PROTOCOL.md section 8). Their names never clash with the ones a
/// spec uses otherwise (`@after`, `@use:u0`.., `@keep`, `@deadline`).
const MALFORMED: [(&str, &str, &str); 3] = [
    ("@use:z", "70000", "malformed @use:z: 70000"),
    ("@frob", "1", "unknown reserved argument: @frob"),
    ("@use:", "3", "unknown reserved argument: @use:"),
];

#[derive(Debug, Clone)]
enum Step {
    /// Send the next request (or, if split, its command-name frame).
    Send,
    /// Send the rest of a split request (index among those begun).
    Complete(usize),
    /// Give the next outcome to a running request (index among those running).
    Resolve(usize),
    /// `@cancel` a request of the scenario (by index, any state).
    Cancel(usize),
    /// Time passes.
    Advance(u64),
}

#[derive(Debug, Clone)]
struct Scenario {
    specs: Vec<Spec>,
    steps: Vec<Step>,
    max_kept_bytes: usize,
    /// The server's own deadline for every request (ms), beside `@deadline`.
    request_deadline: Option<u64>,
    /// Most IDs a request may depend on (64 unless small).
    max_dependencies: usize,
}

fn arb_dep() -> impl Strategy<Value = Dep> {
    prop_oneof![
        12 => (0usize..10).prop_map(Dep::Req),
        1 => Just(Dep::Own),
        1 => Just(Dep::Even),
        1 => Just(Dep::Never),
    ]
}

fn arb_outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => (0usize..200).prop_map(Outcome::Body),
        2 => Just(Outcome::Error),
        2 => (prop::collection::vec(1usize..100, 0..4), any::<bool>())
            .prop_map(|(chunks, ok)| Outcome::Stream(chunks, ok)),
    ]
}

fn arb_spec() -> impl Strategy<Value = Spec> {
    (
        prop::collection::vec(arb_dep(), 0..3),
        prop::collection::vec(arb_dep(), 0..3),
        any::<bool>(),
        prop::option::weighted(0.3, 0u64..50),
        prop::bool::weighted(0.25),
        arb_outcome(),
        prop::option::weighted(0.1, 0..MALFORMED.len()),
    )
        .prop_map(
            |(after, uses, keep, deadline, split, outcome, malformed)| Spec {
                after,
                uses,
                keep,
                deadline,
                split,
                outcome,
                malformed,
            },
        )
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Send),
        2 => any::<usize>().prop_map(Step::Complete),
        6 => any::<usize>().prop_map(Step::Resolve),
        1 => any::<usize>().prop_map(Step::Cancel),
        1 => (0u64..30).prop_map(Step::Advance),
    ]
}

fn arb_scenario() -> impl Strategy<Value = Scenario> {
    (
        prop::collection::vec(arb_spec(), 1..10),
        prop::collection::vec(arb_step(), 0..60),
        prop_oneof![Just(8 << 20), 0usize..300],
        prop::option::weighted(0.2, 0u64..60),
        prop_oneof![4 => Just(64), 1 => 0usize..4],
    )
        .prop_map(
            |(specs, steps, max_kept_bytes, request_deadline, max_dependencies)| Scenario {
                specs,
                steps,
                max_kept_bytes,
                request_deadline,
                max_dependencies,
            },
        )
}

// ------------------------------------------------------------ helpers

fn req_id(i: usize) -> u16 {
    2 * i as u16 + 1
}

fn dep_id(dep: Dep, own: usize, n: usize) -> u16 {
    match dep {
        // Indexes past the scenario wrap onto it.
        Dep::Req(j) => req_id(j % n),
        Dep::Own => req_id(own),
        Dep::Even => req_id(own) + 1,
        Dep::Never => NEVER_USED,
    }
}

/// Deterministic bytes of request `i`'s `k`th piece.
fn bytes_of(i: usize, k: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|x| b'a' + ((i * 7 + k * 3 + x) % 26) as u8)
        .collect()
}

fn arg_line(id: u16, flags: &str, name: &[u8], value: &[u8]) -> String {
    let mut payload = Vec::new();
    payload.extend_from_slice(&(name.len() as u16).to_le_bytes());
    payload.extend_from_slice(&(value.len() as u16).to_le_bytes());
    payload.extend_from_slice(name);
    payload.extend_from_slice(value);
    format!("{id} command-argument {flags} {}", escape(&payload))
}

/// The arguments of request `i`, in the order they are sent.
fn args_of(spec: &Spec, i: usize, n: usize) -> Vec<(String, String)> {
    let mut args = vec![("n".to_string(), i.to_string())];
    if !spec.after.is_empty() {
        let ids: Vec<String> = spec
            .after
            .iter()
            .map(|&d| dep_id(d, i, n).to_string())
            .collect();
        args.push(("@after".into(), ids.join(",")));
    }
    for (k, &d) in spec.uses.iter().enumerate() {
        args.push((format!("@use:u{k}"), dep_id(d, i, n).to_string()));
    }
    if spec.keep {
        args.push(("@keep".into(), String::new()));
    }
    if let Some(ms) = spec.deadline {
        args.push(("@deadline".into(), ms.to_string()));
    }
    if let Some(k) = spec.malformed {
        let (name, value, _) = MALFORMED[k];
        args.push((name.into(), value.into()));
    }
    args
}

/// How a request's response came out: its bytes, then `Ok` or the error.
type Response = (Vec<u8>, Result<(), String>);

// ------------------------------------------------------------ the model

#[derive(Debug, Clone, PartialEq)]
enum State {
    NotBegun,
    Receiving,
    Held(BTreeSet<u16>),
    Running,
    Ended,
}

#[derive(Debug)]
struct MReq {
    state: State,
    seq: u32,
    /// `(name, dep)` for each `@use`, the dependencies in order, each once.
    uses: Vec<(String, u16)>,
    deps: Vec<u16>,
    /// Refused when complete, with this error: a malformed reserved
    /// argument, or too many dependencies.
    refused: Option<String>,
    keep: bool,
    deadline: Option<(u64, u64)>,
    /// Bytes out so far; the stream's pieces given so far.
    sent: Vec<u8>,
    streaming: bool,
    pieces: usize,
    /// For `@keep` streams: the bytes so far, `None` once over the budget.
    keep_acc: Option<Vec<u8>>,
    failed: bool,
    kept: Option<Vec<u8>>,
    waiters: Vec<u16>,
}

/// A deliberately plain model of section 8: a state per request, a queue
/// of requests that ended, and the rules written out one by one.
struct Model {
    reqs: BTreeMap<u16, MReq>,
    next_seq: u32,
    now: u64,
    kept_bytes: usize,
    max_kept_bytes: usize,
    /// What a step made happen.
    events: Vec<String>,
    ended: BTreeMap<u16, Response>,
    queue: VecDeque<u16>,
}

impl Model {
    fn begin(&mut self, id: u16) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let r = self.reqs.get_mut(&id).unwrap();
        r.state = State::Receiving;
        r.seq = seq;
    }

    fn end(&mut self, id: u16, result: Result<(), String>) {
        let r = self.reqs.get_mut(&id).unwrap();
        r.state = State::Ended;
        r.failed = result.is_err();
        if result.is_ok() && r.keep {
            let body = if r.streaming {
                r.keep_acc.take()
            } else {
                Some(r.sent.clone())
            };
            if let Some(body) = body {
                if self.kept_bytes + body.len() <= self.max_kept_bytes {
                    self.kept_bytes += body.len();
                    r.kept = Some(body);
                }
            }
        }
        self.ended.insert(id, (r.sent.clone(), result));
        self.queue.push_back(id);
    }

    fn fail(&mut self, id: u16, message: String) {
        self.end(id, Err(message));
    }

    /// The frames of a request are all in.
    fn complete(&mut self, id: u16) {
        if let Some(message) = self.reqs[&id].refused.clone() {
            return self.fail(id, message);
        }
        let (deps, seq) = (self.reqs[&id].deps.clone(), self.reqs[&id].seq);
        let mut waiting = BTreeSet::new();
        for dep in deps {
            let known = self
                .reqs
                .get(&dep)
                .filter(|d| dep != id && d.state != State::NotBegun && d.seq < seq);
            match known {
                None => return self.fail(id, format!("unknown dependency {dep}")),
                Some(d) if d.state != State::Ended => {
                    waiting.insert(dep);
                }
                Some(d) if d.failed => return self.fail(id, format!("dependency {dep} failed")),
                Some(_) => {}
            }
        }
        for &dep in &waiting {
            self.reqs.get_mut(&dep).unwrap().waiters.push(id);
        }
        if waiting.is_empty() {
            self.release(id);
        } else {
            self.reqs.get_mut(&id).unwrap().state = State::Held(waiting);
        }
    }

    /// Every dependency ended well: substitute and run.
    fn release(&mut self, id: u16) {
        let i = usize::from(id / 2);
        let mut text = format!("run {id} r n={i}");
        for (name, dep) in self.reqs[&id].uses.clone() {
            match &self.reqs[&dep].kept {
                Some(body) => text += &format!(" {name}={}", escape(body)),
                None => return self.fail(id, format!("response {dep} was not kept")),
            }
        }
        self.events.push(text);
        self.reqs.get_mut(&id).unwrap().state = State::Running;
    }

    /// Requests that ended tell those waiting for them.
    fn settle(&mut self) {
        while let Some(id) = self.queue.pop_front() {
            let failed = self.reqs[&id].failed;
            for w in std::mem::take(&mut self.reqs.get_mut(&id).unwrap().waiters) {
                let State::Held(waiting) = &mut self.reqs.get_mut(&w).unwrap().state else {
                    continue;
                };
                if failed {
                    self.fail(w, format!("dependency {id} failed"));
                    continue;
                }
                waiting.remove(&id);
                if waiting.is_empty() {
                    self.release(w);
                }
            }
        }
    }

    /// Stops a request that has not ended; whether it had been.
    fn stop(&mut self, id: u16, message: String) -> bool {
        let Some(r) = self.reqs.get(&id) else {
            return false;
        };
        match r.state {
            State::NotBegun | State::Ended => return false,
            State::Running => self.events.push(format!("cancel {id}")),
            State::Receiving | State::Held(_) => {}
        }
        self.fail(id, message);
        true
    }
}

// ------------------------------------------------------------ the driver

struct Run {
    sc: Scenario,
    lc: Lifecycle,
    t0: Instant,
    model: Model,
    tokens: BTreeMap<u16, Token>,
    /// Bytes out so far per request, and its end once seen.
    partial: BTreeMap<u16, Vec<u8>>,
    done: BTreeMap<u16, Response>,
    next_send: usize,
    /// Split requests whose arguments have been sent.
    sent_rest: BTreeSet<usize>,
    next_cancel: u16,
}

impl Run {
    fn new(sc: Scenario) -> Run {
        let n = sc.specs.len();
        let mut reqs = BTreeMap::new();
        for (i, spec) in sc.specs.iter().enumerate() {
            let uses: Vec<(String, u16)> = spec
                .uses
                .iter()
                .enumerate()
                .map(|(k, &d)| (format!("u{k}"), dep_id(d, i, n)))
                .collect();
            let mut deps: Vec<u16> = Vec::new();
            for id in spec
                .after
                .iter()
                .map(|&d| dep_id(d, i, n))
                .chain(uses.iter().map(|u| u.1))
            {
                if !deps.contains(&id) {
                    deps.push(id);
                }
            }
            // A malformed argument is found before the dependencies are counted.
            let refused = match spec.malformed {
                Some(k) => Some(MALFORMED[k].2.to_string()),
                None if deps.len() > sc.max_dependencies => Some("too many dependencies".into()),
                None => None,
            };
            reqs.insert(
                req_id(i),
                MReq {
                    state: State::NotBegun,
                    seq: 0,
                    uses,
                    deps,
                    refused,
                    keep: spec.keep,
                    deadline: None,
                    sent: Vec::new(),
                    streaming: false,
                    pieces: 0,
                    keep_acc: spec.keep.then(Vec::new),
                    failed: false,
                    kept: None,
                    waiters: Vec::new(),
                },
            );
        }
        let config = LifecycleConfig {
            assembly_timeout: None,
            idle_timeout: None,
            max_kept_bytes: sc.max_kept_bytes,
            request_deadline: sc.request_deadline.map(Duration::from_millis),
            max_dependencies: sc.max_dependencies,
            limits: wiremux_proto::server::Limits {
                max_send_payload: MAX_PAYLOAD,
                ..Default::default()
            },
            ..LifecycleConfig::default()
        };
        Run {
            model: Model {
                reqs,
                next_seq: 0,
                now: 0,
                kept_bytes: 0,
                max_kept_bytes: sc.max_kept_bytes,
                events: Vec::new(),
                ended: BTreeMap::new(),
                queue: VecDeque::new(),
            },
            sc,
            lc: Lifecycle::new(config),
            t0: Instant::now(),
            tokens: BTreeMap::new(),
            partial: BTreeMap::new(),
            done: BTreeMap::new(),
            next_send: 0,
            sent_rest: BTreeSet::new(),
            next_cancel: 101,
        }
    }

    fn now(&self) -> Instant {
        self.t0 + Duration::from_millis(self.model.now)
    }

    fn frame(&mut self, line: &str) {
        let now = self.now();
        self.lc.on_frame(parse_frame(line).unwrap(), now);
    }

    fn send_args(&mut self, i: usize) {
        let id = req_id(i);
        let args = args_of(&self.sc.specs[i], i, self.sc.specs.len());
        for (k, (name, value)) in args.iter().enumerate() {
            let flags = if k + 1 == args.len() { "eoa" } else { "0" };
            let line = arg_line(id, flags, name.as_bytes(), value.as_bytes());
            self.frame(&line);
        }
        // The model: a request stopped while arriving has its frames dropped.
        if self.model.reqs[&id].state == State::Receiving {
            // The earlier of its own and the server's.
            let now = self.model.now;
            let own = self.sc.specs[i].deadline.map(|ms| (now + ms, ms));
            let server = self.sc.request_deadline.map(|ms| (now + ms, ms));
            let deadline = match (own, server) {
                (Some(own), Some(server)) if own.0 < server.0 => Some(own),
                (own, server) => server.or(own),
            };
            self.model.reqs.get_mut(&id).unwrap().deadline = deadline;
            self.model.complete(id);
        }
    }

    fn running(&self) -> Vec<u16> {
        self.model
            .reqs
            .iter()
            .filter(|(_, r)| r.state == State::Running)
            .map(|(&id, _)| id)
            .collect()
    }

    fn resolve(&mut self, id: u16) {
        let token = self.tokens[&id];
        let i = usize::from(id / 2);
        let outcome = self.sc.specs[i].outcome.clone();
        let max_kept = self.model.max_kept_bytes;
        let kept_bytes = self.model.kept_bytes;
        let r = self.model.reqs.get_mut(&id).unwrap();
        match outcome {
            Outcome::Body(len) => {
                let body = bytes_of(i, 0, len);
                r.sent = body.clone();
                self.lc.on_body(token, Bytes::from(body));
                self.model.end(id, Ok(()));
            }
            Outcome::Error => {
                let message = format!("request {i} failed");
                self.lc.on_error(token, &message);
                self.model.fail(id, message);
            }
            Outcome::Stream(chunks, ok) => {
                if !r.streaming {
                    r.streaming = true;
                    self.lc.on_stream(token);
                }
                if r.pieces < chunks.len() {
                    let chunk = bytes_of(i, r.pieces, chunks[r.pieces]);
                    r.pieces += 1;
                    r.sent.extend_from_slice(&chunk);
                    let budget = max_kept.saturating_sub(kept_bytes);
                    if r.keep_acc
                        .as_ref()
                        .is_some_and(|acc| acc.len() + chunk.len() > budget)
                    {
                        r.keep_acc = None;
                    } else if let Some(acc) = &mut r.keep_acc {
                        acc.extend_from_slice(&chunk);
                    }
                    self.lc.on_chunk(token, Bytes::from(chunk));
                } else if ok {
                    self.lc.on_stream_end(token, Ok(()));
                    self.model.end(id, Ok(()));
                } else {
                    let message = format!("stream {i} broke");
                    self.lc.on_stream_end(token, Err(&message));
                    self.model.fail(id, message);
                }
            }
        }
    }

    fn cancel(&mut self, target: u16) {
        let id = self.next_cancel;
        self.next_cancel += 2;
        self.model.reqs.insert(
            id,
            MReq {
                state: State::NotBegun,
                seq: 0,
                uses: Vec::new(),
                deps: Vec::new(),
                refused: None,
                keep: false,
                deadline: None,
                sent: Vec::new(),
                streaming: false,
                pieces: 0,
                keep_acc: None,
                failed: false,
                kept: None,
                waiters: Vec::new(),
            },
        );
        self.frame(&format!("{id} command-name have-args @cancel"));
        self.frame(&arg_line(id, "eoa", b"id", target.to_string().as_bytes()));
        self.model.begin(id);
        let answer = if self.model.stop(target, "cancelled".into()) {
            "cancelled"
        } else {
            "not running"
        };
        self.model.reqs.get_mut(&id).unwrap().sent = answer.as_bytes().to_vec();
        self.model.end(id, Ok(()));
    }

    fn advance(&mut self, dt: u64) {
        self.model.now += dt;
        let now = self.model.now;
        let mut expired: Vec<(u64, u16, u64)> = self
            .model
            .reqs
            .iter()
            .filter(|(_, r)| matches!(r.state, State::Held(_) | State::Running))
            .filter_map(|(&id, r)| r.deadline.map(|(at, ms)| (at, id, ms)))
            .filter(|&(at, _, _)| at <= now)
            .collect();
        expired.sort();
        for (_, id, ms) in expired {
            self.model.stop(id, format!("timed out after {ms} ms"));
        }
        let at = self.now();
        self.lc.handle_timeout(at);
    }

    fn step(&mut self, step: &Step) {
        match *step {
            Step::Send => {
                let Some(spec) = self.sc.specs.get(self.next_send) else {
                    return;
                };
                let (i, split) = (self.next_send, spec.split);
                self.next_send += 1;
                let id = req_id(i);
                self.frame(&format!("{id} command-name have-args r"));
                self.model.begin(id);
                if !split {
                    self.send_args(i);
                }
            }
            Step::Complete(k) => {
                let waiting: Vec<usize> = (0..self.next_send)
                    .filter(|&i| self.sc.specs[i].split)
                    .filter(|&i| !self.completed(i))
                    .collect();
                if !waiting.is_empty() {
                    let i = waiting[k % waiting.len()];
                    self.sent_rest.insert(i);
                    self.send_args(i);
                }
            }
            Step::Resolve(k) => {
                let running = self.running();
                if !running.is_empty() {
                    self.resolve(running[k % running.len()]);
                }
            }
            Step::Cancel(k) => self.cancel(req_id(k % self.sc.specs.len())),
            Step::Advance(dt) => self.advance(dt),
        }
        self.check();
    }

    fn completed(&self, i: usize) -> bool {
        self.sent_rest.contains(&i)
    }

    /// Compares what the step made happen with the model.
    fn check(&mut self) {
        self.model.settle();
        // Output first: dependents are released when it is framed.
        let out = self.lc.poll_transmit(usize::MAX).split().freeze();
        let mut ended_now = BTreeMap::new();
        for frame in decode_all(&out).unwrap() {
            let id = frame.request_id;
            assert!(
                !self.done.contains_key(&id),
                "a frame for {id} after its end"
            );
            let bytes = self.partial.entry(id).or_default();
            if frame.frame_type == FrameType::ERROR_RESPONSE {
                assert!(
                    frame.flags.contains(Flags::APPLICATION),
                    "{}",
                    format_frame(&frame)
                );
                let message = String::from_utf8(frame.payload.to_vec()).unwrap();
                ended_now.insert(id, (std::mem::take(bytes), Err(message)));
            } else {
                assert_eq!(frame.frame_type, FrameType::BYTES_RESPONSE);
                bytes.extend_from_slice(&frame.payload);
                if frame.flags.contains(Flags::DATA_EOS) {
                    ended_now.insert(id, (std::mem::take(bytes), Ok(())));
                }
            }
        }
        self.done.extend(ended_now.clone());
        let mut events = Vec::new();
        while let Some(event) = self.lc.poll_event() {
            match event {
                Event::Run(token, request) => {
                    let id = token.id;
                    // Never before its dependencies have ended, each well.
                    for dep in &self.model.reqs[&id].deps {
                        assert!(
                            matches!(self.done.get(dep), Some((_, Ok(())))),
                            "{id} run before {dep} ended well"
                        );
                    }
                    let mut text = format!("run {id} {}", escape(&request.name));
                    for (n, v) in &request.args {
                        text += &format!(" {}={}", escape(n), escape(v));
                    }
                    self.tokens.insert(id, token);
                    events.push(text);
                }
                Event::Cancel(token) => {
                    assert_eq!(self.tokens.get(&token.id), Some(&token));
                    events.push(format!("cancel {}", token.id));
                }
            }
        }
        events.sort();
        let mut expected = std::mem::take(&mut self.model.events);
        expected.sort();
        assert_eq!(events, expected, "events");
        let expected_ended = std::mem::take(&mut self.model.ended);
        assert_eq!(
            ended_now.keys().collect::<Vec<_>>(),
            expected_ended.keys().collect::<Vec<_>>(),
            "which requests ended"
        );
        for (id, (bytes, result)) in &expected_ended {
            let (got_bytes, got_result) = &ended_now[id];
            assert_eq!(got_result, result, "how {id} ended");
            assert_eq!(escape(got_bytes), escape(bytes), "the bytes of {id}");
        }
        assert_eq!(self.lc.kept_bytes(), self.model.kept_bytes, "kept bytes");
    }

    /// Ends the input and lets every running request finish.
    fn finish(&mut self) {
        let now = self.now();
        self.lc.on_input_eof(now);
        let receiving: Vec<u16> = self
            .model
            .reqs
            .iter()
            .filter(|(_, r)| r.state == State::Receiving)
            .map(|(&id, _)| id)
            .collect();
        for id in receiving {
            self.model.fail(
                id,
                format!(
                    "request {id}: input ended before the command was complete (receiving arguments)"
                ),
            );
        }
        self.check();
        while let Some(&id) = self.running().first() {
            self.resolve(id);
            self.check();
        }
        let begun: BTreeSet<u16> = self
            .model
            .reqs
            .iter()
            .filter(|(_, r)| r.state != State::NotBegun)
            .map(|(&id, _)| id)
            .collect();
        assert!(
            self.model
                .reqs
                .values()
                .all(|r| matches!(r.state, State::NotBegun | State::Ended)),
            "the model left requests unended"
        );
        assert_eq!(
            self.done.keys().copied().collect::<BTreeSet<_>>(),
            begun,
            "one terminal frame per request begun"
        );
        assert!(self.lc.is_done());
        assert_eq!(self.lc.in_flight(), 0);
        assert_eq!(self.lc.executing(), 0);
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn the_lifecycle_agrees_with_the_model(sc in arb_scenario()) {
        let steps = sc.steps.clone();
        let mut run = Run::new(sc);
        for step in &steps {
            run.step(step);
        }
        run.finish();
    }
}
