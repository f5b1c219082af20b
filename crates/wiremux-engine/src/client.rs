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

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use wiremux_proto::builder::{BuildError, CommandBuilder};
use wiremux_proto::client::{ClientError, IdAllocator, Outcome, ResponseAssembler};
use wiremux_proto::{Flags, FrameCodec, FrameType, IdMap};

/// Output buffered before the driver stops taking new calls.
const WRITE_HIGH_WATER: usize = 256 << 10;
const ROUNDS_PER_WAKE: usize = 32;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The command failed on the server; the server's message.
    #[error("application error: {0}")]
    Application(String),
    /// The server reported a protocol error and closes the connection.
    #[error("protocol error from the server: {0}")]
    Protocol(String),
    /// The connection ended before the response arrived.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// Connecting failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The command cannot be put into frames.
    #[error("invalid command: {0}")]
    Build(#[from] BuildError),
}

/// A successful response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The request ID the call used.
    pub request_id: u16,
    /// The whole response body.
    pub body: Bytes,
}

struct Call {
    command: CommandBuilder,
    reply: oneshot::Sender<Result<Response, Error>>,
}

/// A handle to one client connection. Clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    calls: mpsc::UnboundedSender<Call>,
}

impl Client {
    /// Connects over TCP.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Client, Error> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(Client::new(stream))
    }

    /// Connects over a Unix socket.
    pub async fn connect_unix(path: impl AsRef<std::path::Path>) -> Result<Client, Error> {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
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
            .send(Call { command, reply })
            .map_err(|_| Error::ConnectionLost("the connection has closed".into()))?;
        rx.await.unwrap_or_else(|_| {
            Err(Error::ConnectionLost(
                "the connection closed before the response".into(),
            ))
        })
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.calls.is_closed()
    }
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
    calls: mpsc::UnboundedReceiver<Call>,
    calls_open: bool,
    /// Calls waiting for a free request ID.
    backlog: VecDeque<Call>,
    ids: IdAllocator,
    responses: ResponseAssembler,
    waiters: IdMap<oneshot::Sender<Result<Response, Error>>>,
    codec: FrameCodec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    needs_flush: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Driver<IO> {
    async fn run(mut self) {
        let ended = futures::future::poll_fn(|cx| self.poll_run(cx)).await;
        let reason = match ended {
            Ok(reason) => reason,
            Err(err) => Error::ConnectionLost(err.to_string()),
        };
        self.calls.close();
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.send(Err(reason.clone()));
        }
        while let Ok(call) = self.calls.try_recv() {
            self.backlog.push_back(call);
        }
        for call in self.backlog.drain(..) {
            let _ = call.reply.send(Err(reason.clone()));
        }
    }

    /// Runs until the connection ends; the error every pending call gets.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Error>> {
        for _ in 0..ROUNDS_PER_WAKE {
            let mut progress = self.take_calls(cx);
            progress |= self.poll_write(cx)?;
            match self.poll_read(cx)? {
                Poll::Ready(Some(end)) => return Poll::Ready(Ok(end)),
                Poll::Ready(None) => progress = true,
                Poll::Pending => {}
            }
            if !self.calls_open && self.backlog.is_empty() && self.wbuf.is_empty() && {
                // No handle is left, so no new call can come. Once no caller
                // waits for an answer either, the connection is of no use:
                // close it rather than wait for a server that may never
                // answer. (poll_closed wakes this task when a caller goes.)
                self.waiters
                    .values_mut()
                    .all(|waiter| waiter.poll_closed(cx).is_ready())
            } {
                let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                return Poll::Ready(Ok(Error::ConnectionLost("the client was dropped".into())));
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
                    Poll::Ready(Some(call)) => call,
                    Poll::Ready(None) => {
                        self.calls_open = false;
                        break;
                    }
                    Poll::Pending => break,
                },
            };
            progress = true;
            if call.reply.is_closed() {
                continue; // abandoned before it was sent
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
                let _ = call.reply.send(Err(err.into()));
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
                            let _ = waiter.send(Err(Error::Protocol(
                                String::from_utf8_lossy(&frame.payload).into(),
                            )));
                        }
                        return Ok(Poll::Ready(Some(Error::Protocol(
                            String::from_utf8_lossy(&frame.payload).into(),
                        ))));
                    }
                    if self.waiters.get(&id).is_some_and(|w| w.is_closed()) {
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
                Err(err) => return Ok(Poll::Ready(Some(Error::ConnectionLost(err.to_string())))),
            }
            self.rbuf.reserve(16 << 10);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf)? {
                Poll::Ready(0) => {
                    let why = if self.waiters.is_empty() {
                        "the server closed the connection"
                    } else {
                        "the server closed the connection with requests in flight"
                    };
                    return Ok(Poll::Ready(Some(Error::ConnectionLost(why.into()))));
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
                    let _ = waiter.send(Err(err.clone()));
                }
                return Some(err);
            }
        };
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
        None
    }
}

fn invalid(err: ClientError) -> Error {
    Error::ConnectionLost(format!("invalid response from the server: {err}"))
}
