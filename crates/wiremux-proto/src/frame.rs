//! Frames: the 6-byte header, the frame types and their flags (PROTOCOL.md §1–§2).
//!
//! A [`Frame`] is a request ID, a [`FrameType`], a [`Flags`] byte and a payload.
//! Types and flags are thin newtypes over the wire values, so a frame of a
//! type this version does not define can still be carried, shown and refused
//! with a clear message rather than lost at the decoder.

use bytes::{BufMut, Bytes};
use std::fmt;

/// Size of a frame header in bytes.
pub const HEADER_LEN: usize = 6;

/// The largest payload the 24-bit length field can express.
pub const MAX_WIRE_PAYLOAD: usize = (1 << 24) - 1;

/// A frame's type: the high four bits of the header's last byte.
///
/// ```
/// use wiremux_proto::FrameType;
/// assert_eq!(FrameType::COMMAND_NAME.name(), Some("command-name"));
/// assert_eq!(FrameType::from_name("bytes-response"), Some(FrameType::BYTES_RESPONSE));
/// assert_eq!(FrameType::new(7).name(), None);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrameType(u8);

impl FrameType {
    /// `command-name` (0x1): starts a command.
    pub const COMMAND_NAME: FrameType = FrameType(0x1);
    /// `command-argument` (0x2): one argument of a command.
    pub const COMMAND_ARGUMENT: FrameType = FrameType(0x2);
    /// `command-data` (0x3): raw data for a command.
    pub const COMMAND_DATA: FrameType = FrameType(0x3);
    /// `bytes-response` (0x4): raw response bytes.
    pub const BYTES_RESPONSE: FrameType = FrameType(0x4);
    /// `error-response` (0x5): a message that ends its request.
    pub const ERROR_RESPONSE: FrameType = FrameType(0x5);

    const NAMES: [(FrameType, &'static str); 5] = [
        (Self::COMMAND_NAME, "command-name"),
        (Self::COMMAND_ARGUMENT, "command-argument"),
        (Self::COMMAND_DATA, "command-data"),
        (Self::BYTES_RESPONSE, "bytes-response"),
        (Self::ERROR_RESPONSE, "error-response"),
    ];

    /// A frame type from its wire value (only the low four bits are kept).
    pub const fn new(value: u8) -> FrameType {
        FrameType(value & 0x0f)
    }

    /// The wire value, 0 to 15.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The protocol's name for this type, or `None` if this version defines none.
    pub fn name(self) -> Option<&'static str> {
        Self::NAMES
            .iter()
            .find(|(t, _)| *t == self)
            .map(|(_, n)| *n)
    }

    /// The type with this protocol name.
    pub fn from_name(name: &str) -> Option<FrameType> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(t, _)| *t)
    }

    /// Whether this version of the protocol defines the type.
    pub fn is_known(self) -> bool {
        self.name().is_some()
    }

    /// The flag names valid for this type, lowest bit first.
    pub fn flag_names(self) -> &'static [(u8, &'static str)] {
        match self {
            Self::COMMAND_NAME => &[
                (Flags::EOS, "eos"),
                (Flags::HAVE_ARGS, "have-args"),
                (Flags::HAVE_DATA, "have-data"),
            ],
            Self::COMMAND_ARGUMENT => &[(Flags::CONTINUATION, "continuation"), (Flags::EOA, "eoa")],
            Self::COMMAND_DATA | Self::BYTES_RESPONSE => &[
                (Flags::CONTINUATION, "continuation"),
                (Flags::DATA_EOS, "eos"),
            ],
            Self::ERROR_RESPONSE => &[
                (Flags::PROTOCOL, "protocol"),
                (Flags::APPLICATION, "application"),
            ],
            _ => &[],
        }
    }
}

impl fmt::Debug for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "FrameType({})", self.0),
        }
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

/// A frame's flags: the low four bits of the header's last byte.
///
/// The meaning of each bit depends on the frame type, so the constants below
/// share values: `EOS` of a command-name frame is bit 0, `eos` of a data or
/// response frame is bit 1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Flags(u8);

impl Flags {
    /// No flag set.
    pub const NONE: Flags = Flags(0);
    /// command-name: the command is complete.
    pub const EOS: u8 = 0x1;
    /// command-name: argument frames follow.
    pub const HAVE_ARGS: u8 = 0x2;
    /// command-name: data frames follow.
    pub const HAVE_DATA: u8 = 0x4;
    /// command-argument, command-data, bytes-response: more follows.
    pub const CONTINUATION: u8 = 0x1;
    /// command-argument: the last argument.
    pub const EOA: u8 = 0x2;
    /// command-data, bytes-response: the stream is complete.
    pub const DATA_EOS: u8 = 0x2;
    /// error-response: a transport or protocol error.
    pub const PROTOCOL: u8 = 0x1;
    /// error-response: the command failed.
    pub const APPLICATION: u8 = 0x2;

    /// Flags from their wire value (only the low four bits are kept).
    pub const fn new(bits: u8) -> Flags {
        Flags(bits & 0x0f)
    }

    /// The wire value, 0 to 15.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `bit` is set.
    pub const fn contains(self, bit: u8) -> bool {
        self.0 & bit == bit
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Payload length in bytes (24 bits on the wire).
    pub length: usize,
    /// The request this frame belongs to.
    pub request_id: u16,
    /// The frame type.
    pub frame_type: FrameType,
    /// The frame flags.
    pub flags: Flags,
}

impl Header {
    /// Parses the six header bytes.
    #[inline]
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Header {
        Header {
            length: usize::from(bytes[0])
                | usize::from(bytes[1]) << 8
                | usize::from(bytes[2]) << 16,
            request_id: u16::from_le_bytes([bytes[3], bytes[4]]),
            frame_type: FrameType::new(bytes[5] >> 4),
            flags: Flags::new(bytes[5]),
        }
    }

    /// Whether this frame completes the request `name` began, on its own:
    /// `name` is a command-name frame announcing data and no arguments
    /// (`have-data` alone) and this is a command-data frame of the same
    /// request with `eos` alone. Such a pair is the whole of most small
    /// commands.
    #[inline]
    pub(crate) fn is_sole_data_of(&self, name: &Header) -> bool {
        name.frame_type == FrameType::COMMAND_NAME
            && name.flags.bits() == Flags::HAVE_DATA
            && self.request_id == name.request_id
            && self.frame_type == FrameType::COMMAND_DATA
            && self.flags.bits() == Flags::DATA_EOS
    }

    /// The six header bytes.
    ///
    /// # Panics
    /// If `length` does not fit in 24 bits.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        assert!(
            self.length <= MAX_WIRE_PAYLOAD,
            "frame payload of {} bytes does not fit 24 bits",
            self.length
        );
        let id = self.request_id.to_le_bytes();
        [
            self.length as u8,
            (self.length >> 8) as u8,
            (self.length >> 16) as u8,
            id[0],
            id[1],
            self.frame_type.0 << 4 | self.flags.0,
        ]
    }
}

/// One frame: header fields and payload.
///
/// ```
/// use wiremux_proto::{Flags, Frame, FrameType};
/// let frame = Frame::new(1, FrameType::COMMAND_NAME, Flags::new(Flags::EOS), "customreadonly");
/// let mut wire = Vec::new();
/// frame.encode(&mut wire);
/// assert_eq!(&wire[..6], &[0x0e, 0x00, 0x00, 0x01, 0x00, 0x11]);
/// assert_eq!(&wire[6..], b"customreadonly");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// The request this frame belongs to.
    pub request_id: u16,
    /// The frame type.
    pub frame_type: FrameType,
    /// The frame flags.
    pub flags: Flags,
    /// The payload.
    pub payload: Bytes,
}

impl Frame {
    /// A frame from its parts.
    pub fn new(
        request_id: u16,
        frame_type: FrameType,
        flags: Flags,
        payload: impl Into<Bytes>,
    ) -> Frame {
        Frame {
            request_id,
            frame_type,
            flags,
            payload: payload.into(),
        }
    }

    /// The header describing this frame.
    pub fn header(&self) -> Header {
        Header {
            length: self.payload.len(),
            request_id: self.request_id,
            frame_type: self.frame_type,
            flags: self.flags,
        }
    }

    /// Appends the header and payload to `dst`.
    pub fn encode(&self, dst: &mut impl BufMut) {
        dst.put_slice(&self.header().to_bytes());
        dst.put_slice(&self.payload);
    }

    /// The encoded length: header plus payload.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::human::format_frame(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_uses_little_endian_fields() {
        let h = Header {
            length: 0x0a0b0c,
            request_id: 0x0102,
            frame_type: FrameType::COMMAND_DATA,
            flags: Flags::new(Flags::DATA_EOS),
        };
        let bytes = h.to_bytes();
        assert_eq!(bytes, [0x0c, 0x0b, 0x0a, 0x02, 0x01, 0x32]);
        assert_eq!(Header::parse(&bytes), h);
    }

    #[test]
    fn type_and_flags_share_the_last_header_byte() {
        let h = Header::parse(&[0, 0, 0, 1, 0, 0xf7]);
        assert_eq!(h.frame_type.get(), 0xf);
        assert_eq!(h.flags.bits(), 0x7);
        assert!(!h.frame_type.is_known());
    }

    #[test]
    fn flag_names_follow_the_table() {
        assert_eq!(FrameType::COMMAND_NAME.flag_names()[2], (4, "have-data"));
        assert_eq!(FrameType::COMMAND_ARGUMENT.flag_names()[1], (2, "eoa"));
        assert_eq!(FrameType::COMMAND_DATA.flag_names()[1], (2, "eos"));
        assert_eq!(FrameType::ERROR_RESPONSE.flag_names()[0], (1, "protocol"));
        assert!(FrameType::new(0).flag_names().is_empty());
    }

    #[test]
    #[should_panic(expected = "does not fit 24 bits")]
    fn header_refuses_lengths_over_24_bits() {
        Header {
            length: 1 << 24,
            request_id: 1,
            frame_type: FrameType::COMMAND_DATA,
            flags: Flags::NONE,
        }
        .to_bytes();
    }
}
