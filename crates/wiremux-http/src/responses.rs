//! The response body of a command URL: runs the commands at once and
//! yields their frames in completion order.
//!
//! Every command is started (through [`Registry::start`], the one path to a
//! handler) when the body is made. One that answers at once (a
//! `SyncHandler`) has its frames ready before the first read; the others
//! run as their own tasks on the runtime, concurrently, whether or not the
//! client reads yet. A handler that panics while starting, or later in its
//! task, answers its own request with an application error. The body owns
//! the reactor: each outcome goes through it, which builds the frames
//! (split at the server's maximum payload) and frees the request ID.
//! A streamed response is sent chunk by chunk as the client reads; its
//! last chunk is held back until the stream ends, so that the final frame
//! carries `eos`. Dropping the body (the client went away) aborts every
//! handler still running.
//!
//! [`Registry::start`]: wiremux_engine::Registry::start

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamFuture};
use futures::{Stream, StreamExt};
use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::task::{Id, JoinSet};
use tracing::Instrument;
use wiremux_engine::{Body, CommandError, Permission, Response, Server, Started};
use wiremux_proto::builder::encode_bytes_response;
use wiremux_proto::server::{Action, ServerReactor};
use wiremux_proto::Request as Command;

type Outcome = Result<Response, CommandError>;
type Tagged = wiremux_engine::TaggedBody;

/// The frames of every command's response, as encoded bytes, in the order
/// the responses complete.
pub(crate) struct Responses {
    reactor: ServerReactor,
    max_payload: usize,
    /// Handlers running, and which request each task serves.
    tasks: JoinSet<(u16, Outcome)>,
    task_ids: HashMap<Id, u16>,
    /// Streamed responses whose next chunk is awaited.
    streams: FuturesUnordered<StreamFuture<Tagged>>,
    /// The latest chunk of each stream, sent when the next one arrives (as
    /// `continuation`) or when the stream ends (with `eos`).
    held: HashMap<u16, Bytes>,
    /// Frames ready before anything ran (commands that could not start).
    ready: BytesMut,
}

impl Responses {
    /// Starts every command. The reactor must have seen the end of input.
    pub(crate) fn start(
        server: &Server,
        reactor: ServerReactor,
        commands: Vec<Command>,
        granted: Permission,
    ) -> Responses {
        let mut responses = Responses {
            max_payload: server.config().max_send_payload,
            reactor,
            tasks: JoinSet::new(),
            task_ids: HashMap::new(),
            streams: FuturesUnordered::new(),
            held: HashMap::new(),
            ready: BytesMut::new(),
        };
        let deadline = server.config().request_deadline;
        for command in commands {
            let id = command.request_id;
            let request = command;
            // A panic while the handler starts comes back as its outcome.
            let handler = match server.registry().start(request, granted) {
                Ok(Started::Pending(handler)) => handler,
                Ok(Started::Ready(outcome)) => {
                    let mut out = std::mem::take(&mut responses.ready);
                    responses.on_outcome(id, outcome, &mut out);
                    responses.ready = out;
                    continue;
                }
                Err(refusal) => {
                    let action = responses
                        .reactor
                        .on_application_error(id, &refusal.to_string());
                    encode(action, &mut responses.ready);
                    continue;
                }
            };
            let task = async move {
                let outcome = match deadline {
                    Some(limit) => {
                        tokio::time::timeout(limit, handler)
                            .await
                            .unwrap_or_else(|_| {
                                Err(CommandError::new(format!(
                                    "timed out after {} ms",
                                    limit.as_millis()
                                )))
                            })
                    }
                    None => handler.await,
                };
                (id, outcome)
            };
            let span = tracing::debug_span!("http request", id);
            let handle = responses.tasks.spawn(task.instrument(span));
            responses.task_ids.insert(handle.id(), id);
        }
        responses
    }

    /// A handler's outcome: frames now, or a stream to follow.
    fn on_outcome(&mut self, id: u16, outcome: Outcome, out: &mut BytesMut) {
        let action = match outcome {
            Ok(Response {
                body: Body::Bytes(data),
            }) => self.reactor.on_bytes_response(id, data),
            Ok(Response {
                body: Body::Stream(inner),
            }) => {
                self.streams.push(Tagged { id, inner }.into_future());
                return;
            }
            Err(err) => self.reactor.on_application_error(id, err.message()),
        };
        encode(action, out);
    }

    /// The next item of a streamed response.
    fn on_chunk(
        &mut self,
        item: Option<Result<Bytes, CommandError>>,
        stream: Tagged,
        out: &mut BytesMut,
    ) {
        let id = stream.id;
        match item {
            Some(Ok(chunk)) => {
                if !chunk.is_empty() {
                    if let Some(earlier) = self.held.insert(id, chunk) {
                        encode_bytes_response(id, &earlier, false, self.max_payload, out);
                    }
                }
                self.streams.push(stream.into_future());
            }
            Some(Err(err)) => {
                if let Some(earlier) = self.held.remove(&id) {
                    encode_bytes_response(id, &earlier, false, self.max_payload, out);
                }
                let action = self.reactor.on_application_error(id, err.message());
                encode(action, out);
            }
            None => {
                let last = self.held.remove(&id).unwrap_or_default();
                let action = self.reactor.on_bytes_response(id, last);
                encode(action, out);
            }
        }
    }
}

impl Stream for Responses {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        if !this.ready.is_empty() {
            return Poll::Ready(Some(this.ready.split().freeze()));
        }
        let mut out = BytesMut::new();
        loop {
            // Finished handlers first: there are only as many as commands, so
            // streams cannot starve, and a small whole response is not held
            // up behind a long stream.
            let tasks = this.tasks.poll_join_next_with_id(cx);
            match tasks {
                Poll::Ready(Some(Ok((task, (id, outcome))))) => {
                    this.task_ids.remove(&task);
                    this.on_outcome(id, outcome, &mut out);
                }
                Poll::Ready(Some(Err(err))) => {
                    let id = this.task_ids.remove(&err.id()).unwrap_or_default();
                    let error = if err.is_panic() {
                        tracing::warn!(id, "command handler panicked");
                        CommandError::panicked()
                    } else {
                        CommandError::new("command failed: the handler was cancelled")
                    };
                    let action = this.reactor.on_application_error(id, error.message());
                    encode(action, &mut out);
                }
                Poll::Ready(None) | Poll::Pending => {
                    match this.streams.poll_next_unpin(cx) {
                        Poll::Ready(Some((item, stream))) => this.on_chunk(item, stream, &mut out),
                        // No stream left, and no handler left either.
                        Poll::Ready(None) if tasks.is_ready() => return Poll::Ready(None),
                        Poll::Ready(None) | Poll::Pending => return Poll::Pending,
                    }
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(out.freeze()));
            }
        }
    }
}

/// Appends the frames of a reactor action.
fn encode(action: Action, out: &mut BytesMut) {
    if let Action::SendFrames(frames) = action {
        for frame in frames {
            frame.encode(out);
        }
    }
}
