//! Many calls on one connection without a future per call.

use super::slot::{Extras, Slot};
use super::{closed, Answer, AnswerSink, CallRef, Error, Job, Reply, Submit};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use wiremux_proto::builder::CommandBuilder;

/// Many calls on one connection without a future per call.
///
/// [`Pipeline::start`] queues a call and returns at once; the queued calls
/// go to the connection together when [`Pipeline::next`] has to wait for
/// an answer, or at [`Pipeline::flush`]. `next` yields `(tag, result)` for
/// each call as its answer arrives, whatever order the calls finish in;
/// the tag is the caller's own, to match answers to calls. Every started call is
/// answered exactly once, with an error if the connection is lost.
/// Dropping the pipeline abandons the calls still out (their answers are
/// discarded; they are not cancelled); the connection stays sound.
///
/// Per call this costs much less than [`super::Client::send`]: no reply channel
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
///
/// Calls that depend on each other go through [`Pipeline::call`]; a chain
/// started before the next flush is sent in one write:
///
/// ```no_run
/// # async fn demo() -> Result<(), wiremux_engine::client::Error> {
/// use wiremux_engine::proto::builder::CommandBuilder;
///
/// let client = wiremux_engine::Client::connect("127.0.0.1:7878").await?;
/// let mut pipeline = client.pipeline();
/// let mut last = pipeline.call(0, CommandBuilder::new("add").arg("a", "0").arg("b", "1")).start()?;
/// for tag in 1..8 {
///     let add = CommandBuilder::new("add").arg("b", "1");
///     last = pipeline.call(tag, add).use_result("a", &last).start()?;
/// }
/// while let Some((tag, result)) = pipeline.next().await {
///     assert_eq!(result?.body, (tag + 1).to_string());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Pipeline {
    /// Answers received and not yet returned: the driver's last batch, as
    /// it came, and the ones answered here.
    batch: std::vec::IntoIter<Answer>,
    ready: VecDeque<Answer>,
    // Declared (so dropped) before `calls`: once the driver sees the call
    // channel close, it finds this stream closed too.
    answers: mpsc::UnboundedReceiver<Vec<Answer>>,
    sink: AnswerSink,
    calls: mpsc::UnboundedSender<Submit>,
    /// Started calls not yet handed to the connection.
    queued: Vec<Job>,
    in_flight: usize,
}

impl Pipeline {
    pub(super) fn new(calls: mpsc::UnboundedSender<Submit>) -> Pipeline {
        let (sink, answers) = mpsc::unbounded_channel();
        Pipeline {
            batch: Vec::new().into_iter(),
            ready: VecDeque::new(),
            answers,
            sink,
            calls,
            queued: Vec::new(),
            in_flight: 0,
        }
    }

    /// Starts a call tagged `tag`: queues it to be sent when
    /// [`Pipeline::next`] waits or at [`Pipeline::flush`]. Fails only if the
    /// connection has closed; any other failure is the call's answer.
    pub fn start(&mut self, tag: u64, command: CommandBuilder) -> Result<(), Error> {
        self.push(tag, command, Extras::default(), None)
    }

    /// Starts building a call tagged `tag` that can depend on other calls
    /// of this pipeline, have a timeout, and be named by later calls.
    pub fn call(&mut self, tag: u64, command: CommandBuilder) -> PipelineCall<'_> {
        PipelineCall {
            pipeline: self,
            tag,
            command,
            extras: Extras::default(),
        }
    }

    fn push(
        &mut self,
        tag: u64,
        command: CommandBuilder,
        extras: Extras,
        slot: Option<std::sync::Arc<Slot>>,
    ) -> Result<(), Error> {
        if self.calls.is_closed() {
            return Err(closed());
        }
        extras.started();
        self.queued.push(Job {
            command,
            extras,
            slot,
            reply: Reply::Tagged { pipe: 0, tag },
        });
        self.in_flight += 1;
        Ok(())
    }

    /// Hands the queued calls to the connection now.
    pub fn flush(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        // The next batch is likely as large: no regrowing it call by call.
        let room = self.queued.len().min(1024);
        let jobs = std::mem::replace(&mut self.queued, Vec::with_capacity(room));
        let batch = Submit::Batch {
            sink: self.sink.clone(),
            jobs,
        };
        if let Err(mpsc::error::SendError(Submit::Batch { jobs, .. })) = self.calls.send(batch) {
            // The connection closed after they were started.
            for job in jobs {
                self.answer_here(job, Err(closed()));
            }
        }
    }

    /// Cancels the calls tagged `tag` that have no answer yet: each is
    /// answered [`Error::Cancelled`]. One not yet sent is never sent; one
    /// sent is cancelled on the server with `@cancel` where the server
    /// offers it (its request ID is reused only once the server has ended
    /// it), and its answer discarded otherwise. A call whose answer is
    /// already on its way keeps that answer.
    pub fn cancel(&mut self, tag: u64) {
        let queued = std::mem::take(&mut self.queued);
        for job in queued {
            if matches!(job.reply, Reply::Tagged { tag: t, .. } if t == tag) {
                self.answer_here(job, Err(Error::Cancelled));
            } else {
                self.queued.push(job);
            }
        }
        let _ = self.calls.send(Submit::CancelTag {
            sink: self.sink.clone(),
            tag,
        });
    }

    /// Answers a call that never reached the driver.
    fn answer_here(&mut self, job: Job, result: Result<super::Response, Error>) {
        let Reply::Tagged { tag, .. } = job.reply else {
            return;
        };
        job.extras.ended();
        if let Some(slot) = &job.slot {
            slot.finish(result.clone());
        }
        self.ready.push_back((tag, result));
    }

    /// The next answer: `(tag, result)` of a call started here, or `None`
    /// when none is left to answer. An answer already received comes back
    /// at once; otherwise the queued calls are sent before waiting, so calls
    /// started while handling a batch of answers go out together.
    ///
    /// Cancel-safe: dropping the future (in a `select!`, say) loses no
    /// answer.
    pub async fn next(&mut self) -> Option<Answer> {
        if self.ready.is_empty() && self.batch.len() == 0 {
            self.flush();
        }
        if self.in_flight == 0 {
            return None;
        }
        let answer = match self.ready.pop_front().or_else(|| self.batch.next()) {
            Some(answer) => answer,
            None => {
                // The stream cannot end while this pipeline holds a sender,
                // and the driver answers every call it was given.
                self.batch = self.answers.recv().await?.into_iter();
                self.batch.next()?
            }
        };
        self.in_flight -= 1;
        Some(answer)
    }

    /// Calls started and not yet returned by [`Pipeline::next`].
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

/// A pipelined call being built ([`Pipeline::call`]).
#[must_use = "a call does nothing until started"]
pub struct PipelineCall<'p> {
    pipeline: &'p mut Pipeline,
    tag: u64,
    command: CommandBuilder,
    extras: Extras,
}

impl PipelineCall<'_> {
    /// Runs the call only after `call` has ended (`@after`); as
    /// [`super::CallBuilder::after`].
    pub fn after(mut self, call: impl Into<CallRef>) -> Self {
        self.extras.depend(call.into().slot, None);
        self
    }

    /// Gives the call the argument `name` set to `call`'s response body
    /// (`@use:NAME`); as [`super::CallBuilder::use_result`].
    pub fn use_result(mut self, name: impl Into<Bytes>, call: impl Into<CallRef>) -> Self {
        self.extras.depend(call.into().slot, Some(name.into()));
        self
    }

    /// Sends the call with `@keep`; as [`super::CallBuilder::keep`].
    pub fn keep(mut self) -> Self {
        self.extras.keep = true;
        self
    }

    /// A timeout, sent as `@deadline`; as [`super::CallBuilder::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.extras.timeout = Some(timeout);
        self
    }

    /// Queues the call, as [`Pipeline::start`], and returns a name for it
    /// that later calls can depend on. The name keeps the call's answer
    /// (a shared body, not a copy) for as long as it or a call that
    /// depends on it lives.
    pub fn start(self) -> Result<CallRef, Error> {
        let slot = Slot::new();
        self.pipeline
            .push(self.tag, self.command, self.extras, Some(slot.clone()))?;
        Ok(CallRef { slot })
    }
}
