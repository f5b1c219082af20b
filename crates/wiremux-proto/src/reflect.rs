//! The reflect report of PROTOCOL.md §6: feed raw frames to a
//! [`ServerReactor`] and write down what it decided, without running anything.
//!
//! ```
//! let mut input = Vec::new();
//! wiremux_proto::human::parse_frame("1 command-name eos heads").unwrap().encode(&mut input);
//! assert_eq!(
//!     wiremux_proto::reflect::reflect(&input),
//!     "received: 1 1 1 heads\n\
//!      [\"runcommand\", {\"args\": {}, \"command\": \"heads\", \"data\": null, \"requestid\": 1}]\n\
//!      received: <no frame>\n\
//!      {\"action\": \"noop\"}\n"
//! );
//! ```

use crate::codec::FrameCodec;
use crate::human::format_frame;
use crate::server::{Action, ServerReactor};
use bytes::BytesMut;
use std::fmt::Write;

/// Writes bytes as report text: printable ASCII as it is, backslash as
/// `\\`, every other byte as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// A JSON string literal of `text` (which [`escape_bytes`] keeps printable).
fn json_str(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_bytes(bytes: &[u8]) -> String {
    json_str(&escape_bytes(bytes))
}

/// The metadata of an action as JSON members, keys sorted, without braces.
fn meta_members(action: &Action) -> Vec<(&'static str, String)> {
    match action {
        Action::WantFrame { state } => vec![("state", json_str(state.as_str()))],
        Action::RunCommand(cmd) => {
            let mut args: Vec<_> = cmd.args.iter().collect();
            args.sort();
            let args: Vec<String> = args
                .iter()
                .map(|(n, v)| format!("{}: {}", json_bytes(n), json_bytes(v)))
                .collect();
            vec![
                ("args", format!("{{{}}}", args.join(", "))),
                ("command", json_bytes(&cmd.name)),
                (
                    "data",
                    cmd.data
                        .as_ref()
                        .map_or_else(|| "null".to_string(), |d| json_bytes(d)),
                ),
                ("requestid", cmd.request_id.to_string()),
            ]
        }
        Action::Error(err) => vec![("message", json_str(&err.message()))],
        Action::SendFrames(frames) => {
            let lines: Vec<String> = frames.iter().map(|f| json_str(&format_frame(f))).collect();
            vec![("frames", format!("[{}]", lines.join(", ")))]
        }
        Action::Noop => vec![],
    }
}

fn object(members: &[(&str, String)]) -> String {
    let inner: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}: {v}", json_str(k)))
        .collect();
    format!("{{{}}}", inner.join(", "))
}

/// The action after a frame as the report's second line: `[ACTION, META]`.
pub fn action_line(action: &Action) -> String {
    format!(
        "[{}, {}]",
        json_str(action.name()),
        object(&meta_members(action))
    )
}

/// The end-of-input action as the report's last line: `{"action": ACTION, ...}`.
pub fn eof_line(action: &Action) -> String {
    let mut members = meta_members(action);
    members.push(("action", json_str(action.name())));
    members.sort_by(|a, b| a.0.cmp(b.0));
    object(&members)
}

/// The whole report for raw frame bytes, with a reactor of default limits.
///
/// Input that is not whole frames (an over-long header, a truncated frame)
/// ends the frames with a `received: <malformed input>` entry whose action is
/// the codec's error.
pub fn reflect(input: &[u8]) -> String {
    reflect_with(ServerReactor::new(), FrameCodec::new(), input)
}

/// The report with a given reactor and codec.
pub fn reflect_with(mut reactor: ServerReactor, mut codec: FrameCodec, input: &[u8]) -> String {
    let mut out = String::new();
    let mut buf = BytesMut::from(input);
    loop {
        match codec.decode_frame_eof(&mut buf) {
            Ok(Some(frame)) => {
                let _ = writeln!(
                    out,
                    "received: {} {} {} {}",
                    frame.frame_type.get(),
                    frame.flags.bits(),
                    frame.request_id,
                    escape_bytes(&frame.payload)
                );
                let action = reactor.on_frame(frame);
                let _ = writeln!(out, "{}", action_line(&action));
            }
            Ok(None) => break,
            Err(err) => {
                let _ = writeln!(out, "received: <malformed input>");
                let _ = writeln!(
                    out,
                    "[\"error\", {}]",
                    object(&[("message", json_str(&err.to_string()))])
                );
                break;
            }
        }
    }
    let _ = writeln!(out, "received: <no frame>");
    let _ = writeln!(out, "{}", eof_line(&reactor.on_input_eof()));
    out
}
