//! The executor: runs what a connection's [`Lifecycle`] says to run, for
//! any transport.
//!
//! Everything about starting a command lives here, once: the registry
//! lookup and permission check, the first poll in place (most commands
//! answer at once, with no task and no channel), the server-wide slot for
//! a handler that has to wait, the panic guard (at the first poll, in the
//! task, in a response stream), stopping a handler the lifecycle cancels
//! (a cancellation or a deadline), the tracing span, and the counters. The
//! TCP connection driver and the HTTP transport both drive a lifecycle
//! with [`Executor::drive`]; neither starts a handler itself.

use crate::handler::{caught_panic, Body, HandlerFuture, Permission, Response, Started};
use crate::server::Shared;
use crate::stats::{LocalStats, Row};
use bytes::Bytes;
use futures::stream::{BoxStream, FuturesUnordered, StreamFuture};
use futures::{FutureExt, Stream, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::AbortHandle;
use tokio::time::Sleep;
use wiremux_proto::codec::FrameRun;
use wiremux_proto::lifecycle::{Event, Lifecycle, Token};
use wiremux_proto::{CommandError, Frame, IdTable, Request};

type Outcome = Result<Response, CommandError>;
type PermitFuture = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

/// A response stream with the run it answers.
struct TokenStream {
    token: Token,
    inner: BoxStream<'static, Result<Bytes, CommandError>>,
}

impl Stream for TokenStream {
    type Item = Result<Bytes, CommandError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.poll_next_unpin(cx)
    }
}

/// What the executor knows of a command it started and that has not
/// finished: for the per-command counters, and to stop it (48 bytes).
struct Run {
    token: Token,
    row: Row,
    started: Instant,
    stop: Stop,
}

/// How to stop a started command.
enum Stop {
    /// Nothing runs for it outside the executor (it waits for a slot, or
    /// is being started).
    Nothing,
    /// The handler runs in its own task.
    Task(AbortHandle),
    /// Its response stream is being answered.
    Stream(futures::stream::AbortHandle),
}

impl Stop {
    fn stop(self) {
        match self {
            Stop::Nothing => {}
            Stop::Task(task) => task.abort(),
            Stop::Stream(stream) => stream.abort(),
        }
    }
}

/// Where handlers that run in their own tasks send their outcomes; made
/// with the first such handler (most connections never need one).
struct Done {
    tx: mpsc::UnboundedSender<(Token, Outcome)>,
    rx: mpsc::UnboundedReceiver<(Token, Outcome)>,
}

/// A handler that was not ready at its first poll and waits for a
/// server-wide slot.
struct Waiting {
    token: Token,
    fut: HandlerFuture,
    span: tracing::Span,
}

/// Starts and stops the commands of one connection (or one HTTP request).
/// Made by [`Server::executor`](crate::Server::executor).
pub struct Executor {
    shared: Arc<Shared>,
    granted: Permission,
    runs: IdTable<Run>,
    done: Option<Done>,
    waiting: VecDeque<Waiting>,
    permit: Option<PermitFuture>,
    /// Response streams being polled; made with the first one.
    streams: Option<FuturesUnordered<StreamFuture<TokenStream>>>,
    parked: Vec<TokenStream>,
    timer: Option<(Instant, Pin<Box<Sleep>>)>,
    /// The waker the timer was last polled with, until it fires or moves.
    timer_waker: Option<std::task::Waker>,
    pub(crate) stats: LocalStats,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("running", &self.runs.len())
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

impl Executor {
    pub(crate) fn new(shared: Arc<Shared>, granted: Permission) -> Executor {
        Executor {
            shared,
            granted,
            runs: IdTable::default(),
            done: None,
            waiting: VecDeque::new(),
            permit: None,
            streams: None,
            parked: Vec::new(),
            timer: None,
            timer_waker: None,
            stats: LocalStats::default(),
        }
    }

    /// Whether handlers wait for a server-wide slot: a transport should
    /// take in no more requests until they have one.
    pub fn is_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Commands started and not finished.
    pub fn running(&self) -> usize {
        self.runs.len()
    }

    /// One turn of work for `lifecycle` at `now`: start and stop what it
    /// says, hand it the outcomes of handlers and the chunks of streams
    /// that are ready, give waiting handlers their slots, and keep its
    /// timers. Returns whether anything happened; a transport calls it
    /// until nothing does, framing and writing in between.
    ///
    /// `room` says whether the transport's output has room: without it,
    /// response streams are not polled, so a peer that does not read
    /// cannot make the server buffer more.
    pub fn drive(
        &mut self,
        lifecycle: &mut Lifecycle,
        cx: &mut Context<'_>,
        now: Instant,
        room: bool,
    ) -> bool {
        let mut progress = self.run_events(lifecycle, now);
        while let Some(Poll::Ready(Some((token, outcome)))) =
            self.done.as_mut().map(|done| done.rx.poll_recv(cx))
        {
            progress = true;
            match self.runs.get_mut(token.id) {
                Some(run) if run.token == token => run.stop = Stop::Nothing,
                // Stopped already: the result is not wanted.
                _ => continue,
            }
            self.deliver(lifecycle, token, outcome, now);
        }
        progress |= self.poll_permit(lifecycle, cx);
        if room {
            progress |= self.poll_streams(lifecycle, cx, now);
        }
        progress |= self.poll_timer(lifecycle, cx, now);
        self.fold(lifecycle);
        progress
    }

    /// Starts and stops what the lifecycle says, at once. A transport that
    /// feeds frames to the lifecycle itself calls this after each, so
    /// that a command complete in the middle of a read runs (and, if
    /// ready, answers) before the frames after it are taken in
    /// ([`Executor::take_frame`] does both). Returns whether there was
    /// anything.
    #[inline]
    pub fn run_events(&mut self, lifecycle: &mut Lifecycle, now: Instant) -> bool {
        // Most frames (all but a request's last) leave nothing to do.
        lifecycle.has_event() && self.run_events_now(lifecycle, now)
    }

    fn run_events_now(&mut self, lifecycle: &mut Lifecycle, now: Instant) -> bool {
        let mut any = false;
        while let Some(event) = lifecycle.poll_event() {
            any = true;
            match event {
                Event::Run(token, request) => self.start(lifecycle, token, request, now, false),
                Event::Cancel(token) => self.cancel(token, now),
            }
        }
        any
    }

    /// Takes one frame decoded from `run` (and with it the next, when the
    /// two are a whole command) into `lifecycle`, and starts at once what
    /// that completes: how a transport that decodes with
    /// [`FrameCodec::decode_batched`](wiremux_proto::FrameCodec::decode_batched)
    /// feeds its input, so that a command complete in the middle of a read
    /// runs (and, if ready, answers) before the frames after it are taken
    /// in. A whole command in two frames is lent by the lifecycle
    /// ([`Lifecycle::on_frame_lending`]) and, when its handler answers at
    /// its start, answered with no event and no state kept for it.
    #[inline]
    pub fn take_frame(
        &mut self,
        lifecycle: &mut Lifecycle,
        frame: Frame,
        run: &mut FrameRun,
        now: Instant,
    ) {
        match lifecycle.on_frame_lending(frame, run, now) {
            Some((token, request)) => self.start(lifecycle, token, request, now, true),
            None => {
                self.run_events(lifecycle, now);
            }
        }
    }

    /// Runs a command: permission, first poll here, then a task. A
    /// command `lent` by the lifecycle is answered there if its handler
    /// answers whole at its start, and admitted to it otherwise.
    fn start(
        &mut self,
        lifecycle: &mut Lifecycle,
        token: Token,
        request: Request,
        now: Instant,
        lent: bool,
    ) {
        // The request's span covers its first poll here; a handler that
        // moves to its own task carries the span there.
        let span = tracing::debug_span!("request", id = token.id);
        let entered = span.enter();
        let (row, started) = self.shared.registry.start_counted(request, self.granted);
        let row = row.unwrap_or_else(|| self.shared.stats.unknown_row());
        self.stats.request_started(row);
        let started = match (lent, started) {
            (
                true,
                Ok(Started::Ready(Ok(Response {
                    body: Body::Bytes(body),
                }))),
            ) => {
                self.stats.request_ended_at_once(row, true);
                return lifecycle.answer_lent(token, body);
            }
            (true, started) => {
                lifecycle.admit_lent(token);
                started
            }
            (false, started) => started,
        };
        let mut fut = match started {
            Ok(Started::Ready(outcome)) => {
                return self.at_once(lifecycle, token, row, outcome, now)
            }
            Ok(Started::Pending(fut)) => fut,
            Err(refusal) => {
                let outcome = Err(CommandError::new(refusal.to_string()));
                return self.at_once(lifecycle, token, row, outcome, now);
            }
        };
        // The first poll runs the handler's code (it may start a timer or
        // work on the blocking pool), so it takes a server-wide slot too:
        // without one the handler waits, not polled, behind the others.
        let permit = match self.waiting.is_empty() {
            true => self.shared.executing.clone().try_acquire_owned().ok(),
            false => None,
        };
        let Some(permit) = permit else {
            drop(entered);
            self.track(token, row, now);
            return self.waiting.push_back(Waiting { token, fut, span });
        };
        // A no-op waker: a handler not ready moves to its own task, which
        // polls it again with a real one.
        let waker = futures::task::noop_waker();
        let mut noop = Context::from_waker(&waker);
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut noop))) {
            Ok(Poll::Ready(outcome)) => {
                drop(permit);
                self.at_once(lifecycle, token, row, outcome, now)
            }
            Err(panic) => {
                drop(permit);
                self.at_once(lifecycle, token, row, Err(caught_panic(&*panic)), now)
            }
            Ok(Poll::Pending) => {
                drop(entered);
                self.track(token, row, now);
                self.spawn(token, fut, permit, span)
            }
        }
    }

    /// Remembers a command that goes on after its start.
    fn track(&mut self, token: Token, row: Row, now: Instant) {
        let run = Run {
            token,
            row,
            started: now,
            stop: Stop::Nothing,
        };
        self.runs.insert(token.id, run);
    }

    /// The outcome of a command known at its start (most commands): a
    /// whole answer needs no record of the run at all.
    #[inline]
    fn at_once(
        &mut self,
        lifecycle: &mut Lifecycle,
        token: Token,
        row: Row,
        outcome: Outcome,
        now: Instant,
    ) {
        match outcome {
            Ok(Response {
                body: Body::Bytes(body),
            }) => {
                self.stats.request_ended_at_once(row, true);
                lifecycle.on_body(token, body);
            }
            Err(err) => {
                self.stats.request_ended_at_once(row, false);
                lifecycle.on_error(token, err.message());
            }
            stream => {
                self.track(token, row, now);
                self.deliver(lifecycle, token, stream, now);
            }
        }
    }

    fn spawn(
        &mut self,
        token: Token,
        fut: HandlerFuture,
        permit: OwnedSemaphorePermit,
        span: tracing::Span,
    ) {
        let done = self
            .done
            .get_or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                Done { tx, rx }
            })
            .tx
            .clone();
        let task = async move {
            let outcome = AssertUnwindSafe(fut)
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(caught_panic(&*panic)));
            // The slot is held until the handler has really finished.
            drop(permit);
            let _ = done.send((token, outcome));
        };
        // A disabled span (no subscriber wants it) is not carried along:
        // it would cost every waiting handler its size.
        let handle = if span.is_disabled() {
            tokio::spawn(task)
        } else {
            tokio::spawn(tracing::Instrument::instrument(task, span))
        };
        if let Some(run) = self.runs.get_mut(token.id) {
            run.stop = Stop::Task(handle.abort_handle());
        }
    }

    /// Stops the command run for `token`: its task is aborted (dropping the
    /// handler; work on the blocking pool finishes on its own and its
    /// result is discarded), a waiting handler dropped, a stream dropped.
    fn cancel(&mut self, token: Token, now: Instant) {
        let Some(run) = self.runs.get(token.id) else {
            return;
        };
        if run.token != token {
            return;
        }
        let run = self.runs.remove(token.id).expect("present");
        run.stop.stop();
        self.waiting.retain(|w| w.token != token);
        self.parked.retain(|s| s.token != token);
        self.stats
            .request_ended(run.row, false, now.saturating_duration_since(run.started));
    }

    /// A handler's outcome goes to the lifecycle; a stream starts being
    /// polled.
    fn deliver(&mut self, lifecycle: &mut Lifecycle, token: Token, outcome: Outcome, now: Instant) {
        match outcome {
            Ok(Response {
                body: Body::Bytes(body),
            }) => {
                self.ended(token, true, now);
                lifecycle.on_body(token, body);
            }
            Ok(Response {
                body: Body::Stream(inner),
            }) => {
                lifecycle.on_stream(token);
                // Polled on the transport's task: a panic in it must end
                // its response with an error, not the connection.
                let guarded = AssertUnwindSafe(inner)
                    .catch_unwind()
                    .map(|item| item.unwrap_or_else(|panic| Err(caught_panic(&*panic))));
                // Abortable, so that a cancelled stream is dropped at once
                // rather than when it next yields.
                let (inner, abort) = futures::stream::abortable(guarded);
                if let Some(run) = self.runs.get_mut(token.id) {
                    run.stop = Stop::Stream(abort);
                }
                let inner = inner.boxed();
                self.push_stream(TokenStream { token, inner });
            }
            Err(err) => {
                self.ended(token, false, now);
                lifecycle.on_error(token, err.message());
            }
        }
    }

    fn ended(&mut self, token: Token, ok: bool, now: Instant) {
        if let Some(run) = self.runs.remove(token.id) {
            let elapsed = now.saturating_duration_since(run.started);
            self.stats.request_ended(run.row, ok, elapsed);
        }
    }

    /// Gives the handler at the head of the queue its server-wide slot.
    fn poll_permit(&mut self, lifecycle: &mut Lifecycle, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while !self.waiting.is_empty() {
            let permit = self.permit.get_or_insert_with(|| {
                Box::pin(
                    self.shared
                        .executing
                        .clone()
                        .acquire_owned()
                        .map(Result::ok),
                )
            });
            let Poll::Ready(permit) = permit.as_mut().poll(cx) else {
                break;
            };
            self.permit = None;
            let Some(permit) = permit else {
                break; // the semaphore is never closed
            };
            let waiting = self.waiting.pop_front().expect("not empty");
            progress = true;
            if lifecycle.is_failed() {
                continue;
            }
            self.spawn(waiting.token, waiting.fut, permit, waiting.span);
        }
        progress
    }

    fn push_stream(&mut self, stream: TokenStream) {
        self.streams
            .get_or_insert_with(FuturesUnordered::new)
            .push(stream.into_future());
    }

    /// Chunks of response streams, while the lifecycle wants more of each;
    /// a stream with a frame's worth queued is parked until it is framed.
    fn poll_streams(
        &mut self,
        lifecycle: &mut Lifecycle,
        cx: &mut Context<'_>,
        now: Instant,
    ) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < self.parked.len() {
            let token = self.parked[i].token;
            if lifecycle.wants_chunk(token) {
                let stream = self.parked.swap_remove(i);
                self.push_stream(stream);
                progress = true;
            } else if !lifecycle.is_streaming(token) {
                self.parked.swap_remove(i);
            } else {
                i += 1;
            }
        }
        while let Some(Poll::Ready(Some((item, stream)))) =
            self.streams.as_mut().map(|s| s.poll_next_unpin(cx))
        {
            progress = true;
            let token = stream.token;
            match item {
                Some(Ok(chunk)) => {
                    lifecycle.on_chunk(token, chunk);
                    if lifecycle.wants_chunk(token) {
                        self.push_stream(stream);
                    } else if lifecycle.is_streaming(token) {
                        self.parked.push(stream);
                    }
                }
                Some(Err(err)) => {
                    self.ended(token, false, now);
                    lifecycle.on_stream_end(token, Err(err.message()));
                }
                None => {
                    self.ended(token, true, now);
                    lifecycle.on_stream_end(token, Ok(()));
                }
            }
        }
        progress
    }

    /// Keeps one timer for the lifecycle's next timeout, and moves it only
    /// when that timeout comes sooner. Most timeouts only ever move later
    /// (the idle timeout, on every request of a quiet connection); a timer
    /// left at an earlier moment, or left armed when no timeout is due,
    /// wakes the connection once and is then set to the real moment. So a
    /// request costs no timer registration, only a comparison. Nor is the
    /// timer polled again before its moment while it already holds this
    /// task's waker: it cannot have fired, and it will wake the task.
    fn poll_timer(
        &mut self,
        lifecycle: &mut Lifecycle,
        cx: &mut Context<'_>,
        now: Instant,
    ) -> bool {
        let Some(at) = lifecycle.poll_timeout() else {
            return false;
        };
        if at <= now {
            lifecycle.handle_timeout(now);
            return true;
        }
        let (armed, sleep) = self.timer.get_or_insert_with(|| {
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(at));
            (at, Box::pin(sleep))
        });
        if at < *armed {
            *armed = at;
            sleep.as_mut().reset(tokio::time::Instant::from_std(at));
            self.timer_waker = None;
        }
        let registered = self.timer_waker.as_ref();
        if now < *armed && registered.is_some_and(|w| w.will_wake(cx.waker())) {
            return false;
        }
        while sleep.as_mut().poll(cx).is_ready() {
            if *armed == at {
                self.timer_waker = None;
                lifecycle.handle_timeout(at.max(now));
                return true;
            }
            // Set for a moment since moved later: the real one is ahead.
            *armed = at;
            sleep.as_mut().reset(tokio::time::Instant::from_std(at));
        }
        if !self
            .timer_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.timer_waker = Some(cx.waker().clone());
        }
        false
    }

    /// Adds the lifecycle's counts to the connection's.
    fn fold(&mut self, lifecycle: &mut Lifecycle) {
        let counters = lifecycle.take_counters();
        let stats = &mut self.stats;
        stats.frames_in += counters.frames_in;
        stats.requests_started += counters.requests_started;
        stats.requests_completed += counters.requests_completed;
        stats.requests_failed += counters.requests_failed;
        stats.requests_cancelled += counters.requests_abandoned;
        stats.requests_stopped_by_peer += counters.requests_cancelled;
        stats.frames_out += counters.frames_out;
        stats.protocol_errors += counters.protocol_errors;
    }

    /// Stops every command (the connection is closing or gone) and drops
    /// what the lifecycle still held, counting it as abandoned.
    pub fn stop_all(&mut self, lifecycle: &mut Lifecycle) {
        self.abort_all();
        self.waiting.clear();
        self.permit = None;
        self.streams = None;
        self.parked.clear();
        self.timer = None;
        self.timer_waker = None;
        lifecycle.abandon();
        self.fold(lifecycle);
    }

    /// Adds this executor's counts to the server's.
    pub fn absorb(&mut self) {
        self.shared.stats.absorb(&mut self.stats);
    }
}

impl Executor {
    fn abort_all(&mut self) {
        for (_, run) in self.runs.iter() {
            if let Stop::Task(task) = &run.stop {
                task.abort();
            }
        }
        self.runs.clear();
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.abort_all();
        self.shared.stats.absorb(&mut self.stats);
    }
}
