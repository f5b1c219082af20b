//! The async client: many concurrent calls over one connection.
//!
//! A [`Client`] is a cheap, cloneable handle. Calls go over a channel to
//! one driver task that owns the connection, the [`IdAllocator`] and the
//! [`ResponseAssembler`]: it gives each call an odd request ID, writes the
//! frames of many calls in one write, and routes each response to its
//! caller by ID, whatever order the server answers in. When all 32768 IDs
//! are busy, new calls wait for one to free up.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wiremux_engine::client::Error> {
//! let client = wiremux_engine::Client::connect("127.0.0.1:7878").await?;
//! let response = client.call("echo").data("hello").send().await?;
//! assert_eq!(response.body, "hello");
//! # Ok(()) }
//! ```
//!
//! Each call above is its own future with its own reply channel. A caller
//! that keeps many calls going at once (a load generator, a batch job) can
//! use a [`Pipeline`] instead: it queues calls without awaiting them, hands
//! them to the driver in batches, and gets every answer back on one
//! stream, tagged, in completion order.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use wiremux_proto::builder::CommandBuilder;
use wiremux_proto::client::{ClientError, IdAllocator, Outcome, ResponseAssembler};
use wiremux_proto::{Flags, FrameCodec, FrameType, IdMap};

mod error;

pub use error::{Error, Reason};

/// Output buffered before the driver stops taking new calls.
const WRITE_HIGH_WATER: usize = 256 << 10;
const ROUNDS_PER_WAKE: usize = 32;

/// A successful response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The request ID the call used.
    pub request_id: u16,
    /// The whole response body.
    pub body: Bytes,
}

/// A call's answer, tagged with the pipeline caller's tag.
type Answer = (u64, Result<Response, Error>);
type AnswerSink = mpsc::UnboundedSender<Vec<Answer>>;

/// What handles send the driver.
enum Submit {
    /// One call whose answer goes to one future ([`Client::send`]).
    One {
        command: CommandBuilder,
        reply: oneshot::Sender<Result<Response, Error>>,
    },
    /// A pipeline's calls, and where their answers go.
    Batch {
        sink: AnswerSink,
        calls: Vec<(u64, CommandBuilder)>,
    },
}

/// A call inside the driver.
struct Call {
    command: CommandBuilder,
    reply: Reply,
}

/// Where a call's answer goes.
enum Reply {
    Once(oneshot::Sender<Result<Response, Error>>),
    /// Into `Driver::pipes[pipe]`, tagged.
    Tagged {
        pipe: usize,
        tag: u64,
    },
}

/// A handle to one client connection. Clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    calls: mpsc::UnboundedSender<Submit>,
}

impl Client {
    /// Connects over TCP.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, Error> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::Connect(Reason::io(e)))?;
        let _ = stream.set_nodelay(true);
        Ok(Client::new(stream))
    }

    /// Connects over a Unix socket.
    pub async fn connect_unix(path: impl AsRef<std::path::Path>) -> Result<Client, Error> {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| Error::Connect(Reason::io(e)))?;
        Ok(Client::new(stream))
    }

    /// A client over any byte stream. Spawns the driver task on the current
    /// tokio runtime; it ends when every handle is dropped and every call
    /// has its answer, or when the connection ends.
    pub fn new<IO>(io: IO) -> Client
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (calls, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            io,
            calls: rx,
            calls_open: true,
            backlog: VecDeque::new(),
            pipes: Vec::new(),
            ids: IdAllocator::new(),
            responses: ResponseAssembler::new(),
            waiters: IdMap::default(),
            codec: FrameCodec::new(),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            needs_flush: false,
        };
        tokio::spawn(driver.run());
        Client { calls }
    }

    /// Starts building a call of `command`.
    pub fn call(&self, command: impl Into<Bytes>) -> CallBuilder<'_> {
        CallBuilder {
            client: self,
            command: CommandBuilder::new(command),
        }
    }

    /// Sends a prepared command and waits for its response.
    pub async fn send(&self, command: CommandBuilder) -> Result<Response, Error> {
        let (reply, rx) = oneshot::channel();
        self.calls
            .send(Submit::One { command, reply })
            .map_err(|_| closed())?;
        rx.await.unwrap_or_else(|_| {
            Err(lost(
                io::ErrorKind::ConnectionAborted,
                "the connection closed before the response",
            ))
        })
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.calls.is_closed()
    }

    /// A pipeline on this connection: calls started without waiting, and
    /// their answers on one stream in completion order.
    pub fn pipeline(&self) -> Pipeline {
        let (sink, answers) = mpsc::unbounded_channel();
        Pipeline {
            ready: VecDeque::new(),
            answers,
            sink,
            calls: self.calls.clone(),
            queued: Vec::new(),
            in_flight: 0,
        }
    }
}

fn closed() -> Error {
    lost(io::ErrorKind::NotConnected, "the connection has closed")
}

/// A lost connection of `kind`, with nothing underneath.
fn lost(kind: io::ErrorKind, message: &str) -> Error {
    Error::ConnectionLost(Reason::new(kind, message))
}

/// Many calls on one connection without a future per call.
///
/// [`Pipeline::start`] queues a call and returns at once; the queued calls
/// go to the connection together when [`Pipeline::next`] has to wait for
/// an answer, or at [`Pipeline::flush`]. `next` yields `(tag, result)` for
/// each call as its answer arrives, whatever order the calls finish in;
/// the tag is the caller's own, to match answers to calls. Every started call is
/// answered exactly once, with an error if the connection is lost.
/// Dropping the pipeline abandons the calls still out; the connection
/// stays sound.
///
/// Per call this costs much less than [`Client::send`]: no reply channel
/// and no future per call, one hand-over per batch of calls and one per
/// batch of answers.
///
/// ```no_run
/// # async fn demo() -> Result<(), wiremux_engine::client::Error> {
/// use wiremux_engine::proto::builder::CommandBuilder;
///
/// let client = wiremux_engine::Client::connect("127.0.0.1:7878").await?;
/// let mut pipeline = client.pipeline();
/// for i in 0..100u64 {
///     pipeline.start(i, CommandBuilder::new("echo").data(i.to_string()))?;
/// }
/// while let Some((tag, result)) = pipeline.next().await {
///     assert_eq!(result?.body, tag.to_string());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Pipeline {
    /// Answers received and not yet returned.
    ready: VecDeque<Answer>,
    // Declared (so dropped) before `calls`: once the driver sees the call
    // channel close, it finds this stream closed too.
    answers: mpsc::UnboundedReceiver<Vec<Answer>>,
    sink: AnswerSink,
    calls: mpsc::UnboundedSender<Submit>,
    /// Started calls not yet handed to the connection.
    queued: Vec<(u64, CommandBuilder)>,
    in_flight: usize,
}

impl Pipeline {
    /// Starts a call tagged `tag`: queues it to be sent when
    /// [`Pipeline::next`] waits or at [`Pipeline::flush`]. Fails only if the
    /// connection has closed; any other failure is the call's answer.
    pub fn start(&mut self, tag: u64, command: CommandBuilder) -> Result<(), Error> {
        if self.calls.is_closed() {
            return Err(closed());
        }
        self.queued.push((tag, command));
        self.in_flight += 1;
        Ok(())
    }

    /// Hands the queued calls to the connection now.
    pub fn flush(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let calls = std::mem::take(&mut self.queued);
        let batch = Submit::Batch {
            sink: self.sink.clone(),
            calls,
        };
        if let Err(mpsc::error::SendError(Submit::Batch { calls, .. })) = self.calls.send(batch) {
            // The connection closed after they were started.
            self.ready
                .extend(calls.into_iter().map(|(tag, _)| (tag, Err(closed()))));
        }
    }

    /// The next answer: `(tag, result)` of a call started here, or `None`
    /// when none is left to answer. An answer already received comes back
    /// at once; otherwise the queued calls are sent before waiting, so calls
    /// started while handling a batch of answers go out together.
    ///
    /// Cancel-safe: dropping the future (in a `select!`, say) loses no
    /// answer.
    pub async fn next(&mut self) -> Option<Answer> {
        if self.ready.is_empty() {
            self.flush();
        }
        if self.in_flight == 0 {
            return None;
        }
        if self.ready.is_empty() {
            // The stream cannot end while this pipeline holds a sender, and
            // the driver answers every call it was given.
            let batch = self.answers.recv().await?;
            self.ready.extend(batch);
        }
        let answer = self.ready.pop_front()?;
        self.in_flight -= 1;
        Some(answer)
    }

    /// Calls started and not yet returned by [`Pipeline::next`].
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

/// A pipeline's answers inside the driver.
struct Pipe {
    /// `None` once the pipeline has gone (or the slot is free).
    sink: Option<AnswerSink>,
    /// Answers gathered in this round, sent together.
    out: Vec<Answer>,
    /// Calls of this pipe not yet answered.
    waiting: usize,
}

/// A call being built: arguments and data, then [`CallBuilder::send`].
#[must_use = "a call does nothing until sent"]
pub struct CallBuilder<'a> {
    client: &'a Client,
    command: CommandBuilder,
}

impl CallBuilder<'_> {
    /// Adds an argument.
    pub fn arg(mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.command = self.command.arg(name, value);
        self
    }

    /// Sets the data.
    pub fn data(mut self, data: impl Into<Bytes>) -> Self {
        self.command = self.command.data(data);
        self
    }

    /// Sends the call and waits for the response. Dropping the returned
    /// future abandons the call; the connection stays sound.
    pub async fn send(self) -> Result<Response, Error> {
        self.client.send(self.command).await
    }
}

/// Owns the connection: writes calls, routes responses.
struct Driver<IO> {
    io: IO,
    calls: mpsc::UnboundedReceiver<Submit>,
    calls_open: bool,
    /// Calls waiting for a free request ID.
    backlog: VecDeque<Call>,
    /// Pipelines with calls not yet answered, by slot; a slot is reused
    /// once its pipe has nothing left to answer.
    pipes: Vec<Pipe>,
    ids: IdAllocator,
    responses: ResponseAssembler,
    waiters: IdMap<Reply>,
    codec: FrameCodec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    needs_flush: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Driver<IO> {
    async fn run(mut self) {
        // A bug that panics here must still answer every caller below.
        let ended = futures::future::poll_fn(|cx| {
            std::panic::catch_unwind(AssertUnwindSafe(|| self.poll_run(cx))).unwrap_or_else(|_| {
                Poll::Ready(Ok(lost(
                    io::ErrorKind::Other,
                    "the client's connection task failed",
                )))
            })
        })
        .await;
        let reason = match ended {
            Ok(reason) => reason,
            Err(err) => Error::from(err),
        };
        self.calls.close();
        for (_, waiter) in std::mem::take(&mut self.waiters) {
            self.answer(waiter, Err(reason.clone()));
        }
        while let Ok(submit) = self.calls.try_recv() {
            self.accept(submit);
        }
        while let Some(call) = self.backlog.pop_front() {
            self.answer(call.reply, Err(reason.clone()));
        }
        self.send_answers();
    }

    /// Takes a handle's submission into the backlog.
    fn accept(&mut self, submit: Submit) {
        match submit {
            Submit::One { command, reply } => self.backlog.push_back(Call {
                command,
                reply: Reply::Once(reply),
            }),
            Submit::Batch { sink, calls } => {
                let pipe = self.pipe_for(sink);
                self.pipes[pipe].waiting += calls.len();
                self.backlog
                    .extend(calls.into_iter().map(|(tag, command)| Call {
                        command,
                        reply: Reply::Tagged { pipe, tag },
                    }));
            }
        }
    }

    /// The slot of the pipeline whose answers go to `sink`.
    fn pipe_for(&mut self, sink: AnswerSink) -> usize {
        let live = |p: &Pipe| p.sink.as_ref().is_some_and(|s| s.same_channel(&sink));
        if let Some(i) = self.pipes.iter().position(live) {
            return i;
        }
        let pipe = Pipe {
            sink: Some(sink),
            out: Vec::new(),
            waiting: 0,
        };
        match self
            .pipes
            .iter()
            .position(|p| p.sink.is_none() && p.waiting == 0 && p.out.is_empty())
        {
            Some(i) => {
                self.pipes[i] = pipe;
                i
            }
            None => {
                self.pipes.push(pipe);
                self.pipes.len() - 1
            }
        }
    }

    /// Gives a call its answer (a pipeline's waits for `send_answers`).
    fn answer(&mut self, reply: Reply, result: Result<Response, Error>) {
        match reply {
            Reply::Once(tx) => {
                let _ = tx.send(result);
            }
            Reply::Tagged { pipe, tag } => {
                let pipe = &mut self.pipes[pipe];
                pipe.waiting = pipe.waiting.saturating_sub(1);
                if pipe.sink.is_some() {
                    pipe.out.push((tag, result));
                }
            }
        }
    }

    /// Sends each pipeline the answers gathered for it, in one batch.
    fn send_answers(&mut self) {
        for pipe in &mut self.pipes {
            if pipe.out.is_empty() {
                continue;
            }
            let out = std::mem::take(&mut pipe.out);
            if pipe.sink.as_ref().is_some_and(|s| s.send(out).is_err()) {
                pipe.sink = None; // the pipeline has gone
            }
            if pipe.waiting == 0 {
                pipe.sink = None; // nothing left for it: free the slot
            }
        }
    }

    /// Like [`Driver::is_gone`], and wakes this task when a single caller
    /// goes away later. (A pipeline's stream goes with its handle, which the
    /// driver notices through the call channel.)
    fn poll_gone(&self, reply: &mut Reply, cx: &mut Context<'_>) -> bool {
        match reply {
            Reply::Once(tx) => tx.poll_closed(cx).is_ready(),
            Reply::Tagged { .. } => self.is_gone(reply),
        }
    }

    /// Runs until the connection ends; the error every pending call gets.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Error>> {
        for _ in 0..ROUNDS_PER_WAKE {
            let mut progress = self.take_calls(cx);
            progress |= self.poll_write(cx)?;
            let read = self.poll_read(cx)?;
            self.send_answers();
            match read {
                Poll::Ready(Some(end)) => return Poll::Ready(Ok(end)),
                Poll::Ready(None) => progress = true,
                Poll::Pending => {}
            }
            if !self.calls_open && self.backlog.is_empty() && self.wbuf.is_empty() && {
                // No handle is left, so no new call can come. Once no caller
                // waits for an answer either, the connection is of no use:
                // close it rather than wait for a server that may never
                // answer. (poll_closed wakes this task when a caller goes.)
                let mut waiters = std::mem::take(&mut self.waiters);
                let all_gone = waiters
                    .values_mut()
                    .all(|waiter| self.poll_gone(waiter, cx));
                self.waiters = waiters;
                all_gone
            } {
                let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                return Poll::Ready(Ok(lost(
                    io::ErrorKind::NotConnected,
                    "the client was dropped",
                )));
            }
            if !progress {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Encodes new calls while request IDs and buffer room last.
    fn take_calls(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.wbuf.len() < WRITE_HIGH_WATER {
            let call = match self.backlog.pop_front() {
                Some(call) => call,
                None if !self.calls_open => break,
                None => match self.calls.poll_recv(cx) {
                    Poll::Ready(Some(submit)) => {
                        self.accept(submit);
                        continue;
                    }
                    Poll::Ready(None) => {
                        self.calls_open = false;
                        break;
                    }
                    Poll::Pending => break,
                },
            };
            progress = true;
            if self.is_gone(&call.reply) {
                // Abandoned before it was sent.
                self.answer(call.reply, Err(closed()));
                continue;
            }
            let Ok(id) = self.ids.allocate() else {
                // Every ID is busy: wait for a response to free one.
                self.backlog.push_front(call);
                break;
            };
            if let Err(err) = call
                .command
                .encode(id, self.codec.send_limit(), &mut self.wbuf)
            {
                self.ids.release(id);
                self.answer(call.reply, Err(err.into()));
                continue;
            }
            self.responses.expect(id);
            self.waiters.insert(id, call.reply);
        }
        progress
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut progress = false;
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf)? {
                Poll::Ready(0) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(n) => {
                    self.wbuf.advance(n);
                    self.needs_flush = true;
                    progress = true;
                }
                Poll::Pending => return Ok(progress),
            }
        }
        if self.needs_flush && Pin::new(&mut self.io).poll_flush(cx)?.is_ready() {
            self.needs_flush = false;
        }
        Ok(progress)
    }

    /// Reads and routes responses. `Ready(Some(error))`: the connection is
    /// over; `Ready(None)`: progress; `Pending`: nothing to read.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> io::Result<Poll<Option<Error>>> {
        let mut progress = false;
        loop {
            match self.codec.decode_frame(&mut self.rbuf) {
                Ok(Some(frame)) => {
                    progress = true;
                    let id = frame.request_id;
                    if frame.frame_type == FrameType::ERROR_RESPONSE
                        && frame.flags.contains(Flags::PROTOCOL)
                    {
                        // Whatever request it names, the server is closing the connection.
                        if let Some(waiter) = self.waiters.remove(&id) {
                            let message = String::from_utf8_lossy(&frame.payload).into();
                            self.answer(waiter, Err(Error::Protocol(message)));
                        }
                        return Ok(Poll::Ready(Some(Error::Protocol(
                            String::from_utf8_lossy(&frame.payload).into(),
                        ))));
                    }
                    if self.waiters.get(&id).is_some_and(|w| self.is_gone(w)) {
                        self.responses.discard(id);
                    }
                    match self.responses.on_frame(frame) {
                        Ok(None) => {}
                        Ok(Some(done)) => {
                            if let Some(end) = self.complete(done.request_id, done.outcome) {
                                return Ok(Poll::Ready(Some(end)));
                            }
                        }
                        Err(err) => return Ok(Poll::Ready(Some(invalid(err)))),
                    }
                    continue;
                }
                Ok(None) => {}
                Err(err) => {
                    let message = err.to_string();
                    let reason = Reason::caused_by(io::ErrorKind::InvalidData, message, err);
                    return Ok(Poll::Ready(Some(Error::ConnectionLost(reason))));
                }
            }
            self.rbuf.reserve(16 << 10);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)? {
                Poll::Ready(0) => {
                    let why = if self.waiters.is_empty() {
                        "the server closed the connection"
                    } else {
                        "the server closed the connection with requests in flight"
                    };
                    return Ok(Poll::Ready(Some(lost(io::ErrorKind::UnexpectedEof, why))));
                }
                Poll::Ready(_) => progress = true,
                Poll::Pending => {
                    return Ok(if progress {
                        Poll::Ready(None)
                    } else {
                        Poll::Pending
                    })
                }
            }
        }
    }

    /// Hands a finished response to its caller and frees its ID. A protocol
    /// error ends the connection: returns the error for everyone.
    fn complete(&mut self, id: u16, outcome: Outcome) -> Option<Error> {
        self.ids.release(id);
        let waiter = self.waiters.remove(&id);
        let result = match outcome {
            Outcome::Bytes(body) => Ok(Response {
                request_id: id,
                body,
            }),
            Outcome::ApplicationError(message) => Err(Error::Application(message)),
            Outcome::ProtocolError(message) => {
                let err = Error::Protocol(message);
                if let Some(waiter) = waiter {
                    self.answer(waiter, Err(err.clone()));
                }
                return Some(err);
            }
        };
        if let Some(waiter) = waiter {
            self.answer(waiter, result);
        }
        None
    }

    /// Whether the caller of `reply` has gone (without registering a wake-up).
    fn is_gone(&self, reply: &Reply) -> bool {
        match reply {
            Reply::Once(tx) => tx.is_closed(),
            Reply::Tagged { pipe, .. } => !self.pipes[*pipe]
                .sink
                .as_ref()
                .is_some_and(|s| !s.is_closed()),
        }
    }
}

fn invalid(err: ClientError) -> Error {
    let message = format!("invalid response from the server: {err}");
    Error::ConnectionLost(Reason::caused_by(io::ErrorKind::InvalidData, message, err))
}
