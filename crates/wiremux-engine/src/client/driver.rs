//! The task that owns a client connection: it writes calls, routes
//! responses, holds calls for what they depend on, and keeps their timers.

use super::slot::{Extras, Slot};
use super::{
    closed, lost, Answer, AnswerSink, Error, Job, Outbox, Reason, Reply, Response, Submit,
};
use bytes::{Buf, BytesMut};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Sleep};
use wiremux_proto::builder::CommandBuilder;
use wiremux_proto::client::{
    reserved, Capabilities, ClientError, IdAllocator, Outcome, ResponseAssembler,
};
use wiremux_proto::{Flags, FrameCodec, FrameType, IdTable};

/// Output buffered before the driver stops taking new calls.
const WRITE_HIGH_WATER: usize = 256 << 10;
const ROUNDS_PER_WAKE: usize = 32;

/// A pipeline's answers inside the driver.
struct Pipe {
    /// `None` once the pipeline has gone (or the slot is free).
    sink: Option<AnswerSink>,
    /// Answers gathered in this round, sent together.
    out: Vec<Answer>,
    /// Calls of this pipe not yet answered.
    waiting: usize,
}

/// What the driver knows of the server's extensions.
enum Caps {
    Unknown,
    /// `@capabilities` is on its way.
    Probing,
    Known(Capabilities),
}

/// A call not yet written.
struct Pending {
    job: Job,
    seq: u64,
    deadline: Option<Instant>,
}

/// A call written and not yet ended.
struct InFlight {
    seq: u64,
    reply: Reply,
    slot: Option<Arc<Slot>>,
    extras: Extras,
    /// IDs this request names (pinned until it ends).
    named: Vec<u16>,
    /// The caller already has an answer (timed out, cancelled, gone): the
    /// response is read to its end and discarded.
    answered: bool,
    /// The `@deadline` sent, in ms.
    deadline_ms: Option<u64>,
    deadline: Option<Instant>,
}

/// Where a call with a timer is.
#[derive(Clone, Copy)]
enum Loc {
    Queue,
    Held,
    Sent(u16),
}

/// What became of a call the driver tried to write.
enum Tried {
    Done,
    NoId(Pending),
}

/// Owns the connection: writes calls, routes responses.
pub(crate) struct Driver<IO> {
    io: IO,
    calls: mpsc::UnboundedReceiver<Submit>,
    calls_open: bool,
    /// Calls started by the handles; `taken` is what was last taken from
    /// it, swapped with the outbox's buffer.
    outbox: Arc<Outbox>,
    /// This poll's waker is registered with the outbox.
    outbox_registered: bool,
    taken: Vec<Job>,
    /// Calls to try to write, in order.
    queue: VecDeque<Pending>,
    /// Calls waiting for a call they depend on, or for the capabilities.
    held: HashMap<u64, Pending>,
    /// Held calls by the slot (key) of the call they wait for.
    blocked_on: HashMap<usize, Vec<u64>>,
    caps_waiting: Vec<u64>,
    caps: Caps,
    caps_replies: Vec<oneshot::Sender<Result<Capabilities, Error>>>,
    /// Cancels waiting for the capabilities: (ID, seq of its call).
    pending_cancels: Vec<(u16, u64)>,
    next_seq: u64,
    timers: BTreeSet<(Instant, u64)>,
    timed: HashMap<u64, Loc>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Pipelines with calls not yet answered, by slot; a slot is reused
    /// once its pipe has nothing left to answer.
    pipes: Vec<Pipe>,
    ids: IdAllocator,
    responses: ResponseAssembler,
    /// By request ID (always odd: the client starts them).
    inflight: IdTable<InFlight>,
    codec: FrameCodec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    needs_flush: bool,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Driver<IO> {
    pub fn new(io: IO, calls: mpsc::UnboundedReceiver<Submit>, outbox: Arc<Outbox>) -> Driver<IO> {
        Driver {
            io,
            calls,
            calls_open: true,
            outbox,
            outbox_registered: false,
            taken: Vec::new(),
            queue: VecDeque::new(),
            held: HashMap::new(),
            blocked_on: HashMap::new(),
            caps_waiting: Vec::new(),
            caps: Caps::Unknown,
            caps_replies: Vec::new(),
            pending_cancels: Vec::new(),
            next_seq: 0,
            timers: BTreeSet::new(),
            timed: HashMap::new(),
            sleep: None,
            pipes: Vec::new(),
            ids: IdAllocator::new(),
            responses: ResponseAssembler::new(),
            inflight: IdTable::default(),
            codec: FrameCodec::new(),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            needs_flush: false,
        }
    }

    pub async fn run(mut self) {
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
        let mut inflight = std::mem::take(&mut self.inflight);
        let ids: Vec<u16> = inflight.iter().map(|(id, _)| id).collect();
        for f in ids.into_iter().filter_map(|id| inflight.remove(id)) {
            if !f.answered {
                self.settle(f.reply, f.slot.as_ref(), &f.extras, Err(reason.clone()));
            }
        }
        while let Ok(submit) = self.calls.try_recv() {
            self.accept(submit, false);
        }
        for job in self.outbox.close() {
            self.enqueue(job);
        }
        let held: Vec<Pending> = std::mem::take(&mut self.held).into_values().collect();
        for p in self
            .queue
            .drain(..)
            .collect::<Vec<_>>()
            .into_iter()
            .chain(held)
        {
            self.settle(
                p.job.reply,
                p.job.slot.as_ref(),
                &p.job.extras,
                Err(reason.clone()),
            );
        }
        for tx in self.caps_replies.drain(..) {
            let _ = tx.send(Err(reason.clone()));
        }
        self.send_answers();
    }

    /// Takes a handle's submission. With `send_now`, a pipeline's plain
    /// calls are written at once while nothing waits ahead of them.
    fn accept(&mut self, submit: Submit, send_now: bool) {
        match submit {
            Submit::Batch { sink, jobs } => {
                let pipe = self.pipe_for(sink);
                self.pipes[pipe].waiting += jobs.len();
                // A pipeline dropped meanwhile: its calls take the queue,
                // which answers them without sending them.
                let mut direct = send_now && self.pipe_open(pipe);
                for mut job in jobs {
                    if let Reply::Tagged { tag, .. } = job.reply {
                        job.reply = Reply::Tagged { pipe, tag };
                    }
                    direct &= self.queue.is_empty() && self.wbuf.len() < WRITE_HIGH_WATER;
                    if direct && job.is_plain() {
                        if let Some(job) = self.send_plain(job) {
                            direct = false;
                            self.enqueue(job);
                        }
                    } else {
                        self.enqueue(job);
                    }
                }
            }
            Submit::Abandon(slot) => {
                let id = slot.lock().id;
                let Some(id) = id else { return };
                let Some(f) = self.inflight.get_mut(id) else {
                    return;
                };
                if f.answered || !f.slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    return;
                }
                f.answered = true;
                let seq = f.seq;
                self.responses.discard(id);
                self.cancel_sent(id, seq);
            }
            Submit::CancelTag { sink, tag } => self.cancel_tag(&sink, tag),
            Submit::Capabilities(tx) => match &self.caps {
                Caps::Known(caps) => {
                    let _ = tx.send(Ok(caps.clone()));
                }
                _ => {
                    self.caps_replies.push(tx);
                    self.probe();
                }
            },
        }
    }

    fn enqueue(&mut self, job: Job) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let deadline = job.extras.timeout.map(|t| Instant::now() + t);
        if let Some(when) = deadline {
            self.timers.insert((when, seq));
            self.timed.insert(seq, Loc::Queue);
        }
        self.queue.push_back(Pending { job, seq, deadline });
    }

    /// Writes a plain call (no dependency, timeout, keep or handle): the
    /// path most pipelined calls take, with none of [`Driver::try_send`]'s
    /// checks to make. Gives the call back if no ID is free.
    fn send_plain(&mut self, job: Job) -> Option<Job> {
        debug_assert!(job.is_plain());
        let Ok(id) = self.ids.allocate() else {
            return Some(job);
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let encoded = job
            .command
            .encode(id, self.codec.send_limit(), &mut self.wbuf);
        if let Err(err) = encoded {
            self.ids.release(id);
            self.settle(job.reply, None, &job.extras, Err(err.into()));
            return None;
        }
        self.responses.expect(id);
        let f = InFlight {
            seq,
            reply: job.reply,
            slot: None,
            extras: job.extras,
            named: Vec::new(),
            answered: false,
            deadline_ms: None,
            deadline: None,
        };
        self.inflight.insert(id, f);
        None
    }

    /// Queues an internal call ahead of the others.
    fn push_internal(&mut self, command: CommandBuilder, reply: Reply) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let job = Job {
            command,
            extras: Extras::default(),
            slot: None,
            reply,
        };
        self.queue.push_front(Pending {
            job,
            seq,
            deadline: None,
        });
    }

    /// Asks for the capabilities, once.
    fn probe(&mut self) {
        if let Caps::Unknown = self.caps {
            self.caps = Caps::Probing;
            self.push_internal(reserved::capabilities(), Reply::Probe);
        }
    }

    /// The capabilities are known: the calls that waited for them go on.
    fn caps_known(&mut self, caps: Capabilities) {
        for tx in self.caps_replies.drain(..) {
            let _ = tx.send(Ok(caps.clone()));
        }
        let cancel = caps.cancel();
        self.caps = Caps::Known(caps);
        for seq in std::mem::take(&mut self.caps_waiting).into_iter().rev() {
            self.unhold(seq);
        }
        for (id, seq) in std::mem::take(&mut self.pending_cancels) {
            if cancel && self.inflight.get(id).is_some_and(|f| f.seq == seq) {
                self.push_internal(reserved::cancel(id), Reply::Cancel { target: id });
            }
        }
    }

    /// Asks the server to stop the written call `id` (of `seq`), where it can.
    fn cancel_sent(&mut self, id: u16, seq: u64) {
        match &self.caps {
            Caps::Known(caps) => {
                if caps.cancel() {
                    self.push_internal(reserved::cancel(id), Reply::Cancel { target: id });
                }
            }
            Caps::Unknown | Caps::Probing => {
                self.pending_cancels.push((id, seq));
                self.probe();
            }
        }
    }

    /// [`crate::Pipeline::cancel`]: every unanswered call of the pipeline
    /// with that tag is answered `Cancelled`.
    fn cancel_tag(&mut self, sink: &AnswerSink, tag: u64) {
        let Some(pipe) = self
            .pipes
            .iter()
            .position(|p| p.sink.as_ref().is_some_and(|s| s.same_channel(sink)))
        else {
            return;
        };
        let mine = Reply::Tagged { pipe, tag };
        let queue = std::mem::take(&mut self.queue);
        for p in queue {
            if p.job.reply == mine {
                self.settle_pending(p, Err(Error::Cancelled));
            } else {
                self.queue.push_back(p);
            }
        }
        let held: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, p)| p.job.reply == mine)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in held {
            if let Some(p) = self.held.remove(&seq) {
                self.settle_pending(p, Err(Error::Cancelled));
            }
        }
        let sent: Vec<u16> = self
            .inflight
            .iter()
            .filter(|(_, f)| f.reply == mine && !f.answered)
            .map(|(id, _)| id)
            .collect();
        for id in sent {
            let Some(f) = self.inflight.get_mut(id) else {
                continue;
            };
            f.answered = true;
            let (seq, reply, slot) = (f.seq, f.reply, f.slot.clone());
            let extras = std::mem::take(&mut f.extras);
            self.settle(reply, slot.as_ref(), &extras, Err(Error::Cancelled));
            self.responses.discard(id);
            self.cancel_sent(id, seq);
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

    /// Gives a call its answer, once: to its handle, its pipeline or the
    /// driver itself, and lets the calls that wait for it go on.
    fn settle(
        &mut self,
        reply: Reply,
        slot: Option<&Arc<Slot>>,
        extras: &Extras,
        result: Result<Response, Error>,
    ) {
        extras.ended();
        match reply {
            Reply::Handle => {
                if let Some(slot) = slot {
                    slot.finish(result);
                }
            }
            Reply::Tagged { pipe, tag } => {
                if let Some(slot) = slot {
                    slot.finish(result.clone());
                }
                let pipe = &mut self.pipes[pipe];
                pipe.waiting = pipe.waiting.saturating_sub(1);
                if pipe.sink.is_some() {
                    pipe.out.push((tag, result));
                }
            }
            Reply::Probe => {
                let caps = Capabilities::from_answer(result.as_ref().map(|r| &r.body[..]));
                self.caps_known(caps);
            }
            Reply::Cancel { .. } => {}
        }
        if let Some(slot) = slot {
            self.wake_blocked(slot.key());
        }
    }

    fn settle_pending(&mut self, p: Pending, result: Result<Response, Error>) {
        if let Some(when) = p.deadline {
            self.timers.remove(&(when, p.seq));
            self.timed.remove(&p.seq);
        }
        self.settle(p.job.reply, p.job.slot.as_ref(), &p.job.extras, result);
    }

    /// The calls held for the call of slot `key` try again.
    fn wake_blocked(&mut self, key: usize) {
        if self.blocked_on.is_empty() {
            return;
        }
        if let Some(seqs) = self.blocked_on.remove(&key) {
            for seq in seqs.into_iter().rev() {
                self.unhold(seq);
            }
        }
    }

    /// A held call goes back to the front of the queue.
    fn unhold(&mut self, seq: u64) {
        if let Some(p) = self.held.remove(&seq) {
            if p.deadline.is_some() {
                self.timed.insert(seq, Loc::Queue);
            }
            self.queue.push_front(p);
        }
    }

    fn hold(&mut self, p: Pending) {
        if p.deadline.is_some() {
            self.timed.insert(p.seq, Loc::Held);
        }
        self.held.insert(p.seq, p);
    }

    /// Sends each pipeline the answers gathered for it, in one batch.
    fn send_answers(&mut self) {
        for pipe in &mut self.pipes {
            if pipe.out.is_empty() {
                continue;
            }
            // The next batch is likely as large: no regrowing it.
            let room = pipe.out.len().min(1024);
            let out = std::mem::replace(&mut pipe.out, Vec::with_capacity(room));
            if pipe.sink.as_ref().is_some_and(|s| s.send(out).is_err()) {
                pipe.sink = None; // the pipeline has gone
            }
            if pipe.waiting == 0 {
                pipe.sink = None; // nothing left for it: free the slot
            }
        }
    }

    /// Runs until the connection ends; the error every pending call gets.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Error>> {
        self.outbox_registered = false;
        for _ in 0..ROUNDS_PER_WAKE {
            let mut progress = self.poll_timers(cx);
            let first_timer = self.timers.first().copied();
            let (took, parked) = self.take_calls(cx);
            progress |= took;
            progress |= self.poll_write(cx)?;
            let read = self.poll_read(cx)?;
            self.send_answers();
            match read {
                Poll::Ready(Some(end)) => return Poll::Ready(Ok(end)),
                Poll::Ready(None) => progress = true,
                Poll::Pending => {}
            }
            if !self.calls_open && self.queue.is_empty() && self.wbuf.is_empty() {
                if self.send_pending_cancels() {
                    continue;
                }
                // No handle is left, so no new call can come and nobody
                // can take an answer: the connection is of no use. Close it
                // rather than wait for a server that may never answer.
                let _ = Pin::new(&mut self.io).poll_shutdown(cx);
                return Poll::Ready(Ok(lost(
                    io::ErrorKind::NotConnected,
                    "the client was dropped",
                )));
            }
            // Another round only if something may be left to do at once:
            // every call was taken and nothing came back to the queue,
            // the write went as far as it could, the read found no more and
            // the timer is set for the first timeout, each with this task's
            // waker, so each wakes the driver when there is more.
            let settled =
                parked && self.queue.is_empty() && self.timers.first().copied() == first_timer;
            if !progress || settled {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The connection is about to close with cancels still waiting for the
    /// capabilities: queues them now, as the probe's answer would come too
    /// late. A server keeps running what it was sent after a plain close,
    /// so an unsent cancel would leave the call running there; a server
    /// without the extension answers an error that nobody reads. Returns
    /// whether any was queued.
    fn send_pending_cancels(&mut self) -> bool {
        let mut queued = false;
        for (id, seq) in std::mem::take(&mut self.pending_cancels) {
            if self.inflight.get(id).is_some_and(|f| f.seq == seq) {
                self.push_internal(reserved::cancel(id), Reply::Cancel { target: id });
                queued = true;
            }
        }
        queued
    }

    /// Fires the timers that are due; registers for the next one.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> bool {
        let mut progress = false;
        while let Some(&(when, seq)) = self.timers.first() {
            if when <= Instant::now() {
                self.timers.pop_first();
                self.fire(seq);
                progress = true;
                continue;
            }
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(when)));
            if sleep.deadline() != when {
                sleep.as_mut().reset(when);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                break;
            }
        }
        progress
    }

    /// A call's timeout has passed.
    fn fire(&mut self, seq: u64) {
        let Some(loc) = self.timed.remove(&seq) else {
            return;
        };
        match loc {
            Loc::Queue => {
                if let Some(i) = self.queue.iter().position(|p| p.seq == seq) {
                    let p = self.queue.remove(i).expect("found");
                    let timeout = p.job.extras.timeout.unwrap_or_default();
                    self.settle_pending(p, Err(Error::TimedOut(timeout)));
                }
            }
            Loc::Held => {
                if let Some(p) = self.held.remove(&seq) {
                    let timeout = p.job.extras.timeout.unwrap_or_default();
                    self.settle_pending(p, Err(Error::TimedOut(timeout)));
                }
            }
            Loc::Sent(id) => {
                let Some(f) = self.inflight.get_mut(id) else {
                    return;
                };
                if f.seq != seq || f.answered {
                    return;
                }
                f.answered = true;
                let (reply, slot) = (f.reply, f.slot.clone());
                let extras = std::mem::take(&mut f.extras);
                let timeout = extras.timeout.unwrap_or_default();
                let server_stops_it = f.deadline_ms.is_some();
                self.settle(reply, slot.as_ref(), &extras, Err(Error::TimedOut(timeout)));
                self.responses.discard(id);
                if !server_stops_it {
                    self.cancel_sent(id, seq);
                }
            }
        }
    }

    /// Encodes new calls while request IDs and buffer room last. Returns
    /// whether it did anything, and whether it stopped because no call is
    /// left to take (the handles will wake the driver for the next one).
    fn take_calls(&mut self, cx: &mut Context<'_>) -> (bool, bool) {
        let mut progress = false;
        while self.wbuf.len() < WRITE_HIGH_WATER {
            let p = match self.queue.pop_front() {
                Some(p) => p,
                None if !self.calls_open => return (progress, true),
                None if self.take_outbox(cx) => {
                    progress = true;
                    continue;
                }
                None => match self.calls.poll_recv(cx) {
                    Poll::Ready(Some(submit)) => {
                        progress = true;
                        self.accept(submit, true);
                        continue;
                    }
                    Poll::Ready(None) => {
                        // No handle is left: take what they started and
                        // never flushed, so that it is answered too.
                        self.calls_open = false;
                        if self.take_outbox(cx) {
                            progress = true;
                            continue;
                        }
                        return (progress, true);
                    }
                    Poll::Pending => return (progress, true),
                },
            };
            if let Tried::NoId(p) = self.try_send(p) {
                // Every ID is busy: wait for a response to free one.
                self.queue.push_front(p);
                break;
            }
            progress = true;
        }
        (progress, false)
    }

    /// Queues the calls the handles have flushed (all of them once no
    /// handle is left). Returns whether there were any.
    fn take_outbox(&mut self, cx: &mut Context<'_>) -> bool {
        let waker = (!self.outbox_registered).then(|| cx.waker());
        self.outbox_registered = true;
        if !self.outbox.take(waker, !self.calls_open, &mut self.taken) {
            return false;
        }
        let mut taken = std::mem::take(&mut self.taken);
        for job in taken.drain(..) {
            self.enqueue(job);
        }
        self.taken = taken;
        true
    }

    /// Whether pipeline `pipe` can still take answers.
    fn pipe_open(&self, pipe: usize) -> bool {
        self.pipes[pipe]
            .sink
            .as_ref()
            .is_some_and(|s| !s.is_closed())
    }

    /// Whether nobody can take this call's answer any more.
    fn is_gone(&self, reply: Reply, slot: Option<&Arc<Slot>>) -> bool {
        match reply {
            Reply::Handle => slot.is_some_and(|s| {
                let state = s.lock();
                state.abandoned && state.dependents == 0
            }),
            Reply::Tagged { pipe, .. } => !self.pipe_open(pipe),
            Reply::Probe | Reply::Cancel { .. } => false,
        }
    }

    /// Writes a call if what it depends on allows; otherwise holds it, or
    /// answers it.
    fn try_send(&mut self, mut p: Pending) -> Tried {
        // The clock is read only for a call with a deadline.
        let now = p.deadline.map(|_| Instant::now());
        if self.is_gone(p.job.reply, p.job.slot.as_ref()) {
            self.settle_pending(p, Err(closed()));
            return Tried::Done;
        }
        if p.deadline.zip(now).is_some_and(|(d, now)| d <= now) {
            let timeout = p.job.extras.timeout.unwrap_or_default();
            self.settle_pending(p, Err(Error::TimedOut(timeout)));
            return Tried::Done;
        }
        if let Reply::Cancel { target } = p.job.reply {
            if self.inflight.get(target).is_none() {
                return Tried::Done; // it ended meanwhile
            }
        }
        let caps = match &self.caps {
            Caps::Known(caps) => Some((caps.after(), caps.pipelining(), caps.deadline())),
            _ => None,
        };
        let keep_asked = p.job.slot.as_ref().is_some_and(|s| s.lock().keep);
        let mut wait_caps = p.job.extras.timeout.is_some() || p.job.extras.keep || keep_asked;
        let mut after: Vec<u16> = Vec::new();
        let mut uses = Vec::new();
        let mut subs = Vec::new();
        let mut block: Option<usize> = None;
        let mut failed: Option<Option<u16>> = None;
        for dep in &p.job.extras.deps {
            let state = dep.slot.lock();
            if let Some(result) = &state.result {
                match result {
                    Ok(response) => {
                        if let Some(name) = &dep.name {
                            subs.push((name.clone(), response.body.clone()));
                        }
                    }
                    Err(_) => {
                        failed = Some(state.id);
                        break;
                    }
                }
                continue;
            }
            let Some(id) = state.id else {
                // Not written yet: wait until it is.
                block = Some(dep.slot.key());
                break;
            };
            wait_caps = true;
            let Some((has_after, has_pipelining, _)) = caps else {
                continue;
            };
            match &dep.name {
                None if has_after => after.push(id),
                Some(name) if has_pipelining && state.kept => uses.push((name.clone(), id)),
                // The server cannot do it: wait for the answer here.
                _ => {
                    block = Some(dep.slot.key());
                    break;
                }
            }
        }
        if let Some(id) = failed {
            let message = match id {
                Some(id) => format!("dependency {id} failed"),
                None => "dependency failed".to_string(),
            };
            self.settle_pending(p, Err(Error::Application(message)));
            return Tried::Done;
        }
        if let Some(key) = block {
            self.blocked_on.entry(key).or_default().push(p.seq);
            self.hold(p);
            return Tried::Done;
        }
        if wait_caps && caps.is_none() {
            self.probe();
            self.caps_waiting.push(p.seq);
            self.hold(p);
            return Tried::Done;
        }
        after.sort_unstable();
        after.dedup();
        if after.len() + uses.len() > reserved::MAX_DEPENDENCIES {
            // More than one request may name: wait here for the last one.
            let last = p.job.extras.deps.iter().rev().find(|d| {
                let state = d.slot.lock();
                state.result.is_none() && state.id.is_some()
            });
            let key = last.expect("a dependency in flight").slot.key();
            self.blocked_on.entry(key).or_default().push(p.seq);
            self.hold(p);
            return Tried::Done;
        }
        let Ok(id) = self.ids.allocate() else {
            return Tried::NoId(p);
        };
        let (_, has_pipelining, has_deadline) = caps.unwrap_or_default();
        let mut kept = p.job.extras.keep;
        if let Some(slot) = &p.job.slot {
            let mut state = slot.lock();
            if state.abandoned && state.dependents == 0 && p.job.reply == Reply::Handle {
                drop(state);
                self.ids.release(id);
                self.settle_pending(p, Err(closed()));
                return Tried::Done;
            }
            kept |= state.keep;
            kept &= has_pipelining;
            state.id = Some(id);
            state.kept = kept;
        }
        kept &= has_pipelining;
        let deadline = p.deadline.zip(now).filter(|_| has_deadline);
        let plain = subs.is_empty() && after.is_empty() && uses.is_empty() && !kept;
        let mut deadline_ms = None;
        let mut named = Vec::new();
        let encoded = if plain && deadline.is_none() {
            // Nothing to add (the common case): encoded as it was built.
            p.job
                .command
                .encode(id, self.codec.send_limit(), &mut self.wbuf)
        } else {
            let mut command = std::mem::take(&mut p.job.command);
            for (name, body) in subs {
                command = command.arg(name, body);
            }
            command = reserved::after(command, &after);
            named = after;
            for (name, dep) in uses {
                command = reserved::use_result(command, &name, dep);
                named.push(dep);
            }
            if kept {
                command = reserved::keep(command);
            }
            if let Some((deadline, now)) = deadline {
                let ms = reserved::deadline_ms(deadline - now);
                command = command.arg("@deadline", ms.to_string());
                deadline_ms = Some(ms);
            }
            command.encode(id, self.codec.send_limit(), &mut self.wbuf)
        };
        if let Reply::Cancel { target } = p.job.reply {
            named.push(target);
        }
        if let Err(err) = encoded {
            self.ids.release(id);
            if let Some(slot) = &p.job.slot {
                slot.lock().id = None;
            }
            self.settle_pending(p, Err(err.into()));
            return Tried::Done;
        }
        for dep in &named {
            self.ids.pin(*dep);
        }
        self.responses.expect(id);
        if p.deadline.is_some() {
            self.timed.insert(p.seq, Loc::Sent(id));
        }
        let key = p.job.slot.as_ref().map(|s| s.key());
        self.inflight.insert(
            id,
            InFlight {
                seq: p.seq,
                reply: p.job.reply,
                slot: p.job.slot,
                extras: p.job.extras,
                named,
                answered: false,
                deadline_ms,
                deadline: p.deadline,
            },
        );
        if let Some(key) = key {
            // Calls that waited for this one to be written can name it now.
            self.wake_blocked(key);
        }
        Tried::Done
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
                        let message: String = String::from_utf8_lossy(&frame.payload).into();
                        if let Some(f) = self.inflight.remove(id) {
                            if !f.answered {
                                let err = Err(Error::Protocol(message.clone()));
                                self.settle(f.reply, f.slot.as_ref(), &f.extras, err);
                            }
                        }
                        return Ok(Poll::Ready(Some(Error::Protocol(message))));
                    }
                    if self
                        .inflight
                        .get(id)
                        .is_some_and(|f| f.answered || self.is_gone(f.reply, f.slot.as_ref()))
                    {
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
                    let why = if self.inflight.is_empty() {
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

    /// A request's last frame came: frees its ID (once nothing names it),
    /// and answers its caller unless it already has an answer. A protocol
    /// error ends the connection: returns the error for everyone.
    fn complete(&mut self, id: u16, outcome: Outcome) -> Option<Error> {
        self.ids.release(id);
        let f = self.inflight.remove(id)?;
        for named in &f.named {
            self.ids.unpin(*named);
        }
        if let Some(when) = f.deadline {
            self.timers.remove(&(when, f.seq));
            self.timed.remove(&f.seq);
        }
        let result = match outcome {
            Outcome::Bytes(body) => Ok(Response {
                request_id: id,
                body,
            }),
            Outcome::ApplicationError(message) => Err(match (f.deadline_ms, f.extras.timeout) {
                (Some(ms), Some(timeout)) if message == reserved::timed_out_message(ms) => {
                    Error::TimedOut(timeout)
                }
                _ => Error::Application(message),
            }),
            Outcome::ProtocolError(message) => {
                let err = Error::Protocol(message);
                if !f.answered {
                    self.settle(f.reply, f.slot.as_ref(), &f.extras, Err(err.clone()));
                }
                return Some(err);
            }
        };
        if !f.answered {
            self.settle(f.reply, f.slot.as_ref(), &f.extras, result);
        }
        None
    }
}

fn invalid(err: ClientError) -> Error {
    let message = format!("invalid response from the server: {err}");
    Error::ConnectionLost(Reason::caused_by(io::ErrorKind::InvalidData, message, err))
}
