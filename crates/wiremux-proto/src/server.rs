//! The server reactor: frames in, actions out.
//!
//! [`ServerReactor`] splits the inbound frame stream into one assembler per
//! request ID and says what to do after each frame: wait for more
//! ([`Action::WantFrame`]), run a complete command ([`Action::RunCommand`]),
//! answer an error ([`Action::Error`]), send frames ([`Action::SendFrames`]),
//! or nothing ([`Action::Noop`]). It owns no socket and no clock; the engine
//! drives it and tells it when a response has been sent in full
//! ([`ServerReactor::on_response_finished`]), which frees the request ID.
//!
//! Errors come in two scopes (see [`Scope`]). A request-level error ends one
//! request; its later frames are dropped until the request's last frame or a
//! new command on the same ID, and every other request goes on. Dropping is
//! bounded ([`Limits::max_discard_bytes`]), and so is how many requests may
//! end that way ([`Limits::flood`], see [`crate::flood`]): past either, the
//! request-level error becomes a connection-level one. A connection-level
//! error cannot be pinned to one request; the engine sends a `protocol`
//! error-response and closes, and the reactor refuses every later frame.
//!
//! ```
//! use wiremux_proto::human::parse_frame;
//! use wiremux_proto::server::{Action, ServerReactor};
//!
//! let mut reactor = ServerReactor::new();
//! match reactor.on_frame(parse_frame("1 command-name eos heads").unwrap()) {
//!     Action::RunCommand(cmd) => {
//!         assert_eq!((cmd.request_id, &cmd.name[..]), (1, &b"heads"[..]));
//!         reactor.on_response_finished(cmd.request_id);
//!     }
//!     other => panic!("unexpected {other:?}"),
//! }
//! ```

use crate::builder::{error_response_frame, ErrorFlag};
use crate::codec::DEFAULT_MAX_SEND_PAYLOAD;
use crate::flood::{FloodGuard, FloodLimits};
use crate::frame::{Flags, Frame, FrameType, HEADER_LEN};
use crate::human::format_flags;
use crate::request::Request;
use bytes::{Buf, Bytes, BytesMut};
use std::fmt;

/// Limits of one connection's reactor. Every field has a documented default;
/// hitting a limit gives the peer a clear error, never unbounded memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Requests whose frames are still arriving, at once. Default 1024.
    /// Over it: connection-level error.
    pub max_receiving: usize,
    /// Arguments in one request. Default 256. Over it: request-level error.
    pub max_args: usize,
    /// Argument and data bytes buffered for one request. Default 8 MiB.
    /// Over it: request-level error.
    pub max_request_bytes: usize,
    /// Argument and data bytes buffered for all requests still arriving on
    /// the connection. Default 32 MiB. Over it: connection-level error.
    pub max_connection_bytes: usize,
    /// Largest payload of a frame the reactor builds (deferred responses and
    /// errors). Default 32768.
    pub max_send_payload: usize,
    /// Bytes dropped for one request after a request-level error refused
    /// it while its frames were still arriving (PROTOCOL.md section 3).
    /// Each dropped frame counts in full, its 6-byte header too, so a
    /// stream of empty frames is bounded as well. Default 8 MiB (the
    /// per-request byte limit). Over it: connection-level error
    /// [`ErrorKind::DiscardLimit`].
    pub max_discard_bytes: usize,
    /// Requests that may end in a request-level error, or cancelled, for
    /// the requests started (see [`crate::flood`]). Over them:
    /// connection-level error.
    pub flood: FloodLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_receiving: 1024,
            max_args: 256,
            max_request_bytes: 8 << 20,
            max_connection_bytes: 32 << 20,
            max_send_payload: DEFAULT_MAX_SEND_PAYLOAD,
            max_discard_bytes: 8 << 20,
            flood: FloodLimits::default(),
        }
    }
}

/// What the reactor's state is, as the reflect report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No request is being received.
    Idle,
    /// At least one request is still being received.
    CommandReceiving,
    /// A connection-level error happened; every later frame is refused.
    Errored,
}

impl State {
    /// The name used in the reflect report.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::CommandReceiving => "command-receiving",
            State::Errored => "errored",
        }
    }
}

/// What the engine should do after a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// More frames are needed.
    WantFrame {
        /// The reactor's state after the frame.
        state: State,
    },
    /// A command is complete: run it. Its ID stays active until
    /// [`ServerReactor::on_response_finished`].
    RunCommand(Request),
    /// Something was wrong: answer with the error's frame
    /// ([`ReactorError::frame`]); a connection-level error then closes.
    Error(ReactorError),
    /// Send these frames.
    SendFrames(Vec<Frame>),
    /// Nothing to do.
    Noop,
}

impl Action {
    /// The action's name in the reflect report.
    pub fn name(&self) -> &'static str {
        match self {
            Action::WantFrame { .. } => "wantframe",
            Action::RunCommand(_) => "runcommand",
            Action::Error(_) => "error",
            Action::SendFrames(_) => "sendframes",
            Action::Noop => "noop",
        }
    }
}

/// Whether an error ends one request or the whole connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Ends one request with an `application` error-response; the others go on.
    Request,
    /// A `protocol` error-response, then the connection closes.
    Connection,
}

/// An error found by the reactor, with the request it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct ReactorError {
    /// The request ID of the frame at fault.
    pub request_id: u16,
    /// What went wrong.
    pub kind: ErrorKind,
}

impl ReactorError {
    /// Whether the error ends one request or the connection.
    pub fn scope(&self) -> Scope {
        self.kind.scope()
    }

    /// The message for a person, naming the request.
    pub fn message(&self) -> String {
        match &self.kind {
            ErrorKind::IncompleteAtEof(list) => {
                let parts: Vec<String> = list
                    .iter()
                    .map(|(id, what)| format!("request {id} ({what})"))
                    .collect();
                format!(
                    "input ended with {} request(s) incomplete: {}",
                    list.len(),
                    parts.join(", ")
                )
            }
            kind => format!("request {}: {kind}", self.request_id),
        }
    }

    /// The error-response frame that tells the peer (for
    /// [`ErrorKind::IncompleteAtEof`], use [`ReactorError::frames`]).
    pub fn frame(&self, max_payload: usize) -> Frame {
        let flag = match self.scope() {
            Scope::Request => ErrorFlag::Application,
            Scope::Connection => ErrorFlag::Protocol,
        };
        error_response_frame(self.request_id, flag, &self.message(), max_payload)
    }

    /// Every error-response frame the error calls for: one per incomplete
    /// request at end of input, otherwise the one of [`ReactorError::frame`].
    pub fn frames(&self, max_payload: usize) -> Vec<Frame> {
        match &self.kind {
            ErrorKind::IncompleteAtEof(list) => list
                .iter()
                .map(|(id, what)| {
                    let message = format!(
                        "request {id}: input ended before the command was complete ({what})"
                    );
                    error_response_frame(*id, ErrorFlag::Application, &message, max_payload)
                })
                .collect(),
            _ => vec![self.frame(max_payload)],
        }
    }
}

/// The kinds of error the reactor finds. Display gives the detail; the
/// request ID is added by [`ReactorError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    // ---- connection-level ----
    /// A frame type this version does not define.
    #[error("frame of unknown type {0}")]
    UnknownFrameType(u8),
    /// A client command on an even (server-initiated) request ID.
    #[error("a client command must use an odd request ID")]
    EvenRequestId,
    /// A command-name frame for an ID whose command is still arriving.
    #[error("command-name frame for an ID whose command is still being received")]
    IdStillReceiving,
    /// A command-name frame for an ID whose command is still running.
    #[error("command-name frame for an ID whose command is still running")]
    IdStillActive,
    /// A frame other than command-name for an ID with no request.
    #[error("{0} frame for a request that was never started")]
    UnknownRequest(FrameType),
    /// A frame other than command-name for an ID whose command is complete
    /// and running (its response is not finished).
    #[error("{0} frame for a request whose command is already complete")]
    RequestComplete(FrameType),
    /// Too many requests receiving at once.
    #[error("more than {0} requests being received at once")]
    TooManyReceiving(usize),
    /// Too many bytes buffered for the requests still arriving.
    #[error("more than {0} bytes buffered for requests still being received on this connection")]
    ConnectionBufferFull(usize),
    /// A frame after a connection-level error.
    #[error("frame refused: an earlier protocol error ended this connection")]
    AlreadyErrored,
    /// Too many bytes dropped for one request after it was refused.
    #[error("more than {0} bytes sent for a request after it was refused; closing the connection")]
    DiscardLimit(usize),
    /// Too many requests ended in a request-level error
    /// ([`FloodLimits::max_errors`]).
    #[error("more than {max} requests refused with an error within {window} requests started")]
    TooManyRequestErrors {
        /// The limit.
        max: u32,
        /// The window, in requests started.
        window: u32,
    },
    /// Too many requests ended cancelled ([`FloodLimits::max_cancelled`]).
    #[error("more than {max} requests cancelled within {window} requests started")]
    TooManyCancelled {
        /// The limit.
        max: u32,
        /// The window, in requests started.
        window: u32,
    },
    // ---- request-level ----
    /// A command-name frame whose flags are not eos alone, or have-args
    /// and/or have-data.
    #[error("command-name flags must be eos alone, or have-args and/or have-data; got {0}")]
    BadCommandFlags(String),
    /// A frame the request does not expect in its state.
    #[error("unexpected {got} frame; expected {expected}")]
    UnexpectedFrame {
        /// The type that arrived.
        got: FrameType,
        /// What the request was waiting for.
        expected: &'static str,
    },
    /// A command-data frame with neither continuation nor eos.
    #[error("command-data frame needs exactly one of continuation or eos; got {0}")]
    BadDataFlags(String),
    /// A command-argument frame with flags that contradict each other.
    #[error("command-argument frame with both continuation and eoa")]
    BadArgumentFlags,
    /// An argument frame too short for the 4-byte length prefix.
    #[error("command-argument frame of {0} bytes is shorter than its 4-byte header")]
    ArgumentHeaderTooShort(usize),
    /// An argument name that does not fit in the argument's first frame.
    #[error("argument name of {declared} bytes does not fit in its first frame ({have} bytes follow the header)")]
    PartialArgumentName {
        /// The declared name length.
        declared: usize,
        /// The bytes after the prefix.
        have: usize,
    },
    /// More value bytes than the argument declared.
    #[error("argument `{name}`: {have} value bytes, but {declared} declared")]
    ArgumentValueTooLong {
        /// The argument's name.
        name: String,
        /// The declared value length.
        declared: usize,
        /// The value bytes received.
        have: usize,
    },
    /// A frame that ends an argument before its declared length.
    #[error("argument `{name}`: frame ends with {have} of {declared} value bytes and no continuation flag")]
    PartialArgumentValue {
        /// The argument's name.
        name: String,
        /// The declared value length.
        declared: usize,
        /// The value bytes received.
        have: usize,
    },
    /// A continuation flag on a frame that completed its value.
    #[error("argument `{0}`: continuation flag on a frame that completes the value")]
    NeedlessContinuation(String),
    /// An argument name given twice.
    #[error("argument `{0}` given twice")]
    DuplicateArgument(String),
    /// Too many arguments.
    #[error("more than {0} arguments")]
    TooManyArguments(usize),
    /// Too many bytes for one request.
    #[error("more than {0} bytes of arguments and data")]
    RequestTooLarge(usize),
    /// End of input with requests still arriving (each reported on its own).
    #[error("input ended with requests incomplete")]
    IncompleteAtEof(Vec<(u16, &'static str)>),
}

impl ErrorKind {
    /// Whether this kind of error ends one request or the connection.
    pub fn scope(&self) -> Scope {
        use ErrorKind::*;
        match self {
            UnknownFrameType(_)
            | EvenRequestId
            | IdStillReceiving
            | IdStillActive
            | UnknownRequest(_)
            | RequestComplete(_)
            | TooManyReceiving(_)
            | ConnectionBufferFull(_)
            | AlreadyErrored
            | DiscardLimit(_)
            | TooManyRequestErrors { .. }
            | TooManyCancelled { .. } => Scope::Connection,
            _ => Scope::Request,
        }
    }
}

use crate::slots::IdTable;

/// A request ID's state.
#[derive(Debug)]
enum Slot {
    /// Frames are still arriving.
    Receiving(Box<Assembler>),
    /// The command is running; its response is not finished.
    Active,
    /// A request-level error ended it; later frames are dropped until its
    /// last frame (data `eos` if it announced data, else argument `eoa`) or
    /// a new command-name, up to `Limits::max_discard_bytes` in all.
    Discarding { have_data: bool, dropped: usize },
}

/// Where in its frames a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Arguments,
    Data,
}

impl Phase {
    fn describe(self) -> &'static str {
        match self {
            Phase::Arguments => "receiving arguments",
            Phase::Data => "receiving data",
        }
    }
}

/// An argument whose value continues in later frames.
#[derive(Debug)]
struct PartialArg {
    name: Bytes,
    declared: usize,
    value: BytesMut,
}

/// One request's frames so far.
#[derive(Debug)]
struct Assembler {
    command: Bytes,
    phase: Phase,
    have_data: bool,
    args: Vec<(Bytes, Bytes)>,
    partial: Option<PartialArg>,
    data: Chunks,
    buffered: usize,
}

/// Data bytes: one frame's payload is kept as it is (no copy); more frames
/// are joined.
#[derive(Debug, Default)]
enum Chunks {
    #[default]
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl Chunks {
    #[inline]
    fn push(&mut self, more: Bytes) {
        *self = match std::mem::take(self) {
            Chunks::Empty => Chunks::One(more),
            Chunks::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + more.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&more);
                Chunks::Many(joined)
            }
            Chunks::Many(mut joined) => {
                joined.extend_from_slice(&more);
                Chunks::Many(joined)
            }
        }
    }

    #[inline]
    fn finish(self) -> Bytes {
        match self {
            Chunks::Empty => Bytes::new(),
            Chunks::One(b) => b,
            Chunks::Many(b) => b.freeze(),
        }
    }
}

/// The server side of the protocol for one connection (or one HTTP request).
#[derive(Debug)]
pub struct ServerReactor {
    limits: Limits,
    slots: IdTable<Slot>,
    receiving: usize,
    active: usize,
    buffered: usize,
    errored: bool,
    defer_output: bool,
    input_ended: bool,
    deferred: Vec<Frame>,
    flood: FloodGuard,
    /// Emptied assemblers kept for the next requests, at most
    /// `SPARE_ASSEMBLERS`: most requests take two frames or more, and
    /// reusing the box spares an allocation and a free for each.
    #[allow(clippy::vec_box)] // the boxes themselves are what is reused
    spare: Vec<Box<Assembler>>,
}

/// Emptied assemblers a reactor keeps for reuse (under 200 bytes each).
const SPARE_ASSEMBLERS: usize = 64;

impl Default for ServerReactor {
    fn default() -> Self {
        ServerReactor::new()
    }
}

impl ServerReactor {
    /// A reactor with the default [`Limits`].
    pub fn new() -> ServerReactor {
        ServerReactor::with_limits(Limits::default())
    }

    /// A reactor with the given limits.
    pub fn with_limits(limits: Limits) -> ServerReactor {
        ServerReactor {
            slots: IdTable::default(),
            receiving: 0,
            active: 0,
            buffered: 0,
            errored: false,
            defer_output: false,
            input_ended: false,
            deferred: Vec::new(),
            flood: FloodGuard::new(limits.flood),
            spare: Vec::new(),
            limits,
        }
    }

    /// Defers output until the input has ended (PROTOCOL.md §4): responses
    /// given to [`ServerReactor::on_bytes_response`] and
    /// [`ServerReactor::on_application_error`] are kept and come out of
    /// [`ServerReactor::on_input_eof`].
    pub fn defer_output(mut self, defer: bool) -> ServerReactor {
        self.defer_output = defer;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The reactor's state.
    pub fn state(&self) -> State {
        if self.errored {
            State::Errored
        } else if self.receiving > 0 {
            State::CommandReceiving
        } else {
            State::Idle
        }
    }

    /// Requests whose frames are still arriving.
    pub fn receiving(&self) -> usize {
        self.receiving
    }

    /// Requests handed out with [`Action::RunCommand`] whose responses are
    /// not finished.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Bytes of arguments and data buffered for requests still arriving.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Feeds one frame and says what to do.
    pub fn on_frame(&mut self, frame: Frame) -> Action {
        if self.errored {
            return self.fail_connection(frame.request_id, ErrorKind::AlreadyErrored);
        }
        // Each branch builds the action in place: most frames are a
        // request going on or complete, and the ~120-byte action is not
        // copied out of a `Result` on their way.
        match frame.frame_type {
            FrameType::COMMAND_NAME => self.on_command_name(frame),
            t if !t.is_known() => {
                let kind = ErrorKind::UnknownFrameType(t.get());
                self.refuse(frame.request_id, t, frame.flags, kind)
            }
            _ => self.on_continuing_frame(frame),
        }
    }

    /// The frame of `frame_type` and `flags` for request `id` is refused
    /// with `kind`: the connection fails, or (a request-level error) the
    /// request ends and its later frames are dropped, unless that is one
    /// request error too many.
    #[cold]
    #[inline(never)]
    fn refuse(&mut self, id: u16, frame_type: FrameType, flags: Flags, kind: ErrorKind) -> Action {
        if kind.scope() == Scope::Connection {
            return self.fail_connection(id, kind);
        }
        self.discard(id, frame_type, flags);
        if let Err(flood) = self.flood.on_request_error() {
            return self.fail_connection(id, flood);
        }
        Action::Error(ReactorError {
            request_id: id,
            kind,
        })
    }

    /// Tells the reactor that a request ended cancelled, for the flood
    /// limit on cancellations ([`FloodLimits::max_cancelled`]). An error
    /// means the connection has cancelled more than the limit allows: send
    /// it (a connection-level error) and close; the reactor refuses every
    /// later frame.
    ///
    /// ```
    /// use wiremux_proto::flood::FloodLimits;
    /// use wiremux_proto::human::parse_frame;
    /// use wiremux_proto::server::{Limits, ServerReactor};
    ///
    /// let limits = Limits {
    ///     flood: FloodLimits { window: 100, max_errors: 10, max_cancelled: 1, cancel_burst: 0 },
    ///     ..Limits::default()
    /// };
    /// let mut reactor = ServerReactor::with_limits(limits);
    /// reactor.on_frame(parse_frame("1 command-name eos sleep").unwrap());
    /// assert!(reactor.on_cancelled(1).is_ok());
    /// let error = reactor.on_cancelled(1).unwrap_err();
    /// assert_eq!(
    ///     error.message(),
    ///     "request 1: more than 1 requests cancelled within 100 requests started"
    /// );
    /// ```
    pub fn on_cancelled(&mut self, request_id: u16) -> Result<(), ReactorError> {
        match self.flood.on_cancelled() {
            Ok(()) => Ok(()),
            Err(kind) => {
                self.errored = true;
                Err(ReactorError { request_id, kind })
            }
        }
    }

    fn fail_connection(&mut self, request_id: u16, kind: ErrorKind) -> Action {
        self.errored = true;
        Action::Error(ReactorError { request_id, kind })
    }

    /// Ends a request after a request-level error in the frame of
    /// `frame_type` and `flags`: frees its buffers and, unless that frame was
    /// its last, drops its later frames.
    fn discard(&mut self, id: u16, frame_type: FrameType, flags: Flags) {
        let have_data = match self.slots.remove(id) {
            Some(Slot::Receiving(asm)) => {
                self.receiving -= 1;
                self.buffered -= asm.buffered;
                asm.have_data
            }
            _ => frame_type == FrameType::COMMAND_NAME && flags.contains(Flags::HAVE_DATA),
        };
        // Request-level errors come only from odd IDs (anything on an even
        // ID is a connection-level error), so the slot can be kept.
        if id % 2 == 1 && !is_last_frame(frame_type, flags, have_data) {
            self.slots.insert(
                id,
                Slot::Discarding {
                    have_data,
                    dropped: 0,
                },
            );
        }
    }

    fn want(&self) -> Action {
        Action::WantFrame {
            state: self.state(),
        }
    }

    fn on_command_name(&mut self, frame: Frame) -> Action {
        let (id, flags) = (frame.request_id, frame.flags);
        let refuse = |this: &mut Self, kind| this.refuse(id, FrameType::COMMAND_NAME, flags, kind);
        if id % 2 == 0 {
            return refuse(self, ErrorKind::EvenRequestId);
        }
        match self.slots.get(id) {
            Some(Slot::Receiving(_)) => return refuse(self, ErrorKind::IdStillReceiving),
            Some(Slot::Active) => return refuse(self, ErrorKind::IdStillActive),
            Some(Slot::Discarding { .. }) | None => {}
        }
        self.flood.on_request_started();
        let (have_args, have_data) = match flags.bits() {
            Flags::EOS => (false, false),
            f if f != 0 && f & !(Flags::HAVE_ARGS | Flags::HAVE_DATA) == 0 => {
                (f & Flags::HAVE_ARGS != 0, f & Flags::HAVE_DATA != 0)
            }
            _ => {
                self.slots.remove(id);
                let flags = format_flags(FrameType::COMMAND_NAME, flags);
                return refuse(self, ErrorKind::BadCommandFlags(flags));
            }
        };
        if !have_args && !have_data {
            self.slots.insert(id, Slot::Active);
            self.active += 1;
            return Action::RunCommand(Request {
                request_id: id,
                name: frame.payload,
                args: Vec::new(),
                data: None,
                deadline: None,
            });
        }
        if self.receiving >= self.limits.max_receiving {
            let max = self.limits.max_receiving;
            return refuse(self, ErrorKind::TooManyReceiving(max));
        }
        let phase = if have_args {
            Phase::Arguments
        } else {
            Phase::Data
        };
        let boxed = match self.spare.pop() {
            // A spare was emptied when its request completed: only the
            // fields a new request sets are written (assigning a whole
            // Assembler would run the drop of every empty field first).
            Some(mut spare) => {
                spare.command = frame.payload;
                spare.phase = phase;
                spare.have_data = have_data;
                spare.buffered = 0;
                spare
            }
            None => Box::new(Assembler {
                command: frame.payload,
                phase,
                have_data,
                args: Vec::new(),
                partial: None,
                data: Chunks::Empty,
                buffered: 0,
            }),
        };
        self.slots.insert(id, Slot::Receiving(boxed));
        self.receiving += 1;
        self.want()
    }

    /// An argument, data or other known frame for a request already started.
    fn on_continuing_frame(&mut self, frame: Frame) -> Action {
        let (id, frame_type, flags) = (frame.request_id, frame.frame_type, frame.flags);
        let refuse = |this: &mut Self, kind| this.refuse(id, frame_type, flags, kind);
        let asm = match self.slots.get_mut(id) {
            None => return refuse(self, ErrorKind::UnknownRequest(frame_type)),
            Some(Slot::Active) => return refuse(self, ErrorKind::RequestComplete(frame_type)),
            Some(Slot::Discarding { have_data, dropped }) => {
                *dropped += HEADER_LEN + frame.payload.len();
                if *dropped > self.limits.max_discard_bytes {
                    let max = self.limits.max_discard_bytes;
                    return refuse(self, ErrorKind::DiscardLimit(max));
                }
                if is_last_frame(frame_type, flags, *have_data) {
                    self.slots.remove(id);
                }
                return Action::Noop;
            }
            Some(Slot::Receiving(asm)) => asm,
        };
        let len = frame.payload.len();
        if asm.buffered + len > self.limits.max_request_bytes {
            let max = self.limits.max_request_bytes;
            return refuse(self, ErrorKind::RequestTooLarge(max));
        }
        if self.buffered + len > self.limits.max_connection_bytes {
            let max = self.limits.max_connection_bytes;
            return refuse(self, ErrorKind::ConnectionBufferFull(max));
        }
        let mut whole_data = None;
        let complete = match (frame_type, asm.phase) {
            (FrameType::COMMAND_ARGUMENT, Phase::Arguments) => {
                match asm.on_argument(frame, self.limits.max_args) {
                    Ok(complete) => complete,
                    Err(kind) => return refuse(self, kind),
                }
            }
            (FrameType::COMMAND_DATA, Phase::Data) => {
                let eos = match data_eos(flags) {
                    Ok(eos) => eos,
                    Err(kind) => return refuse(self, kind),
                };
                if eos && matches!(asm.data, Chunks::Empty) {
                    // All the data in one frame, the common case: it goes
                    // straight into the command, not through the assembler.
                    whole_data = Some(frame.payload);
                } else if !frame.payload.is_empty() {
                    asm.data.push(frame.payload);
                }
                eos
            }
            (got, phase) => {
                let expected = match phase {
                    Phase::Arguments => "command-argument",
                    Phase::Data => "command-data",
                };
                return refuse(self, ErrorKind::UnexpectedFrame { got, expected });
            }
        };
        asm.buffered += len;
        self.buffered += len;
        if !complete {
            // This request is still receiving, so that is the state.
            return Action::WantFrame {
                state: State::CommandReceiving,
            };
        }
        let Some(Slot::Receiving(mut asm)) = self.slots.insert(id, Slot::Active) else {
            unreachable!("slot was receiving")
        };
        self.receiving -= 1;
        self.active += 1;
        self.buffered -= asm.buffered;
        let data = if asm.have_data {
            Some(whole_data.unwrap_or_else(|| std::mem::take(&mut asm.data).finish()))
        } else {
            None
        };
        let name = std::mem::take(&mut asm.command);
        let args = std::mem::take(&mut asm.args);
        if self.spare.len() < SPARE_ASSEMBLERS {
            // Complete, so no argument is partial and the data was taken:
            // `on_command_name` relies on a spare being empty.
            debug_assert!(asm.args.is_empty() && asm.partial.is_none());
            debug_assert!(matches!(asm.data, Chunks::Empty));
            self.spare.push(asm);
        }
        Action::RunCommand(Request {
            request_id: id,
            name,
            args,
            data,
            deadline: None,
        })
    }

    /// Starts the request of `name` and `data` at once when `data` is its
    /// sole data frame (`name` a command-name frame with `have-data` alone,
    /// `data` the same request's command-data frame with `eos` alone) and
    /// the reactor would accept both frames: the request is recorded as
    /// running, exactly as [`ServerReactor::on_frame`] would leave it after
    /// the two, and `true` says the caller runs it (the two payloads are
    /// its name and data, it has no arguments). `false`, with nothing
    /// changed, for any other pair and for a pair either of whose frames
    /// would be refused: feed them to [`ServerReactor::on_frame`] instead.
    ///
    /// No assembler is set up for such a request, and its bytes never
    /// count as buffered: nothing can happen between its two frames.
    #[inline]
    pub fn start_whole(&mut self, name: &Frame, data: &Frame) -> bool {
        let free = matches!(
            self.slots.get(name.request_id),
            None | Some(Slot::Discarding { .. })
        );
        let accepted = free && self.accepts_whole(name, data);
        if accepted {
            self.flood.on_request_started();
            self.register_whole(name.request_id);
        }
        accepted
    }

    /// [`ServerReactor::start_whole`] for a request that is answered
    /// before the reactor sees anything else, so that it need not be
    /// recorded: `true` (counted as started, for the flood limits, and
    /// nothing recorded) when `start_whole` would accept the two frames
    /// and their ID has no state at all (not even frames of a refused
    /// request being dropped). The caller then either answers it at once,
    /// which frees its ID as [`ServerReactor::on_response_finished`]
    /// would, or records it with [`ServerReactor::register_whole`] before
    /// anything else reaches the reactor.
    #[inline]
    pub fn lend_whole(&mut self, name: &Frame, data: &Frame) -> bool {
        let accepted = self.slots.get(name.request_id).is_none() && self.accepts_whole(name, data);
        if accepted {
            self.flood.on_request_started();
        }
        accepted
    }

    /// Records a request taken with [`ServerReactor::lend_whole`] as
    /// running, exactly as `start_whole` would have.
    #[inline]
    pub fn register_whole(&mut self, request_id: u16) {
        self.slots.insert(request_id, Slot::Active);
        self.active += 1;
    }

    /// Whether the reactor would accept `name` and `data`, `data` the sole
    /// data frame of `name`, on an ID free for a new command.
    #[inline]
    fn accepts_whole(&self, name: &Frame, data: &Frame) -> bool {
        let data_len = data.payload.len();
        data.header().is_sole_data_of(&name.header())
            && !self.errored
            && name.request_id % 2 == 1
            && self.receiving < self.limits.max_receiving
            && data_len <= self.limits.max_request_bytes
            && self.buffered + data_len <= self.limits.max_connection_bytes
    }

    /// Stops a request whose frames are still arriving (it was cancelled):
    /// its buffers are freed and its later frames dropped, as after a
    /// request-level error. `false` if it was not receiving.
    pub fn stop_receiving(&mut self, request_id: u16) -> bool {
        if !matches!(self.slots.get(request_id), Some(Slot::Receiving(_))) {
            return false;
        }
        self.discard(request_id, FrameType::COMMAND_NAME, Flags::new(0));
        true
    }

    /// Tells the reactor that the response of `request_id` has been sent in
    /// full (its last frame written): the ID may be used again.
    pub fn on_response_finished(&mut self, request_id: u16) {
        if let Some(Slot::Active) = self.slots.get(request_id) {
            self.slots.remove(request_id);
            self.active -= 1;
        }
    }

    /// Forgets every active request, because their responses will never be
    /// sent (the connection is closing); returns how many there were.
    pub fn abandon_active(&mut self) -> usize {
        let abandoned = self.active;
        if abandoned > 0 {
            self.slots.retain(|_, slot| !matches!(slot, Slot::Active));
            self.active = 0;
        }
        abandoned
    }

    /// A complete bytes response for an active request: its frames to send
    /// now, or (when deferring output) kept for [`ServerReactor::on_input_eof`].
    /// The request's ID is freed.
    pub fn on_bytes_response(&mut self, request_id: u16, data: Bytes) -> Action {
        let frames =
            crate::builder::bytes_response_frames(request_id, data, self.limits.max_send_payload);
        self.respond(request_id, frames)
    }

    /// An application error for an active request, as
    /// [`ServerReactor::on_bytes_response`] does for bytes.
    pub fn on_application_error(&mut self, request_id: u16, message: &str) -> Action {
        let frame = error_response_frame(
            request_id,
            ErrorFlag::Application,
            message,
            self.limits.max_send_payload,
        );
        self.respond(request_id, vec![frame])
    }

    fn respond(&mut self, request_id: u16, frames: Vec<Frame>) -> Action {
        self.on_response_finished(request_id);
        if self.defer_output && !self.input_ended {
            self.deferred.extend(frames);
            Action::Noop
        } else {
            Action::SendFrames(frames)
        }
    }

    /// Tells the reactor that the input has ended.
    ///
    /// Every request still arriving is reported: without deferred output as
    /// one [`ErrorKind::IncompleteAtEof`] error listing them (send
    /// [`ReactorError::frames`]); with deferred output, their error frames
    /// follow the kept responses in one [`Action::SendFrames`]. Otherwise
    /// [`Action::Noop`].
    pub fn on_input_eof(&mut self) -> Action {
        self.input_ended = true;
        let mut incomplete: Vec<(u16, &'static str)> = self
            .slots
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Receiving(asm) => Some((id, asm.phase.describe())),
                _ => None,
            })
            .collect();
        incomplete.sort_unstable();
        for (id, _) in &incomplete {
            self.slots.remove(*id);
        }
        self.slots
            .retain(|_, slot| !matches!(slot, Slot::Discarding { .. }));
        self.receiving = 0;
        self.buffered = 0;
        let error = (!incomplete.is_empty()).then(|| ReactorError {
            request_id: incomplete[0].0,
            kind: ErrorKind::IncompleteAtEof(incomplete),
        });
        if self.defer_output {
            let mut frames = std::mem::take(&mut self.deferred);
            if let Some(error) = error {
                frames.extend(error.frames(self.limits.max_send_payload));
            }
            if !frames.is_empty() {
                return Action::SendFrames(frames);
            }
            return Action::Noop;
        }
        match error {
            Some(error) => Action::Error(error),
            None => Action::Noop,
        }
    }
}

/// Whether a frame would be the last of its request. A command-name frame
/// is the last only if it announces no arguments and no data, even when its
/// flags are contradictory (`eos|have-args`): the frames it announced are
/// then dropped rather than taken for frames of a request never started.
fn is_last_frame(frame_type: FrameType, flags: Flags, have_data: bool) -> bool {
    match frame_type {
        FrameType::COMMAND_NAME => {
            flags.contains(Flags::EOS) && flags.bits() & (Flags::HAVE_ARGS | Flags::HAVE_DATA) == 0
        }
        FrameType::COMMAND_ARGUMENT => !have_data && flags.contains(Flags::EOA),
        FrameType::COMMAND_DATA => flags.contains(Flags::DATA_EOS),
        _ => false,
    }
}

impl Assembler {
    /// Takes one argument frame; `Ok(true)` when the command is complete.
    fn on_argument(&mut self, frame: Frame, max_args: usize) -> Result<bool, ErrorKind> {
        let flags = frame.flags;
        if flags.contains(Flags::CONTINUATION | Flags::EOA) {
            return Err(ErrorKind::BadArgumentFlags);
        }
        let mut payload = frame.payload;
        let mut partial = match self.partial.take() {
            Some(partial) => partial,
            None => {
                if payload.len() < 4 {
                    return Err(ErrorKind::ArgumentHeaderTooShort(payload.len()));
                }
                let name_len = usize::from(payload.get_u16_le());
                let declared = usize::from(payload.get_u16_le());
                if payload.len() < name_len {
                    return Err(ErrorKind::PartialArgumentName {
                        declared: name_len,
                        have: payload.len(),
                    });
                }
                let name = payload.split_to(name_len);
                if self.args.iter().any(|(n, _)| *n == name) {
                    return Err(ErrorKind::DuplicateArgument(
                        String::from_utf8_lossy(&name).into_owned(),
                    ));
                }
                if self.args.len() >= max_args {
                    return Err(ErrorKind::TooManyArguments(max_args));
                }
                // Common case: the whole value is in this one frame; keep it without a copy.
                if !flags.contains(Flags::CONTINUATION) && payload.len() == declared {
                    self.push_arg((name, payload), flags);
                    return Ok(self.after_argument(flags));
                }
                PartialArg {
                    name,
                    declared,
                    value: BytesMut::new(),
                }
            }
        };
        let have = partial.value.len() + payload.len();
        let name = || String::from_utf8_lossy(&partial.name).into_owned();
        if have > partial.declared {
            return Err(ErrorKind::ArgumentValueTooLong {
                name: name(),
                declared: partial.declared,
                have,
            });
        }
        let continues = flags.contains(Flags::CONTINUATION);
        if have < partial.declared && !continues {
            return Err(ErrorKind::PartialArgumentValue {
                name: name(),
                declared: partial.declared,
                have,
            });
        }
        if have == partial.declared && continues {
            return Err(ErrorKind::NeedlessContinuation(name()));
        }
        partial.value.extend_from_slice(&payload);
        if continues {
            self.partial = Some(partial);
            return Ok(false);
        }
        self.push_arg((partial.name, partial.value.freeze()), flags);
        Ok(self.after_argument(flags))
    }

    /// Adds a whole argument. The last one (`eoa`) gets no spare room: a
    /// request keeps its arguments while it is in flight, and most have
    /// one or two, where growth would leave room for four.
    fn push_arg(&mut self, arg: (Bytes, Bytes), flags: Flags) {
        if flags.contains(Flags::EOA) {
            self.args.reserve_exact(1);
        }
        self.args.push(arg);
    }

    /// After a whole argument: with `eoa`, move on to data or complete.
    fn after_argument(&mut self, flags: Flags) -> bool {
        if !flags.contains(Flags::EOA) {
            return false;
        }
        if self.have_data {
            self.phase = Phase::Data;
            false
        } else {
            true
        }
    }
}

/// Whether a data frame's flags end the data; an error for flags a data
/// frame may not carry.
fn data_eos(flags: Flags) -> Result<bool, ErrorKind> {
    match flags.bits() {
        Flags::CONTINUATION => Ok(false),
        Flags::DATA_EOS => Ok(true),
        _ => Err(ErrorKind::BadDataFlags(format_flags(
            FrameType::COMMAND_DATA,
            flags,
        ))),
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
