//! `--http ADDR`: load the HTTP API instead of a frame connection.
//!
//! Each connection is a worker with its own keep-alive HTTP/1.1
//! connection (wiremux-http's `HttpClient`), posting one request at a time
//! in a closed loop. With `--inflight 1` each POST carries one command to
//! `rw/NAME`; with `--inflight W` it carries W commands to
//! `rw/multirequest` (request IDs 1, 3, …), and each command's latency runs
//! from the start of the POST to the arrival of its own last frame, as the
//! server streams them.

use super::conn::{book, verdict_of, Answer, Call, Outstanding, Verdict};
use super::run::{failure, Measured, Shared};
use bytes::BytesMut;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use wiremux_http::HttpClient;
use wiremux_proto::{Flags, FrameType};

/// The API root of `ADDR` (`host:port` or `http://host:port[/…]`).
pub fn api_root(addr: &str) -> String {
    let base = if addr.contains("://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("http://{addr}")
    };
    if base.ends_with(wiremux_http::API_ROOT.trim_end_matches('/')) {
        format!("{base}/")
    } else {
        format!("{base}{}", wiremux_http::API_ROOT)
    }
}

/// One worker: POSTs until the run is over.
pub async fn worker(shared: Rc<Shared>, root: String) -> Measured {
    let mut m = Measured::empty(shared.plan.mix.entries().len());
    let client = HttpClient::new();
    let mut outstanding = Outstanding::default();
    let batch = shared.plan.inflight;
    let entries = shared.plan.mix.entries();
    let mut calls: Vec<Option<Call>> = vec![None; batch];
    'run: loop {
        let now = shared.now();
        if shared.stopping.get() || shared.deadline_ns.is_some_and(|d| now >= d) {
            break;
        }
        let mut body = BytesMut::new();
        let mut name = None;
        for (i, slot) in calls.iter_mut().enumerate() {
            let measured = now >= shared.measure_from_ns;
            if measured {
                if let Some(n) = shared.plan.requests {
                    if shared.issued.fetch_add(1, Relaxed) >= n {
                        shared.stopping.set(true);
                        if i == 0 {
                            break 'run;
                        }
                        break;
                    }
                }
            }
            let seq = outstanding.push();
            let entry = shared.plan.mix.pick(seq);
            name.get_or_insert(entry);
            let id = 2 * i as u16 + 1;
            shared.templates[entry].write(id, seq, shared.plan.payload, &mut body);
            *slot = Some(Call {
                seq,
                entry: entry as u32,
                due: now,
                sent: now,
                measured,
            });
        }
        let count = calls.iter().filter(|c| c.is_some()).count();
        let url = if batch == 1 {
            format!("{root}rw/{}", entries[name.expect("one command")].name)
        } else {
            format!("{root}rw/multirequest")
        };
        let mut response = match client.post(&url, body.freeze()).await {
            Ok(r) if r.status().is_success() && r.has_frames() => r,
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                m.errors[failure::PROTOCOL] += count as u64;
                m.fatal
                    .get_or_insert(format!("POST {url}: HTTP {status}: {}", text.trim()));
                break;
            }
            Err(e) => {
                m.errors[failure::CONNECTION] += count as u64;
                m.fatal.get_or_insert(format!("POST {url}: {e}"));
                break;
            }
        };
        let mut partial: Vec<Vec<u8>> = vec![Vec::new(); batch];
        loop {
            let frame = match response.next_frame().await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    m.fatal.get_or_insert(format!("POST {url}: {e}"));
                    break;
                }
            };
            let index = usize::from(frame.request_id >> 1);
            let Some(call) = calls.get_mut(index).and_then(Option::take) else {
                m.errors[failure::MISMATCH] += 1;
                m.fatal.get_or_insert(format!(
                    "POST {url}: a frame for request {}, which this POST did not send",
                    frame.request_id
                ));
                break;
            };
            let answer = match frame.frame_type {
                FrameType::BYTES_RESPONSE if frame.flags.bits() == Flags::CONTINUATION => {
                    partial[index].extend_from_slice(&frame.payload);
                    calls[index] = Some(call);
                    continue;
                }
                FrameType::BYTES_RESPONSE => {
                    partial[index].extend_from_slice(&frame.payload);
                    Answer::Bytes(&partial[index])
                }
                FrameType::ERROR_RESPONSE => {
                    let message = String::from_utf8_lossy(&frame.payload).into_owned();
                    if frame.flags.contains(Flags::PROTOCOL) {
                        Answer::Protocol(message)
                    } else {
                        Answer::Application(message)
                    }
                }
                other => Answer::Protocol(format!("a server does not send {other} frames")),
            };
            let verdict: Verdict = verdict_of(
                &entries[call.entry as usize],
                call.seq,
                shared.plan.payload,
                answer,
            );
            book(
                &mut m,
                &shared,
                &mut outstanding,
                call,
                verdict,
                shared.now(),
            );
            shared.live.completed.fetch_add(1, Relaxed);
        }
        let unanswered = calls.iter_mut().filter_map(Option::take).count() as u64;
        if unanswered > 0 {
            m.errors[failure::LOST] += unanswered;
            m.fatal.get_or_insert(format!(
                "POST {url}: the response ended with {unanswered} command(s) unanswered"
            ));
        }
        if m.fatal.is_some() {
            break;
        }
    }
    m.finish();
    m
}

#[cfg(test)]
mod tests {
    use super::api_root;

    #[test]
    fn the_api_root_from_an_address_or_a_url() {
        assert_eq!(
            api_root("127.0.0.1:8080"),
            "http://127.0.0.1:8080/api/exp-http-v2-0001/"
        );
        assert_eq!(api_root("http://h:1/"), "http://h:1/api/exp-http-v2-0001/");
        assert_eq!(
            api_root("http://h:1/api/exp-http-v2-0001/"),
            "http://h:1/api/exp-http-v2-0001/"
        );
    }
}
