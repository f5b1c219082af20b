//! The connection driver: one task per connection that reads, decodes,
//! assembles, dispatches and writes.
//!
//! The story of a wake-up, top to bottom in [`Connection::poll_run`]:
//! 1. collect handlers that finished in the background;
//! 2. pull chunks from streaming responses while there is room;
//! 3. move queued response bytes into the write buffer, one frame per
//!    response per round, so a large response never holds up a small one;
//! 4. write the buffer (many frames, one write call);
//! 5. read more bytes, decode frames and feed them to the reactor, and run
//!    each complete command: its handler is polled once right here, and
//!    only a handler that is not ready at once is spawned onto the worker
//!    pool. A ready response goes straight into the write buffer: no task
//!    spawn and no channel on the fast path.
//!
//! The reader stops reading (backpressure) when too many requests are in
//! flight on the connection or on the server, or when output piles up
//! because the peer is not reading.
//!
//! One owner per state: this task owns the reactor, the buffers and the
//! response queue. Background handlers only send their result back over a
//! channel.

use crate::handler::{
    caught_panic, Body, CommandError, HandlerFuture, Permission, Request, Response, Started,
    TaggedBody as Tagged,
};
use crate::server::Shared;
use crate::stats::LocalStats;
use bytes::{Buf, Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamFuture};
use futures::{FutureExt, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::AbortHandle;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;
use wiremux_proto::builder::{encode_bytes_response, error_response_frame, ErrorFlag};
use wiremux_proto::codec::Truncation;
use wiremux_proto::server::{Action, ReactorError, Scope, ServerReactor};
use wiremux_proto::{CodecError, Frame, FrameCodec, IdMap};

/// How many read/dispatch/write rounds one wake-up may run before yielding
/// to other tasks.
const ROUNDS_PER_WAKE: usize = 32;

/// Read buffer growth step.
const READ_CHUNK: usize = 16 << 10;

/// How long a connection closed by a protocol error keeps draining input.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

type Outcome = Result<Response, CommandError>;
type PermitFuture = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

/// A response being written frame by frame.
#[derive(Default)]
struct Outgoing {
    /// Bytes waiting to be framed, in order.
    chunks: VecDeque<Bytes>,
    /// The body is complete (a stream has ended, or whole bytes).
    complete: bool,
    /// A stream failed: after the chunks, end with this application error.
    error: Option<String>,
    /// The stream, parked while enough of its bytes are queued.
    parked: Option<Tagged>,
    /// Whether the ID is in the round-robin ring.
    in_ring: bool,
}

/// Where reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    /// The peer closed its sending side (or shutdown began): answer what is
    /// in flight, then close.
    Ended,
    /// A connection-level error: flush the error frame, then close.
    Failed,
}

pub(crate) struct Connection<IO> {
    io: IO,
    shared: Arc<Shared>,
    granted: Permission,
    codec: FrameCodec,
    reactor: ServerReactor,
    rbuf: BytesMut,
    wbuf: BytesMut,
    needs_flush: bool,
    read_state: ReadState,
    /// Responses with bytes still to frame, by request ID.
    outgoing: IdMap<Outgoing>,
    /// Round-robin order of requests with bytes to frame.
    ring: VecDeque<u16>,
    queued_bytes: usize,
    /// Streams whose next chunk is awaited.
    streams: FuturesUnordered<StreamFuture<Tagged>>,
    /// Handlers running in the background.
    tasks: IdMap<AbortHandle>,
    done_tx: mpsc::UnboundedSender<(u16, Outcome)>,
    done_rx: mpsc::UnboundedReceiver<(u16, Outcome)>,
    /// Handlers that were not ready at once and wait for a server-wide slot.
    waiting: VecDeque<(u16, HandlerFuture, tracing::Span)>,
    permit: Option<PermitFuture>,
    /// In-order mode: request IDs in dispatch order, and finished responses
    /// held until every earlier one has been sent.
    order: VecDeque<u16>,
    held: IdMap<Outcome>,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    drain_deadline: Option<Pin<Box<Sleep>>>,
    linger: Option<Pin<Box<Sleep>>>,
    timer: Pin<Box<Sleep>>,
    timer_kind: Timer,
    /// When a command last completed its assembly (for the assembly timeout).
    last_command: Instant,
    dispatched: bool,
    stats: LocalStats,
}

/// What the connection's one timer is measuring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timer {
    Off,
    /// Requests are arriving: no command may take longer to assemble.
    Assembly,
    /// Nothing is happening.
    Idle,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Connection<IO> {
    pub(crate) fn new(io: IO, shared: Arc<Shared>) -> Connection<IO> {
        let config = &shared.config;
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let granted = if config.read_only {
            Permission::Read
        } else {
            Permission::Write
        };
        Connection {
            io,
            granted,
            codec: FrameCodec::new()
                .max_recv_payload(config.max_recv_payload)
                .max_send_payload(config.max_send_payload),
            reactor: ServerReactor::with_limits(config.limits.clone()),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            needs_flush: false,
            read_state: ReadState::Open,
            outgoing: IdMap::default(),
            ring: VecDeque::new(),
            queued_bytes: 0,
            streams: FuturesUnordered::new(),
            tasks: IdMap::default(),
            done_tx,
            done_rx,
            waiting: VecDeque::new(),
            permit: None,
            order: VecDeque::new(),
            held: IdMap::default(),
            shutdown: Box::pin(shared.shutdown.clone().cancelled_owned()),
            drain_deadline: None,
            linger: None,
            timer: Box::pin(tokio::time::sleep(config.assembly_timeout)),
            timer_kind: Timer::Off,
            last_command: Instant::now(),
            dispatched: false,
            stats: LocalStats::default(),
            shared,
        }
    }

    /// Runs the connection to its end.
    pub(crate) async fn run(mut self) -> io::Result<()> {
        let result = futures::future::poll_fn(|cx| self.poll_run(cx)).await;
        self.cancel_all();
        self.shared.stats.absorb(&mut self.stats);
        result
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = self.poll_rounds(cx);
        self.shared.stats.absorb(&mut self.stats);
        result
    }

    fn poll_rounds(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_shutdown_signal(cx);
        for _ in 0..ROUNDS_PER_WAKE {
            let mut progress = self.poll_completions(cx);
            progress |= self.poll_permit(cx);
            progress |= self.poll_streams(cx);
            progress |= self.fill_write_buffer();
            progress |= self.poll_write(cx)?;
            progress |= self.poll_read(cx)?;
            self.poll_timer(cx);
            if self.is_finished() {
                ready!(self.poll_flush_and_close(cx))?;
                return Poll::Ready(Ok(()));
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Still busy: let other tasks run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn is_finished(&self) -> bool {
        let drained = self.wbuf.is_empty() && self.outgoing.is_empty();
        match self.read_state {
            ReadState::Open => false,
            ReadState::Failed => drained,
            ReadState::Ended => {
                drained
                    && self.reactor.active() == 0
                    && self.tasks.is_empty()
                    && self.waiting.is_empty()
                    && self.held.is_empty()
            }
        }
    }

    fn poll_flush_and_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.linger.is_none() {
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            // A peer that already went away cannot be told more: not an error here.
            let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
            if self.read_state != ReadState::Failed {
                return Poll::Ready(Ok(()));
            }
            // After a protocol error the peer may still be sending. Closing
            // with unread input would reset the connection and could destroy
            // the error frame before the peer reads it, so read and drop
            // input until the peer closes, for a bounded time.
            self.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        loop {
            if self
                .linger
                .as_mut()
                .expect("set above")
                .as_mut()
                .poll(cx)
                .is_ready()
            {
                return Poll::Ready(Ok(()));
            }
            self.rbuf.clear();
            self.rbuf.reserve(READ_CHUNK);
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                &mut self.rbuf
            )) {
                Ok(0) | Err(_) => return Poll::Ready(Ok(())),
                Ok(_) => {}
            }
        }
    }

    /// Graceful shutdown: stop reading new requests, let the ones in flight
    /// finish until the drain deadline, then close.
    fn poll_shutdown_signal(&mut self, cx: &mut Context<'_>) {
        if self.drain_deadline.is_none() && self.shutdown.as_mut().poll(cx).is_ready() {
            self.drain_deadline = Some(Box::pin(tokio::time::sleep(
                self.shared.config.drain_timeout,
            )));
            if self.read_state == ReadState::Open {
                self.end_input();
            }
        }
        if let Some(deadline) = &mut self.drain_deadline {
            if deadline.as_mut().poll(cx).is_ready() && self.read_state != ReadState::Failed {
                tracing::debug!("drain timeout: closing with requests in flight");
                self.cancel_all();
                self.read_state = ReadState::Failed;
            }
        }
    }

    // ---- 1. background handlers ----

    fn poll_completions(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while let Poll::Ready(Some((id, outcome))) = self.done_rx.poll_recv(cx) {
            progress = true;
            if self.tasks.remove(&id).is_some() {
                self.deliver(id, outcome);
            }
        }
        progress
    }

    /// Spawns waiting handlers as server-wide slots come free.
    fn poll_permit(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while !self.waiting.is_empty() {
            let semaphore = &self.shared.executing;
            let fut = self
                .permit
                .get_or_insert_with(|| Box::pin(semaphore.clone().acquire_owned().map(Result::ok)));
            let Poll::Ready(permit) = fut.as_mut().poll(cx) else {
                break;
            };
            self.permit = None;
            let Some(permit) = permit else { break };
            let (id, fut, span) = self.waiting.pop_front().expect("not empty");
            self.spawn(id, fut, permit, span);
            progress = true;
        }
        progress
    }

    // ---- 2. streaming responses ----

    fn has_room(&self) -> bool {
        self.wbuf.len() + self.queued_bytes < self.shared.config.write_high_water
    }

    fn poll_streams(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while self.has_room() {
            let Poll::Ready(Some((item, stream))) = self.streams.poll_next_unpin(cx) else {
                break;
            };
            progress = true;
            let id = stream.id;
            let Some(out) = self.outgoing.get_mut(&id) else {
                continue;
            };
            match item {
                Some(Ok(chunk)) => {
                    self.queued_bytes += chunk.len();
                    if !chunk.is_empty() {
                        out.chunks.push_back(chunk);
                    }
                    if out.chunks.iter().map(Bytes::len).sum::<usize>()
                        < self.shared.config.max_send_payload
                    {
                        self.streams.push(stream.into_future());
                    } else {
                        out.parked = Some(stream);
                    }
                }
                Some(Err(err)) => {
                    out.complete = true;
                    out.error = Some(err.message().to_string());
                }
                None => out.complete = true,
            }
            if !out.in_ring {
                out.in_ring = true;
                self.ring.push_back(id);
            }
        }
        progress
    }

    // ---- 3. framing queued responses, round robin ----

    fn fill_write_buffer(&mut self) -> bool {
        let max = self.shared.config.max_send_payload;
        let mut progress = false;
        while self.wbuf.len() < self.shared.config.write_high_water {
            let Some(id) = self.ring.pop_front() else {
                break;
            };
            progress = true;
            let out = self
                .outgoing
                .get_mut(&id)
                .expect("ring holds only queued responses");
            out.in_ring = false;
            if let Some(chunk) = out.chunks.front_mut() {
                let piece = chunk.split_to(chunk.len().min(max));
                if chunk.is_empty() {
                    out.chunks.pop_front();
                }
                self.queued_bytes -= piece.len();
                let last = out.complete && out.error.is_none() && out.chunks.is_empty();
                encode_bytes_response(id, &piece, last, max, &mut self.wbuf);
                self.stats.frames_out += 1;
                if last {
                    self.outgoing.remove(&id);
                    self.finished(id, true);
                    continue;
                }
            } else if out.complete {
                let out = self.outgoing.remove(&id).expect("present");
                let ok = out.error.is_none();
                match out.error {
                    Some(message) => self.write_error(id, ErrorFlag::Application, &message),
                    None => {
                        encode_bytes_response(id, &[], true, max, &mut self.wbuf);
                        self.stats.frames_out += 1;
                    }
                }
                self.finished(id, ok);
                continue;
            }
            let out = self.outgoing.get_mut(&id).expect("present");
            if !out.chunks.is_empty() || out.complete {
                out.in_ring = true;
                self.ring.push_back(id);
            } else if let Some(stream) = out.parked.take() {
                self.streams.push(stream.into_future());
            }
        }
        progress
    }

    // ---- 4. writing ----

    fn poll_write(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut progress = false;
        while !self.wbuf.is_empty() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.wbuf.advance(n);
                    self.stats.bytes_out += n as u64;
                    self.needs_flush = true;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(progress),
            }
        }
        if self.needs_flush {
            if let Poll::Ready(result) = Pin::new(&mut self.io).poll_flush(cx) {
                result?;
                self.needs_flush = false;
            }
        }
        Ok(progress)
    }

    // ---- 5. reading, decoding, dispatching ----

    /// Whether the reader may take in more requests now.
    fn may_read(&self) -> bool {
        self.read_state == ReadState::Open
            && self.reactor.active() < self.shared.config.max_executing
            && self.waiting.is_empty()
            && self.has_room()
    }

    fn poll_read(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut progress = false;
        while self.may_read() {
            match self.codec.decode_frame(&mut self.rbuf) {
                Ok(Some(frame)) => {
                    progress = true;
                    self.stats.frames_in += 1;
                    let action = self.reactor.on_frame(frame);
                    self.on_action(action);
                    continue;
                }
                Ok(None) => {}
                Err(err) => {
                    self.codec_error(err);
                    return Ok(true);
                }
            }
            self.rbuf.reserve(READ_CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                Poll::Ready(Ok(0)) => {
                    if let Err(err) = self.codec.decode_frame_eof(&mut self.rbuf) {
                        self.codec_error(err);
                    } else {
                        self.end_input();
                    }
                    return Ok(true);
                }
                Poll::Ready(Ok(n)) => {
                    self.stats.bytes_in += n as u64;
                    progress = true;
                }
                // A reset included: the peer is gone and can be sent
                // nothing more, so its handlers are cancelled, not awaited.
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        Ok(progress)
    }

    /// No more input: report requests still arriving, answer the rest.
    fn end_input(&mut self) {
        self.read_state = ReadState::Ended;
        let action = self.reactor.on_input_eof();
        self.on_action(action);
    }

    fn codec_error(&mut self, err: CodecError) {
        // Name the request whose frame was at fault when the header said.
        let request_id = match &err {
            CodecError::FrameTooLarge { request_id, .. }
            | CodecError::Truncated(Truncation::Payload { request_id, .. }) => *request_id,
            _ => 0,
        };
        tracing::debug!(%err, "protocol error");
        self.fail(request_id, &err.to_string());
    }

    /// A connection-level error: cancel everything, send the error, close.
    fn fail(&mut self, request_id: u16, message: &str) {
        self.stats.protocol_errors += 1;
        self.cancel_all();
        self.write_error(request_id, ErrorFlag::Protocol, message);
        self.read_state = ReadState::Failed;
    }

    fn on_action(&mut self, action: Action) {
        match action {
            Action::RunCommand(command) => {
                self.stats.requests_started += 1;
                self.dispatched = true;
                self.dispatch(command);
            }
            Action::Error(err) => self.on_reactor_error(err),
            Action::SendFrames(frames) => frames.iter().for_each(|f| self.write_frame(f)),
            Action::WantFrame { .. } | Action::Noop => {}
        }
    }

    fn on_reactor_error(&mut self, err: ReactorError) {
        match err.scope() {
            Scope::Connection => self.fail(err.request_id, &err.message()),
            Scope::Request => {
                tracing::debug!(request_id = err.request_id, %err, "request refused");
                for frame in err.frames(self.shared.config.max_send_payload) {
                    self.stats.requests_started += 1;
                    self.stats.requests_failed += 1;
                    self.write_frame(&frame);
                }
            }
        }
    }

    /// Starts a complete command: resolve, check permission, poll once;
    /// spawn only if not ready.
    fn dispatch(&mut self, command: Request) {
        let id = command.request_id;
        if self.shared.config.in_order {
            self.order.push_back(id);
        }
        // The request's span covers its first poll here; a handler that
        // moves to its own task carries the span there (see `spawn`).
        let span = tracing::debug_span!("request", id);
        let entered = span.enter();
        // A panic while the handler starts comes back as its outcome.
        let mut fut = match self.shared.registry.start(command, self.granted) {
            Ok(Started::Ready(outcome)) => return self.deliver(id, outcome),
            Ok(Started::Pending(fut)) => fut,
            Err(refusal) => return self.deliver(id, Err(CommandError::new(refusal.to_string()))),
        };
        let waker = futures::task::noop_waker();
        let mut noop = Context::from_waker(&waker);
        // The first poll uses a no-op waker: if the handler is not ready it
        // moves to its own task, which polls it again with a real waker.
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut noop))) {
            Ok(Poll::Ready(outcome)) => self.deliver(id, outcome),
            Ok(Poll::Pending) => {
                drop(entered);
                match self.shared.executing.clone().try_acquire_owned() {
                    Ok(permit) if self.waiting.is_empty() => self.spawn(id, fut, permit, span),
                    _ => self.waiting.push_back((id, fut, span)),
                }
            }
            Err(panic) => self.deliver(id, Err(caught_panic(&panic))),
        }
    }

    fn spawn(
        &mut self,
        id: u16,
        fut: HandlerFuture,
        permit: OwnedSemaphorePermit,
        span: tracing::Span,
    ) {
        let done = self.done_tx.clone();
        let deadline = self.shared.config.request_deadline;
        let task = async move {
            let guarded = AssertUnwindSafe(fut).catch_unwind();
            let outcome = match deadline {
                Some(limit) => match tokio::time::timeout(limit, guarded).await {
                    Ok(result) => result,
                    Err(_) => Ok(Err(CommandError::new(format!(
                        "timed out after {} ms",
                        limit.as_millis()
                    )))),
                },
                None => guarded.await,
            };
            let outcome = outcome.unwrap_or_else(|panic| Err(caught_panic(&panic)));
            drop(permit);
            let _ = done.send((id, outcome));
        };
        let handle = tokio::spawn(tracing::Instrument::instrument(task, span));
        self.tasks.insert(id, handle.abort_handle());
    }

    /// A handler's outcome: send it now, or hold it (in-order mode) until
    /// every earlier response has been sent.
    fn deliver(&mut self, id: u16, outcome: Outcome) {
        if self.shared.config.in_order && self.order.front() != Some(&id) {
            self.held.insert(id, outcome);
            return;
        }
        self.respond(id, outcome);
    }

    fn respond(&mut self, id: u16, outcome: Outcome) {
        let max = self.shared.config.max_send_payload;
        match outcome {
            Err(err) => {
                self.write_error(id, ErrorFlag::Application, err.message());
                self.finished(id, false);
            }
            // Whole and small: straight into the write buffer, ahead of any
            // large response still being framed.
            Ok(Response {
                body: Body::Bytes(data),
            }) if data.len() <= max => {
                encode_bytes_response(id, &data, true, max, &mut self.wbuf);
                self.stats.frames_out += 1;
                self.finished(id, true);
            }
            Ok(Response {
                body: Body::Bytes(data),
            }) => {
                self.queued_bytes += data.len();
                let mut out = Outgoing {
                    complete: true,
                    in_ring: true,
                    ..Outgoing::default()
                };
                if !data.is_empty() {
                    out.chunks.push_back(data);
                }
                self.outgoing.insert(id, out);
                self.ring.push_back(id);
            }
            Ok(Response {
                body: Body::Stream(stream),
            }) => {
                self.outgoing.insert(id, Outgoing::default());
                // The stream is polled on this task: a panic in it must end
                // its response with an error, not the connection.
                let inner = AssertUnwindSafe(stream)
                    .catch_unwind()
                    .map(|item| item.unwrap_or_else(|panic| Err(caught_panic(&panic))))
                    .boxed();
                self.streams.push(Tagged { id, inner }.into_future());
            }
        }
    }

    /// The last frame of `id` is in the write buffer: free the ID and, in
    /// order mode, release the next held response.
    fn finished(&mut self, id: u16, ok: bool) {
        self.reactor.on_response_finished(id);
        if ok {
            self.stats.requests_completed += 1;
        } else {
            self.stats.requests_failed += 1;
        }
        if self.shared.config.in_order && self.order.front() == Some(&id) {
            self.order.pop_front();
            if let Some(next) = self.order.front().copied() {
                if let Some(outcome) = self.held.remove(&next) {
                    self.respond(next, outcome);
                }
            }
        }
    }

    fn write_error(&mut self, id: u16, flag: ErrorFlag, message: &str) {
        let frame = error_response_frame(id, flag, message, self.shared.config.max_send_payload);
        self.write_frame(&frame);
    }

    fn write_frame(&mut self, frame: &Frame) {
        frame.encode(&mut self.wbuf);
        self.stats.frames_out += 1;
    }

    // ---- timeouts ----

    /// Arms the one timer for what the connection is doing: assembling
    /// requests (slowloris defence) or idling. The assembly clock restarts
    /// whenever a command completes; rather than resetting the timer for
    /// each command, the timer checks that clock when it fires.
    fn poll_timer(&mut self, cx: &mut Context<'_>) {
        if std::mem::take(&mut self.dispatched) {
            self.last_command = Instant::now();
        }
        let config = &self.shared.config;
        // While the reader is paused (backpressure) the wait is the
        // server's, not a slow client's: frames may sit unread in the buffer.
        let want = if !self.may_read() {
            Timer::Off
        } else if self.reactor.receiving() > 0 || !self.rbuf.is_empty() {
            Timer::Assembly
        } else if self.reactor.active() == 0
            && self.wbuf.is_empty()
            && config.idle_timeout.is_some()
        {
            Timer::Idle
        } else {
            Timer::Off
        };
        if want != self.timer_kind {
            self.timer_kind = want;
            let at = match want {
                Timer::Assembly => {
                    // Assembly starts now: the clock runs from here.
                    self.last_command = Instant::now();
                    self.last_command + config.assembly_timeout
                }
                Timer::Idle => Instant::now() + config.idle_timeout.unwrap_or_default(),
                Timer::Off => return,
            };
            self.timer.as_mut().reset(at);
        }
        if self.timer_kind == Timer::Off || self.timer.as_mut().poll(cx).is_pending() {
            return;
        }
        match self.timer_kind {
            Timer::Assembly if self.last_command + config.assembly_timeout > Instant::now() => {
                // Commands completed since the timer was armed: wait on.
                let at = self.last_command + config.assembly_timeout;
                self.timer.as_mut().reset(at);
                let _ = self.timer.as_mut().poll(cx);
                return;
            }
            Timer::Assembly => {
                let ms = config.assembly_timeout.as_millis();
                self.fail(
                    0,
                    &format!("request not complete within the assembly timeout of {ms} ms"),
                );
            }
            _ => {
                tracing::debug!("idle timeout");
                self.read_state = ReadState::Ended;
            }
        }
        self.timer_kind = Timer::Off;
        cx.waker().wake_by_ref();
    }

    /// Stops every handler of this connection; their requests will never
    /// be answered and count as cancelled.
    fn cancel_all(&mut self) {
        for (_, handle) in self.tasks.drain() {
            handle.abort();
        }
        self.waiting.clear();
        self.held.clear();
        self.order.clear();
        self.streams = FuturesUnordered::new();
        self.outgoing.clear();
        self.ring.clear();
        self.queued_bytes = 0;
        self.stats.requests_cancelled += self.reactor.abandon_active() as u64;
    }
}
