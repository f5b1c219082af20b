//! The frame codec: bytes to frames and back.
//!
//! [`FrameCodec`] decodes incrementally from a `BytesMut`: a frame split at
//! any byte waits for the rest, many frames in one buffer come out one per
//! call, and each payload is split out of the buffer without a copy. A header
//! that declares more than the configured maximum is refused as soon as the
//! header is seen, before any of its payload is buffered.
//!
//! With the default `tokio-codec` feature the codec also implements
//! tokio-util's `Decoder` and `Encoder`, so it plugs into `Framed`.
//!
//! ```
//! use bytes::BytesMut;
//! use wiremux_proto::{FrameCodec, FrameType};
//!
//! let mut codec = FrameCodec::new();
//! let mut buf = BytesMut::from(&b"\x0e\x00\x00\x01\x00\x11custom"[..]);
//! assert!(codec.decode_frame(&mut buf).unwrap().is_none()); // payload incomplete
//! buf.extend_from_slice(b"readonly");
//! let frame = codec.decode_frame(&mut buf).unwrap().unwrap();
//! assert_eq!(frame.frame_type, FrameType::COMMAND_NAME);
//! assert_eq!(&frame.payload[..], b"customreadonly");
//! ```

use crate::frame::{Frame, Header, HEADER_LEN, MAX_WIRE_PAYLOAD};
use bytes::{Buf, Bytes, BytesMut};

/// Default largest payload a receiver accepts (PROTOCOL.md §1).
pub const DEFAULT_MAX_RECV_PAYLOAD: usize = 65535;
/// Default largest payload a sender emits, as the reference implementation did.
pub const DEFAULT_MAX_SEND_PAYLOAD: usize = 32768;

/// Errors from decoding or encoding frames. All are connection-level: after
/// one, the byte stream cannot be trusted to be aligned on frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// A header declared a payload over the receiver's maximum.
    #[error(
        "frame for request {request_id} declares a {length}-byte payload; the maximum is {max}"
    )]
    FrameTooLarge {
        /// The request ID in the offending header.
        request_id: u16,
        /// The declared length.
        length: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The input ended inside a frame.
    #[error("input ended inside a frame: {0}")]
    Truncated(Truncation),
    /// A frame to encode has a payload over the sender's maximum.
    #[error("cannot encode a {length}-byte payload; the maximum is {max}")]
    PayloadTooLarge {
        /// The payload length.
        length: usize,
        /// The configured maximum.
        max: usize,
    },
    /// An I/O error, carried for tokio-util's `Decoder`/`Encoder` which need
    /// an error type that can hold one.
    #[error("i/o error: {0}")]
    Io(String),
}

/// Where the input ended inside a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Truncation {
    /// Fewer than six header bytes were left.
    Header {
        /// The header bytes that did arrive.
        have: usize,
    },
    /// The header arrived but not all of the payload.
    Payload {
        /// The request ID in the header.
        request_id: u16,
        /// The declared payload length.
        expected: usize,
        /// The payload bytes that did arrive.
        have: usize,
    },
}

impl std::fmt::Display for Truncation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Truncation::Header { have } => write!(f, "{have} of {HEADER_LEN} header bytes"),
            Truncation::Payload {
                request_id,
                expected,
                have,
            } => {
                write!(
                    f,
                    "{have} of {expected} payload bytes of a frame for request {request_id}"
                )
            }
        }
    }
}

impl From<std::io::Error> for CodecError {
    fn from(e: std::io::Error) -> Self {
        CodecError::Io(e.to_string())
    }
}

/// Incremental frame decoder and encoder with configurable payload limits.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_recv_payload: usize,
    max_send_payload: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new()
    }
}

impl FrameCodec {
    /// A codec with the default limits: accept up to 65535, emit at most 32768.
    pub fn new() -> FrameCodec {
        FrameCodec {
            max_recv_payload: DEFAULT_MAX_RECV_PAYLOAD,
            max_send_payload: DEFAULT_MAX_SEND_PAYLOAD,
        }
    }

    /// Sets the largest payload accepted from the peer (at most 16 MiB - 1).
    pub fn max_recv_payload(mut self, max: usize) -> FrameCodec {
        self.max_recv_payload = max.min(MAX_WIRE_PAYLOAD);
        self
    }

    /// Sets the largest payload this side emits (at most 16 MiB - 1).
    pub fn max_send_payload(mut self, max: usize) -> FrameCodec {
        self.max_send_payload = max.min(MAX_WIRE_PAYLOAD);
        self
    }

    /// The largest payload this codec emits.
    pub fn send_limit(&self) -> usize {
        self.max_send_payload
    }

    /// Decodes one frame from the front of `src`.
    ///
    /// Returns `Ok(None)` when `src` does not yet hold a whole frame; in that
    /// case `src` has been reserved for the rest of the frame and nothing was
    /// consumed.
    #[inline]
    pub fn decode_frame(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(head) = src.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let header = Header::parse(head);
        if header.length > self.max_recv_payload {
            return Err(CodecError::FrameTooLarge {
                request_id: header.request_id,
                length: header.length,
                max: self.max_recv_payload,
            });
        }
        let total = HEADER_LEN + header.length;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let payload = src.split_to(header.length).freeze();
        Ok(Some(Frame {
            request_id: header.request_id,
            frame_type: header.frame_type,
            flags: header.flags,
            payload,
        }))
    }

    /// Decodes like [`FrameCodec::decode_frame`], the same frames and the
    /// same errors at the same points, but cheaper per frame: every whole
    /// frame at the front of `src` is split off in one piece into `run`
    /// and handed out from there, so a read that brought many frames costs
    /// one split of the buffer, not one per frame. Frames waiting in `run`
    /// have left `src`; keep calling with the same `run` until `Ok(None)`.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use wiremux_proto::codec::{FrameCodec, FrameRun};
    ///
    /// let (mut codec, mut run) = (FrameCodec::new(), FrameRun::default());
    /// let mut buf = BytesMut::from(&b"\x01\x00\x00\x01\x00\x11a\x01\x00\x00\x03\x00\x11b\x05\x00"[..]);
    /// let first = codec.decode_batched(&mut run, &mut buf).unwrap().unwrap();
    /// assert_eq!((first.request_id, &first.payload[..]), (1, &b"a"[..]));
    /// assert_eq!(buf.len(), 2); // both whole frames left the buffer at once
    /// let second = codec.decode_batched(&mut run, &mut buf).unwrap().unwrap();
    /// assert_eq!((second.request_id, &second.payload[..]), (3, &b"b"[..]));
    /// assert!(codec.decode_batched(&mut run, &mut buf).unwrap().is_none());
    /// ```
    #[inline]
    pub fn decode_batched(
        &mut self,
        run: &mut FrameRun,
        src: &mut BytesMut,
    ) -> Result<Option<Frame>, CodecError> {
        if let Some(frame) = run.next_frame() {
            return Ok(Some(frame));
        }
        let whole = self.whole_frames(src);
        if whole > 0 {
            run.bytes = src.split_to(whole).freeze();
            return Ok(run.next_frame());
        }
        // The first frame is not all here (or its header is refused).
        self.decode_frame(src)
    }

    /// The length of the longest run of whole, acceptable frames at the
    /// front of `src`.
    fn whole_frames(&self, src: &[u8]) -> usize {
        let mut at = 0;
        while let Some(head) = src[at..].first_chunk::<HEADER_LEN>() {
            let header = Header::parse(head);
            let end = at + HEADER_LEN + header.length;
            if header.length > self.max_recv_payload || end > src.len() {
                break;
            }
            at = end;
        }
        at
    }

    /// Decodes one frame at the end of input: what is left must be whole
    /// frames, so bytes that do not make one are a [`CodecError::Truncated`].
    pub fn decode_frame_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode_frame(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None if src.len() < HEADER_LEN => Err(CodecError::Truncated(Truncation::Header {
                have: src.len(),
            })),
            None => {
                let header =
                    Header::parse(src.first_chunk::<HEADER_LEN>().expect("checked length"));
                Err(CodecError::Truncated(Truncation::Payload {
                    request_id: header.request_id,
                    expected: header.length,
                    have: src.len() - HEADER_LEN,
                }))
            }
        }
    }

    /// Appends `frame` to `dst`, refusing payloads over the send limit.
    pub fn encode_frame(&self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        if frame.payload.len() > self.max_send_payload {
            return Err(CodecError::PayloadTooLarge {
                length: frame.payload.len(),
                max: self.max_send_payload,
            });
        }
        dst.reserve(frame.encoded_len());
        frame.encode(dst);
        Ok(())
    }
}

/// Whole frames split off a read buffer by [`FrameCodec::decode_batched`],
/// waiting to be handed out. Empty by default.
#[derive(Debug, Clone, Default)]
pub struct FrameRun {
    bytes: Bytes,
}

impl FrameRun {
    /// Whether no frame waits here.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The data frame that completes `name` when it comes next: `name` is
    /// a command-name frame announcing data and no arguments (flags
    /// `have-data` alone), and the next frame of the run is a command-data
    /// frame of the same request with `eos` alone. Such a pair is the whole
    /// of most small commands, and
    /// [`Lifecycle::on_name_and_data`](crate::lifecycle::Lifecycle::on_name_and_data)
    /// takes it in one step. `None`, with the run unchanged, otherwise.
    ///
    /// ```
    /// use bytes::BytesMut;
    /// use wiremux_proto::codec::{FrameCodec, FrameRun};
    ///
    /// // 1 command-name have-data echo, 1 command-data eos hi
    /// let wire = b"\x04\x00\x00\x01\x00\x14echo\x02\x00\x00\x01\x00\x32hi";
    /// let (mut codec, mut run) = (FrameCodec::new(), FrameRun::default());
    /// let mut buf = BytesMut::from(&wire[..]);
    /// let name = codec.decode_batched(&mut run, &mut buf).unwrap().unwrap();
    /// let data = run.take_sole_data(&name).unwrap();
    /// assert_eq!((&name.payload[..], &data.payload[..]), (&b"echo"[..], &b"hi"[..]));
    /// assert!(run.is_empty());
    /// ```
    #[inline]
    pub fn take_sole_data(&mut self, name: &Frame) -> Option<Frame> {
        let next = Header::parse(self.bytes.first_chunk::<HEADER_LEN>()?);
        if next.is_sole_data_of(&name.header()) {
            self.next_frame()
        } else {
            None
        }
    }

    /// The next frame; the run holds whole frames only. The last one takes
    /// what is left of the run, with no reference count of its own.
    #[inline]
    fn next_frame(&mut self) -> Option<Frame> {
        let header = Header::parse(self.bytes.first_chunk::<HEADER_LEN>()?);
        let mut payload = self.bytes.split_to(HEADER_LEN + header.length);
        payload.advance(HEADER_LEN);
        Some(Frame {
            request_id: header.request_id,
            frame_type: header.frame_type,
            flags: header.flags,
            payload,
        })
    }
}

/// Decodes every frame of a complete input. Convenient for tests and tools
/// that have all bytes at hand; a stream should use [`FrameCodec::decode_frame`].
///
/// ```
/// let frames = wiremux_proto::decode_all(b"\x00\x00\x00\x01\x00\x11").unwrap();
/// assert_eq!(frames.len(), 1);
/// assert!(wiremux_proto::decode_all(b"\x05\x00\x00\x01\x00\x11ab").is_err());
/// ```
pub fn decode_all(input: &[u8]) -> Result<Vec<Frame>, CodecError> {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    while let Some(frame) = codec.decode_frame_eof(&mut buf)? {
        frames.push(frame);
    }
    Ok(frames)
}

#[cfg(feature = "tokio-codec")]
mod tokio_impl {
    use super::*;

    impl tokio_util::codec::Decoder for FrameCodec {
        type Item = Frame;
        type Error = CodecError;

        fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
            self.decode_frame(src)
        }

        fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
            self.decode_frame_eof(src)
        }
    }

    impl tokio_util::codec::Encoder<Frame> for FrameCodec {
        type Error = CodecError;

        fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
            self.encode_frame(&frame, dst)
        }
    }

    impl tokio_util::codec::Encoder<&Frame> for FrameCodec {
        type Error = CodecError;

        fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
            self.encode_frame(frame, dst)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Flags, FrameType};
    use proptest::prelude::*;

    fn frame(id: u16, t: u8, flags: u8, payload: &[u8]) -> Frame {
        Frame::new(id, FrameType::new(t), Flags::new(flags), payload.to_vec())
    }

    #[test]
    fn decodes_many_frames_from_one_buffer() {
        let mut buf = BytesMut::new();
        frame(1, 1, 2, b"a").encode(&mut buf);
        frame(3, 1, 1, b"bc").encode(&mut buf);
        let mut codec = FrameCodec::new();
        assert_eq!(
            codec.decode_frame(&mut buf).unwrap(),
            Some(frame(1, 1, 2, b"a"))
        );
        assert_eq!(
            codec.decode_frame(&mut buf).unwrap(),
            Some(frame(3, 1, 1, b"bc"))
        );
        assert_eq!(codec.decode_frame(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn payload_is_split_out_without_copying() {
        let mut buf = BytesMut::new();
        frame(1, 3, 2, &[7u8; 32768]).encode(&mut buf);
        let base = buf.as_ptr() as usize;
        let f = FrameCodec::new().decode_frame(&mut buf).unwrap().unwrap();
        assert_eq!(
            f.payload.as_ptr() as usize,
            base + HEADER_LEN,
            "payload must point into the read buffer"
        );
    }

    #[test]
    fn over_long_length_is_refused_from_the_header_alone() {
        // 0x010000 = 65536 bytes declared, one over the default maximum; no payload present.
        let mut buf = BytesMut::from(&[0x00, 0x00, 0x01, 0x05, 0x00, 0x32][..]);
        let err = FrameCodec::new().decode_frame(&mut buf).unwrap_err();
        assert_eq!(
            err,
            CodecError::FrameTooLarge {
                request_id: 5,
                length: 65536,
                max: 65535
            }
        );
        assert_eq!(
            err.to_string(),
            "frame for request 5 declares a 65536-byte payload; the maximum is 65535"
        );
        assert!(
            buf.capacity() < 1024,
            "nothing reserved for the refused payload"
        );
    }

    #[test]
    fn configured_maximum_is_honoured() {
        let mut codec = FrameCodec::new().max_recv_payload(4);
        let mut buf = BytesMut::new();
        frame(1, 3, 2, b"1234").encode(&mut buf);
        frame(1, 3, 2, b"12345").encode(&mut buf);
        assert!(codec.decode_frame(&mut buf).unwrap().is_some());
        assert!(matches!(
            codec.decode_frame(&mut buf),
            Err(CodecError::FrameTooLarge {
                length: 5,
                max: 4,
                ..
            })
        ));
    }

    #[test]
    fn truncated_input_is_an_error_at_eof() {
        let mut codec = FrameCodec::new();
        let mut buf = BytesMut::from(&b"\x05\x00"[..]);
        assert_eq!(
            codec.decode_frame_eof(&mut buf).unwrap_err().to_string(),
            "input ended inside a frame: 2 of 6 header bytes"
        );
        let mut buf = BytesMut::from(&b"\x05\x00\x00\x09\x00\x32abc"[..]);
        assert_eq!(
            codec.decode_frame_eof(&mut buf).unwrap_err().to_string(),
            "input ended inside a frame: 3 of 5 payload bytes of a frame for request 9"
        );
    }

    #[test]
    fn encoder_refuses_payloads_over_the_send_limit() {
        let codec = FrameCodec::new();
        let mut dst = BytesMut::new();
        codec
            .encode_frame(&frame(1, 4, 2, &[0; 32768]), &mut dst)
            .unwrap();
        assert_eq!(dst.len(), 32768 + 6);
        assert_eq!(
            codec.encode_frame(&frame(1, 4, 2, &[0; 32769]), &mut dst),
            Err(CodecError::PayloadTooLarge {
                length: 32769,
                max: 32768
            })
        );
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        (
            any::<u16>(),
            0u8..16,
            0u8..16,
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(id, t, f, p)| frame(id, t, f, &p))
    }

    proptest! {
        #[test]
        fn round_trip_split_at_arbitrary_points(
            frames in proptest::collection::vec(arb_frame(), 0..20),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let mut wire = Vec::new();
            for f in &frames { f.encode(&mut wire); }
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            cuts.push(wire.len());
            cuts.sort_unstable();
            let mut codec = FrameCodec::new();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut at = 0;
            for cut in cuts {
                buf.extend_from_slice(&wire[at..cut]);
                at = cut;
                while let Some(f) = codec.decode_frame(&mut buf).unwrap() { out.push(f); }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(out, frames);
        }

        /// The batched decoder gives what the one-frame decoder gives, frame
        /// for frame and error for error, over frames and garbage cut at
        /// arbitrary points, with a small payload limit so that headers are
        /// refused too.
        #[test]
        fn batched_decoding_agrees_with_one_frame_at_a_time(
            frames in proptest::collection::vec(arb_frame(), 0..20),
            garbage in proptest::collection::vec(any::<u8>(), 0..40),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            max in 0usize..400,
        ) {
            let mut wire = Vec::new();
            for f in &frames { f.encode(&mut wire); }
            wire.extend_from_slice(&garbage);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            cuts.push(wire.len());
            cuts.sort_unstable();
            let decode = |batched: bool| {
                let mut codec = FrameCodec::new().max_recv_payload(max);
                let (mut buf, mut run) = (BytesMut::new(), FrameRun::default());
                let (mut out, mut at) = (Vec::new(), 0);
                for &cut in &cuts {
                    buf.extend_from_slice(&wire[at..cut]);
                    at = cut;
                    loop {
                        let next = match batched {
                            true => codec.decode_batched(&mut run, &mut buf),
                            false => codec.decode_frame(&mut buf),
                        };
                        match next {
                            Ok(Some(frame)) => out.push(Ok(frame)),
                            Ok(None) => break,
                            Err(err) => {
                                out.push(Err(err));
                                return (out, buf.len());
                            }
                        }
                    }
                    assert!(run.is_empty(), "a run is emptied before more is read");
                }
                (out, buf.len())
            };
            prop_assert_eq!(decode(true), decode(false));
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode_all(&input);
        }
    }
}
