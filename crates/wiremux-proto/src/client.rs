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
use crate::slots::IdTable;
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
///
/// An ID is busy from [`IdAllocator::allocate`] until its response has
/// fully arrived ([`IdAllocator::release`]) *and* no request that names it
/// (in `@after`, `@use:NAME` or `@cancel`, PROTOCOL.md section 8) is still
/// active: each such request [`IdAllocator::pin`]s the ID while it is sent
/// and [`IdAllocator::unpin`]s it when it ends. The server resolves a name
/// to the latest request on that ID, so reusing the ID any sooner could
/// make a request wait for, or take the result of, the wrong one.
///
/// ```
/// use wiremux_proto::client::IdAllocator;
///
/// let mut ids = IdAllocator::new();
/// let a = ids.allocate().unwrap(); // add a=1 b=2 @keep
/// let b = ids.allocate().unwrap(); // add @use:a=1 b=10
/// ids.pin(a);
/// ids.release(a); // a's answer came, but b still names it
/// assert!(ids.is_active(a));
/// ids.unpin(a); // b ended
/// assert!(!ids.is_active(a));
/// # let _ = b;
/// ```
#[derive(Debug, Clone)]
pub struct IdAllocator {
    /// One bit per odd ID: bit `id >> 1` is set while `id` is busy.
    active: Box<[u64; ODD_IDS / 64]>,
    /// Index (`id >> 1`) of the next ID to try.
    next: usize,
    in_use: usize,
    /// IDs named by requests still active: how many name each, and whether
    /// the ID's own request has ended.
    pins: IdMap<Pin>,
}

#[derive(Debug, Clone, Copy)]
struct Pin {
    count: u32,
    released: bool,
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
            pins: IdMap::default(),
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

    /// Frees `id` for reuse (once its response has fully arrived), or, if
    /// a request still active names it, once the last of those ends.
    /// Freeing an ID that is not active does nothing.
    pub fn release(&mut self, id: u16) {
        if let Some(pin) = self.pins.get_mut(&id) {
            pin.released = true;
            return;
        }
        self.free(id);
    }

    fn free(&mut self, id: u16) {
        let index = usize::from(id >> 1);
        if id % 2 == 1 && self.active[index / 64] & (1 << (index % 64)) != 0 {
            self.active[index / 64] &= !(1 << (index % 64));
            self.in_use -= 1;
        }
    }

    /// A request about to be sent names `id` (which must be active, its own
    /// request not yet released): `id` stays busy until the matching
    /// [`IdAllocator::unpin`], even if its own request ends first. Pinning
    /// an ID that is not active does nothing.
    pub fn pin(&mut self, id: u16) {
        if !self.is_active(id) {
            return;
        }
        self.pins
            .entry(id)
            .or_insert(Pin {
                count: 0,
                released: false,
            })
            .count += 1;
    }

    /// A request that named `id` has ended. Once nothing names `id` and its
    /// own request has been released, `id` is free.
    pub fn unpin(&mut self, id: u16) {
        let Some(pin) = self.pins.get_mut(&id) else {
            return;
        };
        pin.count -= 1;
        if pin.count == 0 {
            let released = pin.released;
            self.pins.remove(&id);
            if released {
                self.free(id);
            }
        }
    }

    /// Whether a request still active names `id`.
    pub fn is_pinned(&self, id: u16) -> bool {
        self.pins.contains_key(&id)
    }

    /// Whether `id` is busy (active, or ended but still named).
    pub fn is_active(&self, id: u16) -> bool {
        let index = usize::from(id >> 1);
        id % 2 == 1 && self.active[index / 64] & (1 << (index % 64)) != 0
    }

    /// How many IDs are active.
    pub fn in_use(&self) -> usize {
        self.in_use
    }
}

/// The extensions of PROTOCOL.md section 8 a server offers, as its
/// `@capabilities` answer lists them.
///
/// ```
/// use wiremux_proto::client::Capabilities;
///
/// let caps = Capabilities::parse(b"after use keep cancel deadline");
/// assert!(caps.pipelining() && caps.cancel() && caps.deadline());
/// // A server without extensions answers `unknown command: @capabilities`.
/// let none = Capabilities::from_answer(Err("unknown command: @capabilities"));
/// assert_eq!(none, Capabilities::none());
/// assert!(!none.after());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    names: Vec<String>,
}

impl Capabilities {
    /// No extensions: what a server that does not know `@capabilities` has.
    pub fn none() -> Capabilities {
        Capabilities::default()
    }

    /// The extensions listed in a `@capabilities` answer (names separated
    /// by single spaces, in any order; unknown names are kept, empty ones
    /// skipped).
    pub fn parse(body: &[u8]) -> Capabilities {
        let mut names: Vec<String> = body
            .split(|b| *b == b' ')
            .filter(|name| !name.is_empty())
            .map(|name| String::from_utf8_lossy(name).into_owned())
            .collect();
        names.sort();
        names.dedup();
        Capabilities { names }
    }

    /// From the answer to `@capabilities`: its body, or, for an error (a
    /// server without extensions), none.
    pub fn from_answer<E>(answer: Result<&[u8], E>) -> Capabilities {
        match answer {
            Ok(body) => Capabilities::parse(body),
            Err(_) => Capabilities::none(),
        }
    }

    /// Whether the server lists `name`.
    pub fn supports(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// The names listed, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// `@after`.
    pub fn after(&self) -> bool {
        self.supports("after")
    }

    /// `@use:NAME` and `@keep` together: results pipelined on the server.
    pub fn pipelining(&self) -> bool {
        self.supports("use") && self.supports("keep") && self.after()
    }

    /// `@cancel`.
    pub fn cancel(&self) -> bool {
        self.supports("cancel")
    }

    /// `@deadline`.
    pub fn deadline(&self) -> bool {
        self.supports("deadline")
    }
}

/// The reserved names and values of PROTOCOL.md section 8, as a client
/// writes them.
///
/// ```
/// use std::time::Duration;
/// use wiremux_proto::builder::CommandBuilder;
/// use wiremux_proto::client::reserved;
/// use wiremux_proto::human::format_frame;
///
/// let cmd = reserved::deadline(
///     reserved::keep(reserved::use_result(CommandBuilder::new("add").arg("b", "10"), "a", 1)),
///     Duration::from_micros(2500),
/// );
/// let lines: Vec<String> = cmd.frames(3, 32768).unwrap().iter().map(format_frame).collect();
/// assert_eq!(lines, [
///     "3 command-name have-args add",
///     r"3 command-argument 0 \t\x00\x01\x00@deadline3",
///     r"3 command-argument 0 \x05\x00\x00\x00@keep",
///     r"3 command-argument 0 \x06\x00\x01\x00@use:a1",
///     r"3 command-argument eoa \x01\x00\x02\x00b10",
/// ]);
/// ```
pub mod reserved {
    use crate::builder::CommandBuilder;
    use bytes::{BufMut, Bytes, BytesMut};
    use std::time::Duration;

    /// The command that asks a server for its extensions.
    pub const CAPABILITIES: &str = "@capabilities";
    /// The command that cancels a request.
    pub const CANCEL: &str = "@cancel";
    /// The most IDs one `@after` may name.
    pub const MAX_DEPENDENCIES: usize = 64;

    /// `@capabilities`, no arguments.
    pub fn capabilities() -> CommandBuilder {
        CommandBuilder::new(CAPABILITIES)
    }

    /// `@cancel id=ID`.
    pub fn cancel(id: u16) -> CommandBuilder {
        CommandBuilder::new(CANCEL).arg("id", id.to_string())
    }

    /// The value of `@after`: the IDs in decimal, joined by `,`.
    pub fn after_value(ids: &[u16]) -> Bytes {
        let mut out = BytesMut::with_capacity(ids.len() * 6);
        for (i, id) in ids.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(id.to_string().as_bytes());
        }
        out.freeze()
    }

    /// Adds `@after` naming `ids` (nothing if there are none).
    pub fn after(command: CommandBuilder, ids: &[u16]) -> CommandBuilder {
        if ids.is_empty() {
            return command;
        }
        command.arg("@after", after_value(ids))
    }

    /// Adds `@use:NAME` naming the request `id`.
    pub fn use_result(command: CommandBuilder, name: impl AsRef<[u8]>, id: u16) -> CommandBuilder {
        let name = name.as_ref();
        let mut arg = BytesMut::with_capacity(5 + name.len());
        arg.put_slice(b"@use:");
        arg.put_slice(name);
        command.arg(arg.freeze(), id.to_string())
    }

    /// Adds `@keep`.
    pub fn keep(command: CommandBuilder) -> CommandBuilder {
        command.arg("@keep", "")
    }

    /// The value of `@deadline` for a time left: whole milliseconds,
    /// rounded up (so a server never stops a request before the client
    /// would), at least 1.
    pub fn deadline_ms(left: Duration) -> u64 {
        let ms = left.as_nanos().div_ceil(1_000_000);
        u64::try_from(ms).unwrap_or(u64::MAX).max(1)
    }

    /// Adds `@deadline` for the time `left`.
    pub fn deadline(command: CommandBuilder, left: Duration) -> CommandBuilder {
        command.arg("@deadline", deadline_ms(left).to_string())
    }

    /// The message a server gives a request that timed out after its
    /// `@deadline` of `ms`.
    pub fn timed_out_message(ms: u64) -> String {
        format!("timed out after {ms} ms")
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

/// Values by request ID: the client's own (odd) IDs in a direct-index
/// [`IdTable`], looked up on every response frame; any even ID a caller
/// expects, in a map beside it.
#[derive(Debug)]
struct ById<V> {
    odd: IdTable<V>,
    even: IdMap<V>,
}

impl<V> Default for ById<V> {
    fn default() -> Self {
        ById {
            odd: IdTable::default(),
            even: IdMap::default(),
        }
    }
}

impl<V> ById<V> {
    fn get_mut(&mut self, id: u16) -> Option<&mut V> {
        if id % 2 == 1 {
            self.odd.get_mut(id)
        } else {
            self.even.get_mut(&id)
        }
    }

    fn insert(&mut self, id: u16, value: V) {
        if id % 2 == 1 {
            self.odd.insert(id, value);
        } else {
            self.even.insert(id, value);
        }
    }

    fn remove(&mut self, id: u16) -> Option<V> {
        if id % 2 == 1 {
            self.odd.remove(id)
        } else {
            self.even.remove(&id)
        }
    }

    fn len(&self) -> usize {
        self.odd.len() + self.even.len()
    }

    fn ids(&self) -> impl Iterator<Item = u16> + '_ {
        self.odd
            .iter()
            .map(|(id, _)| id)
            .chain(self.even.keys().copied())
    }
}

/// Assembles whole responses from response frames, per request ID.
#[derive(Debug)]
pub struct ResponseAssembler {
    pending: ById<Pending>,
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
            pending: ById::default(),
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
        if let Some(p) = self.pending.get_mut(request_id) {
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
        self.pending.ids()
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
        let Some(pending) = self.pending.get_mut(request_id) else {
            return Err(ClientError::UnexpectedResponse {
                request_id,
                frame_type,
            });
        };
        if frame_type == FrameType::ERROR_RESPONSE {
            self.pending.remove(request_id);
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
                self.pending.remove(request_id);
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
            .remove(request_id)
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

    #[test]
    fn a_named_id_is_reused_only_when_nothing_names_it_and_it_ended() {
        let mut ids = IdAllocator::new();
        let a = ids.allocate().unwrap();
        // Two later requests name `a`; its own answer comes in between.
        ids.pin(a);
        ids.pin(a);
        assert!(ids.is_pinned(a));
        ids.release(a);
        ids.unpin(a);
        assert!(ids.is_active(a), "the second one still names it");
        ids.unpin(a);
        assert!(!ids.is_active(a) && !ids.is_pinned(a));
        assert_eq!(ids.in_use(), 0);
        // The dependents end first, the named request last.
        let b = ids.allocate().unwrap();
        ids.pin(b);
        ids.unpin(b);
        assert!(ids.is_active(b), "its own request is still active");
        ids.release(b);
        assert!(!ids.is_active(b));
        // Pinning a free ID does nothing, nor does unpinning an unpinned one.
        ids.pin(b);
        assert!(!ids.is_pinned(b));
        ids.unpin(b);
        assert_eq!(ids.in_use(), 0);
    }

    #[test]
    fn a_pinned_id_is_skipped_when_the_ids_wrap() {
        let mut ids = IdAllocator::new();
        let one = ids.allocate().unwrap();
        ids.pin(one);
        ids.release(one);
        let mut last = 0;
        for _ in 0..(ODD_IDS - 1) {
            last = ids.allocate().unwrap();
            ids.release(last);
        }
        assert_eq!(last, 65535);
        assert_eq!(ids.allocate().unwrap(), 3, "1 is still named, so 3");
        ids.unpin(one);
        for _ in 0..(ODD_IDS - 2) {
            let id = ids.allocate().unwrap();
            ids.release(id);
        }
        assert_eq!(ids.allocate().unwrap(), 1);
    }

    #[test]
    fn capabilities_from_the_probe_answer() {
        let caps = Capabilities::parse(b"deadline cancel  after keep use future");
        assert_eq!(
            caps.names().collect::<Vec<_>>(),
            ["after", "cancel", "deadline", "future", "keep", "use"]
        );
        assert!(caps.pipelining() && caps.after() && caps.cancel() && caps.deadline());
        assert!(caps.supports("future") && !caps.supports("fut"));
        let partial = Capabilities::parse(b"after use");
        assert!(partial.after() && !partial.pipelining() && !partial.cancel());
        assert_eq!(Capabilities::parse(b""), Capabilities::none());
        assert_eq!(
            Capabilities::from_answer(Err::<&[u8], _>("unknown command: @capabilities")),
            Capabilities::none()
        );
        assert_eq!(
            Capabilities::from_answer(Ok::<_, ()>(&b"cancel"[..])),
            Capabilities::parse(b"cancel")
        );
    }

    #[test]
    fn reserved_arguments_encode_as_section_8_says() {
        use std::time::Duration;
        assert_eq!(reserved::after_value(&[1, 3, 65535]), "1,3,65535");
        assert_eq!(reserved::after_value(&[]), "");
        let lines = |cmd: crate::builder::CommandBuilder, id| -> Vec<String> {
            cmd.frames(id, 32768)
                .unwrap()
                .iter()
                .map(crate::human::format_frame)
                .collect()
        };
        assert_eq!(
            lines(reserved::capabilities(), 1),
            ["1 command-name eos @capabilities"]
        );
        assert_eq!(
            lines(reserved::cancel(7), 9),
            [
                "9 command-name have-args @cancel",
                r"9 command-argument eoa \x02\x00\x01\x00id7"
            ]
        );
        let cmd = reserved::after(
            crate::builder::CommandBuilder::new("get").arg("key", "k"),
            &[1, 3],
        );
        assert_eq!(
            lines(cmd, 5),
            [
                "5 command-name have-args get",
                r"5 command-argument 0 \x06\x00\x03\x00@after1,3",
                r"5 command-argument eoa \x03\x00\x01\x00keyk",
            ]
        );
        let plain = crate::builder::CommandBuilder::new("get");
        assert_eq!(reserved::after(plain.clone(), &[]), plain);
        assert_eq!(reserved::deadline_ms(Duration::from_millis(250)), 250);
        assert_eq!(reserved::deadline_ms(Duration::from_micros(250_001)), 251);
        assert_eq!(reserved::deadline_ms(Duration::ZERO), 1);
        assert_eq!(reserved::deadline_ms(Duration::MAX), u64::MAX);
        assert_eq!(reserved::timed_out_message(250), "timed out after 250 ms");
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
    fn even_ids_are_assembled_like_odd_ones() {
        // The client's own IDs are odd; an even one a caller expects is
        // kept beside them and answered the same way.
        let mut asm = ResponseAssembler::new();
        asm.expect(2);
        asm.expect(3);
        let mut ids: Vec<u16> = asm.pending_ids().collect();
        ids.sort_unstable();
        assert_eq!(ids, [2, 3]);
        assert_eq!(
            feed(&mut asm, "2 bytes-response continuation ab").unwrap(),
            None
        );
        let two = feed(&mut asm, "2 bytes-response eos c").unwrap().unwrap();
        assert_eq!(
            (two.request_id, two.outcome),
            (2, Outcome::Bytes("abc".into()))
        );
        assert!(matches!(
            feed(&mut asm, "4 bytes-response eos x"),
            Err(ClientError::UnexpectedResponse { request_id: 4, .. })
        ));
        assert_eq!(asm.pending(), 1);
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
        fn a_pinned_id_is_never_handed_out_before_it_ends_and_is_unpinned(
            ops in proptest::collection::vec((0u8..4, prop::sample::Index::arbitrary()), 0..400)
        ) {
            // The model: for each ID handed out, whether its own request
            // is still active and how many active requests name it.
            let mut ids = IdAllocator::new();
            let mut model: std::collections::BTreeMap<u16, (bool, u32)> = Default::default();
            for (op, pick) in ops {
                let busy: Vec<u16> = model.keys().copied().collect();
                match op {
                    0 => {
                        let id = ids.allocate().unwrap();
                        prop_assert!(!model.contains_key(&id), "{id} handed out while busy");
                        model.insert(id, (true, 0));
                    }
                    _ if busy.is_empty() => {}
                    1 => {
                        let id = busy[pick.index(busy.len())];
                        ids.release(id);
                        model.get_mut(&id).unwrap().0 = false;
                    }
                    2 => {
                        let id = busy[pick.index(busy.len())];
                        // Only an active request can be named.
                        if model[&id].0 {
                            ids.pin(id);
                            model.get_mut(&id).unwrap().1 += 1;
                        }
                    }
                    _ => {
                        let pinned: Vec<u16> =
                            busy.iter().copied().filter(|id| model[id].1 > 0).collect();
                        if !pinned.is_empty() {
                            let id = pinned[pick.index(pinned.len())];
                            ids.unpin(id);
                            model.get_mut(&id).unwrap().1 -= 1;
                        }
                    }
                }
                model.retain(|_, (active, pins)| *active || *pins > 0);
                prop_assert_eq!(ids.in_use(), model.len());
                for (id, (_, pins)) in &model {
                    prop_assert!(ids.is_active(*id));
                    prop_assert_eq!(ids.is_pinned(*id), *pins > 0);
                }
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
