//! The response body of a command URL: the body's commands run through the
//! same request lifecycle and executor as on a connection, and their frames
//! stream out in completion order.
//!
//! The body has been read whole and checked (every command's permission
//! first, PROTOCOL.md §7) before this starts. Its frames are fed to a
//! [`Lifecycle`], input ended, and then each poll of the body lets the
//! server's [`Executor`] start what the lifecycle says (with a server-wide
//! slot, the panic guard, deadlines, the counters: as on TCP), and yields
//! whatever the lifecycle has framed. Dependencies, kept results,
//! cancellation and deadlines of PROTOCOL.md §8 work in one POST as they do
//! on a connection. Dropping the body (the client went away) stops every
//! command still running.

use bytes::{Bytes, BytesMut};
use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use wiremux_engine::{Executor, Permission, Server};
use wiremux_proto::codec::FrameRun;
use wiremux_proto::lifecycle::Lifecycle;
use wiremux_proto::FrameCodec;

/// How many framed bytes one chunk of the HTTP body carries at most.
const CHUNK: usize = 64 << 10;

/// The frames of every command's response, as encoded bytes, in the order
/// the responses complete.
pub(crate) struct Responses {
    lifecycle: Lifecycle,
    executor: Executor,
}

impl Responses {
    /// Takes in every frame of `body` (already checked: well formed, every
    /// command allowed) and ends the input; the commands start as the body
    /// is polled.
    pub(crate) fn start(server: &Server, body: Bytes, granted: Permission) -> Responses {
        let config = server.config();
        let mut lifecycle_config = config.lifecycle();
        // The whole request has arrived: no assembly or idle clock here.
        lifecycle_config.assembly_timeout = None;
        lifecycle_config.idle_timeout = None;
        let mut lifecycle = Lifecycle::new(lifecycle_config);
        let mut codec = FrameCodec::new().max_recv_payload(config.max_recv_payload);
        let (mut input, mut run) = (BytesMut::from(&body[..]), FrameRun::default());
        let now = tokio::time::Instant::now().into_std();
        while let Ok(Some(frame)) = codec.decode_batched(&mut run, &mut input) {
            lifecycle.on_frame_in_run(frame, &mut run, now);
        }
        lifecycle.on_input_eof(now);
        Responses {
            lifecycle,
            executor: server.executor(granted),
        }
    }
}

impl Stream for Responses {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let this = &mut *self;
        let result = loop {
            let now = tokio::time::Instant::now().into_std();
            let progress = this.executor.drive(&mut this.lifecycle, cx, now, true);
            let out = this.lifecycle.poll_transmit(CHUNK);
            if !out.is_empty() {
                break Poll::Ready(Some(out.split().freeze()));
            }
            if this.lifecycle.is_done() {
                break Poll::Ready(None);
            }
            if !progress {
                break Poll::Pending;
            }
        };
        this.executor.absorb();
        result
    }
}

impl Drop for Responses {
    fn drop(&mut self) {
        self.executor.stop_all(&mut self.lifecycle);
    }
}
