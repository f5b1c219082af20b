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
//! # Calls that build on each other
//!
//! A started call is a handle ([`Call`]) that later calls can name: one
//! can run only after others ([`CallBuilder::after`]), or take an argument
//! from another's result ([`CallBuilder::use_result`]); the client marks
//! that call `@keep` itself. A [`CallBuilder::timeout`] goes to the server
//! as `@deadline` and still fails the call here if no answer comes; a
//! dropped [`Call`] is cancelled with `@cancel`. These are the extensions
//! of PROTOCOL.md section 8: the client asks the server for them
//! (`@capabilities`) once per connection, the first time a call needs
//! one. Against a server without them, the same calls give the same
//! results with more round trips: a call waits for the answers it depends
//! on before it is sent, with a used body as an ordinary argument, and a
//! dropped call's answer is discarded.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wiremux_engine::client::Error> {
//! let client = wiremux_engine::Client::connect("127.0.0.1:7878").await?;
//! // Three calls, one round trip (plus, the first time on a connection,
//! // the `@capabilities` probe): each adds to the previous sum.
//! let a = client.call("add").arg("a", "1").arg("b", "2").start();
//! let b = client.call("add").use_result("a", &a).arg("b", "10").start();
//! let c = client.call("add").use_result("a", &b).arg("b", "100").start();
//! assert_eq!(c.await?.body, "113");
//! assert_eq!((a.await?.body, b.await?.body), ("3".into(), "13".into()));
//! # Ok(()) }
//! ```
//!
//! Each call above is its own future with its own result. A caller
//! that keeps many calls going at once (a load generator, a batch job) can
//! use a [`Pipeline`] instead: it queues calls without awaiting them, hands
//! them to the driver in batches, and gets every answer back on one
//! stream, tagged, in completion order.

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use wiremux_proto::builder::CommandBuilder;
pub use wiremux_proto::client::Capabilities;
#[cfg(doc)]
use wiremux_proto::client::{IdAllocator, ResponseAssembler};

mod driver;
mod error;
mod pipeline;
mod slot;

pub use error::{Error, Reason};
pub use pipeline::{Pipeline, PipelineCall};
use slot::{Extras, Slot};

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

/// A call on its way to the driver.
#[derive(Debug)]
pub(crate) struct Job {
    pub command: CommandBuilder,
    pub extras: Extras,
    /// Shared with the call's handle and its dependents, if it has any.
    pub slot: Option<Arc<Slot>>,
    pub reply: Reply,
}

impl Job {
    /// A pipelined call with nothing to add to its frames and nothing to
    /// wait for: it can be written as it was built.
    pub fn is_plain(&self) -> bool {
        matches!(self.reply, Reply::Tagged { .. }) && self.slot.is_none() && self.extras.is_empty()
    }
}

/// Where a call's answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Into the slot, for the [`Call`] handle.
    Handle,
    /// Into `Driver::pipes[pipe]`, tagged (the slot is the driver's to
    /// fill in when it takes the batch).
    Tagged { pipe: usize, tag: u64 },
    /// The driver's own `@capabilities`.
    Probe,
    /// The driver's own `@cancel` of `target`.
    Cancel { target: u16 },
}

/// Calls started on a client (and its clones) and not yet taken by the
/// driver. Handing them over is a lock and, once per batch, a wake-up of
/// the driver: no message per call.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    /// Set when calls are handed over, cleared when the driver looks: the
    /// driver takes the lock only when there is something to take.
    handed: std::sync::atomic::AtomicBool,
    /// The driver's task, woken when calls are handed over.
    driver: futures::task::AtomicWaker,
}

#[derive(Debug, Default)]
struct OutboxState {
    /// In the order they were started.
    jobs: Vec<Job>,
    /// `jobs[..handed]` have been flushed, for the driver to take.
    handed: usize,
    /// The driver has ended: a call flushed now fails at once.
    closed: bool,
}

impl Outbox {
    /// Moves the calls flushed (every call, with `all`) into `into`, in
    /// order, after registering `waker` for the next flush. Returns whether
    /// there were any. The driver gives its waker at its first look of a
    /// poll only: registering it again would change nothing, at a cost.
    pub(crate) fn take(
        &self,
        waker: Option<&std::task::Waker>,
        all: bool,
        into: &mut Vec<Job>,
    ) -> bool {
        use std::sync::atomic::Ordering;
        // Registered before looking, so a flush after the look wakes it.
        if let Some(waker) = waker {
            self.driver.register(waker);
        }
        // A look, and a write only if there is something: most looks find
        // nothing.
        let handed =
            self.handed.load(Ordering::Acquire) && self.handed.swap(false, Ordering::AcqRel);
        if !handed && !all {
            return false;
        }
        let mut state = lock(&self.state);
        let n = if all { state.jobs.len() } else { state.handed };
        state.handed = 0;
        if n == 0 {
            return false;
        }
        if n == state.jobs.len() && into.is_empty() {
            // Everything (the common case): swap the buffers, copy nothing.
            std::mem::swap(&mut state.jobs, into);
        } else {
            into.extend(state.jobs.drain(..n));
        }
        true
    }

    /// The driver has ended: takes every call left, and fails the ones
    /// flushed from now on.
    pub(crate) fn close(&self) -> Vec<Job> {
        let mut state = lock(&self.state);
        state.closed = true;
        state.handed = 0;
        std::mem::take(&mut state.jobs)
    }
}

/// What handles send the driver, besides the calls of the [`Outbox`].
#[derive(Debug)]
pub(crate) enum Submit {
    /// A pipeline's calls, and where their answers go.
    Batch { sink: AnswerSink, jobs: Vec<Job> },
    /// A handle went away before its answer.
    Abandon(Arc<Slot>),
    /// [`Pipeline::cancel`].
    CancelTag { sink: AnswerSink, tag: u64 },
    /// [`Client::capabilities`].
    Capabilities(oneshot::Sender<Result<Capabilities, Error>>),
}

/// A handle to one client connection. Clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    calls: mpsc::UnboundedSender<Submit>,
    /// Calls started and not yet taken by the driver.
    outbox: Arc<Outbox>,
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
        let outbox = Arc::new(Outbox::default());
        tokio::spawn(driver::Driver::new(io, rx, outbox.clone()).run());
        Client { calls, outbox }
    }

    /// Starts building a call of `command`.
    pub fn call(&self, command: impl Into<Bytes>) -> CallBuilder<'_> {
        CallBuilder {
            client: self,
            command: CommandBuilder::new(command),
            extras: Extras::default(),
        }
    }

    /// Sends a prepared command and waits for its response.
    pub async fn send(&self, command: CommandBuilder) -> Result<Response, Error> {
        self.start(command, Extras::default()).await
    }

    /// Starts a call: queues it to be sent and returns its handle.
    fn start(&self, command: CommandBuilder, extras: Extras) -> Call {
        let slot = Slot::new();
        extras.started();
        let job = Job {
            command,
            extras,
            slot: Some(slot.clone()),
            reply: Reply::Handle,
        };
        lock(&self.outbox.state).jobs.push(job);
        Call {
            slot,
            client: self.clone(),
            flushed: false,
            done: false,
        }
    }

    /// Hands every call started on this client (or a clone of it) and not
    /// yet sent to the connection, in the order they were started. Polling
    /// any [`Call`] does this too, so a chain started before the first
    /// await goes out in one batch.
    pub fn flush(&self) {
        let mut state = lock(&self.outbox.state);
        if !state.closed {
            if state.handed < state.jobs.len() {
                state.handed = state.jobs.len();
                drop(state);
                self.outbox
                    .handed
                    .store(true, std::sync::atomic::Ordering::Release);
                self.outbox.driver.wake();
            }
            return;
        }
        let jobs = std::mem::take(&mut state.jobs);
        drop(state);
        for job in jobs {
            if let Some(slot) = job.slot {
                slot.finish(Err(closed()));
            }
        }
    }

    /// The extensions the server offers (PROTOCOL.md section 8), asked once
    /// per connection: the first call here, or the first call that needs an
    /// extension, sends `@capabilities`; later ones are answered from what
    /// it said. A server without extensions has none.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), wiremux_engine::client::Error> {
    /// let client = wiremux_engine::Client::connect("127.0.0.1:7878").await?;
    /// if client.capabilities().await?.pipelining() {
    ///     println!("chains take one round trip");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn capabilities(&self) -> Result<Capabilities, Error> {
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(Submit::Capabilities(tx))
            .map_err(|_| closed())?;
        rx.await.unwrap_or_else(|_| Err(closed()))
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.calls.is_closed()
    }

    /// A pipeline on this connection: calls started without waiting, and
    /// their answers on one stream in completion order.
    pub fn pipeline(&self) -> Pipeline {
        Pipeline::new(self.calls.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn closed() -> Error {
    lost(
        std::io::ErrorKind::NotConnected,
        "the connection has closed",
    )
}

/// A lost connection of `kind`, with nothing underneath.
fn lost(kind: std::io::ErrorKind, message: &str) -> Error {
    Error::ConnectionLost(Reason::new(kind, message))
}

/// A call being built: arguments, data, what it depends on, then
/// [`CallBuilder::start`] or [`CallBuilder::send`].
#[must_use = "a call does nothing until started or sent"]
pub struct CallBuilder<'a> {
    client: &'a Client,
    command: CommandBuilder,
    extras: Extras,
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

    /// Runs the call only after `call` has ended (`@after`). If `call`
    /// fails, this one is not run and fails with the application error
    /// `dependency N failed`, N being `call`'s request ID.
    pub fn after(mut self, call: impl Into<CallRef>) -> Self {
        self.extras.depend(call.into().slot, None);
        self
    }

    /// Gives the call the argument `name` set to `call`'s whole response
    /// body (`@use:NAME`), so it runs after `call`; `call` is sent with
    /// `@keep` if it has not been sent yet. If `call` fails, this one fails
    /// as with [`CallBuilder::after`].
    ///
    /// Where the server cannot do it (no extensions, or `call` was already
    /// sent without `@keep`), the client waits for `call`'s answer and
    /// sends its body as an ordinary argument, which then must fit in
    /// 65535 bytes.
    pub fn use_result(mut self, name: impl Into<Bytes>, call: impl Into<CallRef>) -> Self {
        self.extras.depend(call.into().slot, Some(name.into()));
        self
    }

    /// Asks the server to keep the call's body (`@keep`) even if no call
    /// that uses it is known when it is sent; [`CallBuilder::use_result`]
    /// does this by itself for calls not yet sent.
    pub fn keep(mut self) -> Self {
        self.extras.keep = true;
        self
    }

    /// Fails the call with [`Error::TimedOut`] if its answer has not come
    /// `timeout` after it started. The time left when it is sent goes to
    /// the server as `@deadline`, so the server stops it too.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.extras.timeout = Some(timeout);
        self
    }

    /// Starts the call and returns its handle, which is a future of its
    /// answer and can be named by later calls. The call is sent when a
    /// call of this client is first polled, or at [`Client::flush`];
    /// dropping the handle before its answer cancels the call.
    pub fn start(self) -> Call {
        self.client.start(self.command, self.extras)
    }

    /// Sends the call and waits for the response. Dropping the returned
    /// future cancels the call (`@cancel`, where the server offers it);
    /// the connection stays sound.
    pub async fn send(self) -> Result<Response, Error> {
        self.start().await
    }
}

/// A started call: a future of its answer, and a name for it that later
/// calls can depend on ([`CallBuilder::after`], [`CallBuilder::use_result`]).
///
/// Dropping it before the answer cancels the call: the client sends
/// `@cancel` where the server offers it and otherwise discards the
/// answer. A call that a started call still depends on is not cancelled.
#[must_use = "dropping a call cancels it"]
#[derive(Debug)]
pub struct Call {
    slot: Arc<Slot>,
    client: Client,
    flushed: bool,
    done: bool,
}

impl Call {
    /// The request ID, once the call has been sent.
    pub fn request_id(&self) -> Option<u16> {
        self.slot.lock().id
    }
}

impl Future for Call {
    type Output = Result<Response, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.flushed {
            self.flushed = true;
            self.client.flush();
        }
        let mut state = self.slot.lock();
        if let Some(result) = &state.result {
            let result = result.clone();
            drop(state);
            self.done = true;
            return Poll::Ready(result);
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.slot.lock();
        if state.result.is_some() {
            return;
        }
        state.abandoned = true;
        state.waker = None;
        // Written and nothing depends on it: the driver cancels it. (Not
        // written yet: the driver skips it when it comes to it.)
        let cancel = state.id.is_some() && state.dependents == 0;
        drop(state);
        if cancel {
            let _ = self.client.calls.send(Submit::Abandon(self.slot.clone()));
        }
    }
}

/// A name for a started call, for calls that depend on it: from a
/// [`Call`] (`&call`) or from [`PipelineCall::start`].
#[derive(Debug, Clone)]
pub struct CallRef {
    slot: Arc<Slot>,
}

impl CallRef {
    /// The request ID, once the call has been sent.
    pub fn request_id(&self) -> Option<u16> {
        self.slot.lock().id
    }
}

impl From<&Call> for CallRef {
    fn from(call: &Call) -> CallRef {
        CallRef {
            slot: call.slot.clone(),
        }
    }
}

impl From<&CallRef> for CallRef {
    fn from(call: &CallRef) -> CallRef {
        call.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job told apart by its tag (its timeout, in ms).
    fn job(tag: u64) -> Job {
        Job {
            command: CommandBuilder::new("echo"),
            extras: Extras {
                timeout: Some(Duration::from_millis(tag)),
                ..Extras::default()
            },
            slot: Some(Slot::new()),
            reply: Reply::Handle,
        }
    }

    fn tags(jobs: &[Job]) -> Vec<u128> {
        jobs.iter()
            .map(|j| j.extras.timeout.expect("tagged").as_millis())
            .collect()
    }

    #[test]
    fn the_driver_takes_what_was_flushed_in_order_and_the_rest_at_the_end() {
        let (calls, _rx) = mpsc::unbounded_channel();
        let client = Client {
            calls,
            outbox: Arc::default(),
        };
        let waker = futures::task::noop_waker();
        let mut taken = Vec::new();
        assert!(
            !client.outbox.take(Some(&waker), false, &mut taken),
            "nothing yet"
        );
        lock(&client.outbox.state).jobs.extend([job(1), job(2)]);
        assert!(
            !client.outbox.take(Some(&waker), false, &mut taken),
            "not flushed"
        );
        client.flush();
        lock(&client.outbox.state).jobs.push(job(3));
        assert!(client.outbox.take(Some(&waker), false, &mut taken));
        assert_eq!(tags(&taken), [1, 2], "only the flushed ones");
        taken.clear();
        assert!(
            !client.outbox.take(Some(&waker), false, &mut taken),
            "taken once"
        );
        assert!(
            client.outbox.take(Some(&waker), true, &mut taken),
            "all, at the end"
        );
        assert_eq!(tags(&taken), [3]);
        // Once the driver has ended, a flushed call fails at once.
        lock(&client.outbox.state).jobs.push(job(4));
        assert_eq!(client.outbox.close().len(), 1);
        let late = job(5);
        let slot = late.slot.clone().expect("slot");
        lock(&client.outbox.state).jobs.push(late);
        client.flush();
        assert!(lock(&client.outbox.state).jobs.is_empty());
        let result = slot.lock().result.clone().expect("answered");
        assert_eq!(result.unwrap_err(), closed());
    }

    #[test]
    fn a_flush_wakes_the_waker_given_at_the_first_look_of_a_poll() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Count(AtomicUsize);
        impl futures::task::ArcWake for Count {
            fn wake_by_ref(count: &Arc<Self>) {
                count.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = futures::task::waker(count.clone());
        let (calls, _rx) = mpsc::unbounded_channel();
        let client = Client {
            calls,
            outbox: Arc::default(),
        };
        let mut taken = Vec::new();
        assert!(!client.outbox.take(Some(&waker), false, &mut taken));
        // The driver's later looks in the same poll give no waker.
        assert!(!client.outbox.take(None, false, &mut taken));
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        lock(&client.outbox.state).jobs.push(job(1));
        client.flush();
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the flush woke it");
        assert!(client.outbox.take(None, false, &mut taken));
        assert_eq!(tags(&taken), [1]);
    }
}
