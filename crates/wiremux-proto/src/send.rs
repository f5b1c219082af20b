//! The send side: response bodies and stream chunks in, frames out.
//!
//! [`SendQueue`] decides everything about output that is not a socket:
//! how a response is cut into frames (at the one configured payload size),
//! where `eos` goes, in which order the responses of many requests share
//! the connection, and, in in-order mode, which finished responses wait
//! for earlier ones. Every transport writes what it frames, nothing else,
//! so a response is framed the same way over TCP, a Unix socket, stdio and
//! HTTP.
//!
//! The rules:
//! - A whole response that fits in one frame is framed at once, ahead of
//!   larger responses still being framed: a small answer never waits
//!   behind a big one.
//! - Larger whole responses and streams wait in a ring; each turn frames
//!   at most one frame of each, so responses share the connection fairly.
//! - The last frame of a response carries `eos`. A stream's chunks are
//!   framed as they come; if the stream ends when nothing of it is left to
//!   frame, its end is an empty `eos` frame.
//! - A response that ends in an error (a failing stream, a cancellation)
//!   ends with its `application` error-response after whatever of it was
//!   already framed.
//! - In in-order mode, responses leave in the order their requests were
//!   registered ([`SendQueue::expect`]); one that finishes early is held,
//!   and released, without recursion, when every earlier one has ended.
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use wiremux_proto::send::{End, SendQueue};
//!
//! let mut queue = SendQueue::new(4, false);
//! queue.push_body(1, Bytes::from_static(b"abcdef"));
//! queue.push_body(3, Bytes::from_static(b"hi"));
//! queue.frame(usize::MAX);
//! let frames = wiremux_proto::decode_all(&queue.take_output()).unwrap();
//! let lines: Vec<String> = frames.iter().map(wiremux_proto::human::format_frame).collect();
//! assert_eq!(lines, ["3 bytes-response eos hi", "1 bytes-response continuation abcd", "1 bytes-response eos ef"]);
//! assert_eq!(queue.take_ended(), [(3, End::Ok), (1, End::Ok)]);
//! ```

use crate::builder::{
    encode_bytes_response, encode_final_bytes_frame, error_response_frame, ErrorFlag,
};
use crate::IdMap;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Its final `eos` bytes-response frame was framed.
    Ok,
    /// Its error-response frame was framed.
    Failed,
}

/// A response with bytes still to frame.
#[derive(Debug, Default)]
struct Outgoing {
    chunks: VecDeque<Bytes>,
    queued: usize,
    /// The body is complete (whole bytes, or the stream has ended).
    complete: bool,
    /// After the chunks, end with this application error.
    error: Option<String>,
    in_ring: bool,
}

impl Outgoing {
    fn finished(&self) -> bool {
        self.complete || self.error.is_some()
    }
}

/// The output of one connection. See the module documentation.
#[derive(Debug)]
pub struct SendQueue {
    max_payload: usize,
    out: BytesMut,
    pending: IdMap<Outgoing>,
    ring: VecDeque<u16>,
    queued: usize,
    /// In-order mode: request IDs in the order their responses must leave.
    order: Option<VecDeque<u16>>,
    ended: Vec<(u16, End)>,
    frames_out: u64,
}

impl SendQueue {
    /// A queue framing at most `max_payload` bytes per frame; with
    /// `in_order`, responses leave in the order given by
    /// [`SendQueue::expect`].
    pub fn new(max_payload: usize, in_order: bool) -> SendQueue {
        SendQueue {
            max_payload: max_payload.max(1),
            out: BytesMut::new(),
            pending: IdMap::default(),
            ring: VecDeque::new(),
            queued: 0,
            order: in_order.then(VecDeque::new),
            ended: Vec::new(),
            frames_out: 0,
        }
    }

    /// The largest payload of a frame this queue builds.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// In-order mode: `id`'s response comes after every response expected
    /// before it. Without in-order mode, nothing.
    pub fn expect(&mut self, id: u16) {
        if let Some(order) = &mut self.order {
            order.push_back(id);
        }
    }

    /// In-order mode: moves `id`'s turn up to just before `before`'s, if it
    /// came after it (the error of a request stopped by `@cancel` leaves
    /// before the answer to the `@cancel`). Otherwise, nothing.
    pub fn move_before(&mut self, id: u16, before: u16) {
        let Some(order) = &mut self.order else {
            return;
        };
        let at = order.iter().position(|&x| x == id);
        let to = order.iter().position(|&x| x == before);
        if let (Some(at), Some(to)) = (at, to) {
            if at > to {
                order.remove(at);
                order.insert(to, id);
            }
        }
    }

    /// Whether `id` may have output framed now (always, unless in-order
    /// mode holds it behind an earlier response).
    fn may_send(&self, id: u16) -> bool {
        match &self.order {
            None => true,
            Some(order) => order.front() == Some(&id),
        }
    }

    /// A whole response body for `id`.
    pub fn push_body(&mut self, id: u16, body: Bytes) {
        if self.push_small(id, &body) {
            return self.end(id, End::Ok);
        }
        let out = self.pending.entry(id).or_default();
        if !body.is_empty() {
            out.queued += body.len();
            self.queued += body.len();
            out.chunks.push_back(body);
        }
        out.complete = true;
        self.schedule(id);
    }

    /// Frames a whole response body for `id` at once if it fits in one
    /// frame and may leave now (most answers), and says whether it did.
    /// The caller has then ended `id` itself: it is not reported by
    /// [`SendQueue::take_ended`], and in-order mode never frames here.
    fn push_small(&mut self, id: u16, body: &[u8]) -> bool {
        let now = body.len() <= self.max_payload
            && self.may_send(id)
            && (self.pending.is_empty() || !self.pending.contains_key(&id));
        if now {
            encode_final_bytes_frame(id, body, &mut self.out);
            self.frames_out += 1;
        }
        now
    }

    /// [`SendQueue::push_body`] for a body that is framed at once, whose
    /// end the caller takes from the return value rather than from
    /// [`SendQueue::take_ended`]; `false` (a large body, or in-order
    /// mode): nothing was done.
    pub fn push_body_now(&mut self, id: u16, body: &[u8]) -> bool {
        self.order.is_none() && self.push_small(id, body)
    }

    /// Opens a streamed response for `id`: chunks follow with
    /// [`SendQueue::push_chunk`], then [`SendQueue::end_stream`].
    pub fn open_stream(&mut self, id: u16) {
        self.pending.entry(id).or_default();
    }

    /// The next chunk of `id`'s stream.
    pub fn push_chunk(&mut self, id: u16, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        let Some(out) = self.pending.get_mut(&id) else {
            return;
        };
        out.queued += chunk.len();
        self.queued += chunk.len();
        out.chunks.push_back(chunk);
        self.schedule(id);
    }

    /// `id`'s stream has ended: with `Ok`, its last frame carries `eos`;
    /// with an error message, an error-response follows its bytes.
    pub fn end_stream(&mut self, id: u16, result: Result<(), String>) {
        let Some(out) = self.pending.get_mut(&id) else {
            return;
        };
        match result {
            Ok(()) => out.complete = true,
            Err(message) => out.error = Some(message),
        }
        self.schedule(id);
    }

    /// `id` ends with an application error-response, after whatever of
    /// its response was already framed; bytes of it not yet framed are
    /// dropped.
    pub fn push_error(&mut self, id: u16, message: &str) {
        if self.may_send(id) {
            // At once, even with bytes of it queued: they are dropped, and
            // whatever is framed after this comes after the error.
            if let Some(out) = self.pending.remove(&id) {
                self.queued -= out.queued;
            }
            self.write_error(id, message);
            self.end(id, End::Failed);
            return;
        }
        let out = self.pending.entry(id).or_default();
        self.queued -= out.queued;
        out.queued = 0;
        out.chunks.clear();
        out.complete = false;
        out.error = Some(message.to_string());
        self.schedule(id);
    }

    /// Whether `id`'s stream should be asked for another chunk: less than
    /// one frame of it is waiting to be framed.
    pub fn wants_chunk(&self, id: u16) -> bool {
        self.pending
            .get(&id)
            .is_some_and(|out| !out.finished() && out.queued < self.max_payload)
    }

    /// Whether `id` has a response being framed.
    pub fn is_pending(&self, id: u16) -> bool {
        self.pending.contains_key(&id)
    }

    /// Bytes of responses waiting to be framed.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Whether nothing is left to frame or to write.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.out.is_empty()
    }

    fn schedule(&mut self, id: u16) {
        if !self.may_send(id) {
            return;
        }
        if let Some(out) = self.pending.get_mut(&id) {
            if !out.in_ring && (!out.chunks.is_empty() || out.finished()) {
                out.in_ring = true;
                self.ring.push_back(id);
            }
        }
    }

    /// Frames queued responses, round robin, one frame per response per
    /// turn, until the output holds at least `high_water` bytes or nothing
    /// is left to frame. Returns whether anything was framed.
    pub fn frame(&mut self, high_water: usize) -> bool {
        let max = self.max_payload;
        let mut progress = false;
        while self.out.len() < high_water {
            let Some(id) = self.ring.pop_front() else {
                break;
            };
            progress = true;
            // An ID whose response ended in an error while it waited here.
            let Some(out) = self.pending.get_mut(&id) else {
                continue;
            };
            out.in_ring = false;
            if let Some(chunk) = out.chunks.front_mut() {
                let piece = chunk.split_to(chunk.len().min(max));
                if chunk.is_empty() {
                    out.chunks.pop_front();
                }
                out.queued -= piece.len();
                self.queued -= piece.len();
                let last = out.complete && out.chunks.is_empty();
                encode_bytes_response(id, &piece, last, max, &mut self.out);
                self.frames_out += 1;
                if last {
                    self.pending.remove(&id);
                    self.end(id, End::Ok);
                    continue;
                }
            } else if let Some(message) = out.error.take() {
                self.pending.remove(&id);
                self.write_error(id, &message);
                self.end(id, End::Failed);
                continue;
            } else if out.complete {
                self.pending.remove(&id);
                encode_bytes_response(id, &[], true, max, &mut self.out);
                self.frames_out += 1;
                self.end(id, End::Ok);
                continue;
            }
            self.schedule(id);
        }
        progress
    }

    fn write_error(&mut self, id: u16, message: &str) {
        error_response_frame(id, ErrorFlag::Application, message, self.max_payload)
            .encode(&mut self.out);
        self.frames_out += 1;
    }

    /// A response's terminal frame is framed. In in-order mode the next
    /// expected response may now go: whatever of it is ready joins the
    /// ring, and one that is complete and small is framed here, in a loop
    /// rather than by recursion.
    fn end(&mut self, id: u16, how: End) {
        self.ended.push((id, how));
        let Some(order) = &mut self.order else {
            return;
        };
        if order.front() != Some(&id) {
            // Ended out of turn: only errors of requests never expected
            // (refused before they were registered) get here.
            if let Some(at) = order.iter().position(|&x| x == id) {
                order.remove(at);
            }
            return;
        }
        order.pop_front();
        if let Some(&next) = order.front() {
            self.schedule(next);
        }
    }

    /// The bytes framed so far, to write; the transport consumes from the
    /// front as it writes (`advance`), or takes it all with
    /// [`SendQueue::take_output`].
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Takes every framed byte.
    pub fn take_output(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    /// The responses whose terminal frame was framed since the last call,
    /// in order.
    pub fn take_ended(&mut self) -> Vec<(u16, End)> {
        std::mem::take(&mut self.ended)
    }

    /// Like [`SendQueue::take_ended`], into `into` (which must be empty),
    /// so that neither side's allocation is lost: `into` gets the ended
    /// responses, and the queue keeps `into`'s buffer for the next ones.
    pub fn swap_ended(&mut self, into: &mut Vec<(u16, End)>) {
        debug_assert!(into.is_empty());
        std::mem::swap(&mut self.ended, into);
    }

    /// Whether a response ended since [`SendQueue::take_ended`].
    pub fn has_ended(&self) -> bool {
        !self.ended.is_empty()
    }

    /// Frames framed since the last call.
    pub fn take_frames_out(&mut self) -> u64 {
        std::mem::take(&mut self.frames_out)
    }

    /// Drops every response not yet framed (the connection is closing).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.ring.clear();
        self.queued = 0;
        if let Some(order) = &mut self.order {
            order.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::human::format_frame;

    fn lines(queue: &mut SendQueue) -> Vec<String> {
        queue.frame(usize::MAX);
        crate::decode_all(&queue.take_output())
            .unwrap()
            .iter()
            .map(format_frame)
            .collect()
    }

    #[test]
    fn a_stream_ends_with_eos_on_its_last_piece_or_an_empty_frame() {
        let mut q = SendQueue::new(4, false);
        q.open_stream(1);
        q.push_chunk(1, Bytes::from_static(b"ab"));
        assert_eq!(lines(&mut q), ["1 bytes-response continuation ab"]);
        q.push_chunk(1, Bytes::from_static(b"cd"));
        q.end_stream(1, Ok(()));
        assert_eq!(lines(&mut q), ["1 bytes-response eos cd"]);
        q.open_stream(3);
        q.push_chunk(3, Bytes::from_static(b"x"));
        assert_eq!(lines(&mut q), ["3 bytes-response continuation x"]);
        q.end_stream(3, Ok(()));
        assert_eq!(lines(&mut q), ["3 bytes-response eos "]);
        assert_eq!(q.take_ended(), [(1, End::Ok), (3, End::Ok)]);
        assert!(q.is_idle());
    }

    #[test]
    fn push_body_now_frames_only_what_may_leave_at_once_and_reports_no_end() {
        let mut q = SendQueue::new(4, false);
        assert!(q.push_body_now(1, b"abcd"));
        assert!(!q.push_body_now(3, b"abcde"), "more than a frame");
        q.open_stream(5);
        assert!(!q.push_body_now(5, b"x"), "its stream is still open");
        assert_eq!(lines(&mut q), ["1 bytes-response eos abcd"]);
        assert_eq!(q.take_ended(), [], "the caller ends what it framed");
        let mut in_order = SendQueue::new(4, true);
        in_order.expect(1);
        assert!(!in_order.push_body_now(1, b"a"), "in-order mode never does");
        assert!(in_order.is_idle());
    }

    #[test]
    fn a_failing_stream_ends_with_its_error_after_its_bytes() {
        let mut q = SendQueue::new(4, false);
        q.open_stream(5);
        q.push_chunk(5, Bytes::from_static(b"abcdef"));
        q.end_stream(5, Err("bad".into()));
        assert_eq!(
            lines(&mut q),
            [
                "5 bytes-response continuation abcd",
                "5 bytes-response continuation ef",
                "5 error-response application bad"
            ]
        );
        assert_eq!(q.take_ended(), [(5, End::Failed)]);
    }

    #[test]
    fn an_error_drops_what_was_not_framed_yet() {
        let mut q = SendQueue::new(2, false);
        q.push_body(1, Bytes::from_static(b"abcdef"));
        q.frame(1);
        q.push_error(1, "no");
        assert_eq!(
            lines(&mut q),
            [
                "1 bytes-response continuation ab",
                "1 error-response application no"
            ]
        );
    }

    #[test]
    fn large_responses_share_the_connection_round_robin() {
        let mut q = SendQueue::new(2, false);
        q.push_body(1, Bytes::from_static(b"aaaaaa"));
        q.push_body(3, Bytes::from_static(b"bbbb"));
        assert_eq!(
            lines(&mut q),
            [
                "1 bytes-response continuation aa",
                "3 bytes-response continuation bb",
                "1 bytes-response continuation aa",
                "3 bytes-response eos bb",
                "1 bytes-response eos aa"
            ]
        );
    }

    #[test]
    fn a_stream_is_asked_for_more_only_below_one_frame() {
        let mut q = SendQueue::new(4, false);
        q.open_stream(1);
        assert!(q.wants_chunk(1));
        q.push_chunk(1, Bytes::from_static(b"abcd"));
        assert!(!q.wants_chunk(1));
        q.frame(usize::MAX);
        assert!(q.wants_chunk(1));
        q.end_stream(1, Ok(()));
        assert!(!q.wants_chunk(1));
    }

    #[test]
    fn in_order_mode_holds_and_releases_many_without_recursion() {
        let mut q = SendQueue::new(8, true);
        let n = 30_000u16;
        for i in 0..n {
            q.expect(2 * i + 1);
        }
        // Every response but the first finishes, in reverse order; errors
        // are held like bodies.
        for i in (1..n).rev() {
            let id = 2 * i + 1;
            if i % 2 == 0 {
                q.push_error(id, "no");
            } else {
                q.push_body(id, Bytes::from_static(b"x"));
            }
        }
        q.frame(usize::MAX);
        assert!(q.take_output().is_empty());
        q.push_body(1, Bytes::from_static(b"first"));
        q.frame(usize::MAX);
        let ended = q.take_ended();
        assert_eq!(ended.len(), usize::from(n));
        let ids: Vec<u16> = ended.iter().map(|(id, _)| *id).collect();
        let expected: Vec<u16> = (0..n).map(|i| 2 * i + 1).collect();
        assert_eq!(ids, expected);
        assert_eq!(ended[2], (5, End::Failed));
    }
}
