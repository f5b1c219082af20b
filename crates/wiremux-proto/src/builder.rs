//! Frame builders: every frame of a command, of a bytes response and of an
//! error response, split at the maximum frame size.
//!
//! ```
//! use wiremux_proto::builder::CommandBuilder;
//! use wiremux_proto::human::format_frame;
//!
//! let frames = CommandBuilder::new("listkeys").arg("namespace", "bookmarks").frames(3, 32768).unwrap();
//! let lines: Vec<String> = frames.iter().map(format_frame).collect();
//! assert_eq!(lines, [
//!     "3 command-name have-args listkeys",
//!     r"3 command-argument eoa \t\x00\t\x00namespacebookmarks",
//! ]);
//! ```

use crate::frame::{Flags, Frame, FrameType, Header, HEADER_LEN, MAX_WIRE_PAYLOAD};
use bytes::{BufMut, Bytes, BytesMut};

/// Why a command cannot be put into frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A command name longer than the payload of one frame: the
    /// command-name frame carries the whole name.
    #[error(
        "command name of {len} bytes does not fit in one frame of at most {max} payload bytes"
    )]
    CommandNameTooLong {
        /// The name's length.
        len: usize,
        /// The largest payload of a frame.
        max: usize,
    },
    /// An argument name over 65535 bytes, or too long for its first frame.
    #[error(
        "argument name of {len} bytes does not fit in one frame of at most {max} payload bytes"
    )]
    NameTooLong {
        /// The name's length.
        len: usize,
        /// The largest payload of a frame.
        max: usize,
    },
    /// An argument value over the 65535 bytes its length field can say.
    #[error("argument `{name}` has a {len}-byte value; the protocol allows at most 65535")]
    ValueTooLong {
        /// The argument's name.
        name: String,
        /// The value's length.
        len: usize,
    },
    /// A maximum frame size too small to carry any argument.
    #[error("a maximum frame payload of {0} bytes is too small")]
    FrameSizeTooSmall(usize),
}

/// A command to put into frames: a name, arguments and optional data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandBuilder {
    name: Bytes,
    args: Vec<(Bytes, Bytes)>,
    data: Option<Bytes>,
}

impl CommandBuilder {
    /// A command with no arguments and no data.
    pub fn new(name: impl Into<Bytes>) -> CommandBuilder {
        CommandBuilder {
            name: name.into(),
            args: Vec::new(),
            data: None,
        }
    }

    /// Adds an argument. Arguments are sent sorted by name.
    pub fn arg(mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) -> CommandBuilder {
        self.args.push((name.into(), value.into()));
        self
    }

    /// Sets the command's data (sent even if empty).
    pub fn data(mut self, data: impl Into<Bytes>) -> CommandBuilder {
        self.data = Some(data.into());
        self
    }

    /// All frames of the command for `request_id`, no payload over
    /// `max_payload` (and none over the 16 MiB - 1 the header can say,
    /// whatever `max_payload` is).
    ///
    /// The command name travels whole in the command-name frame, so a name
    /// longer than `max_payload` is refused, as is an argument name that
    /// does not fit in its first frame or a value over 65535 bytes:
    ///
    /// ```
    /// use wiremux_proto::builder::{BuildError, CommandBuilder};
    ///
    /// let err = CommandBuilder::new("x".repeat(40_000)).frames(1, 32768).unwrap_err();
    /// assert_eq!(err, BuildError::CommandNameTooLong { len: 40_000, max: 32768 });
    /// assert_eq!(
    ///     err.to_string(),
    ///     "command name of 40000 bytes does not fit in one frame of at most 32768 payload bytes"
    /// );
    /// ```
    pub fn frames(&self, request_id: u16, max_payload: usize) -> Result<Vec<Frame>, BuildError> {
        let mut out = Vec::new();
        self.for_each_frame(request_id, max_payload, |header, parts| {
            let mut payload = BytesMut::with_capacity(header.length);
            for part in parts {
                payload.extend_from_slice(part);
            }
            out.push(Frame::new(
                request_id,
                header.frame_type,
                header.flags,
                payload.freeze(),
            ));
        })?;
        Ok(out)
    }

    /// Appends the encoded frames of the command to `dst`, without building
    /// intermediate [`Frame`] values. Refuses what [`CommandBuilder::frames`]
    /// refuses, before writing anything to `dst`.
    pub fn encode(
        &self,
        request_id: u16,
        max_payload: usize,
        dst: &mut BytesMut,
    ) -> Result<(), BuildError> {
        self.for_each_frame(request_id, max_payload, |header, parts| {
            dst.reserve(HEADER_LEN + header.length);
            dst.put_slice(&header.to_bytes());
            for part in parts {
                dst.put_slice(part);
            }
        })
    }

    /// Walks the frames of the command, each as a header and payload pieces.
    fn for_each_frame(
        &self,
        request_id: u16,
        max: usize,
        mut emit: impl FnMut(Header, &[&[u8]]),
    ) -> Result<(), BuildError> {
        if max == 0 {
            return Err(BuildError::FrameSizeTooSmall(max));
        }
        // The header's 24-bit length field bounds every frame, whatever
        // the caller asked for.
        let max = max.min(MAX_WIRE_PAYLOAD);
        if self.name.len() > max {
            return Err(BuildError::CommandNameTooLong {
                len: self.name.len(),
                max,
            });
        }
        let mut args: Vec<&(Bytes, Bytes)> = self.args.iter().collect();
        args.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, value) in &args {
            if name.len() > u16::MAX as usize || name.len() + 4 > max {
                return Err(BuildError::NameTooLong {
                    len: name.len(),
                    max,
                });
            }
            if value.len() > u16::MAX as usize {
                return Err(BuildError::ValueTooLong {
                    name: String::from_utf8_lossy(name).into_owned(),
                    len: value.len(),
                });
            }
        }
        let head = |length, frame_type, flags| Header {
            length,
            request_id,
            frame_type,
            flags: Flags::new(flags),
        };
        let name_flags = match (args.is_empty(), self.data.is_some()) {
            (true, false) => Flags::EOS,
            (false, false) => Flags::HAVE_ARGS,
            (true, true) => Flags::HAVE_DATA,
            (false, true) => Flags::HAVE_ARGS | Flags::HAVE_DATA,
        };
        emit(
            head(self.name.len(), FrameType::COMMAND_NAME, name_flags),
            &[&self.name],
        );
        for (i, (name, value)) in args.iter().enumerate() {
            let last_arg = i + 1 == args.len();
            let prefix = [
                (name.len() as u16).to_le_bytes(),
                (value.len() as u16).to_le_bytes(),
            ]
            .concat();
            let first_room = max - 4 - name.len();
            let (first, mut rest) = value.split_at(value.len().min(first_room));
            let flags = |rest_empty: bool| match (rest_empty, last_arg) {
                (false, _) => Flags::CONTINUATION,
                (true, true) => Flags::EOA,
                (true, false) => 0,
            };
            emit(
                head(
                    4 + name.len() + first.len(),
                    FrameType::COMMAND_ARGUMENT,
                    flags(rest.is_empty()),
                ),
                &[&prefix, name, first],
            );
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(rest.len().min(max));
                rest = tail;
                emit(
                    head(
                        chunk.len(),
                        FrameType::COMMAND_ARGUMENT,
                        flags(rest.is_empty()),
                    ),
                    &[chunk],
                );
            }
        }
        if let Some(data) = &self.data {
            for_each_chunk(data, max, |chunk, last| {
                let flags = if last {
                    Flags::DATA_EOS
                } else {
                    Flags::CONTINUATION
                };
                emit(head(chunk.len(), FrameType::COMMAND_DATA, flags), &[chunk]);
            });
        }
        Ok(())
    }
}

/// Calls `f(chunk, is_last)` for `data` split into pieces of at most `max`
/// bytes; empty data gives one empty last piece.
fn for_each_chunk(data: &[u8], max: usize, mut f: impl FnMut(&[u8], bool)) {
    let max = max.max(1);
    if data.is_empty() {
        return f(data, true);
    }
    let mut chunks = data.chunks(max).peekable();
    while let Some(chunk) = chunks.next() {
        f(chunk, chunks.peek().is_none());
    }
}

/// The frames of a bytes response: `continuation` frames of `max_payload`
/// bytes and a final `eos` frame. The payloads share `data`'s memory.
///
/// ```
/// let frames = wiremux_proto::builder::bytes_response_frames(1, bytes::Bytes::from_static(b"abcde"), 2);
/// let lines: Vec<String> = frames.iter().map(wiremux_proto::human::format_frame).collect();
/// assert_eq!(lines, ["1 bytes-response continuation ab", "1 bytes-response continuation cd", "1 bytes-response eos e"]);
/// ```
pub fn bytes_response_frames(request_id: u16, data: Bytes, max_payload: usize) -> Vec<Frame> {
    let mut frames = Vec::with_capacity(data.len() / max_payload.max(1) + 1);
    let base = data.as_ptr() as usize;
    for_each_chunk(&data, max_payload, |chunk, last| {
        let start = chunk.as_ptr() as usize - base;
        let flags = if last {
            Flags::DATA_EOS
        } else {
            Flags::CONTINUATION
        };
        let payload = if chunk.is_empty() {
            Bytes::new()
        } else {
            data.slice(start..start + chunk.len())
        };
        frames.push(Frame::new(
            request_id,
            FrameType::BYTES_RESPONSE,
            Flags::new(flags),
            payload,
        ));
    });
    frames
}

/// Appends the encoded frames of (part of) a bytes response to `dst`. With
/// `last`, the final frame carries `eos`; otherwise every frame is a
/// `continuation`, so a response can be written chunk by chunk as it is
/// produced.
pub fn encode_bytes_response(
    request_id: u16,
    data: &[u8],
    last: bool,
    max_payload: usize,
    dst: &mut BytesMut,
) {
    dst.reserve(data.len() + HEADER_LEN * (data.len() / max_payload.max(1) + 1));
    for_each_chunk(data, max_payload, |chunk, final_chunk| {
        if chunk.is_empty() && !last {
            return;
        }
        let flags = if final_chunk && last {
            Flags::DATA_EOS
        } else {
            Flags::CONTINUATION
        };
        let header = Header {
            length: chunk.len(),
            request_id,
            frame_type: FrameType::BYTES_RESPONSE,
            flags: Flags::new(flags),
        };
        dst.put_slice(&header.to_bytes());
        dst.put_slice(chunk);
    });
}

/// Appends one final (`eos`) bytes-response frame carrying all of `data`,
/// which must fit one frame (at most the sender's payload limit): what
/// [`encode_bytes_response`] writes for such a body, without the loop.
///
/// ```
/// let mut out = bytes::BytesMut::new();
/// wiremux_proto::builder::encode_final_bytes_frame(5, b"ok", &mut out);
/// assert_eq!(&out[..], b"\x02\x00\x00\x05\x00\x42ok");
/// ```
#[inline]
pub fn encode_final_bytes_frame(request_id: u16, data: &[u8], dst: &mut BytesMut) {
    let header = Header {
        length: data.len(),
        request_id,
        frame_type: FrameType::BYTES_RESPONSE,
        flags: Flags::new(Flags::DATA_EOS),
    };
    dst.reserve(HEADER_LEN + data.len());
    dst.put_slice(&header.to_bytes());
    dst.put_slice(data);
}

/// Whether an error response is about the protocol or the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorFlag {
    /// Transport or protocol level: the connection closes after it.
    Protocol,
    /// The command failed; the connection goes on.
    Application,
}

/// The error-response frame for a request. A message over `max_payload`
/// bytes is cut to fit (on a UTF-8 character boundary).
pub fn error_response_frame(
    request_id: u16,
    flag: ErrorFlag,
    message: &str,
    max_payload: usize,
) -> Frame {
    let mut end = message.len().min(max_payload);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let flags = match flag {
        ErrorFlag::Protocol => Flags::PROTOCOL,
        ErrorFlag::Application => Flags::APPLICATION,
    };
    Frame::new(
        request_id,
        FrameType::ERROR_RESPONSE,
        Flags::new(flags),
        Bytes::copy_from_slice(&message.as_bytes()[..end]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::human::format_frame;

    fn lines(frames: &[Frame]) -> Vec<String> {
        frames.iter().map(format_frame).collect()
    }

    #[test]
    fn one_frame_command() {
        let frames = CommandBuilder::new("heads").frames(1, 32768).unwrap();
        assert_eq!(lines(&frames), ["1 command-name eos heads"]);
    }

    #[test]
    fn arguments_are_sorted_and_the_last_has_eoa() {
        let frames = CommandBuilder::new("command1")
            .arg("foo", "val1")
            .arg("bar1", "val")
            .frames(1, 32768)
            .unwrap();
        assert_eq!(
            lines(&frames),
            [
                "1 command-name have-args command1",
                r"1 command-argument 0 \x04\x00\x03\x00bar1val",
                r"1 command-argument eoa \x03\x00\x04\x00fooval1",
            ]
        );
    }

    #[test]
    fn long_argument_value_is_carried_on_with_continuation() {
        let frames = CommandBuilder::new("c")
            .arg("k", "abcdefghij")
            .arg("z", "")
            .frames(1, 8)
            .unwrap();
        assert_eq!(
            lines(&frames),
            [
                "1 command-name have-args c",
                r"1 command-argument continuation \x01\x00\n\x00kabc",
                "1 command-argument 0 defghij",
                r"1 command-argument eoa \x01\x00\x00\x00z",
            ]
        );
        let frames = CommandBuilder::new("c")
            .arg("k", "abcdefghijklmno")
            .frames(1, 8)
            .unwrap();
        assert_eq!(
            lines(&frames)[1..],
            [
                r"1 command-argument continuation \x01\x00\x0f\x00kabc",
                "1 command-argument continuation defghijk",
                "1 command-argument eoa lmno",
            ]
        );
    }

    #[test]
    fn data_splits_at_exactly_and_just_over_the_max() {
        let exact = CommandBuilder::new("put")
            .data(vec![b'x'; 4])
            .frames(1, 4)
            .unwrap();
        assert_eq!(
            lines(&exact),
            ["1 command-name have-data put", "1 command-data eos xxxx"]
        );
        let over = CommandBuilder::new("put")
            .data(vec![b'x'; 5])
            .frames(1, 4)
            .unwrap();
        assert_eq!(
            lines(&over),
            [
                "1 command-name have-data put",
                "1 command-data continuation xxxx",
                "1 command-data eos x"
            ]
        );
        let empty = CommandBuilder::new("put").data("").frames(1, 4).unwrap();
        assert_eq!(
            lines(&empty),
            ["1 command-name have-data put", "1 command-data eos "]
        );
    }

    #[test]
    fn arguments_and_data_together() {
        let frames = CommandBuilder::new("put")
            .arg("key", "k")
            .data("v")
            .frames(5, 32768)
            .unwrap();
        assert_eq!(
            lines(&frames),
            [
                "5 command-name have-args|have-data put",
                r"5 command-argument eoa \x03\x00\x01\x00keyk",
                "5 command-data eos v",
            ]
        );
    }

    #[test]
    fn encode_writes_the_same_bytes_as_frames() {
        let cmd = CommandBuilder::new("put")
            .arg("key", "k".repeat(100))
            .arg("a", "b")
            .data(vec![1u8; 300]);
        let mut expected = Vec::new();
        for f in cmd.frames(9, 64).unwrap() {
            f.encode(&mut expected);
        }
        let mut dst = BytesMut::new();
        cmd.encode(9, 64, &mut dst).unwrap();
        assert_eq!(&dst[..], &expected[..]);
    }

    #[test]
    fn builder_refuses_what_cannot_be_framed() {
        assert_eq!(
            CommandBuilder::new("c")
                .arg("a".repeat(10), "v")
                .frames(1, 8),
            Err(BuildError::NameTooLong { len: 10, max: 8 })
        );
        assert_eq!(
            CommandBuilder::new("c")
                .arg("k", vec![0u8; 65536])
                .frames(1, 32768)
                .unwrap_err()
                .to_string(),
            "argument `k` has a 65536-byte value; the protocol allows at most 65535"
        );
    }

    #[test]
    fn builder_refuses_a_command_name_longer_than_a_frame() {
        // Exactly one frame's payload is fine; one byte over is not.
        let frames = CommandBuilder::new("n".repeat(16)).frames(1, 16).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].payload.len(), 16);
        let err = CommandBuilder::new("n".repeat(17))
            .frames(1, 16)
            .unwrap_err();
        assert_eq!(err, BuildError::CommandNameTooLong { len: 17, max: 16 });
        assert_eq!(
            err.to_string(),
            "command name of 17 bytes does not fit in one frame of at most 16 payload bytes"
        );
        // encode refuses it too, and writes nothing.
        let mut dst = BytesMut::new();
        let err = CommandBuilder::new("n".repeat(65_536))
            .arg("k", "v")
            .encode(1, 65_535, &mut dst)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "command name of 65536 bytes does not fit in one frame of at most 65535 payload bytes"
        );
        assert!(dst.is_empty());
    }

    #[test]
    fn names_and_data_over_16_mib_are_errors_not_panics() {
        const OVER: usize = MAX_WIRE_PAYLOAD + 1;
        // Even with no frame-size limit asked for, the 24-bit length field
        // is the limit.
        let err = CommandBuilder::new(vec![b'n'; OVER])
            .frames(1, usize::MAX)
            .unwrap_err();
        assert_eq!(
            err,
            BuildError::CommandNameTooLong {
                len: OVER,
                max: MAX_WIRE_PAYLOAD
            }
        );
        assert_eq!(
            err.to_string(),
            "command name of 16777216 bytes does not fit in one frame of at most 16777215 payload bytes"
        );
        let mut dst = BytesMut::new();
        assert!(CommandBuilder::new(vec![b'n'; OVER])
            .encode(1, 32768, &mut dst)
            .is_err());
        // Data over 16 MiB is split at the header's limit instead.
        let frames = CommandBuilder::new("put")
            .data(vec![0u8; OVER])
            .frames(1, usize::MAX)
            .unwrap();
        let sizes: Vec<usize> = frames.iter().map(|f| f.payload.len()).collect();
        assert_eq!(sizes, [3, MAX_WIRE_PAYLOAD, 1]);
    }

    #[test]
    fn bytes_response_splits_at_the_max() {
        let exact = bytes_response_frames(1, Bytes::from(vec![0u8; 32768]), 32768);
        assert_eq!(exact.len(), 1);
        assert_eq!(exact[0].flags.bits(), Flags::DATA_EOS);
        let over = bytes_response_frames(1, Bytes::from(vec![0u8; 32769]), 32768);
        assert_eq!(over.len(), 2);
        assert_eq!(
            (over[0].flags.bits(), over[0].payload.len()),
            (Flags::CONTINUATION, 32768)
        );
        assert_eq!(
            (over[1].flags.bits(), over[1].payload.len()),
            (Flags::DATA_EOS, 1)
        );
        assert_eq!(
            lines(&bytes_response_frames(3, Bytes::new(), 10)),
            ["3 bytes-response eos "]
        );
    }

    #[test]
    fn chunked_response_encoding_matches_frames() {
        let mut dst = BytesMut::new();
        encode_bytes_response(1, b"abc", false, 2, &mut dst);
        encode_bytes_response(1, b"", false, 2, &mut dst);
        encode_bytes_response(1, b"d", true, 2, &mut dst);
        let frames = crate::codec::decode_all(&dst).unwrap();
        assert_eq!(
            lines(&frames),
            [
                "1 bytes-response continuation ab",
                "1 bytes-response continuation c",
                "1 bytes-response eos d"
            ]
        );
    }

    #[test]
    fn error_response_flags_and_truncation() {
        let f = error_response_frame(1, ErrorFlag::Application, "unknown command: nope", 100);
        assert_eq!(
            format_frame(&f),
            "1 error-response application unknown command: nope"
        );
        let f = error_response_frame(1, ErrorFlag::Protocol, "é", 1);
        assert_eq!(format_frame(&f), "1 error-response protocol ");
    }

    proptest::proptest! {
        /// The one-frame encoder writes what the general one writes for a
        /// body that fits one frame.
        #[test]
        fn the_final_frame_encoder_agrees_with_the_general_one(
            id in proptest::prelude::any::<u16>(),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            room in 0usize..100,
        ) {
            let (mut one, mut general) = (BytesMut::new(), BytesMut::new());
            encode_final_bytes_frame(id, &body, &mut one);
            encode_bytes_response(id, &body, true, body.len().max(1) + room, &mut general);
            proptest::prop_assert_eq!(one, general);
        }
    }
}
