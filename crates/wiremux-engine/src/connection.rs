//! The connection driver: bytes in and out for one byte stream (TCP, TLS,
//! a Unix socket, stdio, any `AsyncRead + AsyncWrite`).
//!
//! Everything a request lives through is decided elsewhere, once for every
//! transport: [`Lifecycle`] (in wiremux-proto) assembles requests, holds,
//! cancels and times them out, and frames the responses; the
//! [`Executor`] starts and stops the commands. This task only moves bytes
//! between the socket and the lifecycle. A wake-up, top to bottom in
//! [`Connection::poll_rounds`]:
//! 1. tell the lifecycle whether it is reading, and let the executor do
//!    what the lifecycle says (start, stop, outcomes, stream chunks, timers);
//! 2. write what the lifecycle has framed (many frames, one write call);
//! 3. read, decode and feed frames to the lifecycle.
//!
//! The reader stops reading (backpressure) when too many requests are in
//! flight on the connection, when handlers wait for a server-wide slot, or
//! when output piles up because the peer is not reading.

use crate::executor::Executor;
use crate::handler::Permission;
use crate::server::Shared;
use bytes::{Buf, BytesMut};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;
use wiremux_proto::codec::{FrameRun, Truncation};
use wiremux_proto::lifecycle::Lifecycle;
use wiremux_proto::{CodecError, FrameCodec};

/// How many rounds one wake-up may run before yielding to other tasks.
const ROUNDS_PER_WAKE: usize = 32;

/// Read buffer growth step.
const READ_CHUNK: usize = 16 << 10;

/// How long a connection closed by a protocol error keeps draining input.
const LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Where reading stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Open,
    /// The peer closed its sending side (or shutdown began, or the idle
    /// timeout passed): answer what is in flight, then close.
    Ended,
    /// A connection-level error: flush the error frame, then close.
    Failed,
}

pub(crate) struct Connection<IO> {
    io: IO,
    shared: Arc<Shared>,
    codec: FrameCodec,
    lifecycle: Lifecycle,
    executor: Executor,
    rbuf: BytesMut,
    /// Whole frames already split off `rbuf`, not yet fed in.
    run: FrameRun,
    needs_flush: bool,
    read_state: ReadState,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The waker `shutdown` was last polled with.
    shutdown_waker: Option<Waker>,
    drain_deadline: Option<Pin<Box<Sleep>>>,
    linger: Option<Pin<Box<Sleep>>>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Connection<IO> {
    pub(crate) fn new(io: IO, shared: Arc<Shared>) -> Connection<IO> {
        let config = &shared.config;
        let granted = if config.read_only {
            Permission::Read
        } else {
            Permission::Write
        };
        Connection {
            io,
            codec: FrameCodec::new()
                .max_recv_payload(config.max_recv_payload)
                .max_send_payload(config.limits.max_send_payload),
            lifecycle: Lifecycle::new(config.lifecycle()),
            executor: Executor::new(shared.clone(), granted),
            rbuf: BytesMut::new(),
            run: FrameRun::default(),
            needs_flush: false,
            read_state: ReadState::Open,
            shutdown: Box::pin(shared.shutdown.clone().cancelled_owned()),
            shutdown_waker: None,
            drain_deadline: None,
            linger: None,
            shared,
        }
    }

    /// Runs the connection to its end.
    pub(crate) async fn run(mut self) -> io::Result<()> {
        let result = futures::future::poll_fn(|cx| self.poll_run(cx)).await;
        self.executor.stop_all(&mut self.lifecycle);
        self.executor.absorb();
        result
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = self.poll_rounds(cx);
        self.executor.absorb();
        result
    }

    fn poll_rounds(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_shutdown_signal(cx);
        for _ in 0..ROUNDS_PER_WAKE {
            let now = tokio::time::Instant::now().into_std();
            let reading = self.may_read();
            self.lifecycle
                .set_input(reading, !self.rbuf.is_empty() || !self.run.is_empty(), now);
            let room = self.has_room();
            let mut progress = self.executor.drive(&mut self.lifecycle, cx, now, room);
            self.check_lifecycle();
            // Read, then write what that answered at once: a request that
            // is answered where it is read leaves in the same round.
            progress |= self.poll_read(cx, now)?;
            progress |= self.poll_write(cx)?;
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

    /// Reacts to what the lifecycle decided on its own: a connection-level
    /// error (stop everything, send the error, close) or the idle timeout.
    fn check_lifecycle(&mut self) {
        if self.lifecycle.is_failed() && self.read_state != ReadState::Failed {
            self.executor.stop_all(&mut self.lifecycle);
            self.read_state = ReadState::Failed;
        } else if self.lifecycle.idle_expired() && self.read_state == ReadState::Open {
            tracing::debug!("idle timeout");
            self.read_state = ReadState::Ended;
        }
    }

    fn is_finished(&mut self) -> bool {
        match self.read_state {
            ReadState::Open => false,
            ReadState::Failed => self.lifecycle.pending_output() == 0,
            ReadState::Ended => self.lifecycle.is_done(),
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
        if self.drain_deadline.is_none() && self.shutdown_begun(cx) {
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
                self.executor.stop_all(&mut self.lifecycle);
                self.read_state = ReadState::Failed;
            }
        }
    }

    /// Whether graceful shutdown has begun. Polling the token's future
    /// takes the token's lock, so it is polled only when the server's flag
    /// says shutdown has begun or this task's waker has changed: once
    /// polled, the future wakes the task when the token is cancelled, and
    /// the flag, set before that, is seen at that wake-up.
    fn shutdown_begun(&mut self, cx: &mut Context<'_>) -> bool {
        let flagged = self.shared.shutting_down.load(Ordering::Acquire);
        let registered = self.shutdown_waker.as_ref();
        if !flagged && registered.is_some_and(|w| w.will_wake(cx.waker())) {
            return false;
        }
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return true;
        }
        self.shutdown_waker = Some(cx.waker().clone());
        false
    }

    // ---- writing ----

    /// Whether output has room for more: below the high-water mark, the
    /// lifecycle frames more and streams are polled.
    fn has_room(&mut self) -> bool {
        self.lifecycle.pending_output() < self.shared.config.write_high_water
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        let mut progress = false;
        let high_water = self.shared.config.write_high_water;
        loop {
            let out = self.lifecycle.poll_transmit(high_water);
            if out.is_empty() {
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    out.advance(n);
                    self.executor.stats.bytes_out += n as u64;
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

    // ---- reading ----

    /// Whether the reader may take in more requests now.
    fn may_read(&mut self) -> bool {
        self.read_state == ReadState::Open
            && self.lifecycle.executing() < self.shared.config.max_executing
            && !self.executor.is_waiting()
            && self.has_room()
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, now: std::time::Instant) -> io::Result<bool> {
        let mut progress = false;
        while self.may_read() {
            match self.codec.decode_batched(&mut self.run, &mut self.rbuf) {
                Ok(Some(frame)) => {
                    progress = true;
                    // A command in two frames read together is taken in
                    // one step, and started at once.
                    self.executor
                        .take_frame(&mut self.lifecycle, frame, &mut self.run, now);
                    if self.lifecycle.is_failed() {
                        self.check_lifecycle();
                        return Ok(true);
                    }
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
                    self.executor.stats.bytes_in += n as u64;
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

    /// No more input: requests still arriving get their errors, the rest
    /// are answered.
    fn end_input(&mut self) {
        self.read_state = ReadState::Ended;
        let now = tokio::time::Instant::now().into_std();
        self.lifecycle.on_input_eof(now);
    }

    fn codec_error(&mut self, err: CodecError) {
        // Name the request whose frame was at fault when the header said.
        let request_id = match &err {
            CodecError::FrameTooLarge { request_id, .. }
            | CodecError::Truncated(Truncation::Payload { request_id, .. }) => *request_id,
            _ => 0,
        };
        tracing::debug!(%err, "protocol error");
        self.lifecycle.fail(request_id, &err.to_string());
        self.check_lifecycle();
    }
}
