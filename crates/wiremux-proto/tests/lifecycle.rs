//! Exact-behaviour tests of the request lifecycle against PROTOCOL.md
//! section 8, without a runtime: frames (human syntax) and outcomes go in
//! at explicit `Instant`s, and the events and the exact frames that come
//! out are compared as text.
//!
//! A script is a [`Conn`]:
//! - `conn.cmd(id, "add a=1 b=2 @keep")` sends a command as human-syntax
//!   frames (a command-name frame, then one argument frame per `name=value`,
//!   the last with `eoa`; `name` alone is an empty value);
//! - `conn.frame(line)` sends one frame;
//! - `conn.events()` takes what the lifecycle wants run or stopped, as
//!   `run <id> <name> <arg>=<value> ...` and `cancel <id>`;
//! - `conn.body(id, ..)`, `conn.error(id, ..)`, `conn.stream(id)`,
//!   `conn.chunk(id, ..)`, `conn.end(id, ..)` report the outcome of the
//!   command last run on `id`;
//! - `conn.out()` takes every framed byte and gives the frames in human
//!   syntax.
//!
//! Every frame that comes out is counted; [`Conn::check_all_ended`] checks
//! that every request begun got exactly one terminal frame.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use wiremux_proto::builder::CommandBuilder;
use wiremux_proto::human::{escape, format_frame, parse_frame};
use wiremux_proto::lifecycle::{Event, Lifecycle, LifecycleConfig, Token};
use wiremux_proto::{decode_all, Flags, Frame, FrameType, Request};

struct Conn {
    lc: Lifecycle,
    t0: Instant,
    now: Instant,
    tokens: BTreeMap<u16, Token>,
    requests: BTreeMap<u16, Request>,
    /// Command-name frames sent, per ID.
    begun: BTreeMap<u16, usize>,
    /// Terminal frames seen, per ID.
    terminal: BTreeMap<u16, usize>,
    /// Every byte taken out.
    wire: Vec<u8>,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn is_terminal(frame: &Frame) -> bool {
    frame.frame_type == FrameType::ERROR_RESPONSE
        || (frame.frame_type == FrameType::BYTES_RESPONSE && frame.flags.contains(Flags::DATA_EOS))
}

/// The human-syntax line of an argument frame.
fn arg_line(id: u16, flags: &str, name: &[u8], value: &[u8]) -> String {
    let mut payload = Vec::new();
    payload.extend_from_slice(&(name.len() as u16).to_le_bytes());
    payload.extend_from_slice(&(value.len() as u16).to_le_bytes());
    payload.extend_from_slice(name);
    payload.extend_from_slice(value);
    format!("{id} command-argument {flags} {}", escape(&payload))
}

/// The human-syntax lines of a command written as `name arg=value ...`.
fn command_lines(id: u16, text: &str) -> Vec<String> {
    let mut words = text.split(' ');
    let name = words.next().unwrap();
    let args: Vec<(&str, &str)> = words
        .map(|w| w.split_once('=').unwrap_or((w, "")))
        .collect();
    if args.is_empty() {
        return vec![format!("{id} command-name eos {name}")];
    }
    let mut lines = vec![format!("{id} command-name have-args {name}")];
    for (i, (n, v)) in args.iter().enumerate() {
        let flags = if i + 1 == args.len() { "eoa" } else { "0" };
        lines.push(arg_line(id, flags, n.as_bytes(), v.as_bytes()));
    }
    lines
}

impl Conn {
    fn new() -> Conn {
        Conn::with(LifecycleConfig::default())
    }

    fn with(config: LifecycleConfig) -> Conn {
        let t0 = Instant::now();
        Conn {
            lc: Lifecycle::new(config),
            t0,
            now: t0,
            tokens: BTreeMap::new(),
            requests: BTreeMap::new(),
            begun: BTreeMap::new(),
            terminal: BTreeMap::new(),
            wire: Vec::new(),
        }
    }

    /// Small frames: responses of more than `max` bytes take several.
    fn with_frame_size(max: usize) -> Conn {
        let mut config = LifecycleConfig::default();
        config.limits.max_send_payload = max;
        Conn::with(config)
    }

    /// The clock is now `n` ms after the start.
    fn at(&mut self, n: u64) -> &mut Conn {
        self.now = self.t0 + ms(n);
        self
    }

    /// Time has come to `n` ms after the start.
    fn tick(&mut self, n: u64) {
        self.at(n);
        self.lc.handle_timeout(self.now);
    }

    fn feed(&mut self, frame: Frame) {
        if frame.frame_type == FrameType::COMMAND_NAME {
            *self.begun.entry(frame.request_id).or_default() += 1;
        }
        self.lc.on_frame(frame, self.now);
    }

    fn frame(&mut self, line: &str) {
        self.feed(parse_frame(line).unwrap());
    }

    fn cmd(&mut self, id: u16, text: &str) {
        for line in command_lines(id, text) {
            self.frame(&line);
        }
    }

    /// Sends a command built from raw arguments (values of any size).
    fn cmd_raw(&mut self, id: u16, builder: CommandBuilder) {
        for frame in builder.frames(id, 65535).unwrap() {
            self.feed(frame);
        }
    }

    fn events(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(event) = self.lc.poll_event() {
            match event {
                Event::Run(token, request) => {
                    assert_eq!(token.id, request.request_id);
                    let mut text = format!("run {} {}", token.id, escape(&request.name));
                    for (n, v) in &request.args {
                        text += &format!(" {}={}", escape(n), escape(v));
                    }
                    if let Some(data) = &request.data {
                        text += &format!(" data({})", escape(data));
                    }
                    self.tokens.insert(token.id, token);
                    self.requests.insert(token.id, request);
                    out.push(text);
                }
                Event::Cancel(token) => {
                    assert_eq!(
                        self.tokens.get(&token.id),
                        Some(&token),
                        "cancel of a token never run"
                    );
                    out.push(format!("cancel {}", token.id));
                }
            }
        }
        out
    }

    fn token(&self, id: u16) -> Token {
        *self
            .tokens
            .get(&id)
            .unwrap_or_else(|| panic!("{id} was never run"))
    }

    fn body(&mut self, id: u16, body: &str) {
        let token = self.token(id);
        self.lc
            .on_body(token, Bytes::copy_from_slice(body.as_bytes()));
    }

    fn error(&mut self, id: u16, message: &str) {
        let token = self.token(id);
        self.lc.on_error(token, message);
    }

    fn stream(&mut self, id: u16) {
        let token = self.token(id);
        self.lc.on_stream(token);
    }

    fn chunk(&mut self, id: u16, chunk: &str) {
        let token = self.token(id);
        self.lc
            .on_chunk(token, Bytes::copy_from_slice(chunk.as_bytes()));
    }

    fn end(&mut self, id: u16, result: Result<(), &str>) {
        let token = self.token(id);
        self.lc.on_stream_end(token, result);
    }

    /// Frames everything and gives the frames, in human syntax.
    fn out(&mut self) -> Vec<String> {
        self.out_upto(usize::MAX)
    }

    /// Frames until at least `high_water` bytes are waiting, and gives those.
    fn out_upto(&mut self, high_water: usize) -> Vec<String> {
        let bytes = self.lc.poll_transmit(high_water).split().freeze();
        self.wire.extend_from_slice(&bytes);
        let frames = decode_all(&bytes).unwrap();
        for frame in &frames {
            if is_terminal(frame) {
                *self.terminal.entry(frame.request_id).or_default() += 1;
            }
        }
        frames.iter().map(format_frame).collect()
    }

    /// Every request begun got exactly one terminal frame, and nothing is
    /// left in flight.
    fn check_all_ended(&mut self) {
        self.out();
        assert_eq!(self.begun, self.terminal, "terminal frames per ID");
        assert_eq!(self.lc.in_flight(), 0);
        assert_eq!(self.lc.executing(), 0);
        assert!(self.lc.is_done());
    }
}

fn lines(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

macro_rules! assert_lines {
    ($got:expr, [$($line:expr),* $(,)?]) => {
        assert_eq!($got, vec![$($line.to_string()),*] as Vec<String>)
    };
}

// ------------------------------------------------------------ basics, 8.7

#[test]
fn a_plain_command_is_run_and_answered() {
    let mut c = Conn::new();
    c.cmd(1, "add a=1 b=2");
    // `add` is an engine command: the lifecycle only says to run it.
    assert_lines!(c.events(), ["run 1 add a=1 b=2"]);
    assert!(c.out().is_empty());
    c.body(1, "3");
    assert_lines!(c.out(), ["1 bytes-response eos 3"]);
    c.check_all_ended();
}

#[test]
fn an_outcome_for_a_token_that_ended_is_ignored() {
    let mut c = Conn::new();
    c.cmd(1, "echo");
    c.events();
    c.body(1, "x");
    c.body(1, "again");
    c.error(1, "late");
    assert_lines!(c.out(), ["1 bytes-response eos x"]);
    // A new request on the same ID gets a new token; the old one is dead.
    let old = c.token(1);
    c.cmd(1, "echo");
    assert_lines!(c.events(), ["run 1 echo"]);
    assert_ne!(old, c.token(1));
    c.lc.on_body(old, Bytes::from_static(b"stale"));
    assert!(c.out().is_empty());
    c.body(1, "fresh");
    assert_lines!(c.out(), ["1 bytes-response eos fresh"]);
    c.check_all_ended();
}

// ------------------------------------------------------------ 8.1

#[test]
fn capabilities_lists_the_extensions_and_runs_nothing() {
    let mut c = Conn::new();
    c.cmd(1, "@capabilities");
    assert!(c.events().is_empty());
    let out = c.out();
    assert_lines!(out, ["1 bytes-response eos after use keep cancel deadline"]);
    let listed: Vec<&str> = out[0].rsplit(" eos ").next().unwrap().split(' ').collect();
    for ext in ["after", "use", "keep", "cancel", "deadline"] {
        assert!(listed.contains(&ext), "{ext} not listed");
    }
    c.check_all_ended();
}

// ------------------------------------------------------------ 8.2

#[test]
fn an_unknown_reserved_argument_fails_the_request_and_runs_nothing() {
    let mut c = Conn::new();
    c.cmd(1, "add a=1 @priority=high");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        ["1 error-response application unknown reserved argument: @priority"]
    );
    c.check_all_ended();
}

#[test]
fn reserved_arguments_never_reach_the_handler() {
    let mut c = Conn::new();
    c.cmd(1, "add @keep a=1 @deadline=100 b=2");
    assert_lines!(c.events(), ["run 1 add a=1 b=2"]);
    c.body(1, "3");
    c.cmd(3, "add @after=1 a=1 @use:b=1");
    assert_lines!(c.events(), ["run 3 add a=1 b=3"]);
    c.body(3, "4");
    assert_lines!(
        c.out(),
        ["1 bytes-response eos 3", "3 bytes-response eos 4"]
    );
    c.check_all_ended();
}

#[test]
fn a_malformed_keep_is_a_request_error() {
    let mut c = Conn::new();
    c.cmd(1, "add @keep=yes");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        ["1 error-response application malformed @keep: yes"]
    );
    c.check_all_ended();
}

// ------------------------------------------------------------ 8.3 @after

#[test]
fn after_holds_a_command_until_the_named_request_has_ended() {
    let mut c = Conn::new();
    c.cmd(1, "put k=v");
    c.cmd(3, "get @after=1 k=k");
    assert_lines!(c.events(), ["run 1 put k=v"]);
    // Held: it holds its ID and counts against the limit of executing requests.
    assert_eq!(c.lc.in_flight(), 2);
    assert_eq!(c.lc.executing(), 2);
    c.body(1, "ok");
    assert_lines!(c.events(), ["run 3 get k=k"]);
    c.body(3, "v");
    assert_lines!(
        c.out(),
        ["1 bytes-response eos ok", "3 bytes-response eos v"]
    );
    c.check_all_ended();
}

#[test]
fn after_waits_for_the_terminal_frame_not_for_the_handler() {
    // A body of three frames: the dependent runs only once the last one
    // (with eos) is framed.
    let mut c = Conn::with_frame_size(4);
    c.cmd(1, "cat");
    c.cmd(3, "get @after=1");
    c.events();
    c.body(1, "aaaabbbbcc");
    assert!(c.events().is_empty());
    assert_lines!(c.out_upto(1), ["1 bytes-response continuation aaaa"]);
    assert!(c.events().is_empty());
    assert_lines!(c.out_upto(1), ["1 bytes-response continuation bbbb"]);
    assert!(c.events().is_empty());
    assert_lines!(c.out_upto(1), ["1 bytes-response eos cc"]);
    assert_lines!(c.events(), ["run 3 get"]);
    c.body(3, "x");
    c.check_all_ended();
}

#[test]
fn after_several_ids_waits_for_every_one() {
    let mut c = Conn::new();
    c.cmd(1, "a");
    c.cmd(3, "b");
    c.cmd(5, "c");
    c.cmd(7, "d @after=5,1,3");
    assert_lines!(c.events(), ["run 1 a", "run 3 b", "run 5 c"]);
    c.body(3, "3");
    c.body(1, "1");
    assert!(c.events().is_empty());
    c.body(5, "5");
    assert_lines!(c.events(), ["run 7 d"]);
    c.body(7, "7");
    assert_lines!(
        c.out(),
        [
            "3 bytes-response eos 3",
            "1 bytes-response eos 1",
            "5 bytes-response eos 5",
            "7 bytes-response eos 7"
        ]
    );
    c.check_all_ended();
}

#[test]
fn after_a_request_that_already_succeeded_runs_at_once() {
    let mut c = Conn::new();
    c.cmd(1, "a");
    c.events();
    c.body(1, "x");
    c.out();
    c.cmd(3, "b @after=1");
    assert_lines!(c.events(), ["run 3 b"]);
    c.body(3, "y");
    c.check_all_ended();
}

#[test]
fn a_dependency_that_fails_with_an_application_error_fails_the_dependent() {
    let mut c = Conn::new();
    c.cmd(1, "put");
    c.cmd(3, "get @after=1");
    c.events();
    c.error(1, "disk full");
    assert!(c.events().is_empty(), "the dependent is not run");
    assert_lines!(
        c.out(),
        [
            "1 error-response application disk full",
            "3 error-response application dependency 1 failed"
        ]
    );
    c.check_all_ended();
}

#[test]
fn a_dependency_that_failed_earlier_is_remembered() {
    let mut c = Conn::new();
    c.cmd(1, "put");
    c.events();
    c.error(1, "no");
    c.out();
    c.cmd(3, "get @after=1");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        ["3 error-response application dependency 1 failed"]
    );
    // The latest request on the ID is what counts: a success clears it.
    c.cmd(1, "put");
    c.events();
    c.body(1, "ok");
    c.cmd(5, "get @after=1");
    assert_lines!(c.events(), ["run 5 get"]);
    c.body(5, "v");
    assert_lines!(
        c.out(),
        ["1 bytes-response eos ok", "5 bytes-response eos v"]
    );
    c.check_all_ended();
}

#[test]
fn a_dependency_refused_with_a_request_level_error_fails_the_dependent() {
    let mut c = Conn::new();
    // Refused by the reactor while arriving (a bad argument frame)...
    c.frame("1 command-name have-args put");
    c.cmd(3, "get @after=1");
    c.frame("1 command-argument eoa \\x01\\x00");
    // ...and refused for a reserved argument.
    c.cmd(5, "put @bogus");
    c.cmd(7, "get @after=5");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "1 error-response application request 1: command-argument frame of 2 bytes is shorter than its 4-byte header",
            "3 error-response application dependency 1 failed",
            "5 error-response application unknown reserved argument: @bogus",
            "7 error-response application dependency 5 failed"
        ]
    );
    c.check_all_ended();
}

#[test]
fn a_dependency_that_times_out_fails_the_dependent() {
    let mut c = Conn::new();
    c.cmd(1, "sleep @deadline=10");
    c.cmd(3, "get @after=1");
    c.events();
    c.tick(10);
    assert_lines!(c.events(), ["cancel 1"]);
    assert_lines!(
        c.out(),
        [
            "1 error-response application timed out after 10 ms",
            "3 error-response application dependency 1 failed"
        ]
    );
    c.check_all_ended();
}

#[test]
fn a_dependency_that_is_cancelled_fails_the_dependent() {
    let mut c = Conn::new();
    c.cmd(1, "sleep");
    c.cmd(3, "get @after=1");
    c.cmd(5, "@cancel id=1");
    assert_lines!(c.events(), ["run 1 sleep", "cancel 1"]);
    assert_lines!(
        c.out(),
        [
            "1 error-response application cancelled",
            "3 error-response application dependency 1 failed",
            "5 bytes-response eos cancelled"
        ]
    );
    c.check_all_ended();
}

#[test]
fn a_dependency_whose_own_dependency_failed_fails_the_dependent() {
    let mut c = Conn::new();
    c.cmd(1, "a");
    c.cmd(3, "b @after=1");
    c.cmd(5, "c @after=3");
    c.cmd(7, "d @after=5,1");
    c.events();
    c.error(1, "boom");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "1 error-response application boom",
            "3 error-response application dependency 1 failed",
            "7 error-response application dependency 1 failed",
            "5 error-response application dependency 3 failed"
        ]
    );
    c.check_all_ended();
}

#[test]
fn a_failing_stream_fails_the_dependent() {
    let mut c = Conn::new();
    c.cmd(1, "log");
    c.cmd(3, "get @after=1");
    c.events();
    c.stream(1);
    c.chunk(1, "part");
    c.end(1, Err("broken"));
    assert_lines!(
        c.out(),
        [
            "1 bytes-response continuation part",
            "1 error-response application broken",
            "3 error-response application dependency 1 failed"
        ]
    );
    c.check_all_ended();
}

#[test]
fn unknown_dependency_never_used() {
    let mut c = Conn::new();
    c.cmd(1, "get @after=7");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        ["1 error-response application unknown dependency 7"]
    );
    c.check_all_ended();
}

#[test]
fn unknown_dependency_own_id() {
    let mut c = Conn::new();
    c.cmd(3, "get @after=3");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        ["3 error-response application unknown dependency 3"]
    );
    // Even when an earlier request on the same ID ended well.
    c.cmd(1, "a");
    c.events();
    c.body(1, "x");
    c.cmd(1, "b @after=1");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "1 bytes-response eos x",
            "1 error-response application unknown dependency 1"
        ]
    );
    c.check_all_ended();
}

#[test]
fn unknown_dependency_not_yet_started() {
    // 3 is named by 1 before any frame of 3 has arrived.
    let mut c = Conn::new();
    c.cmd(1, "get @after=3");
    c.cmd(3, "put");
    assert_lines!(c.events(), ["run 3 put"]);
    c.body(3, "ok");
    assert_lines!(
        c.out(),
        [
            "1 error-response application unknown dependency 3",
            "3 bytes-response eos ok"
        ]
    );
    c.check_all_ended();
}

#[test]
fn unknown_dependency_begun_after_this_command() {
    // 5's command-name arrives after 3's, while 3 is still arriving: 3
    // cannot name it (that is how cycles are ruled out).
    let mut c = Conn::new();
    c.frame("3 command-name have-args get");
    c.cmd(5, "put @after=3");
    assert!(c.events().is_empty(), "5 waits for 3");
    c.frame(&arg_line(3, "eoa", b"@after", b"5"));
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "3 error-response application unknown dependency 5",
            "5 error-response application dependency 3 failed"
        ]
    );
    c.check_all_ended();
}

#[test]
fn unknown_dependency_begun_after_this_command_and_already_ended() {
    // As above, but 5 has run and ended by the time 3 is complete.
    let mut c = Conn::new();
    c.frame("3 command-name have-args get");
    c.cmd(5, "put");
    c.events();
    c.body(5, "ok");
    c.frame(&arg_line(3, "eoa", b"@after", b"5"));
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "5 bytes-response eos ok",
            "3 error-response application unknown dependency 5"
        ]
    );
    c.check_all_ended();
}

#[test]
fn unknown_dependency_an_even_id() {
    // Even IDs are never client requests: nothing can be named by them,
    // even next to odd IDs that have ended.
    let mut c = Conn::new();
    for id in [1, 3] {
        c.cmd(id, "a");
        c.events();
        c.body(id, "x");
    }
    c.out();
    c.cmd(5, "b @after=2");
    c.cmd(7, "b @after=0");
    c.cmd(9, "b @use:a=2");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "5 error-response application unknown dependency 2",
            "7 error-response application unknown dependency 0",
            "9 error-response application unknown dependency 2"
        ]
    );
    c.check_all_ended();
}

#[test]
fn too_many_dependencies() {
    let mut c = Conn::new();
    let ids: Vec<String> = (0..64).map(|i| (2 * i + 1).to_string()).collect();
    for i in 0..64 {
        c.cmd(2 * i + 1, "a");
    }
    assert_eq!(c.events().len(), 64);
    for i in 0..64 {
        c.body(2 * i + 1, "x");
    }
    assert_eq!(c.out().len(), 64);
    // 64 distinct IDs are allowed...
    c.cmd(201, &format!("b @after={}", ids.join(",")));
    assert_lines!(c.events(), ["run 201 b"]);
    c.body(201, "ok");
    assert_lines!(c.out(), ["201 bytes-response eos ok"]);
    // ...65 are not, whether in @after alone or with @use.
    c.cmd(203, &format!("b @after={},129", ids.join(",")));
    c.cmd(205, &format!("b @after={} @use:z=201", ids.join(",")));
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "203 error-response application too many dependencies",
            "205 error-response application too many dependencies"
        ]
    );
    c.check_all_ended();
}

#[test]
fn the_limit_of_dependencies_is_configurable() {
    let mut c = Conn::with(LifecycleConfig {
        max_dependencies: 1,
        ..LifecycleConfig::default()
    });
    c.cmd(1, "a");
    c.cmd(3, "a");
    c.cmd(5, "b @after=1,3");
    assert_lines!(
        c.out(),
        ["5 error-response application too many dependencies"]
    );
    c.events();
    c.body(1, "x");
    c.body(3, "y");
    c.check_all_ended();
}

#[test]
fn malformed_after() {
    let mut c = Conn::new();
    for (id, value) in [(1, "1,,3"), (3, "x"), (5, "70000"), (7, "1;3"), (9, "")] {
        c.cmd(id, &format!("get @after={value}"));
    }
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "1 error-response application malformed @after: 1,,3",
            "3 error-response application malformed @after: x",
            "5 error-response application malformed @after: 70000",
            "7 error-response application malformed @after: 1;3",
            "9 error-response application malformed @after: "
        ]
    );
    c.check_all_ended();
}

#[test]
fn a_held_request_holds_its_id() {
    let mut c = Conn::new();
    c.cmd(1, "sleep");
    c.cmd(3, "get @after=1");
    c.events();
    c.cmd(3, "again");
    assert!(c.lc.is_failed());
    assert_lines!(
        c.out(),
        ["3 error-response protocol request 3: command-name frame for an ID whose command is still running"]
    );
}

/// Frames for a request whose frames are all in, and that is not
/// answered yet, get the reactor's refusals word for word; once it is
/// answered its ID is free.
#[test]
fn frames_for_a_running_request_are_refused() {
    for (late, error) in [
        (
            "1 command-data eos x",
            "1 error-response protocol request 1: command-data frame for a request whose command is already complete",
        ),
        (
            "1 command-argument eoa x",
            "1 error-response protocol request 1: command-argument frame for a request whose command is already complete",
        ),
        (
            "1 command-name eos echo",
            "1 error-response protocol request 1: command-name frame for an ID whose command is still running",
        ),
    ] {
        let mut c = Conn::new();
        c.frame("1 command-name have-data sleep");
        c.frame("1 command-data eos 5");
        assert_lines!(c.events(), ["run 1 sleep data(5)"]);
        assert_eq!(c.lc.executing(), 1);
        c.frame(late);
        assert!(c.lc.is_failed(), "{late}");
        assert_lines!(c.out(), [error]);
    }
    let mut c = Conn::new();
    c.cmd(1, "echo");
    c.events();
    c.body(1, "a");
    assert_eq!(c.lc.executing(), 0);
    c.frame("1 command-data eos x");
    assert_lines!(
        c.out(),
        [
            "1 bytes-response eos a",
            "1 error-response protocol request 1: command-data frame for a request that was never started"
        ]
    );
}

/// A request refused while its frames were arriving was never complete:
/// its later frames are dropped, even while its error waits its turn (in
/// order), and a frame after its last one is one of a request never
/// started.
#[test]
fn frames_of_a_request_refused_while_arriving_are_dropped_not_refused() {
    let mut c = Conn::with(LifecycleConfig {
        in_order: true,
        ..LifecycleConfig::default()
    });
    c.cmd(1, "sleep");
    c.frame("3 command-name have-data echo");
    c.frame("3 command-data 0 x");
    c.frame("3 command-data eos y");
    assert!(!c.lc.is_failed(), "its last frame is dropped");
    assert_eq!(c.lc.in_flight(), 2, "its error waits behind 1's answer");
    c.frame("3 command-data eos z");
    assert!(c.lc.is_failed());
    assert_lines!(
        c.out(),
        [
            "3 error-response protocol request 3: command-data frame for a request that was never started"
        ]
    );
}

// ------------------------------------------------------------ 8.4 @keep, @use

#[test]
fn the_add_chain_of_section_8_7() {
    let mut c = Conn::new();
    c.cmd(1, "add a=1 b=2 @keep");
    c.cmd(3, "add @use:a=1 b=10 @keep");
    c.cmd(5, "add @use:a=3 b=100");
    assert_lines!(c.events(), ["run 1 add a=1 b=2"]);
    c.body(1, "3");
    assert_lines!(c.events(), ["run 3 add b=10 a=3"]);
    c.body(3, "13");
    assert_lines!(c.events(), ["run 5 add b=100 a=13"]);
    c.body(5, "113");
    assert_lines!(
        c.out(),
        [
            "1 bytes-response eos 3",
            "3 bytes-response eos 13",
            "5 bytes-response eos 113"
        ]
    );
    assert_eq!(c.lc.kept_bytes(), 3, "`3` and `13` are kept");
    c.check_all_ended();
}

#[test]
fn use_substitutes_a_body_longer_than_one_frame() {
    let mut c = Conn::with_frame_size(4);
    c.cmd(1, "cat @keep");
    c.cmd(3, "echo @use:v=1");
    c.events();
    c.body(1, "0123456789");
    assert_lines!(
        c.out(),
        [
            "1 bytes-response continuation 0123",
            "1 bytes-response continuation 4567",
            "1 bytes-response eos 89"
        ]
    );
    assert_lines!(c.events(), ["run 3 echo v=0123456789"]);
    c.body(3, "ok");
    c.check_all_ended();
}

#[test]
fn use_substitutes_a_value_longer_than_any_frame_could_carry() {
    let mut c = Conn::new();
    let big = "x".repeat(200_000);
    c.cmd(1, "cat @keep");
    c.cmd(3, "echo @use:v=1");
    c.events();
    c.body(1, &big);
    let out = c.out();
    assert_eq!(out.len(), 200_000usize.div_ceil(32768));
    assert_lines!(c.events(), ["run 3 echo v=".to_string() + &big]);
    assert_eq!(c.requests[&3].arg("v").unwrap().len(), 200_000);
    c.body(3, "ok");
    c.check_all_ended();
}

#[test]
fn use_over_the_per_request_byte_limit_fails() {
    let mut config = LifecycleConfig::default();
    config.limits.max_request_bytes = 32;
    let mut c = Conn::with(config);
    c.cmd(1, "cat @keep");
    c.cmd(3, "echo @use:v=1 w=1");
    c.cmd(5, "cat @keep");
    c.cmd(7, "echo @use:v=5 w=1");
    c.events();
    // w=1 and v=<30 bytes> are 33 bytes; with 29 they are 32.
    c.body(1, &"x".repeat(30));
    c.body(5, &"y".repeat(29));
    assert_lines!(
        c.events(),
        ["run 7 echo w=1 v=".to_string() + &"y".repeat(29)]
    );
    c.body(7, "ok");
    assert_lines!(
        c.out(),
        [
            "1 bytes-response eos ".to_string() + &"x".repeat(30),
            "3 error-response application more than 32 bytes of arguments and data".to_string(),
            "5 bytes-response eos ".to_string() + &"y".repeat(29),
            "7 bytes-response eos ok".to_string()
        ]
    );
    c.check_all_ended();
}

#[test]
fn use_substitutes_a_streamed_body() {
    let mut c = Conn::with_frame_size(4);
    c.cmd(1, "log @keep");
    c.cmd(3, "echo @use:v=1 w=2");
    c.events();
    c.stream(1);
    c.chunk(1, "ab");
    c.chunk(1, "cdef");
    assert!(c.events().is_empty());
    c.chunk(1, "g");
    c.end(1, Ok(()));
    assert_lines!(
        c.out(),
        [
            "1 bytes-response continuation ab",
            "1 bytes-response continuation cdef",
            "1 bytes-response eos g"
        ]
    );
    assert_lines!(c.events(), ["run 3 echo w=2 v=abcdefg"]);
    assert_eq!(c.lc.kept_bytes(), 7);
    c.body(3, "ok");
    c.check_all_ended();
}

#[test]
fn use_implies_after() {
    let mut c = Conn::new();
    c.cmd(1, "a @keep");
    c.cmd(3, "b @use:x=1 @use:y=1");
    assert_lines!(c.events(), ["run 1 a"]);
    c.body(1, "v");
    assert_lines!(c.events(), ["run 3 b x=v y=v"]);
    c.body(3, "w");
    c.check_all_ended();
}

#[test]
fn use_of_a_failed_request() {
    let mut c = Conn::new();
    c.cmd(1, "a @keep");
    c.cmd(3, "b @use:x=1");
    c.events();
    c.error(1, "no");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "1 error-response application no",
            "3 error-response application dependency 1 failed"
        ]
    );
    c.cmd(5, "b @use:x=1");
    assert_lines!(
        c.out(),
        ["5 error-response application dependency 1 failed"]
    );
    c.check_all_ended();
}

#[test]
fn response_not_kept_without_keep() {
    let mut c = Conn::new();
    c.cmd(1, "a");
    c.cmd(3, "b @use:x=1");
    c.events();
    c.body(1, "v");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "1 bytes-response eos v",
            "3 error-response application response 1 was not kept"
        ]
    );
    assert_eq!(c.lc.kept_bytes(), 0);
    c.cmd(5, "b @use:x=1");
    assert_lines!(
        c.out(),
        ["5 error-response application response 1 was not kept"]
    );
    c.check_all_ended();
}

#[test]
fn response_not_kept_over_the_kept_bytes_budget() {
    let mut c = Conn::with(LifecycleConfig {
        max_kept_bytes: 10,
        ..LifecycleConfig::default()
    });
    c.cmd(1, "a @keep");
    c.cmd(3, "a @keep");
    c.cmd(5, "a @keep");
    c.cmd(7, "a @keep");
    c.events();
    c.body(1, "123456");
    assert_eq!(c.lc.kept_bytes(), 6);
    // 3 would make 11.
    c.body(3, "12345");
    assert_eq!(c.lc.kept_bytes(), 6);
    // A stream that fits in what is left is kept...
    c.stream(5);
    c.chunk(5, "12");
    c.chunk(5, "34");
    c.end(5, Ok(()));
    assert_eq!(c.lc.kept_bytes(), 6, "kept once its last frame is framed");
    c.out();
    assert_eq!(c.lc.kept_bytes(), 10);
    // ...one that does not is not, from the chunk that does not fit.
    c.stream(7);
    c.chunk(7, "x");
    c.end(7, Ok(()));
    assert_lines!(c.out(), ["7 bytes-response eos x"]);
    assert_eq!(c.lc.kept_bytes(), 10);
    c.cmd(9, "b @use:x=1");
    c.cmd(11, "b @use:x=3");
    c.cmd(13, "b @use:x=5");
    c.cmd(15, "b @use:x=7");
    assert_lines!(c.events(), ["run 9 b x=123456", "run 13 b x=1234"]);
    c.body(9, "ok");
    c.body(13, "ok");
    assert_lines!(
        c.out(),
        [
            "11 error-response application response 3 was not kept",
            "15 error-response application response 7 was not kept",
            "9 bytes-response eos ok",
            "13 bytes-response eos ok"
        ]
    );
    // Freeing a kept body (a new command on its ID) makes room again.
    c.cmd(1, "a @keep");
    assert_eq!(c.lc.kept_bytes(), 4);
    c.events();
    c.body(1, "123456");
    assert_eq!(c.lc.kept_bytes(), 10);
    c.check_all_ended();
}

#[test]
fn a_kept_body_is_freed_when_a_new_command_starts_on_its_id() {
    let mut c = Conn::new();
    c.cmd(1, "a @keep");
    c.events();
    c.body(1, "kept body");
    assert_eq!(c.lc.kept_bytes(), 9);
    c.frame("1 command-name have-args b");
    assert_eq!(c.lc.kept_bytes(), 0);
    c.frame(&arg_line(1, "eoa", b"x", b"1"));
    c.events();
    c.body(1, "new");
    c.cmd(3, "c @use:v=1");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "1 bytes-response eos kept body",
            "1 bytes-response eos new",
            "3 error-response application response 1 was not kept"
        ]
    );
    c.check_all_ended();
}

#[test]
fn a_failed_request_keeps_nothing() {
    let mut c = Conn::new();
    c.cmd(1, "a @keep");
    c.events();
    c.stream(1);
    c.chunk(1, "part");
    c.end(1, Err("broke"));
    c.out();
    assert_eq!(c.lc.kept_bytes(), 0);
    c.check_all_ended();
}

#[test]
fn malformed_use() {
    let mut c = Conn::new();
    c.cmd(1, "a @use:x=one");
    assert_lines!(
        c.out(),
        ["1 error-response application malformed @use:x: one"]
    );
    c.check_all_ended();
}

// ------------------------------------------------------------ 8.5 @cancel

/// The bytes of frames given in human syntax.
fn wire_of(frames: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in frames {
        parse_frame(line).unwrap().encode(&mut out);
    }
    out
}

#[test]
fn cancel_a_running_request() {
    let mut c = Conn::new();
    c.cmd(1, "sleep ms=1000");
    assert_lines!(c.events(), ["run 1 sleep ms=1000"]);
    c.wire.clear();
    c.cmd(3, "@cancel id=1");
    assert_lines!(c.events(), ["cancel 1"]);
    assert_lines!(
        c.out(),
        [
            "1 error-response application cancelled",
            "3 bytes-response eos cancelled"
        ]
    );
    // Exact bytes: the target's error-response first.
    assert_eq!(
        c.wire,
        [
            &[0x09, 0, 0, 0x01, 0, 0x52][..],
            b"cancelled",
            &[0x09, 0, 0, 0x03, 0, 0x42][..],
            b"cancelled"
        ]
        .concat()
    );
    // The handler's late result is dropped; the ID is free.
    c.body(1, "late");
    assert!(c.out().is_empty());
    assert_eq!(c.lc.take_counters().requests_cancelled, 1);
    c.cmd(1, "again");
    assert_lines!(c.events(), ["run 1 again"]);
    c.body(1, "ok");
    c.check_all_ended();
}

/// One cancellation allowed per 10 requests started, no larger burst.
fn one_cancel_per_ten() -> Conn {
    let mut config = LifecycleConfig::default();
    config.limits.flood = wiremux_proto::flood::FloodLimits {
        window: 10,
        max_errors: 0,
        max_cancelled: 1,
        cancel_burst: 0,
    };
    Conn::with(config)
}

#[test]
fn a_start_and_cancel_flood_ends_the_connection_with_the_flood_error() {
    let mut c = one_cancel_per_ten();
    // The first pair spends the allowance; it is answered as usual.
    c.cmd(1, "sleep ms=1000");
    c.cmd(3, "@cancel id=1");
    assert_lines!(c.events(), ["run 1 sleep ms=1000", "cancel 1"]);
    assert_lines!(
        c.out(),
        [
            "1 error-response application cancelled",
            "3 bytes-response eos cancelled"
        ]
    );
    // Two requests started refilled a fifth of one: the next pair is over.
    c.cmd(1, "sleep ms=1000");
    c.cmd(5, "sleep ms=1000");
    assert_lines!(c.events(), ["run 1 sleep ms=1000", "run 5 sleep ms=1000"]);
    c.cmd(3, "@cancel id=1");
    // The transport stops everything when the lifecycle has failed; it is
    // told nothing more.
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        ["3 error-response protocol request 3: more than 1 requests cancelled within 10 requests started"]
    );
    assert!(c.lc.is_failed());
    // Nothing more is taken in, and the running commands' late results go
    // nowhere.
    c.body(5, "late");
    c.cmd(7, "echo");
    assert!(c.events().is_empty());
    assert!(c.out().is_empty());
    let counters = c.lc.take_counters();
    assert_eq!(
        (counters.requests_cancelled, counters.protocol_errors),
        (1, 1)
    );
}

#[test]
fn deadlines_are_not_counted_as_cancellations() {
    let mut c = one_cancel_per_ten();
    for round in 0..20u64 {
        c.cmd(1, "sleep ms=1000 @deadline=1");
        assert_lines!(c.events(), ["run 1 sleep ms=1000"]);
        c.tick(round + 1);
        assert_lines!(c.events(), ["cancel 1"]);
        assert_lines!(
            c.out(),
            ["1 error-response application timed out after 1 ms"]
        );
    }
    assert!(!c.lc.is_failed());
}

#[test]
fn cancel_a_held_request() {
    let mut c = Conn::new();
    c.cmd(1, "sleep");
    c.cmd(3, "get @after=1");
    c.cmd(5, "@cancel id=3");
    // 3 was never run, so there is nothing to stop.
    assert_lines!(c.events(), ["run 1 sleep"]);
    assert_eq!(
        c.out(),
        lines(&[
            "3 error-response application cancelled",
            "5 bytes-response eos cancelled"
        ])
    );
    c.body(1, "done");
    assert!(c.events().is_empty(), "3 never runs");
    assert_lines!(c.out(), ["1 bytes-response eos done"]);
    c.check_all_ended();
}

#[test]
fn cancel_a_request_still_receiving() {
    let mut c = Conn::new();
    c.frame("1 command-name have-args|have-data put");
    c.frame(&arg_line(1, "eoa", b"k", b"v"));
    c.frame("1 command-data continuation abc");
    c.wire.clear();
    c.cmd(3, "@cancel id=1");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "1 error-response application cancelled",
            "3 bytes-response eos cancelled"
        ]
    );
    assert_eq!(
        c.wire,
        wire_of(&[
            "1 error-response application cancelled",
            "3 bytes-response eos cancelled"
        ])
    );
    assert_eq!(c.lc.receiving(), 0);
    // Its further frames are dropped up to its last one.
    c.frame("1 command-data continuation def");
    c.frame("1 command-data eos ghi");
    assert!(c.events().is_empty());
    assert!(c.out().is_empty());
    assert!(!c.lc.is_failed());
    // The ID is free.
    c.cmd(1, "again");
    assert_lines!(c.events(), ["run 1 again"]);
    c.body(1, "ok");
    c.check_all_ended();
}

#[test]
fn cancel_a_request_still_receiving_then_reuse_its_id_at_once() {
    let mut c = Conn::new();
    c.frame("1 command-name have-args put");
    c.cmd(3, "@cancel id=1");
    c.out();
    // The client read `cancelled`: it may start a new command on 1 without
    // sending the rest of the old one.
    c.cmd(1, "get");
    assert_lines!(c.events(), ["run 1 get"]);
    c.body(1, "ok");
    assert_lines!(c.out(), ["1 bytes-response eos ok"]);
    c.check_all_ended();
}

#[test]
fn cancel_a_streaming_request() {
    let mut c = Conn::with_frame_size(32);
    c.cmd(1, "log");
    c.cmd(3, "get @after=1");
    c.events();
    c.stream(1);
    c.chunk(1, &"a".repeat(40));
    assert_lines!(
        c.out_upto(1),
        ["1 bytes-response continuation ".to_string() + &"a".repeat(32)]
    );
    c.wire.clear();
    c.cmd(5, "@cancel id=1");
    assert_lines!(c.events(), ["cancel 1"]);
    assert!(!c.lc.wants_chunk(c.token(1)));
    // What was not framed of the stream is dropped.
    let expected = [
        "1 error-response application cancelled",
        "3 error-response application dependency 1 failed",
        "5 bytes-response eos cancelled",
    ];
    assert_eq!(c.out(), lines(&expected));
    assert_eq!(c.wire, wire_of(&expected));
    c.chunk(1, "more");
    c.end(1, Ok(()));
    assert!(c.out().is_empty());
    c.check_all_ended();
}

#[test]
fn cancel_not_running() {
    let mut c = Conn::new();
    c.cmd(1, "a");
    c.events();
    c.body(1, "x");
    c.cmd(3, "@cancel id=1");
    c.cmd(5, "@cancel id=9");
    c.cmd(7, "@cancel id=7");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "1 bytes-response eos x",
            "3 bytes-response eos not running",
            "5 bytes-response eos not running",
            "7 bytes-response eos not running"
        ]
    );
    assert_eq!(c.lc.take_counters().requests_cancelled, 0);
    c.check_all_ended();
}

#[test]
fn cancel_without_a_valid_id() {
    let mut c = Conn::new();
    c.cmd(1, "@cancel");
    c.cmd(3, "@cancel id=x");
    c.cmd(5, "@cancel id=70000");
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "1 error-response application missing argument: id",
            "3 error-response application malformed argument id: `x` is not a valid value",
            "5 error-response application malformed argument id: `70000` is not a valid value"
        ]
    );
    c.check_all_ended();
}

#[test]
fn cancel_held_after_its_own_dependency() {
    // A held @cancel acts when it is released.
    let mut c = Conn::new();
    c.cmd(1, "a");
    c.cmd(3, "b");
    c.cmd(5, "@cancel id=3 @after=1");
    assert_lines!(c.events(), ["run 1 a", "run 3 b"]);
    c.body(1, "x");
    assert_lines!(c.events(), ["cancel 3"]);
    assert_lines!(
        c.out(),
        [
            "1 bytes-response eos x",
            "3 error-response application cancelled",
            "5 bytes-response eos cancelled"
        ]
    );
    c.check_all_ended();
}

// ------------------------------------------------------------ 8.6 @deadline

#[test]
fn a_deadline_stops_a_running_request() {
    let mut c = Conn::new();
    c.at(5).cmd(1, "sleep @deadline=100");
    assert_lines!(c.events(), ["run 1 sleep"]);
    assert_eq!(c.requests[&1].deadline, Some(c.t0 + ms(105)));
    assert_eq!(c.requests[&1].time_left(c.t0 + ms(45)), Some(ms(60)));
    assert_eq!(c.lc.poll_timeout(), Some(c.t0 + ms(105)));
    c.tick(104);
    assert!(c.events().is_empty());
    assert!(c.out().is_empty());
    c.tick(105);
    assert_lines!(c.events(), ["cancel 1"]);
    assert_lines!(
        c.out(),
        ["1 error-response application timed out after 100 ms"]
    );
    c.body(1, "late");
    assert!(c.out().is_empty());
    c.check_all_ended();
}

#[test]
fn a_deadline_counts_from_the_last_frame() {
    let mut c = Conn::new();
    c.at(0).frame("1 command-name have-args sleep");
    c.at(40).frame(&arg_line(1, "eoa", b"@deadline", b"100"));
    c.events();
    c.tick(139);
    assert!(c.out().is_empty());
    c.tick(140);
    assert_lines!(
        c.out(),
        ["1 error-response application timed out after 100 ms"]
    );
    c.check_all_ended();
}

#[test]
fn a_request_that_ends_in_time_is_not_stopped() {
    let mut c = Conn::new();
    c.cmd(1, "sleep @deadline=100");
    c.events();
    c.at(50);
    c.body(1, "ok");
    c.tick(1000);
    assert!(c.events().is_empty());
    assert_lines!(c.out(), ["1 bytes-response eos ok"]);
    c.check_all_ended();
}

#[test]
fn time_held_for_a_dependency_counts() {
    let mut c = Conn::new();
    c.cmd(1, "sleep");
    c.cmd(3, "get @after=1 @deadline=50");
    assert_lines!(c.events(), ["run 1 sleep"]);
    c.tick(50);
    // 3 never ran: nothing to stop, only its answer.
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        ["3 error-response application timed out after 50 ms"]
    );
    c.at(60);
    c.body(1, "ok");
    assert!(c.events().is_empty());
    assert_lines!(c.out(), ["1 bytes-response eos ok"]);
    c.check_all_ended();
}

#[test]
fn a_deadline_left_after_the_hold_is_what_the_handler_sees() {
    let mut c = Conn::new();
    c.cmd(1, "sleep");
    c.cmd(3, "get @after=1 @deadline=50");
    c.events();
    c.at(30);
    c.body(1, "ok");
    assert_lines!(c.events(), ["run 3 get"]);
    assert_eq!(c.requests[&3].time_left(c.now), Some(ms(20)));
    c.tick(50);
    assert_lines!(c.events(), ["cancel 3"]);
    assert_lines!(
        c.out(),
        [
            "1 bytes-response eos ok",
            "3 error-response application timed out after 50 ms"
        ]
    );
    c.check_all_ended();
}

#[test]
fn the_earlier_of_the_server_deadline_and_at_deadline_wins() {
    let mut c = Conn::with(LifecycleConfig {
        request_deadline: Some(ms(200)),
        ..LifecycleConfig::default()
    });
    c.cmd(1, "sleep @deadline=100");
    c.cmd(3, "sleep @deadline=500");
    c.cmd(5, "sleep");
    assert_eq!(c.events().len(), 3);
    assert_eq!(c.requests[&1].deadline, Some(c.t0 + ms(100)));
    assert_eq!(c.requests[&3].deadline, Some(c.t0 + ms(200)));
    assert_eq!(c.requests[&5].deadline, Some(c.t0 + ms(200)));
    c.tick(100);
    assert_lines!(c.events(), ["cancel 1"]);
    assert_lines!(
        c.out(),
        ["1 error-response application timed out after 100 ms"]
    );
    c.tick(199);
    assert!(c.out().is_empty());
    c.tick(200);
    assert_lines!(c.events(), ["cancel 3", "cancel 5"]);
    assert_lines!(
        c.out(),
        [
            "3 error-response application timed out after 200 ms",
            "5 error-response application timed out after 200 ms"
        ]
    );
    c.check_all_ended();
}

#[test]
fn a_deadline_stops_a_stream() {
    let mut c = Conn::new();
    c.cmd(1, "log @deadline=10");
    c.events();
    c.stream(1);
    c.chunk(1, "ab");
    assert_lines!(c.out(), ["1 bytes-response continuation ab"]);
    c.tick(10);
    assert_lines!(c.events(), ["cancel 1"]);
    assert_lines!(
        c.out(),
        ["1 error-response application timed out after 10 ms"]
    );
    c.check_all_ended();
}

#[test]
fn a_zero_deadline_ends_at_the_first_timeout() {
    let mut c = Conn::new();
    c.cmd(1, "sleep @deadline=0");
    c.events();
    assert_eq!(c.lc.poll_timeout(), Some(c.t0));
    c.tick(0);
    assert_lines!(
        c.out(),
        ["1 error-response application timed out after 0 ms"]
    );
    c.check_all_ended();
}

#[test]
fn malformed_deadline() {
    let mut c = Conn::new();
    for (id, value) in [
        (1, "5s"),
        (3, "-1"),
        (5, ""),
        (7, "1.5"),
        (9, "99999999999999999999"),
    ] {
        c.cmd(id, &format!("sleep @deadline={value}"));
    }
    assert!(c.events().is_empty());
    assert_lines!(
        c.out(),
        [
            "1 error-response application malformed @deadline: 5s",
            "3 error-response application malformed @deadline: -1",
            "5 error-response application malformed @deadline: ",
            "7 error-response application malformed @deadline: 1.5",
            "9 error-response application malformed @deadline: 99999999999999999999"
        ]
    );
    c.check_all_ended();
}

// ------------------------------------------------------------ timers

#[test]
fn the_assembly_timeout_fails_the_connection() {
    let mut c = Conn::new();
    c.at(0).frame("1 command-name have-args put");
    c.lc.set_input(true, false, c.now);
    assert_eq!(c.lc.poll_timeout(), Some(c.t0 + Duration::from_secs(30)));
    c.tick(29_999);
    assert!(!c.lc.is_failed());
    c.tick(30_000);
    assert!(c.lc.is_failed());
    assert_lines!(
        c.out(),
        ["0 error-response protocol request not complete within the assembly timeout of 30000 ms"]
    );
    assert_eq!(c.lc.in_flight(), 0);
    // Nothing more is taken in.
    c.cmd(3, "get");
    assert!(c.events().is_empty());
    assert!(c.out().is_empty());
}

#[test]
fn the_assembly_timer_restarts_when_a_command_completes_and_stops_while_not_reading() {
    let mut c = Conn::new();
    c.at(0).frame("1 command-name have-args put");
    c.frame("3 command-name have-args put");
    c.lc.set_input(true, false, c.now);
    c.at(20_000).frame(&arg_line(1, "eoa", b"k", b"v"));
    c.lc.set_input(true, false, c.now);
    assert_eq!(c.lc.poll_timeout(), Some(c.t0 + Duration::from_secs(50)));
    // Paused for backpressure: the wait is the server's own.
    c.at(21_000);
    c.lc.set_input(false, false, c.now);
    assert_eq!(c.lc.poll_timeout(), None);
    c.tick(100_000);
    assert!(!c.lc.is_failed());
    c.lc.set_input(true, false, c.now);
    assert_eq!(c.lc.poll_timeout(), Some(c.t0 + Duration::from_secs(130)));
    // A partial frame in the read buffer counts as assembling too.
    c.frame(&arg_line(3, "eoa", b"k", b"v"));
    c.lc.set_input(true, false, c.now);
    assert_eq!(c.lc.poll_timeout(), None);
    c.lc.set_input(true, true, c.now);
    assert_eq!(c.lc.poll_timeout(), Some(c.t0 + Duration::from_secs(130)));
    c.tick(130_000);
    assert!(c.lc.is_failed());
}

#[test]
fn the_idle_timeout_marks_the_connection_expired() {
    let mut c = Conn::new();
    c.lc.set_input(true, false, c.now);
    assert_eq!(c.lc.poll_timeout(), Some(c.t0 + Duration::from_secs(300)));
    // A request in flight is not idle.
    c.at(100_000).cmd(1, "sleep");
    c.events();
    c.lc.set_input(true, false, c.now);
    assert_eq!(c.lc.poll_timeout(), None);
    c.tick(500_000);
    assert!(!c.lc.idle_expired());
    c.body(1, "ok");
    // Unwritten output is not idle either.
    c.lc.set_input(true, false, c.now);
    assert_eq!(c.lc.poll_timeout(), None);
    c.out();
    c.lc.set_input(true, false, c.now);
    assert_eq!(c.lc.poll_timeout(), Some(c.t0 + Duration::from_secs(800)));
    c.tick(799_999);
    assert!(!c.lc.idle_expired());
    c.tick(800_000);
    assert!(c.lc.idle_expired());
    assert!(!c.lc.is_failed());
    c.check_all_ended();
}

#[test]
fn a_request_answered_between_two_input_checks_restarts_the_idle_clock() {
    // A transport may read a request, have it answered and write the
    // answer before it next reports its input: the idle clock must still
    // start again, from that report.
    let mut c = Conn::new();
    c.lc.set_input(true, false, c.now);
    assert_eq!(c.lc.poll_timeout(), Some(c.t0 + Duration::from_secs(300)));
    c.at(299_000).cmd(1, "echo");
    c.events();
    c.body(1, "hi");
    assert_eq!(c.out(), ["1 bytes-response eos hi"]);
    c.lc.set_input(true, false, c.now);
    assert_eq!(c.lc.poll_timeout(), Some(c.t0 + Duration::from_secs(599)));
    c.tick(300_000);
    assert!(!c.lc.idle_expired(), "idle since 0 s, not since 299 s");
    c.tick(599_000);
    assert!(c.lc.idle_expired());
    c.check_all_ended();
}

// ------------------------------------------------------------ in-order mode

fn in_order() -> Conn {
    Conn::with(LifecycleConfig {
        in_order: true,
        ..LifecycleConfig::default()
    })
}

#[test]
fn in_order_mode_sends_responses_in_request_order() {
    let mut c = in_order();
    c.cmd(1, "a");
    c.cmd(3, "b");
    c.cmd(5, "c @bad");
    c.events();
    c.body(3, "three");
    assert!(c.out().is_empty());
    c.body(1, "one");
    assert_lines!(
        c.out(),
        [
            "1 bytes-response eos one",
            "3 bytes-response eos three",
            "5 error-response application unknown reserved argument: @bad"
        ]
    );
    c.check_all_ended();
}

#[test]
fn in_order_mode_with_dependencies() {
    let mut c = in_order();
    c.cmd(1, "a @keep");
    c.cmd(3, "b @use:x=1");
    c.cmd(5, "c");
    c.events();
    c.body(5, "five");
    c.body(1, "one");
    assert_lines!(c.events(), ["run 3 b x=one"]);
    assert_lines!(c.out(), ["1 bytes-response eos one"]);
    c.body(3, "three");
    assert_lines!(
        c.out(),
        ["3 bytes-response eos three", "5 bytes-response eos five"]
    );
    c.check_all_ended();
}

#[test]
fn in_order_mode_cancel_writes_the_target_error_first() {
    // Running target.
    let mut c = in_order();
    c.cmd(1, "sleep");
    c.cmd(3, "@cancel id=1");
    assert_lines!(c.events(), ["run 1 sleep", "cancel 1"]);
    assert_lines!(
        c.out(),
        [
            "1 error-response application cancelled",
            "3 bytes-response eos cancelled"
        ]
    );
    c.check_all_ended();
    // Target still receiving.
    let mut c = in_order();
    c.frame("1 command-name have-args put");
    c.cmd(3, "@cancel id=1");
    assert_lines!(
        c.out(),
        [
            "1 error-response application cancelled",
            "3 bytes-response eos cancelled"
        ]
    );
    c.check_all_ended();
    // A target that began after the @cancel did (its turn came later), still
    // receiving or running.
    for target in ["1 command-name have-args put", "1 command-name eos sleep"] {
        let mut c = in_order();
        c.frame("3 command-name have-args @cancel");
        c.frame(target);
        c.frame(&arg_line(3, "eoa", b"id", b"1"));
        assert_lines!(
            c.out(),
            [
                "1 error-response application cancelled",
                "3 bytes-response eos cancelled"
            ]
        );
        c.check_all_ended();
    }
}

#[test]
fn in_order_mode_a_dependency_completed_after_its_dependent_is_no_deadlock() {
    // 1 begins first, 3 completes first and waits for 1.
    let mut c = in_order();
    c.frame("1 command-name have-args a");
    c.cmd(3, "b @after=1");
    c.frame(&arg_line(1, "eoa", b"k", b"v"));
    assert_lines!(c.events(), ["run 1 a k=v"]);
    c.body(1, "one");
    assert_lines!(c.events(), ["run 3 b"]);
    c.body(3, "three");
    assert_lines!(
        c.out(),
        ["1 bytes-response eos one", "3 bytes-response eos three"]
    );
    c.check_all_ended();
}

// ------------------------------------------------------------ end of input, chains

#[test]
fn end_of_input_fails_requests_still_arriving_and_their_dependents() {
    let mut c = Conn::new();
    c.frame("1 command-name have-args put");
    c.cmd(3, "get @after=1");
    c.cmd(5, "get");
    c.lc.on_input_eof(c.now);
    assert_lines!(c.events(), ["run 5 get"]);
    c.body(5, "ok");
    assert_lines!(
        c.out(),
        [
            "1 error-response application request 1: input ended before the command was complete (receiving arguments)",
            "3 error-response application dependency 1 failed",
            "5 bytes-response eos ok"
        ]
    );
    c.check_all_ended();
}

fn chain_of(n: u16, head_fails_first: bool) {
    let mut c = Conn::new();
    let fail_head = |c: &mut Conn| {
        c.error(1, "boom");
    };
    c.cmd(1, "add a=1 b=1 @keep");
    assert_lines!(c.events(), ["run 1 add a=1 b=1"]);
    if head_fails_first {
        fail_head(&mut c);
    }
    for i in 1..n {
        let id = 2 * i + 1;
        c.cmd(id, &format!("add @use:a={} b=1 @keep", id - 2));
    }
    if !head_fails_first {
        assert_eq!(c.lc.in_flight(), usize::from(n));
        fail_head(&mut c);
    }
    assert!(c.events().is_empty());
    let out = c.out();
    assert_eq!(out.len(), usize::from(n));
    assert_eq!(out[0], "1 error-response application boom");
    for i in 1..n {
        let id = 2 * i + 1;
        assert_eq!(
            out[usize::from(i)],
            format!(
                "{id} error-response application dependency {} failed",
                id - 2
            )
        );
    }
    c.check_all_ended();
}

#[test]
fn a_chain_of_10000_whose_head_fails_ends_every_link_without_deep_recursion() {
    // A small stack: recursion per link would overflow it.
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            chain_of(10_000, false);
            chain_of(10_000, true);
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_chain_of_10000_that_succeeds_runs_link_by_link() {
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            let mut c = Conn::new();
            c.cmd(1, "add a=0 b=1 @keep");
            for i in 1..10_000u16 {
                let id = 2 * i + 1;
                c.cmd(id, &format!("add @use:a={} b=1 @keep", id - 2));
            }
            for i in 0..10_000u16 {
                let id = 2 * i + 1;
                let events = c.events();
                assert_eq!(events.len(), 1, "{id}: {events:?}");
                let a: i64 = std::str::from_utf8(c.requests[&id].arg("a").unwrap())
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(a, i64::from(i));
                c.body(id, &(a + 1).to_string());
                // Kept bodies are freed only by a new command on their ID.
            }
            assert_eq!(c.out().len(), 10_000);
            c.check_all_ended();
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn a_chain_of_10000_answered_by_the_lifecycle_itself_ends_without_deep_recursion() {
    // Each `@capabilities` is answered, and so ends, where it is released:
    // the end of one releases the next, in a loop, not by recursion.
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            let mut c = Conn::new();
            c.cmd(1, "sleep");
            assert_eq!(c.events(), ["run 1 sleep"]);
            for i in 1..10_000u16 {
                let id = 2 * i + 1;
                c.cmd(id, &format!("@capabilities @after={}", id - 2));
            }
            assert_eq!(c.lc.in_flight(), 10_000);
            c.body(1, "slept");
            assert!(c.events().is_empty());
            let out = c.out();
            assert_eq!(out.len(), 10_000);
            assert_eq!(out[0], "1 bytes-response eos slept");
            for i in 1..10_000u16 {
                let id = 2 * i + 1;
                assert_eq!(
                    out[usize::from(i)],
                    format!(
                        "{id} bytes-response eos {}",
                        wiremux_proto::schedule::CAPABILITIES
                    )
                );
            }
            c.check_all_ended();
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn every_terminal_frame_is_counted() {
    // A mix of every way to end, checked by the harness's count.
    let mut c = Conn::with_frame_size(4);
    c.cmd(1, "a @keep");
    c.cmd(3, "b @use:x=1 @deadline=10");
    c.cmd(5, "c");
    c.cmd(7, "@cancel id=5");
    c.cmd(9, "d @nope");
    c.cmd(11, "@capabilities");
    c.frame("13 command-name have-args e");
    c.events();
    c.body(1, "long body here");
    c.tick(10);
    c.lc.on_input_eof(c.now);
    c.events();
    c.check_all_ended();
    let counters = c.lc.take_counters();
    assert_eq!(counters.requests_started, 7);
    assert_eq!(counters.requests_completed + counters.requests_failed, 7);
}

#[test]
fn abandon_drops_everything_unanswered() {
    let mut c = Conn::new();
    c.cmd(1, "a");
    c.cmd(3, "b @after=1");
    c.frame("5 command-name have-args c");
    c.events();
    c.lc.abandon();
    assert_eq!(c.lc.in_flight(), 0);
    assert_eq!(c.lc.executing(), 0);
    // 5, still arriving, was never taken in.
    assert_eq!(c.lc.take_counters().requests_abandoned, 2);
    c.body(1, "late");
    assert!(c.out().is_empty());
    assert!(c.events().is_empty());
}

#[test]
fn with_arg_helper_matches_the_builder() {
    // The script's own frames are the builder's, argument for argument.
    let built: Vec<String> = CommandBuilder::new("add")
        .arg("a", "1")
        .arg("b", "2")
        .frames(1, 65535)
        .unwrap()
        .iter()
        .map(format_frame)
        .collect();
    let ours: Vec<String> = command_lines(1, "add a=1 b=2")
        .iter()
        .map(|l| format_frame(&parse_frame(l).unwrap()))
        .collect();
    assert_eq!(built, ours);
    let mut c = Conn::new();
    c.cmd_raw(1, CommandBuilder::new("add").arg("a", "1").data("d"));
    assert_lines!(c.events(), ["run 1 add a=1 data(d)"]);
    c.body(1, "ok");
    c.check_all_ended();
}

#[test]
fn a_held_request_depends_on_the_request_it_named_not_on_a_later_one_on_that_id() {
    // 3 names request 1 (ended, kept) and waits for 5. The client may then
    // start a new command on ID 1 (3 is no longer being sent): that frees
    // the kept body for later @use (section 8.4), but 3 has taken it
    // already, and the new request on ID 1 is not the one 3 named.
    let mut c = Conn::new();
    c.cmd(1, "a @keep");
    c.cmd(5, "slow");
    c.events();
    c.body(1, "old");
    c.cmd(3, "b @use:x=1 @after=5");
    c.cmd(1, "a @keep");
    assert_eq!(c.lc.kept_bytes(), 0);
    assert_lines!(c.events(), ["run 1 a"]);
    c.body(1, "new");
    c.body(5, "ok");
    assert_lines!(c.events(), ["run 3 b x=old"]);
    c.body(3, "fine");
    c.cmd(7, "b @use:x=1");
    assert_lines!(c.events(), ["run 7 b x=new"]);
    c.body(7, "fine");
    assert_lines!(
        c.out(),
        [
            "1 bytes-response eos old",
            "1 bytes-response eos new",
            "5 bytes-response eos ok",
            "3 bytes-response eos fine",
            "7 bytes-response eos fine"
        ]
    );
    // And a later request on the ID that fails does not fail 3's dependency.
    let mut c = Conn::new();
    c.cmd(1, "a");
    c.cmd(5, "slow");
    c.events();
    c.body(1, "old");
    c.cmd(3, "b @after=1,5");
    c.cmd(1, "a");
    c.events();
    c.error(1, "no");
    c.body(5, "ok");
    assert_lines!(c.events(), ["run 3 b"]);
    c.body(3, "fine");
    c.check_all_ended();
}
