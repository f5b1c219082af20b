//! `wiremux frame` and `wiremux reflect` as a user runs them: the built
//! binary, its exact output bytes, its exit status and its messages.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_wiremux");

/// Runs the binary with `args` and `stdin`. A backtrace is asked for, so a
/// panic anywhere would show in stderr.
fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wiremux");
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // The command may exit before reading everything; that is fine.
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait for wiremux");
    writer.join().unwrap();
    output
}

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

/// The examples of PROTOCOL.md §5: a line and its exact bytes.
const EXAMPLES: [(&str, &str); 5] = [
    (
        "1 command-name eos customreadonly",
        "0e 00 00 01 00 11 63 75 73 74 6f 6d 72 65 61 64 6f 6e 6c 79",
    ),
    (
        "1 bytes-response eos customreadonly bytes response",
        "1d 00 00 01 00 42 63 75 73 74 6f 6d 72 65 61 64 6f 6e 6c 79 20 62 79 74 65 73 20 72 65 73 70 6f 6e 73 65",
    ),
    (
        "3 command-name have-args listkeys",
        "08 00 00 03 00 12 6c 69 73 74 6b 65 79 73",
    ),
    (
        r"3 command-argument eoa \x09\x00\x09\x00namespacebookmarks",
        "16 00 00 03 00 22 09 00 09 00 6e 61 6d 65 73 70 61 63 65 62 6f 6f 6b 6d 61 72 6b 73",
    ),
    (
        "1 error-response application unknown command: nope",
        "15 00 00 01 00 52 75 6e 6b 6e 6f 77 6e 20 63 6f 6d 6d 61 6e 64 3a 20 6e 6f 70 65",
    ),
];

fn all_example_bytes() -> Vec<u8> {
    EXAMPLES.iter().flat_map(|(_, h)| hex(h)).collect()
}

/// Asserts a clean failure: exit code 1, exactly `message` on stderr, and no
/// sign of a panic.
fn assert_fails_with(output: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr, format!("wiremux: {message}\n"));
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

#[test]
fn frame_turns_each_argument_into_exact_bytes() {
    for (line, bytes) in EXAMPLES {
        let output = run(&["frame", line], b"");
        assert!(output.status.success(), "{line}");
        assert_eq!(output.stdout, hex(bytes), "{line}");
        assert!(output.stderr.is_empty());
    }
    let lines: Vec<&str> = EXAMPLES.iter().map(|(l, _)| *l).collect();
    let mut args = vec!["frame"];
    args.extend(&lines);
    let output = run(&args, b"");
    assert!(output.status.success());
    assert_eq!(output.stdout, all_example_bytes());
}

#[test]
fn frame_reads_lines_from_stdin() {
    let mut script = String::from("# the examples of PROTOCOL.md section 5\n\n");
    for (line, _) in EXAMPLES {
        script += line;
        script += "\r\n";
    }
    script += "   \n# end\n";
    let output = run(&["frame"], script.as_bytes());
    assert!(output.status.success());
    assert_eq!(output.stdout, all_example_bytes());
    assert!(output.stderr.is_empty());
}

#[test]
fn frame_of_nothing_is_nothing() {
    let output = run(&["frame"], b"");
    assert!(output.status.success());
    assert!(output.stdout.is_empty());
}

#[test]
fn frame_piped_into_reflect_gives_the_protocol_example_report() {
    let script = "1 command-name have-args command1\n\
                  1 command-argument 0 \\x03\\x00\\x04\\x00fooval1\n\
                  1 command-argument eoa \\x04\\x00\\x03\\x00bar1val\n";
    let mut frame = Command::new(BIN)
        .arg("frame")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let reflect = Command::new(BIN)
        .arg("reflect")
        .stdin(frame.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    frame
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(frame.wait().unwrap().success());
    let output = reflect.wait_with_output().unwrap();
    assert!(output.status.success());
    assert!(output.stderr.is_empty());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
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
fn reflect_of_empty_input() {
    let output = run(&["reflect"], b"");
    assert!(output.status.success());
    assert_eq!(
        output.stdout,
        b"received: <no frame>\n{\"action\": \"noop\"}\n"
    );
}

#[test]
fn reflect_reports_protocol_errors_without_failing() {
    // A protocol error is what the report is for: exit 0.
    let output = run(&["reflect"], &hex("01 00 00 02 00 11 61"));
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "received: 1 1 2 a\n\
         [\"error\", {\"message\": \"request 2: a client command must use an odd request ID\"}]\n\
         received: <no frame>\n\
         {\"action\": \"noop\"}\n"
    );
}

#[test]
fn frame_names_the_bad_argument() {
    assert_fails_with(
        &run(&["frame", "1 command-name eos a", "1"], b""),
        "argument 2: type: missing (expected `<request-id> <type> <flags> <payload>`)",
    );
    assert_fails_with(
        &run(&["frame", "x command-name eos a"], b""),
        "argument 1: request id: `x` is not a number from 0 to 65535",
    );
}

#[test]
fn frame_names_the_bad_stdin_line() {
    assert_fails_with(
        &run(
            &["frame"],
            b"# comment\n1 command-name eos a\n1 command-nam eos a\n",
        ),
        "stdin line 3: type: `command-nam` is not a frame type name or a number from 0 to 15",
    );
    assert_fails_with(
        &run(&["frame"], b"1 command-argument eos a\n"),
        "stdin line 1: flags: `eos` is not a flag: valid names for command-argument are continuation, eoa, or a number from 0 to 15",
    );
    assert_fails_with(
        &run(&["frame"], b"\n1 command-data eos ab\\x4g\n"),
        "stdin line 2: payload: `\\x` at byte 2 must be followed by two hex digits",
    );
    assert_fails_with(
        &run(&["frame"], b"1 command-data eos \xff\n"),
        "stdin line 1: stream did not contain valid UTF-8",
    );
}

#[test]
fn frame_refuses_a_payload_over_24_bits() {
    let mut line = b"1 command-data eos ".to_vec();
    line.extend(vec![b'x'; 1 << 24]);
    assert_fails_with(
        &run(&["frame"], &line),
        "stdin line 1: payload: 16777216 bytes do not fit a frame (at most 16777215)",
    );
}

#[test]
fn reflect_of_truncated_input_fails_after_the_report() {
    let mut input = hex(EXAMPLES[0].1);
    input.extend(hex("05 00 00 03 00 11 61 62"));
    let output = run(&["reflect"], &input);
    assert_fails_with(
        &output,
        "stdin: byte 20: input ended inside a frame: 2 of 5 payload bytes of a frame for request 3",
    );
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "received: 1 1 1 customreadonly\n\
         [\"runcommand\", {\"args\": {}, \"command\": \"customreadonly\", \"data\": null, \"requestid\": 1}]\n\
         received: <malformed input>\n\
         [\"error\", {\"message\": \"input ended inside a frame: 2 of 5 payload bytes of a frame for request 3\"}]\n\
         received: <no frame>\n\
         {\"action\": \"noop\"}\n"
    );
    assert_fails_with(
        &run(&["reflect"], &hex("0e 00 00")),
        "stdin: byte 0: input ended inside a frame: 3 of 6 header bytes",
    );
}

#[test]
fn reflect_of_an_over_long_header_fails() {
    let output = run(&["reflect"], &hex("00 00 01 01 00 32"));
    assert_fails_with(
        &output,
        "stdin: byte 0: frame for request 1 declares a 65536-byte payload; the maximum is 65535",
    );
    assert!(String::from_utf8(output.stdout)
        .unwrap()
        .starts_with("received: <malformed input>\n"));
}
