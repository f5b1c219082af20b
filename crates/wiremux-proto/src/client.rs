//! The client side: request ID allocation and response assembly.
//!
//! [`IdAllocator`] hands out odd request IDs from 1, stepping by 2 and
//! wrapping inside 16 bits, never one still active. [`ResponseAssembler`]
//! turns bytes-response and error-response frames into whole responses per
//! request ID, in whatever order the server finishes them.
//!
//! ```
//! use wiremux_proto::client::{IdAllocator, Outcome, ResponseAssembler};
//! use wiremux_proto::human::parse_frame;
//!
//! let mut ids = IdAllocator::new();
//! let (a, b) = (ids.allocate().unwrap(), ids.allocate().unwrap());
//! assert_eq!((a, b), (1, 3));
//! let mut responses = ResponseAssembler::new();
//! responses.expect(a);
//! responses.expect(b);
//! // The server answers 3 before 1.
//! let done = responses.on_frame(parse_frame("3 bytes-response eos second").unwrap()).unwrap().unwrap();
//! assert_eq!((done.request_id, done.outcome), (3, Outcome::Bytes("second".into())));
//! ids.release(done.request_id);
//! ```

use crate::frame::{Flags, Frame, FrameType};
use crate::human::format_flags;
use crate::id_map::IdMap;
use bytes::{Bytes, BytesMut};

/// Number of odd request IDs.
const ODD_IDS: usize = 1 << 15;

/// Every odd request ID is active: no new request can start until one ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "all 32768 client request IDs are in use; wait for a response before starting another request"
)]
pub struct Exhausted;

/// Allocates client (odd) request IDs.
#[derive(Debug, Clone)]
pub struct IdAllocator {
    /// One bit per odd ID: bit `id >> 1` is set while `id` is active.
    active: Box<[u64; ODD_IDS / 64]>,
    /// Index (`id >> 1`) of the next ID to try.
    next: usize,
    in_use: usize,
}

impl Default for IdAllocator {
    fn default() -> Self {
        IdAllocator::new()
    }
}

impl IdAllocator {
    /// An allocator whose first ID is 1.
    pub fn new() -> IdAllocator {
        IdAllocator {
            active: Box::new([0; ODD_IDS / 64]),
            next: 0,
            in_use: 0,
        }
    }

    /// The next free odd ID after the last one handed out, wrapping from
    /// 65535 to 1 and skipping IDs still active.
    pub fn allocate(&mut self) -> Result<u16, Exhausted> {
        if self.in_use == ODD_IDS {
            return Err(Exhausted);
        }
        let mut index = self.next;
        while self.active[index / 64] & (1 << (index % 64)) != 0 {
            index = (index + 1) % ODD_IDS;
        }
        self.active[index / 64] |= 1 << (index % 64);
        self.in_use += 1;
        self.next = (index + 1) % ODD_IDS;
        Ok((index as u16) << 1 | 1)
    }

    /// Frees `id` for reuse (once its response has fully arrived). Freeing an
    /// ID that is not active does nothing.
    pub fn release(&mut self, id: u16) {
        let index = usize::from(id >> 1);
        if id % 2 == 1 && self.active[index / 64] & (1 << (index % 64)) != 0 {
            self.active[index / 64] &= !(1 << (index % 64));
            self.in_use -= 1;
        }
    }

    /// Whether `id` is active.
    pub fn is_active(&self, id: u16) -> bool {
        let index = usize::from(id >> 1);
        id % 2 == 1 && self.active[index / 64] & (1 << (index % 64)) != 0
    }

    /// How many IDs are active.
    pub fn in_use(&self) -> usize {
        self.in_use
    }
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The whole bytes response.
    Bytes(Bytes),
    /// The command failed: the server's message.
    ApplicationError(String),
    /// The server reported a protocol error; it closes the connection.
    ProtocolError(String),
}

/// A finished response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The request it answers.
    pub request_id: u16,
    /// How the request ended.
    pub outcome: Outcome,
}

/// A frame from the server that the client cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// A response frame for a request this client is not waiting on.
    #[error(
        "request {request_id}: {frame_type} frame for a request this client is not waiting on"
    )]
    UnexpectedResponse {
        /// The frame's request ID.
        request_id: u16,
        /// The frame's type.
        frame_type: FrameType,
    },
    /// A frame type a server does not send.
    #[error("request {request_id}: a server does not send {frame_type} frames")]
    UnexpectedType {
        /// The frame's request ID.
        request_id: u16,
        /// The frame's type.
        frame_type: FrameType,
    },
    /// A bytes-response frame with flags other than exactly one of
    /// continuation or eos.
    #[error("request {request_id}: bytes-response frame needs exactly one of continuation or eos; got {flags}")]
    BadFlags {
        /// The frame's request ID.
        request_id: u16,
        /// The flags, formatted.
        flags: String,
    },
    /// A response over the configured maximum.
    #[error("request {request_id}: response of more than {max} bytes")]
    ResponseTooLarge {
        /// The frame's request ID.
        request_id: u16,
        /// The configured maximum.
        max: usize,
    },
}

#[derive(Debug)]
struct Pending {
    body: BytesMut,
    keep: bool,
}

/// Assembles whole responses from response frames, per request ID.
#[derive(Debug)]
pub struct ResponseAssembler {
    pending: IdMap<Pending>,
    max_response: usize,
}

impl Default for ResponseAssembler {
    fn default() -> Self {
        ResponseAssembler::new()
    }
}

impl ResponseAssembler {
    /// An assembler that accepts responses of up to 1 GiB.
    pub fn new() -> ResponseAssembler {
        ResponseAssembler {
            pending: IdMap::default(),
            max_response: 1 << 30,
        }
    }

    /// Sets the largest response body accepted.
    pub fn max_response(mut self, max: usize) -> ResponseAssembler {
        self.max_response = max;
        self
    }

    /// Starts waiting for the response to `request_id`.
    pub fn expect(&mut self, request_id: u16) {
        self.pending.insert(
            request_id,
            Pending {
                body: BytesMut::new(),
                keep: true,
            },
        );
    }

    /// Stops keeping the body of `request_id` (its caller went away); the
    /// request still completes, with an empty body, when its last frame
    /// arrives, so the ID can be freed then.
    pub fn discard(&mut self, request_id: u16) {
        if let Some(p) = self.pending.get_mut(&request_id) {
            p.keep = false;
            p.body = BytesMut::new();
        }
    }

    /// Requests still waiting for their last frame.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The IDs still waiting, in no particular order.
    pub fn pending_ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.pending.keys().copied()
    }

    /// Feeds one frame; returns the response it completes, if any.
    pub fn on_frame(&mut self, frame: Frame) -> Result<Option<Response>, ClientError> {
        let request_id = frame.request_id;
        let frame_type = frame.frame_type;
        if frame_type != FrameType::BYTES_RESPONSE && frame_type != FrameType::ERROR_RESPONSE {
            return Err(ClientError::UnexpectedType {
                request_id,
                frame_type,
            });
        }
        let Some(pending) = self.pending.get_mut(&request_id) else {
            return Err(ClientError::UnexpectedResponse {
                request_id,
                frame_type,
            });
        };
        if frame_type == FrameType::ERROR_RESPONSE {
            self.pending.remove(&request_id);
            let message = String::from_utf8_lossy(&frame.payload).into_owned();
            let outcome = if frame.flags.contains(Flags::PROTOCOL) {
                Outcome::ProtocolError(message)
            } else {
                Outcome::ApplicationError(message)
            };
            return Ok(Some(Response {
                request_id,
                outcome,
            }));
        }
        let eos = match frame.flags.bits() {
            Flags::CONTINUATION => false,
            Flags::DATA_EOS => true,
            _ => {
                return Err(ClientError::BadFlags {
                    request_id,
                    flags: format_flags(FrameType::BYTES_RESPONSE, frame.flags),
                })
            }
        };
        if pending.keep {
            if pending.body.len() + frame.payload.len() > self.max_response {
                return Err(ClientError::ResponseTooLarge {
                    request_id,
                    max: self.max_response,
                });
            }
            if eos && pending.body.is_empty() {
                // One-frame response: hand out the payload itself, no copy.
                self.pending.remove(&request_id);
                return Ok(Some(Response {
                    request_id,
                    outcome: Outcome::Bytes(frame.payload),
                }));
            }
            pending.body.extend_from_slice(&frame.payload);
        }
        if !eos {
            return Ok(None);
        }
        let body = self
            .pending
            .remove(&request_id)
            .map(|p| p.body.freeze())
            .unwrap_or_default();
        Ok(Some(Response {
            request_id,
            outcome: Outcome::Bytes(body),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::human::parse_frame;
    use proptest::prelude::*;

    #[test]
    fn ids_are_odd_from_one_stepping_by_two() {
        let mut ids = IdAllocator::new();
        let got: Vec<u16> = (0..4).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(got, [1, 3, 5, 7]);
    }

    #[test]
    fn ids_wrap_inside_16_bits_and_skip_active_ones() {
        let mut ids = IdAllocator::new();
        let held = ids.allocate().unwrap(); // 1 stays active across the wrap
        let three = ids.allocate().unwrap();
        ids.release(three);
        let mut last = 0;
        for _ in 0..(ODD_IDS - 2) {
            last = ids.allocate().unwrap();
            ids.release(last);
        }
        assert_eq!(last, 65535);
        assert_eq!(
            ids.allocate().unwrap(),
            3,
            "wraps to 1, which is held, so 3"
        );
        assert!(ids.is_active(held));
    }

    #[test]
    fn exhausted_when_all_ids_are_active() {
        let mut ids = IdAllocator::new();
        for _ in 0..ODD_IDS {
            ids.allocate().unwrap();
        }
        assert_eq!(ids.allocate(), Err(Exhausted));
        assert_eq!(
            Exhausted.to_string(),
            "all 32768 client request IDs are in use; wait for a response before starting another request"
        );
        ids.release(12345);
        assert_eq!(ids.allocate(), Ok(12345));
        ids.release(2); // even: not ours, ignored
        assert_eq!(ids.in_use(), ODD_IDS);
    }

    fn feed(asm: &mut ResponseAssembler, line: &str) -> Result<Option<Response>, ClientError> {
        asm.on_frame(parse_frame(line).unwrap())
    }

    #[test]
    fn responses_assemble_per_id_in_any_order() {
        let mut asm = ResponseAssembler::new();
        asm.expect(1);
        asm.expect(3);
        asm.expect(5);
        assert_eq!(
            feed(&mut asm, "1 bytes-response continuation ab").unwrap(),
            None
        );
        assert_eq!(
            feed(&mut asm, "3 bytes-response continuation x").unwrap(),
            None
        );
        let five = feed(&mut asm, "5 error-response application no such key: k")
            .unwrap()
            .unwrap();
        assert_eq!(
            five.outcome,
            Outcome::ApplicationError("no such key: k".into())
        );
        let one = feed(&mut asm, "1 bytes-response eos cd").unwrap().unwrap();
        assert_eq!(
            one,
            Response {
                request_id: 1,
                outcome: Outcome::Bytes("abcd".into())
            }
        );
        let three = feed(&mut asm, "3 bytes-response eos ").unwrap().unwrap();
        assert_eq!(three.outcome, Outcome::Bytes("x".into()));
        assert_eq!(asm.pending(), 0);
    }

    #[test]
    fn protocol_errors_are_told_apart() {
        let mut asm = ResponseAssembler::new();
        asm.expect(7);
        let r = feed(&mut asm, "7 error-response protocol bad frame")
            .unwrap()
            .unwrap();
        assert_eq!(r.outcome, Outcome::ProtocolError("bad frame".into()));
    }

    #[test]
    fn bad_frames_from_a_server_are_errors() {
        let mut asm = ResponseAssembler::new().max_response(3);
        asm.expect(1);
        assert_eq!(
            feed(&mut asm, "9 bytes-response eos x")
                .unwrap_err()
                .to_string(),
            "request 9: bytes-response frame for a request this client is not waiting on"
        );
        assert_eq!(
            feed(&mut asm, "1 command-name eos x")
                .unwrap_err()
                .to_string(),
            "request 1: a server does not send command-name frames"
        );
        assert_eq!(
            feed(&mut asm, "1 bytes-response 0 x")
                .unwrap_err()
                .to_string(),
            "request 1: bytes-response frame needs exactly one of continuation or eos; got 0"
        );
        assert_eq!(
            feed(&mut asm, "1 bytes-response eos abcd")
                .unwrap_err()
                .to_string(),
            "request 1: response of more than 3 bytes"
        );
    }

    #[test]
    fn discarded_requests_still_complete() {
        let mut asm = ResponseAssembler::new();
        asm.expect(1);
        feed(&mut asm, "1 bytes-response continuation abc").unwrap();
        asm.discard(1);
        feed(&mut asm, "1 bytes-response continuation def").unwrap();
        let r = feed(&mut asm, "1 bytes-response eos g").unwrap().unwrap();
        assert_eq!(r.outcome, Outcome::Bytes(Bytes::new()));
    }

    proptest! {
        #[test]
        fn allocator_never_hands_out_an_active_id(ops in proptest::collection::vec(any::<(bool, prop::sample::Index)>(), 0..500)) {
            let mut ids = IdAllocator::new();
            let mut active: Vec<u16> = Vec::new();
            for (alloc, pick) in ops {
                if alloc || active.is_empty() {
                    let id = ids.allocate().unwrap();
                    prop_assert!(id % 2 == 1);
                    prop_assert!(!active.contains(&id));
                    active.push(id);
                } else {
                    let id = active.swap_remove(pick.index(active.len()));
                    ids.release(id);
                }
                prop_assert_eq!(ids.in_use(), active.len());
            }
        }

        #[test]
        fn arbitrary_frames_never_panic_the_assembler(frames in proptest::collection::vec((any::<u16>(), 0u8..16, 0u8..16, proptest::collection::vec(any::<u8>(), 0..20)), 0..50)) {
            let mut asm = ResponseAssembler::new();
            for id in (1..20).step_by(2) { asm.expect(id); }
            for (id, t, f, p) in frames {
                let _ = asm.on_frame(Frame::new(id % 24, FrameType::new(t), Flags::new(f), p));
            }
        }
    }
}
