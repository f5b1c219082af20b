//! Exact-behaviour tests of the server reactor, written as scripts: a list
//! of steps, each a frame in human syntax (or an engine event) and the
//! action the reactor must answer with, spelled out as text.
//!
//! Steps:
//! - `<id> <type> <flags> <payload>`: a frame, fed with `on_frame`;
//! - `finished <id>`: `on_response_finished`;
//! - `respond <id> <payload>`: `on_bytes_response`;
//! - `fail <id> <message>`: `on_application_error`;
//! - `abandon`: `abandon_active` (the answer is the count);
//! - `eof`: `on_input_eof`.
//!
//! Actions are written as:
//! - `want <state>`;
//! - `run <id> <command>`, then ` args(<name>=<value> ...)` in arrival order
//!   when there are arguments, then ` data(<bytes>)` when the command has
//!   data (bytes in the human syntax's escapes);
//! - `request-error: <frames>` or `connection-error: <frames>`: the scope,
//!   then the error-response frames the error calls for, in human syntax,
//!   joined by ` / `;
//! - `send: <frames>`, the same way;
//! - `noop`.

use bytes::Bytes;
use wiremux_proto::builder::CommandBuilder;
use wiremux_proto::flood::FloodLimits;
use wiremux_proto::human::{escape, format_frame, parse_frame};
use wiremux_proto::reflect::reflect;
use wiremux_proto::server::{Action, ErrorKind, Limits, Scope, ServerReactor, State};
use wiremux_proto::Frame;
use wiremux_proto::Request;

fn frames_text(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(format_frame)
        .collect::<Vec<_>>()
        .join(" / ")
}

fn describe(action: &Action, max_send: usize) -> String {
    match action {
        Action::WantFrame { state } => format!("want {state}"),
        Action::RunCommand(cmd) => {
            let mut text = format!("run {} {}", cmd.request_id, escape(&cmd.name));
            if !cmd.args.is_empty() {
                let args: Vec<String> = cmd
                    .args
                    .iter()
                    .map(|(n, v)| format!("{}={}", escape(n), escape(v)))
                    .collect();
                text += &format!(" args({})", args.join(" "));
            }
            if let Some(data) = &cmd.data {
                text += &format!(" data({})", escape(data));
            }
            text
        }
        Action::Error(err) => {
            let scope = match err.scope() {
                Scope::Request => "request",
                Scope::Connection => "connection",
            };
            format!("{scope}-error: {}", frames_text(&err.frames(max_send)))
        }
        Action::SendFrames(frames) => format!("send: {}", frames_text(frames)),
        Action::Noop => "noop".to_string(),
    }
}

/// Runs one step and describes what came of it.
fn step(reactor: &mut ServerReactor, input: &str) -> String {
    let max_send = reactor.limits().max_send_payload;
    let (word, rest) = input.split_once(' ').unwrap_or((input, ""));
    let id = || rest.split(' ').next().unwrap().parse::<u16>().unwrap();
    let text = || rest.split_once(' ').map_or("", |(_, t)| t);
    let action = match word {
        "finished" => {
            reactor.on_response_finished(id());
            return String::new();
        }
        "abandon" => return reactor.abandon_active().to_string(),
        "respond" => reactor.on_bytes_response(id(), Bytes::from(text().to_string())),
        "fail" => reactor.on_application_error(id(), text()),
        "eof" => reactor.on_input_eof(),
        _ => {
            let frame = parse_frame(input).unwrap_or_else(|e| panic!("bad step {input:?}: {e}"));
            reactor.on_frame(frame)
        }
    };
    describe(&action, max_send)
}

/// Feeds every step to `reactor` and checks each answer.
fn check_with(mut reactor: ServerReactor, steps: &[(&str, &str)]) -> ServerReactor {
    for (n, (input, expected)) in steps.iter().enumerate() {
        let got = step(&mut reactor, input);
        assert_eq!(got, *expected, "step {} ({input:?})", n + 1);
    }
    reactor
}

fn check(steps: &[(&str, &str)]) -> ServerReactor {
    check_with(ServerReactor::new(), steps)
}

const RECEIVING: &str = "want command-receiving";

/// Feeds frames and returns the commands run, failing on any other action
/// than `WantFrame`.
fn run_frames(reactor: &mut ServerReactor, frames: Vec<Frame>) -> Vec<Request> {
    let mut commands = Vec::new();
    for frame in frames {
        match reactor.on_frame(frame) {
            Action::RunCommand(cmd) => commands.push(cmd),
            Action::WantFrame { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    commands
}

// ---------------------------------------------------------------- commands

#[test]
fn one_frame_command() {
    let reactor = check(&[("1 command-name eos heads", "run 1 heads")]);
    assert_eq!(reactor.state(), State::Idle);
    assert_eq!((reactor.active(), reactor.receiving()), (1, 0));
}

#[test]
fn one_frame_command_with_an_empty_name_and_any_odd_id() {
    check(&[
        ("65535 command-name eos ", "run 65535 "),
        ("7 command-name eos \\x00\\xff", "run 7 \\x00\\xff"),
    ]);
}

#[test]
fn arguments_complete_the_command_at_eoa() {
    let reactor = check(&[
        ("1 command-name have-args command1", RECEIVING),
        (r"1 command-argument 0 \x03\x00\x04\x00fooval1", RECEIVING),
        (
            r"1 command-argument eoa \x04\x00\x03\x00bar1val",
            "run 1 command1 args(foo=val1 bar1=val)",
        ),
    ]);
    assert_eq!(reactor.state(), State::Idle);
    assert_eq!(reactor.buffered_bytes(), 0);
}

#[test]
fn empty_argument_name_and_value_are_allowed() {
    check(&[
        ("1 command-name have-args c", RECEIVING),
        (
            r"1 command-argument eoa \x00\x00\x00\x00",
            "run 1 c args(=)",
        ),
    ]);
}

#[test]
fn argument_value_continues_over_frames() {
    check(&[
        ("1 command-name have-args c", RECEIVING),
        (
            r"1 command-argument continuation \x01\x00\x0a\x00kabc",
            RECEIVING,
        ),
        ("1 command-argument continuation def", RECEIVING),
        // A continuation frame may carry nothing.
        ("1 command-argument continuation ", RECEIVING),
        ("1 command-argument 0 ghij", RECEIVING),
        (
            r"1 command-argument eoa \x01\x00\x01\x00zZ",
            "run 1 c args(k=abcdefghij z=Z)",
        ),
    ]);
    // The value of the last argument may end with the eoa frame itself.
    check(&[
        ("3 command-name have-args c", RECEIVING),
        (
            r"3 command-argument continuation \x01\x00\x04\x00kab",
            RECEIVING,
        ),
        ("3 command-argument eoa cd", "run 3 c args(k=abcd)"),
    ]);
}

#[test]
fn builder_output_with_continuation_is_reassembled() {
    let value: Vec<u8> = (0..=255u8).cycle().take(70_000 - 4535).collect();
    let frames = CommandBuilder::new("c")
        .arg("big", value.clone())
        .arg("a", "x")
        .frames(9, 100)
        .unwrap();
    assert!(frames.len() > 600);
    let mut reactor = ServerReactor::new();
    let commands = run_frames(&mut reactor, frames);
    assert_eq!(
        commands,
        [Request {
            request_id: 9,
            name: Bytes::from("c"),
            args: vec![
                (Bytes::from("a"), Bytes::from("x")),
                (Bytes::from("big"), Bytes::from(value)),
            ],
            data: None,
            deadline: None,
        }]
    );
}

#[test]
fn data_in_several_frames() {
    check(&[
        ("1 command-name have-data put", RECEIVING),
        ("1 command-data continuation xxxx", RECEIVING),
        ("1 command-data continuation ", RECEIVING),
        ("1 command-data eos x", "run 1 put data(xxxxx)"),
        ("3 command-name have-data put", RECEIVING),
        ("3 command-data eos ", "run 3 put data()"),
    ]);
}

/// Builds a data-only command with `len` bytes, checks how many frames the
/// builder made at `max`, and that the reactor gives the data back whole.
fn data_round_trip(len: usize, max: usize, data_frames: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    let frames = CommandBuilder::new("put")
        .data(data.clone())
        .frames(1, max)
        .unwrap();
    assert_eq!(frames.len(), 1 + data_frames, "len {len}, max {max}");
    for f in &frames[1..] {
        assert!(f.payload.len() <= max);
    }
    let mut reactor = ServerReactor::new();
    let commands = run_frames(&mut reactor, frames);
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].data.as_deref(), Some(&data[..]));
    assert_eq!(reactor.buffered_bytes(), 0);
}

#[test]
fn data_at_exactly_and_just_over_the_max_frame_size() {
    data_round_trip(4, 4, 1);
    data_round_trip(5, 4, 2);
    data_round_trip(8, 4, 2);
    data_round_trip(9, 4, 3);
    data_round_trip(32768, 32768, 1);
    data_round_trip(32769, 32768, 2);
    data_round_trip(65536, 32768, 2);
    data_round_trip(65537, 32768, 3);
}

#[test]
fn single_frame_values_and_data_are_not_copied() {
    let frames = CommandBuilder::new("put")
        .arg("k", vec![1u8; 1000])
        .data(vec![2u8; 32768])
        .frames(1, 32768)
        .unwrap();
    let arg_value_at = frames[1].payload.as_ptr() as usize + 5;
    let data_at = frames[2].payload.as_ptr() as usize;
    let cmd = run_frames(&mut ServerReactor::new(), frames).remove(0);
    assert_eq!(cmd.args[0].1.as_ptr() as usize, arg_value_at);
    assert_eq!(cmd.data.unwrap().as_ptr() as usize, data_at);
}

#[test]
fn arguments_and_data_together() {
    check(&[
        ("5 command-name have-args|have-data put", RECEIVING),
        (r"5 command-argument eoa \x03\x00\x01\x00keyk", RECEIVING),
        ("5 command-data continuation v", RECEIVING),
        ("5 command-data eos w", "run 5 put args(key=k) data(vw)"),
    ]);
    let frames = CommandBuilder::new("put")
        .arg("key", "k".repeat(50))
        .arg("a", "")
        .data("d".repeat(33))
        .frames(5, 16)
        .unwrap();
    let commands = run_frames(&mut ServerReactor::new(), frames);
    assert_eq!(
        commands,
        [Request {
            request_id: 5,
            name: Bytes::from("put"),
            args: vec![
                (Bytes::from("a"), Bytes::new()),
                (Bytes::from("key"), Bytes::from("k".repeat(50))),
            ],
            data: Some(Bytes::from("d".repeat(33))),
            deadline: None,
        }]
    );
}

#[test]
fn interleaved_commands_complete_in_the_order_their_last_frames_arrive() {
    let reactor = check(&[
        ("1 command-name have-args a", RECEIVING),
        ("3 command-name have-data b", RECEIVING),
        ("5 command-name eos c", "run 5 c"),
        (
            r"1 command-argument continuation \x01\x00\x02\x00kx",
            RECEIVING,
        ),
        ("3 command-data continuation 3", RECEIVING),
        ("7 command-name have-args|have-data d", RECEIVING),
        (r"7 command-argument eoa \x01\x00\x01\x00n7", RECEIVING),
        ("3 command-data eos 33", "run 3 b data(333)"),
        ("1 command-argument eoa y", "run 1 a args(k=xy)"),
        ("9 command-name eos e", "run 9 e"),
        ("7 command-data eos 77", "run 7 d args(n=7) data(77)"),
    ]);
    assert_eq!((reactor.active(), reactor.receiving()), (5, 0));
}

#[test]
fn arguments_of_different_requests_arrive_out_of_order() {
    check(&[
        ("1 command-name have-args first", RECEIVING),
        ("3 command-name have-args second", RECEIVING),
        (r"3 command-argument 0 \x01\x00\x01\x00bB", RECEIVING),
        (
            r"3 command-argument eoa \x01\x00\x01\x00aA",
            "run 3 second args(b=B a=A)",
        ),
        (r"1 command-argument 0 \x01\x00\x01\x00aA", RECEIVING),
        (
            r"1 command-argument eoa \x01\x00\x01\x00bB",
            "run 1 first args(a=A b=B)",
        ),
    ]);
}

#[test]
fn state_is_idle_when_nothing_is_left_receiving() {
    let reactor = check(&[
        ("1 command-name have-data a", RECEIVING),
        ("1 command-data eos x", "run 1 a data(x)"),
        ("3 command-name eos b", "run 3 b"),
    ]);
    assert_eq!(reactor.state(), State::Idle);
    // Discarded frames do not count as receiving.
    check(&[
        ("1 command-name have-args a", RECEIVING),
        (
            "1 command-data continuation x",
            "request-error: 1 error-response application request 1: unexpected command-data frame; expected command-argument",
        ),
        ("3 command-name have-args b", RECEIVING),
        (r"3 command-argument eoa \x01\x00\x01\x00kv", "run 3 b args(k=v)"),
    ]);
}

// ------------------------------------------------------- request-level errors

#[test]
fn argument_frame_the_request_does_not_expect() {
    check(&[
        ("1 command-name have-data put", RECEIVING),
        (
            r"1 command-argument eoa \x01\x00\x01\x00kv",
            "request-error: 1 error-response application request 1: unexpected command-argument frame; expected command-data",
        ),
        // Dropped until the request's last frame, its data eos.
        ("1 command-data continuation x", "noop"),
        ("1 command-data eos x", "noop"),
        ("1 command-name eos again", "run 1 again"),
    ]);
    // After eoa of a command with data, another argument is unexpected too.
    check(&[
        ("3 command-name have-args|have-data put", RECEIVING),
        (r"3 command-argument eoa \x01\x00\x01\x00kv", RECEIVING),
        (
            r"3 command-argument eoa \x01\x00\x01\x00jv",
            "request-error: 3 error-response application request 3: unexpected command-argument frame; expected command-data",
        ),
        ("3 command-data eos x", "noop"),
        (
            "3 command-data eos x",
            "connection-error: 3 error-response protocol request 3: command-data frame for a request that was never started",
        ),
    ]);
}

#[test]
fn data_frame_the_request_does_not_expect() {
    check(&[
        ("1 command-name have-args c", RECEIVING),
        (
            "1 command-data continuation x",
            "request-error: 1 error-response application request 1: unexpected command-data frame; expected command-argument",
        ),
        // The request had no data, so its last frame is the argument with eoa.
        (r"1 command-argument 0 \x01\x00\x01\x00kv", "noop"),
        (r"1 command-argument eoa \x01\x00\x01\x00jv", "noop"),
        ("1 command-name eos again", "run 1 again"),
    ]);
    // A data frame marked eos ends the request (the frame says it is the last).
    check(&[
        ("3 command-name have-args c", RECEIVING),
        (
            "3 command-data eos x",
            "request-error: 3 error-response application request 3: unexpected command-data frame; expected command-argument",
        ),
        ("3 command-name eos again", "run 3 again"),
    ]);
}

#[test]
fn response_frames_from_the_client_are_unexpected() {
    check(&[
        ("1 command-name have-data c", RECEIVING),
        (
            "1 bytes-response eos x",
            "request-error: 1 error-response application request 1: unexpected bytes-response frame; expected command-data",
        ),
        ("1 error-response application x", "noop"),
        ("1 command-data eos x", "noop"),
    ]);
}

#[test]
fn command_name_with_no_flags() {
    check(&[
        (
            "1 command-name 0 c",
            "request-error: 1 error-response application request 1: command-name flags must be eos alone, or have-args and/or have-data; got 0",
        ),
        // It announced nothing, so an argument frame with eoa ends it.
        (r"1 command-argument eoa \x01\x00\x01\x00kv", "noop"),
        (
            r"1 command-argument eoa \x01\x00\x01\x00kv",
            "connection-error: 1 error-response protocol request 1: command-argument frame for a request that was never started",
        ),
    ]);
}

#[test]
fn command_name_with_eos_and_other_flags() {
    check(&[
        (
            "1 command-name eos|have-args c",
            "request-error: 1 error-response application request 1: command-name flags must be eos alone, or have-args and/or have-data; got eos|have-args",
        ),
        // The arguments it announced are dropped, not a protocol error.
        (r"1 command-argument eoa \x01\x00\x01\x00kv", "noop"),
        (
            "3 command-name eos|have-data c",
            "request-error: 3 error-response application request 3: command-name flags must be eos alone, or have-args and/or have-data; got eos|have-data",
        ),
        ("3 command-data continuation x", "noop"),
        ("3 command-data eos x", "noop"),
        (
            "5 command-name eos|have-args|have-data c",
            "request-error: 5 error-response application request 5: command-name flags must be eos alone, or have-args and/or have-data; got eos|have-args|have-data",
        ),
        (r"5 command-argument eoa \x01\x00\x01\x00kv", "noop"),
        ("5 command-data eos x", "noop"),
        // A flag this version does not define.
        (
            "7 command-name eos|8 c",
            "request-error: 7 error-response application request 7: command-name flags must be eos alone, or have-args and/or have-data; got eos|8",
        ),
        ("7 command-name eos c", "run 7 c"),
        (
            "9 command-name have-args|8 c",
            "request-error: 9 error-response application request 9: command-name flags must be eos alone, or have-args and/or have-data; got have-args|8",
        ),
        // Nothing is left open on the connection.
        ("eof", "noop"),
    ]);
}

#[test]
fn a_discarded_request_id_takes_a_new_command_at_once() {
    check(&[
        (
            "1 command-name 0 c",
            "request-error: 1 error-response application request 1: command-name flags must be eos alone, or have-args and/or have-data; got 0",
        ),
        ("1 command-name have-args d", RECEIVING),
        (r"1 command-argument eoa \x01\x00\x01\x00kv", "run 1 d args(k=v)"),
    ]);
}

/// The start of a script with request 1 receiving arguments.
fn with_args(frames: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut steps = vec![("1 command-name have-args c", RECEIVING)];
    steps.extend_from_slice(frames);
    steps
}

#[test]
fn partial_argument_name() {
    check(&with_args(&[
        (
            r"1 command-argument eoa \x05\x00\x00\x00ab",
            "request-error: 1 error-response application request 1: argument name of 5 bytes does not fit in its first frame (2 bytes follow the header)",
        ),
        ("3 command-name eos next", "run 3 next"),
    ]));
    // Even with the continuation flag, the name must be whole in the first frame.
    check(&with_args(&[(
        r"1 command-argument continuation \x05\x00\x01\x00abcd",
        "request-error: 1 error-response application request 1: argument name of 5 bytes does not fit in its first frame (4 bytes follow the header)",
    )]));
}

#[test]
fn argument_shorter_than_its_prefix() {
    check(&with_args(&[(
        r"1 command-argument eoa \x01\x00\x00",
        "request-error: 1 error-response application request 1: command-argument frame of 3 bytes is shorter than its 4-byte header",
    )]));
    check(&with_args(&[(
        "1 command-argument eoa ",
        "request-error: 1 error-response application request 1: command-argument frame of 0 bytes is shorter than its 4-byte header",
    )]));
}

#[test]
fn partial_argument_value_without_continuation() {
    check(&with_args(&[
        (
            r"1 command-argument eoa \x01\x00\x05\x00kab",
            "request-error: 1 error-response application request 1: argument `k`: frame ends with 2 of 5 value bytes and no continuation flag",
        ),
        ("1 command-name eos again", "run 1 again"),
    ]));
    // In a continuation frame too.
    check(&with_args(&[
        (r"1 command-argument continuation \x01\x00\x05\x00kab", RECEIVING),
        (
            "1 command-argument 0 cd",
            "request-error: 1 error-response application request 1: argument `k`: frame ends with 4 of 5 value bytes and no continuation flag",
        ),
        (r"1 command-argument eoa \x01\x00\x01\x00zz", "noop"),
    ]));
}

#[test]
fn argument_value_longer_than_declared() {
    check(&with_args(&[(
        r"1 command-argument eoa \x01\x00\x02\x00kabc",
        "request-error: 1 error-response application request 1: argument `k`: 3 value bytes, but 2 declared",
    )]));
    check(&with_args(&[
        (r"1 command-argument continuation \x01\x00\x03\x00kab", RECEIVING),
        (
            "1 command-argument eoa cd",
            "request-error: 1 error-response application request 1: argument `k`: 4 value bytes, but 3 declared",
        ),
    ]));
}

#[test]
fn needless_continuation() {
    check(&with_args(&[(
        r"1 command-argument continuation \x01\x00\x02\x00kab",
        "request-error: 1 error-response application request 1: argument `k`: continuation flag on a frame that completes the value",
    )]));
    check(&with_args(&[
        (r"1 command-argument continuation \x01\x00\x03\x00kab", RECEIVING),
        (
            "1 command-argument continuation c",
            "request-error: 1 error-response application request 1: argument `k`: continuation flag on a frame that completes the value",
        ),
    ]));
    check(&with_args(&[(
        r"1 command-argument continuation \x01\x00\x00\x00k",
        "request-error: 1 error-response application request 1: argument `k`: continuation flag on a frame that completes the value",
    )]));
}

#[test]
fn continuation_and_eoa_together() {
    check(&with_args(&[
        (
            r"1 command-argument continuation|eoa \x01\x00\x01\x00kv",
            "request-error: 1 error-response application request 1: command-argument frame with both continuation and eoa",
        ),
        // That frame carried eoa, so it was the request's last.
        ("1 command-name eos again", "run 1 again"),
    ]));
}

#[test]
fn data_frame_without_exactly_one_flag() {
    let start = ("1 command-name have-data put", RECEIVING);
    check(&[
        start,
        (
            "1 command-data 0 x",
            "request-error: 1 error-response application request 1: command-data frame needs exactly one of continuation or eos; got 0",
        ),
        ("1 command-data eos x", "noop"),
    ]);
    check(&[
        start,
        (
            "1 command-data continuation|eos x",
            "request-error: 1 error-response application request 1: command-data frame needs exactly one of continuation or eos; got continuation|eos",
        ),
        ("1 command-name eos again", "run 1 again"),
    ]);
    check(&[
        start,
        (
            "1 command-data eos|4 x",
            "request-error: 1 error-response application request 1: command-data frame needs exactly one of continuation or eos; got eos|4",
        ),
    ]);
}

#[test]
fn duplicate_argument() {
    check(&with_args(&[
        (r"1 command-argument 0 \x01\x00\x01\x00kv", RECEIVING),
        (
            r"1 command-argument eoa \x01\x00\x01\x00kw",
            "request-error: 1 error-response application request 1: argument `k` given twice",
        ),
        ("1 command-name eos again", "run 1 again"),
    ]));
}

#[test]
fn a_failed_request_is_discarded_while_the_others_go_on() {
    let reactor = check(&[
        ("1 command-name have-args|have-data bad", RECEIVING),
        ("3 command-name have-args|have-data good", RECEIVING),
        (
            r"1 command-argument eoa \x01\x00",
            "request-error: 1 error-response application request 1: command-argument frame of 2 bytes is shorter than its 4-byte header",
        ),
        (r"3 command-argument eoa \x01\x00\x01\x00kv", RECEIVING),
        // Request 1 announced data, so its frames are dropped until data eos.
        (r"1 command-argument eoa \x01\x00\x01\x00kv", "noop"),
        ("1 command-data continuation x", "noop"),
        ("3 command-data continuation d", RECEIVING),
        ("5 command-name eos other", "run 5 other"),
        ("1 command-data eos x", "noop"),
        ("3 command-data eos d", "run 3 good args(k=v) data(dd)"),
        ("1 command-name eos again", "run 1 again"),
    ]);
    assert_eq!((reactor.active(), reactor.receiving()), (3, 0));
    assert_eq!(reactor.buffered_bytes(), 0);
}

// ---------------------------------------------------- connection-level errors

#[test]
fn command_name_for_an_id_still_receiving() {
    let reactor = check(&[
        ("1 command-name have-args c", RECEIVING),
        (
            "1 command-name eos d",
            "connection-error: 1 error-response protocol request 1: command-name frame for an ID whose command is still being received",
        ),
    ]);
    assert_eq!(reactor.state(), State::Errored);
}

#[test]
fn command_name_for_an_active_id_until_its_response_is_finished() {
    check(&[
        ("1 command-name eos a", "run 1 a"),
        (
            "1 command-name eos b",
            "connection-error: 1 error-response protocol request 1: command-name frame for an ID whose command is still running",
        ),
    ]);
    check(&[
        ("1 command-name eos a", "run 1 a"),
        ("3 command-name eos x", "run 3 x"),
        // Finishing another ID, or an ID never used, changes nothing for 1.
        ("finished 3", ""),
        ("finished 11", ""),
        (
            "1 command-name have-args b",
            "connection-error: 1 error-response protocol request 1: command-name frame for an ID whose command is still running",
        ),
    ]);
    let reactor = check(&[
        ("1 command-name have-data a", RECEIVING),
        ("1 command-data eos x", "run 1 a data(x)"),
        ("finished 1", ""),
        ("1 command-name eos b", "run 1 b"),
        ("finished 1", ""),
        // Finishing twice is harmless.
        ("finished 1", ""),
        ("1 command-name eos c", "run 1 c"),
    ]);
    assert_eq!(reactor.active(), 1);
}

#[test]
fn a_response_frees_the_id() {
    check(&[
        ("1 command-name eos a", "run 1 a"),
        ("respond 1 A", "send: 1 bytes-response eos A"),
        ("1 command-name eos b", "run 1 b"),
        (
            "fail 1 it broke",
            "send: 1 error-response application it broke",
        ),
        ("1 command-name eos c", "run 1 c"),
    ]);
}

#[test]
fn abandoned_ids_are_free_again() {
    let reactor = check(&[
        ("1 command-name eos a", "run 1 a"),
        ("3 command-name eos b", "run 3 b"),
        ("5 command-name have-args c", RECEIVING),
        ("abandon", "2"),
        ("abandon", "0"),
        ("1 command-name eos a", "run 1 a"),
    ]);
    assert_eq!((reactor.active(), reactor.receiving()), (1, 1));
}

#[test]
fn command_on_an_even_id() {
    check(&[(
        "2 command-name eos a",
        "connection-error: 2 error-response protocol request 2: a client command must use an odd request ID",
    )]);
    check(&[(
        "0 command-name have-args a",
        "connection-error: 0 error-response protocol request 0: a client command must use an odd request ID",
    )]);
}

#[test]
fn unknown_frame_types() {
    for t in [0u8, 6, 7, 8, 15] {
        let line = format!("1 {t} 0 x");
        let expected = format!(
            "connection-error: 1 error-response protocol request 1: frame of unknown type {t}"
        );
        check(&[(line.as_str(), expected.as_str())]);
    }
    // Also for a request that is receiving.
    check(&[
        ("3 command-name have-data c", RECEIVING),
        (
            "3 9 2 x",
            "connection-error: 3 error-response protocol request 3: frame of unknown type 9",
        ),
    ]);
}

#[test]
fn frame_for_a_request_never_started() {
    check(&[(
        r"5 command-argument eoa \x01\x00\x01\x00kv",
        "connection-error: 5 error-response protocol request 5: command-argument frame for a request that was never started",
    )]);
    check(&[(
        "5 command-data eos x",
        "connection-error: 5 error-response protocol request 5: command-data frame for a request that was never started",
    )]);
    check(&[(
        "4 bytes-response eos x",
        "connection-error: 4 error-response protocol request 4: bytes-response frame for a request that was never started",
    )]);
}

#[test]
fn frame_for_a_request_already_complete() {
    check(&[
        ("1 command-name eos a", "run 1 a"),
        (
            "1 command-data eos x",
            "connection-error: 1 error-response protocol request 1: command-data frame for a request whose command is already complete",
        ),
    ]);
}

#[test]
fn errored_state_refuses_every_later_frame() {
    let reactor = check(&[
        ("1 command-name have-args a", RECEIVING),
        (
            "2 command-name eos a",
            "connection-error: 2 error-response protocol request 2: a client command must use an odd request ID",
        ),
        (
            "3 command-name eos fine",
            "connection-error: 3 error-response protocol request 3: frame refused: an earlier protocol error ended this connection",
        ),
        (
            r"1 command-argument eoa \x01\x00\x01\x00kv",
            "connection-error: 1 error-response protocol request 1: frame refused: an earlier protocol error ended this connection",
        ),
    ]);
    assert_eq!(reactor.state(), State::Errored);
}

// ------------------------------------------------------------------ limits

fn limits() -> Limits {
    Limits {
        max_receiving: 2,
        max_args: 2,
        max_request_bytes: 12,
        max_connection_bytes: 20,
        max_send_payload: 32768,
        max_discard_bytes: 30,
        flood: FloodLimits::default(),
    }
}

#[test]
fn default_limits() {
    assert_eq!(
        Limits::default(),
        Limits {
            max_receiving: 1024,
            max_args: 256,
            max_request_bytes: 8 * 1024 * 1024,
            max_connection_bytes: 32 * 1024 * 1024,
            max_send_payload: 32768,
            max_discard_bytes: 8 * 1024 * 1024,
            flood: FloodLimits {
                window: 1024,
                max_errors: 128,
                max_cancelled: 384,
                cancel_burst: 1024,
            },
        }
    );
}

#[test]
fn too_many_requests_receiving() {
    let reactor = check_with(
        ServerReactor::with_limits(limits()),
        &[
            ("1 command-name have-args a", RECEIVING),
            ("3 command-name have-data b", RECEIVING),
            // One-frame commands never wait, so they are not counted.
            ("5 command-name eos c", "run 5 c"),
            (
                "7 command-name have-args d",
                "connection-error: 7 error-response protocol request 7: more than 2 requests being received at once",
            ),
        ],
    );
    assert_eq!(reactor.receiving(), 2);
    // A finished request makes room.
    check_with(
        ServerReactor::with_limits(limits()),
        &[
            ("1 command-name have-args a", RECEIVING),
            ("3 command-name have-data b", RECEIVING),
            ("3 command-data eos x", "run 3 b data(x)"),
            ("7 command-name have-args d", RECEIVING),
        ],
    );
}

#[test]
fn too_many_arguments() {
    check_with(
        ServerReactor::with_limits(Limits {
            max_request_bytes: 100,
            ..limits()
        }),
        &[
            ("1 command-name have-args a", RECEIVING),
            (r"1 command-argument 0 \x01\x00\x00\x00a", RECEIVING),
            (r"1 command-argument 0 \x01\x00\x00\x00b", RECEIVING),
            (
                r"1 command-argument eoa \x01\x00\x00\x00c",
                "request-error: 1 error-response application request 1: more than 2 arguments",
            ),
            ("3 command-name have-args a", RECEIVING),
            (r"3 command-argument 0 \x01\x00\x00\x00a", RECEIVING),
            (
                r"3 command-argument eoa \x01\x00\x00\x00b",
                "run 3 a args(a= b=)",
            ),
        ],
    );
}

#[test]
fn too_many_bytes_for_one_request() {
    // Argument frames count in full (prefix and name too): 6 + 6 = 12 is the limit.
    check_with(
        ServerReactor::with_limits(limits()),
        &[
            ("1 command-name have-args|have-data a", RECEIVING),
            (r"1 command-argument eoa \x01\x00\x01\x00kv", RECEIVING),
            ("1 command-data continuation 12345", RECEIVING),
            ("1 command-data eos 6", "run 1 a args(k=v) data(123456)"),
            ("3 command-name have-data a", RECEIVING),
            ("3 command-data continuation 1234567890", RECEIVING),
            (
                "3 command-data eos 123",
                "request-error: 3 error-response application request 3: more than 12 bytes of arguments and data",
            ),
            ("3 command-name eos again", "run 3 again"),
        ],
    );
}

#[test]
fn too_many_bytes_for_the_connection() {
    let reactor = check_with(
        ServerReactor::with_limits(limits()),
        &[
            ("1 command-name have-data a", RECEIVING),
            ("3 command-name have-data b", RECEIVING),
            ("1 command-data continuation 1234567890", RECEIVING),
            ("3 command-data continuation 123456789", RECEIVING),
            ("3 command-data continuation 0", RECEIVING),
            (
                "1 command-data continuation x",
                "connection-error: 1 error-response protocol request 1: more than 20 bytes buffered for requests still being received on this connection",
            ),
        ],
    );
    assert_eq!(reactor.buffered_bytes(), 20);
    // Bytes of a complete command no longer count.
    let reactor = check_with(
        ServerReactor::with_limits(limits()),
        &[
            ("1 command-name have-data a", RECEIVING),
            ("3 command-name have-data b", RECEIVING),
            ("1 command-data eos 1234567890", "run 1 a data(1234567890)"),
            ("3 command-data continuation 1234567890", RECEIVING),
            ("5 command-name have-data c", RECEIVING),
            ("5 command-data eos 1234567890", "run 5 c data(1234567890)"),
        ],
    );
    assert_eq!(reactor.buffered_bytes(), 10);
}

// ------------------------------------------------ bounded discarding, floods

const DISCARD_LIMIT: &str = "connection-error: 1 error-response protocol request 1: more than 30 bytes sent for a request after it was refused; closing the connection";

#[test]
fn a_refused_request_may_stream_only_up_to_the_discard_limit() {
    // `limits()` drops at most 30 bytes, frames counted with their 6-byte
    // headers: two 15-byte frames are dropped, the third is too many.
    let reactor = check_with(
        ServerReactor::with_limits(limits()),
        &[
            ("1 command-name have-data a", RECEIVING),
            ("1 command-data continuation 1234567890", RECEIVING),
            (
                "1 command-data continuation 123",
                "request-error: 1 error-response application request 1: more than 12 bytes of arguments and data",
            ),
            ("1 command-data continuation 123456789", "noop"),
            ("1 command-data continuation 123456789", "noop"),
            ("1 command-data continuation 1", DISCARD_LIMIT),
            (
                "3 command-name eos b",
                "connection-error: 3 error-response protocol request 3: frame refused: an earlier protocol error ended this connection",
            ),
        ],
    );
    assert_eq!(reactor.state(), State::Errored);
}

#[test]
fn the_last_frame_within_the_discard_limit_ends_the_request_quietly() {
    check_with(
        ServerReactor::with_limits(limits()),
        &[
            ("1 command-name have-data a", RECEIVING),
            (
                "1 command-data 0 x",
                "request-error: 1 error-response application request 1: command-data frame needs exactly one of continuation or eos; got 0",
            ),
            ("1 command-data continuation 123456789", "noop"),
            // 15 + 15: exactly the limit, and the request's last frame.
            ("1 command-data eos 123456789", "noop"),
            ("3 command-name eos b", "run 3 b"),
            // A new command on the ID starts a new count.
            ("1 command-name have-data a", RECEIVING),
            (
                "1 command-data 0 x",
                "request-error: 1 error-response application request 1: command-data frame needs exactly one of continuation or eos; got 0",
            ),
            ("1 command-data continuation 123456789", "noop"),
            ("1 command-data continuation 123456789", "noop"),
            ("1 command-name eos c", "run 1 c"),
        ],
    );
}

#[test]
fn empty_frames_count_towards_the_discard_limit() {
    // Without their headers, empty frames would be dropped for ever.
    let mut steps = vec![
        ("1 command-name have-data a", RECEIVING),
        (
            "1 command-data 0 x",
            "request-error: 1 error-response application request 1: command-data frame needs exactly one of continuation or eos; got 0",
        ),
    ];
    steps.extend(std::iter::repeat_n(
        ("1 command-data continuation ", "noop"),
        5,
    ));
    steps.push(("1 command-data continuation ", DISCARD_LIMIT));
    check_with(ServerReactor::with_limits(limits()), &steps);
}

#[test]
fn an_argument_past_its_declared_length_may_go_on_only_up_to_the_discard_limit() {
    check_with(
        ServerReactor::with_limits(limits()),
        &[
            ("1 command-name have-args a", RECEIVING),
            (r"1 command-argument continuation \x01\x00\x02\x00kv", RECEIVING),
            (
                "1 command-argument continuation xyz",
                "request-error: 1 error-response application request 1: argument `k`: 4 value bytes, but 2 declared",
            ),
            // Its continuation frames are dropped (16 bytes each)...
            ("1 command-argument continuation 0123456789", "noop"),
            // ...until they pass the limit.
            ("1 command-argument continuation 0123456789", DISCARD_LIMIT),
        ],
    );
}

#[test]
fn the_default_discard_limit_is_the_request_limit() {
    let mut reactor = ServerReactor::new();
    let start = |r: &mut ServerReactor| {
        r.on_frame(parse_frame("1 command-name have-data echo").unwrap());
        assert!(matches!(
            r.on_frame(parse_frame("1 command-data 0 x").unwrap()),
            Action::Error(e) if e.scope() == Scope::Request
        ));
    };
    start(&mut reactor);
    // 256 frames of 32762 bytes and their headers: exactly 8 MiB.
    let frame = Frame::new(
        1,
        wiremux_proto::FrameType::COMMAND_DATA,
        wiremux_proto::Flags::new(wiremux_proto::Flags::CONTINUATION),
        vec![0u8; 32762],
    );
    for _ in 0..256 {
        assert_eq!(reactor.on_frame(frame.clone()), Action::Noop);
    }
    let Action::Error(err) = reactor.on_frame(parse_frame("1 command-data eos ").unwrap()) else {
        panic!("expected an error")
    };
    assert_eq!(
        format_frame(&err.frame(32768)),
        "1 error-response protocol request 1: more than 8388608 bytes sent for a request after it was refused; closing the connection"
    );
}

fn flood_limits(window: u32, max_errors: u32, max_cancelled: u32) -> Limits {
    Limits {
        flood: FloodLimits {
            window,
            max_errors,
            max_cancelled,
            cancel_burst: 0,
        },
        ..Limits::default()
    }
}

const BAD_FLAGS: &str =
    "command-name flags must be eos alone, or have-args and/or have-data; got 0";

#[test]
fn too_many_request_errors_close_the_connection() {
    // 2 per 4 requests started: a burst of 2, then one per 2 started.
    let e = |id: u16| {
        format!("request-error: {id} error-response application request {id}: {BAD_FLAGS}")
    };
    let (e1, e3, e7, e9) = (e(1), e(3), e(7), e(9));
    let reactor = check_with(
        ServerReactor::with_limits(flood_limits(4, 2, 0)),
        &[
            // The burst spends the allowance...
            ("1 command-name 0 a", &e1),
            ("3 command-name 0 a", &e3),
            // ...two requests started earn one more...
            ("5 command-name eos ok", "run 5 ok"),
            ("7 command-name 0 a", &e7),
            // ...and two errors in a row spend more than one request earns.
            ("9 command-name 0 a", &e9),
            (
                "11 command-name 0 a",
                "connection-error: 11 error-response protocol request 11: more than 2 requests refused with an error within 4 requests started",
            ),
            (
                "13 command-name eos ok",
                "connection-error: 13 error-response protocol request 13: frame refused: an earlier protocol error ended this connection",
            ),
        ],
    );
    assert_eq!(reactor.state(), State::Errored);
}

#[test]
fn every_kind_of_request_level_error_counts() {
    // An error in the middle of a request counts as one in its first frame.
    check_with(
        ServerReactor::with_limits(flood_limits(100, 1, 0)),
        &[
            ("1 command-name have-args a", RECEIVING),
            (
                r"1 command-argument eoa \x01\x00",
                "request-error: 1 error-response application request 1: command-argument frame of 2 bytes is shorter than its 4-byte header",
            ),
            ("3 command-name have-data a", RECEIVING),
            (
                "3 command-argument eoa x",
                "connection-error: 3 error-response protocol request 3: more than 1 requests refused with an error within 100 requests started",
            ),
        ],
    );
}

#[test]
fn connection_level_errors_and_application_errors_are_not_counted() {
    // `fail` is the handler's own error, not the reactor's.
    let reactor = check_with(
        ServerReactor::with_limits(flood_limits(100, 1, 0)),
        &[
            ("1 command-name eos a", "run 1 a"),
            ("fail 1 no", "send: 1 error-response application no"),
            ("3 command-name eos a", "run 3 a"),
            ("fail 3 no", "send: 3 error-response application no"),
            (
                "5 command-name 0 a",
                "request-error: 5 error-response application request 5: command-name flags must be eos alone, or have-args and/or have-data; got 0",
            ),
        ],
    );
    assert_eq!(reactor.state(), State::Idle);
}

#[test]
fn too_many_cancellations_close_the_connection() {
    let mut reactor = ServerReactor::with_limits(flood_limits(4, 1, 2));
    // A burst of 2, then one per 2 requests started; three in a row are
    // one too many.
    for id in [1, 3, 5] {
        step(&mut reactor, &format!("{id} command-name eos sleep"));
        assert_eq!(reactor.on_cancelled(id), Ok(()), "request {id}");
        reactor.on_response_finished(id);
    }
    step(&mut reactor, "7 command-name eos sleep");
    let err = reactor.on_cancelled(7).unwrap_err();
    assert_eq!(err.scope(), Scope::Connection);
    assert_eq!(
        format_frame(&err.frame(32768)),
        "7 error-response protocol request 7: more than 2 requests cancelled within 4 requests started"
    );
    assert_eq!(reactor.state(), State::Errored);
    assert_eq!(
        step(&mut reactor, "9 command-name eos a"),
        "connection-error: 9 error-response protocol request 9: frame refused: an earlier protocol error ended this connection"
    );
    // Cancellations and errors have their own allowances.
    let mut reactor = ServerReactor::with_limits(flood_limits(4, 1, 1));
    assert_eq!(reactor.on_cancelled(1), Ok(()));
    assert!(step(&mut reactor, "1 command-name 0 a").starts_with("request-error"));
}

// ------------------------------------------------------------- end of input

#[test]
fn end_of_input_reports_every_partial_request() {
    let mut reactor = check(&[
        ("1 command-name have-args a", RECEIVING),
        ("3 command-name have-data b", RECEIVING),
        ("5 command-name eos c", "run 5 c"),
        ("7 command-name have-args d", RECEIVING),
        (r"7 command-argument continuation \x01\x00\x09\x00kab", RECEIVING),
        ("9 command-name 0 e", "request-error: 9 error-response application request 9: command-name flags must be eos alone, or have-args and/or have-data; got 0"),
        ("3 command-data continuation x", RECEIVING),
    ]);
    let Action::Error(err) = reactor.on_input_eof() else {
        panic!("expected an error")
    };
    assert_eq!(err.scope(), Scope::Request);
    assert_eq!(err.request_id, 1);
    assert_eq!(
        err.kind,
        ErrorKind::IncompleteAtEof(vec![
            (1, "receiving arguments"),
            (3, "receiving data"),
            (7, "receiving arguments"),
        ])
    );
    assert_eq!(
        err.to_string(),
        "input ended with 3 request(s) incomplete: request 1 (receiving arguments), request 3 (receiving data), request 7 (receiving arguments)"
    );
    assert_eq!(
        frames_text(&err.frames(32768)),
        "1 error-response application request 1: input ended before the command was complete (receiving arguments) / \
         3 error-response application request 3: input ended before the command was complete (receiving data) / \
         7 error-response application request 7: input ended before the command was complete (receiving arguments)"
    );
    assert_eq!(
        format_frame(&err.frame(32768)),
        "1 error-response application input ended with 3 request(s) incomplete: request 1 (receiving arguments), request 3 (receiving data), request 7 (receiving arguments)"
    );
    assert_eq!((reactor.receiving(), reactor.buffered_bytes()), (0, 0));
    assert_eq!(reactor.active(), 1);
    // Nothing is reported twice.
    assert_eq!(reactor.on_input_eof(), Action::Noop);
}

#[test]
fn end_of_input_with_nothing_partial_is_a_noop() {
    check(&[
        ("1 command-name eos a", "run 1 a"),
        ("3 command-name have-args a", RECEIVING),
        (r"3 command-argument eoa \x01\x00", "request-error: 3 error-response application request 3: command-argument frame of 2 bytes is shorter than its 4-byte header"),
        // A discarded request is not reported again.
        ("eof", "noop"),
    ]);
}

// ----------------------------------------------------------- deferred output

#[test]
fn deferred_output_is_held_until_end_of_input() {
    check_with(
        ServerReactor::new().defer_output(true),
        &[
            ("1 command-name eos one", "run 1 one"),
            ("3 command-name eos three", "run 3 three"),
            ("5 command-name have-data five", RECEIVING),
            ("7 command-name eos seven", "run 7 seven"),
            ("respond 3 THREE", "noop"),
            ("fail 1 boom", "noop"),
            // The IDs are free as soon as the response is given.
            ("1 command-name eos again", "run 1 again"),
            ("respond 1 AGAIN", "noop"),
            (
                "eof",
                "send: 3 bytes-response eos THREE / 1 error-response application boom / 1 bytes-response eos AGAIN / \
                 5 error-response application request 5: input ended before the command was complete (receiving data)",
            ),
            // After the input ended, responses go out at once.
            ("respond 7 late", "send: 7 bytes-response eos late"),
            ("eof", "noop"),
        ],
    );
}

#[test]
fn deferred_output_with_nothing_kept_is_a_noop() {
    check_with(ServerReactor::new().defer_output(true), &[("eof", "noop")]);
}

#[test]
fn responses_are_split_at_the_send_limit() {
    let limits = Limits {
        max_send_payload: 4,
        ..Limits::default()
    };
    check_with(
        ServerReactor::with_limits(limits.clone()),
        &[
            ("1 command-name eos a", "run 1 a"),
            (
                "respond 1 abcdefghi",
                "send: 1 bytes-response continuation abcd / 1 bytes-response continuation efgh / 1 bytes-response eos i",
            ),
            ("3 command-name eos a", "run 3 a"),
            ("fail 3 too long", "send: 3 error-response application too "),
        ],
    );
    check_with(
        ServerReactor::with_limits(limits).defer_output(true),
        &[
            ("1 command-name eos a", "run 1 a"),
            ("respond 1 abcd", "noop"),
            ("eof", "send: 1 bytes-response eos abcd"),
        ],
    );
}

// ---------------------------------------------- the bytes of an error frame

#[test]
fn error_response_frames_are_exact_bytes() {
    let mut reactor = ServerReactor::new();
    let Action::Error(err) = reactor.on_frame(parse_frame("2 command-name eos a").unwrap()) else {
        panic!("expected an error")
    };
    let mut wire = Vec::new();
    err.frame(32768).encode(&mut wire);
    let message = b"request 2: a client command must use an odd request ID";
    let mut expected = vec![message.len() as u8, 0, 0, 2, 0, 0x51];
    expected.extend_from_slice(message);
    assert_eq!(wire, expected);

    let mut reactor = ServerReactor::new();
    reactor.on_frame(parse_frame("1 command-name have-data a").unwrap());
    let Action::Error(err) = reactor.on_frame(parse_frame("1 command-data 0 x").unwrap()) else {
        panic!("expected an error")
    };
    let mut wire = Vec::new();
    err.frame(16).encode(&mut wire);
    assert_eq!(wire, b"\x10\x00\x00\x01\x00\x52request 1: comma");
}

// ------------------------------------------------------------------ reflect

fn wire(lines: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        parse_frame(line).unwrap().encode(&mut out);
    }
    out
}

#[test]
fn reflect_report_of_the_protocol_example() {
    let input = wire(&[
        "1 command-name have-args command1",
        r"1 command-argument 0 \x03\x00\x04\x00fooval1",
        r"1 command-argument eoa \x04\x00\x03\x00bar1val",
    ]);
    assert_eq!(
        reflect(&input),
        r#"received: 1 2 1 command1
["wantframe", {"state": "command-receiving"}]
received: 2 0 1 \x03\x00\x04\x00fooval1
["wantframe", {"state": "command-receiving"}]
received: 2 2 1 \x04\x00\x03\x00bar1val
["runcommand", {"args": {"bar1": "val", "foo": "val1"}, "command": "command1", "data": null, "requestid": 1}]
received: <no frame>
{"action": "noop"}
"#
    );
}

#[test]
fn reflect_report_of_empty_input() {
    assert_eq!(
        reflect(b""),
        "received: <no frame>\n{\"action\": \"noop\"}\n"
    );
}

#[test]
fn reflect_report_escapes_bytes_then_encodes_json() {
    let input = wire(&[
        "1 command-name have-args|have-data q\"uote",
        r#"1 command-argument eoa \x02\x00\x05\x00k\\\x00"\xffé"#,
        r"1 command-data eos line\n",
    ]);
    assert_eq!(
        reflect(&input),
        r#"received: 1 6 1 q"uote
["wantframe", {"state": "command-receiving"}]
received: 2 2 1 \x02\x00\x05\x00k\\\x00"\xff\xc3\xa9
["wantframe", {"state": "command-receiving"}]
received: 3 2 1 line\x0a
["runcommand", {"args": {"k\\\\": "\\x00\"\\xff\\xc3\\xa9"}, "command": "q\"uote", "data": "line\\x0a", "requestid": 1}]
received: <no frame>
{"action": "noop"}
"#
    );
}

#[test]
fn reflect_report_of_errors() {
    let input = wire(&[
        "1 command-name have-data a",
        "1 command-data 0 x",
        "1 command-data eos x",
        "3 command-name have-args b",
        "2 command-name eos c",
        "5 command-name eos d",
    ]);
    assert_eq!(
        reflect(&input),
        r#"received: 1 4 1 a
["wantframe", {"state": "command-receiving"}]
received: 3 0 1 x
["error", {"message": "request 1: command-data frame needs exactly one of continuation or eos; got 0"}]
received: 3 2 1 x
["noop", {}]
received: 1 2 3 b
["wantframe", {"state": "command-receiving"}]
received: 1 1 2 c
["error", {"message": "request 2: a client command must use an odd request ID"}]
received: 1 1 5 d
["error", {"message": "request 5: frame refused: an earlier protocol error ended this connection"}]
received: <no frame>
{"action": "error", "message": "input ended with 1 request(s) incomplete: request 3 (receiving arguments)"}
"#
    );
}

#[test]
fn reflect_report_of_truncated_input() {
    let mut input = wire(&["1 command-name eos a"]);
    input.extend_from_slice(b"\x05\x00\x00\x03\x00\x11ab");
    assert_eq!(
        reflect(&input),
        r#"received: 1 1 1 a
["runcommand", {"args": {}, "command": "a", "data": null, "requestid": 1}]
received: <malformed input>
["error", {"message": "input ended inside a frame: 2 of 5 payload bytes of a frame for request 3"}]
received: <no frame>
{"action": "noop"}
"#
    );
    assert_eq!(
        reflect(b"\x05\x00\x00"),
        r#"received: <malformed input>
["error", {"message": "input ended inside a frame: 3 of 6 header bytes"}]
received: <no frame>
{"action": "noop"}
"#
    );
}

#[test]
fn reflect_report_of_an_over_long_header() {
    // 0x010000 = 65536 bytes declared: refused from the header alone.
    let mut input = wire(&["1 command-name have-data a"]);
    input.extend_from_slice(b"\x00\x00\x01\x01\x00\x32");
    assert_eq!(
        reflect(&input),
        r#"received: 1 4 1 a
["wantframe", {"state": "command-receiving"}]
received: <malformed input>
["error", {"message": "frame for request 1 declares a 65536-byte payload; the maximum is 65535"}]
received: <no frame>
{"action": "error", "message": "input ended with 1 request(s) incomplete: request 1 (receiving data)"}
"#
    );
}
