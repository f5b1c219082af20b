//! The extensions of PROTOCOL.md section 8 under attack, and the HTTP API
//! under attack, against a real `wiremux serve` with default limits.
//!
//! Each test shows the limit or behaviour with its exact texts, that every
//! request that got an answer got exactly one ([`Answers`] fails on a
//! second), the server's resident memory from start to peak (asserted
//! under a cap), and the echo latency of a victim client on its own
//! connection meanwhile (printed, never asserted: run with `--nocapture`).

use bytes::BytesMut;
use common::hostile::{
    encode, exchange, http_connect, http_post, read_http_response, Answer, Answers, Sampler,
    ServeProcess, Victim,
};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiremux_proto::builder::CommandBuilder;

mod common;

fn echo(data: impl Into<bytes::Bytes>) -> CommandBuilder {
    CommandBuilder::new("echo").data(data)
}

/// Prints one line of figures for docs/RELIABILITY.md.
fn report(
    what: &str,
    before: u64,
    peak: u64,
    victim: (usize, Duration, Duration, Duration),
    extra: &str,
) {
    let (calls, p50, p99, max) = victim;
    println!(
        "{what}: {extra}; server RSS {:.1} -> peak {:.1} MiB; victim {calls} calls, p50 {p50:?}, p99 {p99:?}, max {max:?}",
        before as f64 / 1024.0,
        peak as f64 / 1024.0
    );
}

#[test]
fn requests_held_after_a_request_still_arriving_count_in_flight() {
    // Deterministic: the request they wait for is one whose frames are
    // still arriving, so nothing can end before the test says so.
    let server = ServeProcess::start();
    let mut s = server.connect();
    let mut wire = BytesMut::new();
    // Request 1: `echo`, its data not finished.
    common::hostile::send_lines(
        &mut s,
        &[
            "1 command-name have-data echo",
            "1 command-data continuation first half ",
        ],
    );
    // 1023 requests held after it: with request 1 still arriving, the
    // connection has 1023 requests executing, one under the limit of 1024.
    for id in (3..=2047u16).step_by(2) {
        encode(echo(id.to_string()).arg("@after", "1"), id, &mut wire);
    }
    s.write_all(&wire).unwrap();
    // Held requests count as in flight (a request still arriving does not).
    server.wait_in_flight(1023);
    common::hostile::send_lines(&mut s, &["1 command-data eos second half"]);
    let mut answers = Answers::default();
    answers.read(&mut s, 1024);
    assert_eq!(answers.order[0], 1, "request 1 is answered first");
    assert_eq!(answers.get(1).text(), "first half second half");
    for id in (3..=2047u16).step_by(2) {
        assert_eq!(answers.get(id).text(), id.to_string());
    }
    server.wait_in_flight(0);
}

#[test]
fn thousands_of_requests_held_after_one_slow_request_are_answered_once_it_ends() {
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let rss = Sampler::rss(&server);
    let in_flight = Sampler::in_flight(&server);
    let victim = Victim::start(&server);
    // Four connections, each: a `sleep ms=2000` on ID 1 and 4095 `echo`s
    // held `@after=1`. Past 1024 requests executing (held ones included)
    // a connection stops reading; the rest wait in the socket.
    let (connections, held) = (4, 4095u16);
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let mut s = server.connect();
            std::thread::spawn(move || {
                let mut wire = BytesMut::new();
                encode(CommandBuilder::new("sleep").arg("ms", "2000"), 1, &mut wire);
                for k in 1..=held {
                    let id = 2 * k + 1;
                    encode(echo(id.to_string()).arg("@after", "1"), id, &mut wire);
                }
                let mut answers = Answers::default();
                exchange(&mut s, wire, usize::from(held) + 1, &mut answers);
                // Nothing held ran before the request it waits for ended.
                assert_eq!(answers.order[0], 1);
                assert_eq!(answers.get(1).text(), "2000");
                for k in 1..=held {
                    let id = 2 * k + 1;
                    assert_eq!(answers.get(id).text(), id.to_string());
                }
                answers.done.len()
            })
        })
        .collect();
    let answered: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let victim = victim.stop();
    let peak_in_flight = in_flight.peak();
    let peak = rss.peak().max(before);
    server.wait_in_flight(0);
    assert_eq!(answered, connections * (usize::from(held) + 1));
    // At most 1024 per connection, and the victim's one.
    assert!(
        peak_in_flight <= (connections * 1024 + 1) as u64,
        "{peak_in_flight} in flight"
    );
    report(
        "held @after one slow request",
        before,
        peak,
        victim,
        &format!(
            "{answered} answered once each, peak in flight {peak_in_flight} (limit {} = 4 x 1024 + victim)",
            connections * 1024 + 1
        ),
    );
    assert!(
        peak < before + 32 * 1024,
        "server grew by {} KiB",
        peak - before
    );
    server.assert_serving();
}

#[test]
fn a_chain_of_10000_use_links_is_answered_link_by_link() {
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let rss = Sampler::rss(&server);
    let victim = Victim::start(&server);
    let mut s = server.connect();
    let links = 10_000u16;
    let id = |k: u16| 2 * k + 1;
    // Link 0 is `add a=0 b=1 @keep`; link k adds 1 to link k-1's kept body.
    let mut wire = BytesMut::new();
    encode(
        CommandBuilder::new("add")
            .arg("a", "0")
            .arg("b", "1")
            .arg("@keep", ""),
        id(0),
        &mut wire,
    );
    for k in 1..links {
        let command = CommandBuilder::new("add")
            .arg("@use:a", id(k - 1).to_string())
            .arg("b", "1")
            .arg("@keep", "");
        encode(command, id(k), &mut wire);
    }
    let mut answers = Answers::default();
    exchange(&mut s, wire, usize::from(links), &mut answers);
    for k in 0..links {
        assert_eq!(answers.get(id(k)).text(), (k + 1).to_string());
    }
    assert_eq!(answers.get(id(links - 1)).text(), "10000");
    answers.clear();
    // The same chain behind a head that times out: the links held when it
    // fails fail with it in one loop, the rest as they arrive; each once.
    let mut wire = BytesMut::new();
    encode(
        CommandBuilder::new("sleep")
            .arg("ms", "60000")
            .arg("@deadline", "300")
            .arg("@keep", ""),
        id(0),
        &mut wire,
    );
    for k in 1..links {
        let command = CommandBuilder::new("add")
            .arg("@use:a", id(k - 1).to_string())
            .arg("b", "1")
            .arg("@keep", "");
        encode(command, id(k), &mut wire);
    }
    exchange(&mut s, wire, usize::from(links), &mut answers);
    assert_eq!(
        *answers.get(id(0)),
        Answer::Error("timed out after 300 ms".into())
    );
    for k in 1..links {
        assert_eq!(
            *answers.get(id(k)),
            Answer::Error(format!("dependency {} failed", id(k - 1)))
        );
    }
    let victim = victim.stop();
    let peak = rss.peak().max(before);
    server.wait_in_flight(0);
    report(
        "10 000-link @use chain",
        before,
        peak,
        victim,
        "10 000 links answered 1..=10000, then 10 000 failed behind a timed-out head, each once",
    );
    assert!(
        peak < before + 32 * 1024,
        "server grew by {} KiB",
        peak - before
    );
    server.assert_serving();
}

/// `blob size=N @keep`.
fn kept_blob(size: usize) -> CommandBuilder {
    CommandBuilder::new("blob")
        .arg("size", size.to_string())
        .arg("@keep", "")
}

/// `echo @use:x=ID` with data `ok`.
fn use_of(id: u16) -> CommandBuilder {
    echo("ok").arg("@use:x", id.to_string())
}

#[test]
fn kept_bodies_fill_the_per_connection_budget_and_no_more() {
    const MIB: usize = 1 << 20;
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let rss = Sampler::rss(&server);
    let victim = Victim::start(&server);
    // Four connections at once, each asking to keep 64 bodies of 1 MiB
    // (64 MiB) against the default budget of 8 MiB per connection.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let mut s = server.connect();
            std::thread::spawn(move || {
                let ids: Vec<u16> = (0..64).map(|k| 2 * k + 1).collect();
                let mut wire = BytesMut::new();
                for &id in &ids {
                    encode(kept_blob(MIB), id, &mut wire);
                }
                let mut answers = Answers::default();
                exchange(&mut s, wire, ids.len(), &mut answers);
                for &id in &ids {
                    // Every body is sent whole, kept or not.
                    let Answer::Body(body) = answers.get(id) else {
                        panic!("blob {id} failed")
                    };
                    assert_eq!(body.len(), MIB);
                    assert!(body
                        .iter()
                        .enumerate()
                        .all(|(i, b)| *b == wiremux_engine::demo::blob_byte(i)));
                }
                answers.clear();
                // Exactly 8 fit (8 MiB); whichever ended first.
                let mut wire = BytesMut::new();
                for &id in &ids {
                    encode(use_of(id), id + 128, &mut wire);
                }
                exchange(&mut s, wire, ids.len(), &mut answers);
                let mut kept = Vec::new();
                for &id in &ids {
                    match answers.get(id + 128) {
                        Answer::Body(b) if b == b"ok" => kept.push(id),
                        Answer::Error(e) => assert_eq!(*e, format!("response {id} was not kept")),
                        other => panic!("{other:?}"),
                    }
                }
                assert_eq!(kept.len(), 8, "kept: {kept:?}");
                answers.clear();
                // A new command on a kept ID frees its body; then one more
                // fits.
                let (freed, again) = (kept[0], *ids.iter().find(|id| !kept.contains(id)).unwrap());
                let mut wire = BytesMut::new();
                encode(echo("new"), freed, &mut wire);
                exchange(&mut s, wire, 1, &mut answers);
                let mut wire = BytesMut::new();
                encode(kept_blob(MIB), again, &mut wire);
                exchange(&mut s, wire, 1, &mut answers);
                let mut wire = BytesMut::new();
                encode(use_of(again), 255, &mut wire);
                encode(use_of(freed), 253, &mut wire);
                exchange(&mut s, wire, 2, &mut answers);
                assert_eq!(answers.get(255).text(), "ok");
                assert_eq!(
                    *answers.get(253),
                    Answer::Error(format!("response {freed} was not kept"))
                );
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let victim = victim.stop();
    let peak = rss.peak().max(before);
    report(
        "kept bodies filling the budget",
        before,
        peak,
        victim,
        "4 connections x 64 MiB asked, 8 x 1 MiB kept on each",
    );
    // 4 x 8 MiB kept, plus buffers.
    assert!(
        peak < before + 80 * 1024,
        "server grew by {} KiB",
        peak - before
    );
    server.assert_serving();
}

#[test]
fn a_used_body_longer_than_a_frame_is_substituted_whole() {
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let rss = Sampler::rss(&server);
    let victim = Victim::start(&server);
    let mut s = server.connect();
    let mut answers = Answers::default();
    // A 100 000-byte body, answered in four frames; the same with its last
    // byte changed; and a 60 000-byte one (an argument value can be at
    // most 65535 bytes, so only this one can also be sent plainly).
    let pattern = |len: u32| -> Vec<u8> { (0..len).map(|i| (i * 7 % 253) as u8).collect() };
    let long = pattern(100_000);
    let mut other = long.clone();
    *other.last_mut().unwrap() ^= 1;
    let plain = pattern(60_000);
    let mut wire = BytesMut::new();
    encode(echo(long.clone()).arg("@keep", ""), 1, &mut wire);
    encode(echo(other).arg("@keep", ""), 3, &mut wire);
    encode(echo(plain.clone()).arg("@keep", ""), 5, &mut wire);
    exchange(&mut s, wire, 3, &mut answers);
    assert_eq!(*answers.get(1), Answer::Body(long));
    assert_eq!(answers.frames[&1], [32768, 32768, 32768, 1696]);
    assert_eq!(*answers.get(5), Answer::Body(plain.clone()));
    // `put` under the used bodies as keys; `get` them back by `@use` and,
    // for the shorter one, by the plain bytes. The body differing in its
    // last byte is another key: the whole body was used, not its first
    // frame.
    let mut wire = BytesMut::new();
    encode(
        CommandBuilder::new("put").arg("@use:key", "1").data("A"),
        7,
        &mut wire,
    );
    encode(
        CommandBuilder::new("put").arg("@use:key", "5").data("B"),
        9,
        &mut wire,
    );
    exchange(&mut s, wire, 2, &mut answers);
    assert_eq!(answers.get(7).text(), "ok");
    assert_eq!(answers.get(9).text(), "ok");
    let mut wire = BytesMut::new();
    encode(
        CommandBuilder::new("get").arg("@use:key", "1"),
        11,
        &mut wire,
    );
    encode(
        CommandBuilder::new("get").arg("@use:key", "3"),
        13,
        &mut wire,
    );
    encode(CommandBuilder::new("get").arg("key", plain), 15, &mut wire);
    exchange(&mut s, wire, 3, &mut answers);
    assert_eq!(answers.get(11).text(), "A");
    assert!(matches!(answers.get(13), Answer::Error(e) if e.starts_with("no such key: ")));
    assert_eq!(answers.get(15).text(), "B");
    answers.clear();
    // New commands on 1, 3 and 5 free their kept bodies.
    let mut wire = BytesMut::new();
    for id in [1, 3, 5] {
        encode(echo("free"), id, &mut wire);
    }
    exchange(&mut s, wire, 3, &mut answers);
    answers.clear();
    // The substituted body counts against the per-request limit of 8 MiB:
    // a kept body of exactly 8 MiB plus `x` and `ok` is over it ...
    let limit = 8 << 20;
    let mut wire = BytesMut::new();
    encode(kept_blob(limit), 11, &mut wire);
    exchange(&mut s, wire, 1, &mut answers);
    let mut wire = BytesMut::new();
    encode(use_of(11), 13, &mut wire);
    exchange(&mut s, wire, 1, &mut answers);
    assert_eq!(
        *answers.get(13),
        Answer::Error(format!("more than {limit} bytes of arguments and data"))
    );
    answers.clear();
    // ... and 3 bytes less is exactly at it, and runs.
    let mut wire = BytesMut::new();
    encode(kept_blob(limit - 3), 11, &mut wire);
    exchange(&mut s, wire, 1, &mut answers);
    let mut wire = BytesMut::new();
    encode(use_of(11), 13, &mut wire);
    exchange(&mut s, wire, 1, &mut answers);
    assert_eq!(answers.get(13).text(), "ok");
    let victim = victim.stop();
    let peak = rss.peak().max(before);
    report(
        "@use of a body over a frame",
        before,
        peak,
        victim,
        "100 000-byte kept body used whole (4 frames); 8 MiB body + args refused at the request limit, 8 MiB - 3 runs",
    );
    assert!(
        peak < before + 64 * 1024,
        "server grew by {} KiB",
        peak - before
    );
    server.assert_serving();
}

#[test]
fn a_deadline_storm_answers_every_request_once() {
    let server = ServeProcess::start();
    let before = server.rss_kib();
    let rss = Sampler::rss(&server);
    let victim = Victim::start(&server);
    // Four connections, 8190 requests each with `@deadline=1`, in threes:
    // a `sleep ms=60000` (can only time out), an `echo` (answers or times
    // out), and an `echo` held after the sleep (times out or fails with it).
    let triples = 2730u16;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let mut s = server.connect();
            std::thread::spawn(move || {
                let mut wire = BytesMut::new();
                for k in 0..triples {
                    let (sleep, echoed, held) = (6 * k + 1, 6 * k + 3, 6 * k + 5);
                    encode(
                        CommandBuilder::new("sleep")
                            .arg("ms", "60000")
                            .arg("@deadline", "1"),
                        sleep,
                        &mut wire,
                    );
                    encode(
                        echo(echoed.to_string()).arg("@deadline", "1"),
                        echoed,
                        &mut wire,
                    );
                    encode(
                        echo("held")
                            .arg("@after", sleep.to_string())
                            .arg("@deadline", "1"),
                        held,
                        &mut wire,
                    );
                }
                let mut answers = Answers::default();
                exchange(&mut s, wire, 3 * usize::from(triples), &mut answers);
                let timed_out = Answer::Error("timed out after 1 ms".into());
                let mut counts = [0usize; 4];
                for k in 0..triples {
                    let (sleep, echoed, held) = (6 * k + 1, 6 * k + 3, 6 * k + 5);
                    assert_eq!(*answers.get(sleep), timed_out);
                    match answers.get(echoed) {
                        Answer::Body(b) if *b == echoed.to_string().into_bytes() => counts[0] += 1,
                        a => assert_eq!(*a, timed_out),
                    }
                    match answers.get(held) {
                        a if *a == timed_out => counts[1] += 1,
                        a => {
                            assert_eq!(*a, Answer::Error(format!("dependency {sleep} failed")));
                            counts[2] += 1;
                        }
                    }
                }
                counts[3] = answers.done.len();
                counts
            })
        })
        .collect();
    let mut totals = [0usize; 4];
    for t in threads {
        let counts = t.join().unwrap();
        totals.iter_mut().zip(counts).for_each(|(t, c)| *t += c);
    }
    let victim = victim.stop();
    let peak = rss.peak().max(before);
    // Every stopped `sleep` has really stopped.
    server.wait_in_flight(0);
    assert_eq!(totals[3], 4 * 3 * usize::from(triples));
    report(
        "@deadline=1 storm",
        before,
        peak,
        victim,
        &format!(
            "{} answered once each: {} sleeps timed out, {} echos answered ({} timed out), held: {} timed out, {} dependency failed; in flight back to 0",
            totals[3],
            4 * usize::from(triples),
            totals[0],
            4 * usize::from(triples) - totals[0],
            totals[1],
            totals[2]
        ),
    );
    assert!(
        peak < before + 48 * 1024,
        "server grew by {} KiB",
        peak - before
    );
    server.assert_serving();
}

// ---- over HTTP (`wiremux serve --http`) ----

const HTTP_HEAD: &str = "POST /api/exp-http-v2-0001/rw/echo HTTP/1.1\r\nHost: t\r\n\
    Accept: application/mercurial-exp-framing-0002\r\n\
    Content-Type: application/mercurial-exp-framing-0002\r\n";

#[test]
#[ignore = "30 s: the default header timeout; run with --ignored"]
fn http_headers_one_byte_a_second_are_cut_by_the_header_timeout() {
    let server = ServeProcess::start_http();
    let mut s = http_connect(server.http.unwrap());
    let started = Instant::now();
    let mut sent = 0;
    let mut answer = Vec::new();
    for byte in HTTP_HEAD.bytes() {
        if s.write_all(&[byte]).is_err() {
            break;
        }
        sent += 1;
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut probe = [0u8; 512];
        match s.read(&mut probe) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&probe[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        assert!(started.elapsed() < Duration::from_secs(90), "never cut off");
    }
    // Closed without an answer, before the headers were complete.
    assert!(sent < HTTP_HEAD.len(), "all {sent} header bytes were taken");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    println!(
        "HTTP headers one byte a second: closed after {sent} bytes, {:?}",
        started.elapsed()
    );
    server.assert_serving();
}

#[test]
fn an_endless_chunked_http_body_is_cut_at_the_body_limit() {
    let server = ServeProcess::start_http();
    let before = server.rss_kib();
    let rss = Sampler::rss(&server);
    let victim = Victim::start_http(&server);
    let mut s = http_connect(server.http.unwrap());
    s.write_all(format!("{HTTP_HEAD}Transfer-Encoding: chunked\r\n\r\n").as_bytes())
        .unwrap();
    let answered = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let reader = {
        let mut r = s.try_clone().unwrap();
        let (answered, sent) = (answered.clone(), sent.clone());
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let response = read_http_response(&mut r, &mut buf);
            let at = sent.load(Ordering::SeqCst);
            answered.store(true, Ordering::SeqCst);
            // Then the server closes.
            let mut rest = Vec::new();
            let _ = r.read_to_end(&mut rest);
            (response, at)
        })
    };
    // 64 KiB chunks without end (at most 256 MiB are offered).
    let mut chunk = b"10000\r\n".to_vec();
    chunk.extend_from_slice(&[7u8; 0x10000]);
    chunk.extend_from_slice(b"\r\n");
    while !answered.load(Ordering::SeqCst) && sent.load(Ordering::SeqCst) < 256 << 20 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent.fetch_add(0x10000, Ordering::SeqCst);
    }
    let (response, at) = reader.join().unwrap();
    let victim = victim.stop();
    let peak = rss.peak().max(before);
    let response = response.expect("an answer before the close");
    assert_eq!(response.status, 413);
    assert_eq!(
        response.text(),
        "the request body is larger than the limit of 33554432 bytes\n"
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert!(at < 64 << 20, "{at} bytes went in before the answer");
    report(
        "endless chunked HTTP body",
        before,
        peak,
        victim,
        &format!("413 when {} MiB had been sent, then closed", at >> 20),
    );
    assert!(
        peak < before + 112 * 1024,
        "server grew by {} KiB",
        peak - before
    );
    server.assert_serving();
}

#[test]
fn an_http_multirequest_of_32768_commands_is_answered_whole() {
    let server = ServeProcess::start_http();
    let before = server.rss_kib();
    let rss = Sampler::rss(&server);
    let in_flight = Sampler::in_flight(&server);
    let victim = Victim::start_http(&server);
    // Every odd ID: `sleep ms=300` and `echo`, alternately.
    let mut body = BytesMut::new();
    for id in (1..=u16::MAX).step_by(2) {
        if id % 4 == 1 {
            encode(CommandBuilder::new("sleep").arg("ms", "300"), id, &mut body);
        } else {
            encode(echo(id.to_string()), id, &mut body);
        }
    }
    let mut s = http_connect(server.http.unwrap());
    s.write_all(&http_post("rw/multirequest", &body, true))
        .unwrap();
    let response = read_http_response(&mut s, &mut Vec::new()).expect("an answer");
    let victim = victim.stop();
    let peak_in_flight = in_flight.peak();
    let peak = rss.peak().max(before);
    assert_eq!(response.status, 200, "{}", response.text());
    let mut answers = Answers::default();
    for frame in wiremux_proto::decode_all(&response.body).unwrap() {
        answers.take(frame);
    }
    assert_eq!(answers.done.len(), 32768);
    for id in (1..=u16::MAX).step_by(2) {
        let expected = if id % 4 == 1 {
            "300".to_string()
        } else {
            id.to_string()
        };
        assert_eq!(answers.get(id).text(), expected);
    }
    server.wait_in_flight(0);
    // Far under the server-wide limit of handlers (262144).
    assert!(peak_in_flight <= 32768 + 1, "{peak_in_flight} in flight");
    report(
        "HTTP multirequest of 32 768 commands",
        before,
        peak,
        victim,
        &format!(
            "body {} KiB, 32 768 answered once each, peak in flight {peak_in_flight}",
            body.len() >> 10
        ),
    );
    assert!(
        peak < before + 160 * 1024,
        "server grew by {} KiB",
        peak - before
    );
    server.assert_serving();
}

#[test]
fn a_thousand_concurrent_http_posts_are_answered_or_refused_clearly() {
    const POSTS: usize = 1000;
    const SIZE: usize = 512 << 10;
    let server = ServeProcess::start_http();
    let before = server.rss_kib();
    let rss = Sampler::rss(&server);
    let victim = Victim::start_http(&server);
    let addr = server.http.unwrap();
    let data: Arc<Vec<u8>> = Arc::new((0..SIZE).map(|i| (i % 251) as u8).collect());
    let mut wire = BytesMut::new();
    encode(echo(data.to_vec()), 1, &mut wire);
    let request = Arc::new(http_post("rw/echo", &wire, true));
    let start = Arc::new(std::sync::Barrier::new(POSTS));
    let posts: Vec<_> = (0..POSTS)
        .map(|_| {
            let (request, start, data) = (request.clone(), start.clone(), data.clone());
            std::thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || {
                    let mut s = http_connect(addr);
                    start.wait();
                    // The server may answer 503 and stop reading early.
                    let _ = s.write_all(&request);
                    let response = read_http_response(&mut s, &mut Vec::new())
                        .expect("every POST is answered");
                    match response.status {
                        200 => {
                            let mut got = Vec::new();
                            for frame in wiremux_proto::decode_all(&response.body).unwrap() {
                                got.extend_from_slice(&frame.payload);
                            }
                            assert!(got == *data, "an echo came back wrong");
                            true
                        }
                        503 => {
                            assert_eq!(
                                response.text(),
                                "the server is busy: request bodies held at once would pass its limit of 268435456 bytes; retry later\n"
                            );
                            assert_eq!(response.header("retry-after"), Some("1"));
                            false
                        }
                        other => panic!("status {other}: {}", response.text()),
                    }
                })
                .unwrap()
        })
        .collect();
    let ok = posts
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|ok| *ok)
        .count();
    let victim = victim.stop();
    let peak = rss.peak().max(before);
    server.wait_in_flight(0);
    report(
        "1 000 concurrent HTTP POSTs of 512 KiB",
        before,
        peak,
        victim,
        &format!(
            "{ok} answered 200 (echo checked), {} refused 503",
            POSTS - ok
        ),
    );
    // The budget of bodies held (256 MiB), about as much again for the
    // commands running them, and 1 000 connections.
    assert!(
        peak < before + 768 * 1024,
        "server grew by {} KiB",
        peak - before
    );
    server.assert_serving();
}

#[test]
fn http_bodies_held_open_are_capped_by_the_buffered_budget() {
    // 32 POSTs declare 16 MiB bodies, send 15 MiB and stall: the server
    // holds at most 256 MiB of bodies at once (HttpOptions::max_buffered_bodies),
    // so exactly 16 are taken and 16 are refused at once.
    const POSTS: usize = 32;
    const DECLARED: usize = 16 << 20;
    let server = ServeProcess::start_http();
    let before = server.rss_kib();
    let rss = Sampler::rss(&server);
    // While the budget is full, small POSTs are refused too (503): the
    // victim uses the frame protocol on TCP, which the budget does not touch.
    let victim = Victim::start(&server);
    let addr = server.http.unwrap();
    let part = Arc::new(vec![7u8; 15 << 20]);
    let posts: Vec<_> = (0..POSTS)
        .map(|_| {
            let part = part.clone();
            std::thread::spawn(move || {
                let mut s = http_connect(addr);
                let head = format!("{HTTP_HEAD}Content-Length: {DECLARED}\r\n\r\n");
                s.write_all(head.as_bytes()).unwrap();
                let mut r = s.try_clone().unwrap();
                let reader = std::thread::spawn(move || {
                    // A held body gets no answer while it is open: the
                    // read times out.
                    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    read_http_response(&mut r, &mut Vec::new())
                });
                let wrote = s.write_all(&part).is_ok();
                (s, wrote, reader)
            })
        })
        .collect();
    let posts: Vec<_> = posts.into_iter().map(|t| t.join().unwrap()).collect();
    // Every body taken is in (the writes finished); sample the memory.
    let held_rss = server.rss_kib();
    let mut small = BytesMut::new();
    encode(echo("small"), 1, &mut small);
    let mut s = http_connect(addr);
    s.write_all(&http_post("rw/echo", &small, true)).unwrap();
    let busy = read_http_response(&mut s, &mut Vec::new()).expect("an answer");
    assert_eq!(busy.status, 503);
    let mut refused = 0;
    let mut held = Vec::new();
    for (s, wrote, reader) in posts {
        // Ends the held ones' wait: the server sees them close.
        let _ = s.shutdown(std::net::Shutdown::Both);
        match reader.join().unwrap() {
            Some(response) => {
                assert_eq!(response.status, 503, "{}", response.text());
                assert_eq!(
                    response.text(),
                    "the server is busy: request bodies held at once would pass its limit of 268435456 bytes; retry later\n"
                );
                refused += 1;
            }
            None => held.push(wrote),
        }
    }
    let victim = victim.stop();
    let peak = rss.peak().max(before);
    assert_eq!(refused, POSTS / 2);
    assert!(held.iter().all(|w| *w), "a held body's write failed");
    server.wait_in_flight(0);
    report(
        "HTTP bodies held open",
        before,
        peak,
        victim,
        &format!(
            "{} bodies of 15 MiB held, {refused} refused 503 at once; RSS with the bodies held {:.1} MiB",
            held.len(),
            held_rss as f64 / 1024.0
        ),
    );
    // 16 x 16 MiB of room, and slack.
    assert!(
        peak < before + 320 * 1024,
        "server grew by {} KiB",
        peak - before
    );
    server.assert_serving();
}
