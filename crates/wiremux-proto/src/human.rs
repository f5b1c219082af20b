//! The human-readable frame syntax of PROTOCOL.md §5.
//!
//! One frame per line: `<request-id> <type> <flags> <payload>`. Types and
//! flags are names or integers; flags are joined with `|`; the payload is
//! everything after the third space, with Python-style backslash escapes.
//!
//! ```
//! use wiremux_proto::human::{format_frame, parse_frame};
//! let frame = parse_frame(r"3 command-argument eoa \x09\x00\x09\x00namespacebookmarks").unwrap();
//! assert_eq!(frame.request_id, 3);
//! assert_eq!(&frame.payload[..4], b"\x09\x00\x09\x00");
//! assert_eq!(format_frame(&frame), r"3 command-argument eoa \t\x00\t\x00namespacebookmarks");
//! ```

use crate::frame::{Flags, Frame, FrameType};
use std::fmt;

/// The field of a human-syntax line that an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The first field.
    RequestId,
    /// The second field.
    Type,
    /// The third field.
    Flags,
    /// Everything after the third space.
    Payload,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::RequestId => "request id",
            Field::Type => "type",
            Field::Flags => "flags",
            Field::Payload => "payload",
        })
    }
}

/// A line that is not a valid frame: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ParseError {
    /// The field at fault.
    pub field: Field,
    /// What is wrong, for a person.
    pub problem: String,
}

fn err(field: Field, problem: impl Into<String>) -> ParseError {
    ParseError {
        field,
        problem: problem.into(),
    }
}

/// Parses one line of human syntax into a frame.
///
/// A trailing newline (`\n` or `\r\n`) is ignored. A line with three fields
/// and no payload gives an empty payload.
pub fn parse_frame(line: &str) -> Result<Frame, ParseError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut parts = line.splitn(4, ' ');
    let id_text = parts.next().unwrap_or("");
    let request_id = parse_int(id_text, u16::MAX as u64).ok_or_else(|| {
        err(
            Field::RequestId,
            format!("`{id_text}` is not a number from 0 to 65535"),
        )
    })? as u16;
    let type_text = parts.next().ok_or_else(|| {
        err(
            Field::Type,
            "missing (expected `<request-id> <type> <flags> <payload>`)",
        )
    })?;
    let frame_type = FrameType::from_name(type_text)
        .or_else(|| parse_int(type_text, 15).map(|v| FrameType::new(v as u8)))
        .ok_or_else(|| {
            err(
                Field::Type,
                format!("`{type_text}` is not a frame type name or a number from 0 to 15"),
            )
        })?;
    let flags_text = parts
        .next()
        .ok_or_else(|| err(Field::Flags, "missing (use `0` for none)"))?;
    let flags = parse_flags(frame_type, flags_text)?;
    let payload = unescape(parts.next().unwrap_or(""))?;
    Ok(Frame::new(request_id, frame_type, flags, payload))
}

fn parse_int(text: &str, max: u64) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u64>().ok().filter(|v| *v <= max)
}

fn parse_flags(frame_type: FrameType, text: &str) -> Result<Flags, ParseError> {
    let mut bits = 0u8;
    for part in text.split('|') {
        if let Some((bit, _)) = frame_type
            .flag_names()
            .iter()
            .find(|(_, name)| *name == part)
        {
            bits |= bit;
        } else if let Some(v) = parse_int(part, 15) {
            bits |= v as u8;
        } else {
            let valid: Vec<&str> = frame_type.flag_names().iter().map(|(_, n)| *n).collect();
            let hint = if valid.is_empty() {
                format!("type {frame_type} has no named flags; use a number from 0 to 15")
            } else {
                format!(
                    "valid names for {frame_type} are {}, or a number from 0 to 15",
                    valid.join(", ")
                )
            };
            return Err(err(Field::Flags, format!("`{part}` is not a flag: {hint}")));
        }
    }
    Ok(Flags::new(bits))
}

/// Decodes Python string-literal escapes: `\xNN`, `\n`, `\r`, `\t`, `\\`,
/// `\'`, `\"`, `\a`, `\b`, `\f`, `\v`, and octal `\N`, `\NN`, `\NNN` (so `\0`
/// is a NUL byte). As in Python, a backslash before any other character is
/// kept as it is.
pub fn unescape(text: &str) -> Result<Vec<u8>, ParseError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&next) = bytes.get(i + 1) else {
            return Err(err(
                Field::Payload,
                format!("a lone backslash ends the payload (at byte {i}); write `\\\\`"),
            ));
        };
        i += 2;
        let decoded = match next {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'\\' => b'\\',
            b'\'' => b'\'',
            b'"' => b'"',
            b'a' => 0x07,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'v' => 0x0b,
            b'x' => {
                let hex = bytes
                    .get(i..i + 2)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let value = hex
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        err(
                            Field::Payload,
                            format!("`\\x` at byte {} must be followed by two hex digits", i - 2),
                        )
                    })?;
                i += 2;
                value
            }
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                let mut digits = 1;
                while digits < 3 && matches!(bytes.get(i), Some(b'0'..=b'7')) {
                    value = value * 8 + u32::from(bytes[i] - b'0');
                    i += 1;
                    digits += 1;
                }
                if value > 0xff {
                    return Err(err(
                        Field::Payload,
                        format!("octal escape `\\{value:o}` is over \\377"),
                    ));
                }
                value as u8
            }
            other => {
                out.push(b'\\');
                other
            }
        };
        out.push(decoded);
    }
    Ok(out)
}

/// Writes bytes as a payload of human syntax: printable ASCII as it is,
/// backslash as `\\`, `\n` `\r` `\t` as those escapes, anything else as `\xNN`.
/// [`unescape`] turns the result back into the same bytes.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Formats a flags value for a frame type: names joined by `|`, any bits
/// without a name as one number, `0` for none.
pub fn format_flags(frame_type: FrameType, flags: Flags) -> String {
    let mut parts = Vec::new();
    let mut rest = flags.bits();
    for (bit, name) in frame_type.flag_names() {
        if rest & bit != 0 {
            parts.push((*name).to_string());
            rest &= !bit;
        }
    }
    if rest != 0 || parts.is_empty() {
        parts.push(rest.to_string());
    }
    parts.join("|")
}

/// Formats a frame as one line of human syntax (no newline).
pub fn format_frame(frame: &Frame) -> String {
    format!(
        "{} {} {} {}",
        frame.request_id,
        frame.frame_type,
        format_flags(frame.frame_type, frame.flags),
        escape(&frame.payload)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn wire(line: &str) -> Vec<u8> {
        let mut out = Vec::new();
        parse_frame(line).unwrap().encode(&mut out);
        out
    }

    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|h| u8::from_str_radix(h, 16).unwrap())
            .collect()
    }

    #[test]
    fn protocol_examples_encode_byte_for_byte() {
        let examples = [
            ("1 command-name eos customreadonly", "0e 00 00 01 00 11 63 75 73 74 6f 6d 72 65 61 64 6f 6e 6c 79"),
            (
                "1 bytes-response eos customreadonly bytes response",
                "1d 00 00 01 00 42 63 75 73 74 6f 6d 72 65 61 64 6f 6e 6c 79 20 62 79 74 65 73 20 72 65 73 70 6f 6e 73 65",
            ),
            ("3 command-name have-args listkeys", "08 00 00 03 00 12 6c 69 73 74 6b 65 79 73"),
            (
                r"3 command-argument eoa \x09\x00\x09\x00namespacebookmarks",
                "16 00 00 03 00 22 09 00 09 00 6e 61 6d 65 73 70 61 63 65 62 6f 6f 6b 6d 61 72 6b 73",
            ),
            (
                "1 error-response application unknown command: nope",
                "15 00 00 01 00 52 75 6e 6b 6e 6f 77 6e 20 63 6f 6d 6d 61 6e 64 3a 20 6e 6f 70 65",
            ),
        ];
        for (line, bytes) in examples {
            assert_eq!(wire(line), hex(bytes), "{line}");
        }
    }

    #[test]
    fn integers_stand_for_types_and_flags() {
        assert_eq!(wire("1 1 1 x"), wire("1 command-name eos x"));
        assert_eq!(
            wire("1 1 2|4 x"),
            wire("1 command-name have-args|have-data x")
        );
        assert_eq!(wire("1 1 have-args|4 x"), wire("1 command-name 6 x"));
        assert_eq!(wire("9 15 0 "), hex("00 00 00 09 00 f0"));
    }

    #[test]
    fn every_escape_decodes() {
        assert_eq!(
            unescape(r#"\x41\n\r\t\\\'\"\a\b\f\v\0\101\7\18z\q"#).unwrap(),
            b"A\n\r\t\\'\"\x07\x08\x0c\x0b\0A\x07\x018z\\q"
        );
    }

    #[test]
    fn missing_payload_is_empty() {
        let f = parse_frame("5 command-data eos").unwrap();
        assert!(f.payload.is_empty());
        assert_eq!(f.flags.bits(), 2);
    }

    #[test]
    fn payload_keeps_its_spaces() {
        assert_eq!(
            &parse_frame("1 command-name eos  a  b ").unwrap().payload[..],
            b" a  b "
        );
    }

    #[test]
    fn bad_lines_name_the_field_and_the_problem() {
        let cases = [
            ("", "request id: `` is not a number from 0 to 65535"),
            ("x command-name eos a", "request id: `x` is not a number from 0 to 65535"),
            ("65536 command-name eos a", "request id: `65536` is not a number from 0 to 65535"),
            ("1", "type: missing (expected `<request-id> <type> <flags> <payload>`)"),
            ("1 command-nam eos a", "type: `command-nam` is not a frame type name or a number from 0 to 15"),
            ("1 16 0 a", "type: `16` is not a frame type name or a number from 0 to 15"),
            ("1 command-name", "flags: missing (use `0` for none)"),
            (
                "1 command-name eoa a",
                "flags: `eoa` is not a flag: valid names for command-name are eos, have-args, have-data, or a number from 0 to 15",
            ),
            ("1 7 eos a", "flags: `eos` is not a flag: type 7 has no named flags; use a number from 0 to 15"),
            ("1 command-name eos|| a", "flags: `` is not a flag: valid names for command-name are eos, have-args, have-data, or a number from 0 to 15"),
            (r"1 command-name eos a\x4", "payload: `\\x` at byte 1 must be followed by two hex digits"),
            ("1 command-name eos a\\", "payload: a lone backslash ends the payload (at byte 1); write `\\\\`"),
            (r"1 command-name eos \777", "payload: octal escape `\\777` is over \\377"),
        ];
        for (line, message) in cases {
            assert_eq!(
                parse_frame(line).unwrap_err().to_string(),
                message,
                "line {line:?}"
            );
        }
    }

    #[test]
    fn formatting_uses_names_and_numbers() {
        let f = Frame::new(
            7,
            FrameType::COMMAND_NAME,
            Flags::new(0x9),
            &b"a\\b\xff"[..],
        );
        assert_eq!(format_frame(&f), r"7 command-name eos|8 a\\b\xff");
        let f = Frame::new(7, FrameType::new(0), Flags::new(3), "");
        assert_eq!(format_frame(&f), "7 0 3 ");
        let f = Frame::new(2, FrameType::COMMAND_DATA, Flags::NONE, "x");
        assert_eq!(format_frame(&f), "2 command-data 0 x");
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(id: u16, t in 0u8..16, fl in 0u8..16, payload in proptest::collection::vec(any::<u8>(), 0..100)) {
            let f = Frame::new(id, FrameType::new(t), Flags::new(fl), payload);
            prop_assert_eq!(parse_frame(&format_frame(&f)).unwrap(), f);
        }

        #[test]
        fn arbitrary_lines_never_panic(line in ".*") {
            let _ = parse_frame(&line);
        }
    }
}
