//! What the generator sends and how it checks the answers.
//!
//! Every mix entry but `chain` is encoded once, for request ID 1, into a
//! [`Template`]; a request is then the template's bytes with its request
//! ID written into each frame header and, for `echo`, its sequence number
//! written into the first bytes of the data. No builder, no allocation per
//! request. `chain(len=K)` links are built one by one (their arguments
//! name other request IDs).

use super::mix::Entry;
use bytes::BytesMut;
use wiremux_proto::builder::CommandBuilder;
use wiremux_proto::{FrameType, Header, HEADER_LEN};

/// Largest frame payload the generator emits (the reference
/// implementation's 32768).
pub const MAX_SEND_PAYLOAD: usize = 32768;

/// One mix entry, encoded once.
#[derive(Debug, Clone)]
pub struct Template {
    bytes: Vec<u8>,
    /// Offsets of the request ID field of every frame header.
    id_at: Vec<usize>,
    /// Where the echo data starts (the sequence stamp goes there).
    stamp_at: Option<usize>,
    /// An `echo`: its answer is checked here, against `filler`.
    pub echo: bool,
    /// The echo data of request 0 (the filler after the stamp is the same
    /// for every request).
    filler: Vec<u8>,
    /// `chain(len=K)`: K.
    pub chain: Option<usize>,
}

impl Template {
    /// Encodes `entry` with `payload` bytes of echo data.
    pub fn new(entry: &Entry, payload: usize) -> Template {
        let data = echo_data(0, payload);
        let mut buf = BytesMut::new();
        build(entry, &data)
            .encode(1, MAX_SEND_PAYLOAD, &mut buf)
            .expect("mix arguments fit in frames");
        let bytes = buf.to_vec();
        let (mut id_at, mut stamp_at, mut at) = (Vec::new(), None, 0);
        while at + HEADER_LEN <= bytes.len() {
            let head: &[u8; HEADER_LEN] = bytes[at..at + HEADER_LEN].try_into().expect("6 bytes");
            let header = Header::parse(head);
            id_at.push(at + 3);
            if header.frame_type == FrameType::COMMAND_DATA && stamp_at.is_none() {
                stamp_at = Some(at + HEADER_LEN);
            }
            at += HEADER_LEN + header.length;
        }
        let echo = entry.name == "echo";
        Template {
            bytes,
            id_at,
            stamp_at: if echo { stamp_at } else { None },
            echo,
            filler: if echo { data } else { Vec::new() },
            chain: chain_len(entry),
        }
    }

    /// Whether `body` is the echo of request `seq`: every byte compared,
    /// eight at a time, inline (a call to `memcmp` per answer cost more
    /// than the comparison).
    #[inline]
    pub fn echoed(&self, seq: u64, body: &[u8]) -> bool {
        if body.len() != self.filler.len() {
            return false;
        }
        if body.len() < 8 {
            return body == &seq.to_le_bytes()[..body.len()];
        }
        word(&body[..8]) == u64::from_ne_bytes(seq.to_le_bytes())
            && same(&body[8..], &self.filler[8..])
    }

    /// Appends the request for `id`, stamped with `seq`, to `dst`.
    #[inline]
    pub fn write(&self, id: u16, seq: u64, payload: usize, dst: &mut BytesMut) {
        let start = dst.len();
        dst.extend_from_slice(&self.bytes);
        let out = &mut dst[start..];
        let id = id.to_le_bytes();
        for &at in &self.id_at {
            out[at..at + 2].copy_from_slice(&id);
        }
        if let Some(at) = self.stamp_at {
            let n = payload.min(8);
            out[at..at + n].copy_from_slice(&seq.to_le_bytes()[..n]);
        }
    }
}

/// `a == b` for slices of the same length, in 8-byte words.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() > 256 {
        return a == b;
    }
    let mut i = 0;
    while i + 8 <= a.len() {
        if word(&a[i..i + 8]) != word(&b[i..i + 8]) {
            return false;
        }
        i += 8;
    }
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Eight bytes as a word.
#[inline]
fn word(bytes: &[u8]) -> u64 {
    u64::from_ne_bytes(bytes.try_into().expect("8 bytes"))
}

/// Echo data: the request's sequence number, then filler, so a response
/// routed to the wrong request cannot pass the check.
pub fn echo_data(seq: u64, size: usize) -> Vec<u8> {
    let mut data = vec![b'.'; size];
    let n = size.min(8);
    data[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
    data
}

/// The command of a mix entry (`echo` carries `data`).
pub fn build(entry: &Entry, data: &[u8]) -> CommandBuilder {
    let mut command = CommandBuilder::new(entry.name.clone());
    for (k, v) in &entry.args {
        command = command.arg(k.clone(), v.clone());
    }
    if entry.name == "echo" {
        command = command.data(data.to_vec());
    }
    command
}

/// Checks a bytes response against what the demo command must answer.
/// `Err` carries a one-line description of the mismatch.
pub fn check(entry: &Entry, seq: u64, payload: usize, body: &[u8]) -> Result<(), String> {
    let good = match entry.name.as_str() {
        "echo" => {
            let n = payload.min(8);
            body.len() == payload
                && body[..n] == seq.to_le_bytes()[..n]
                && body[n..].iter().all(|&b| b == b'.')
        }
        "sleep" => Some(body) == entry.arg("ms").map(str::as_bytes),
        "spin" => Some(body) == entry.arg("us").map(str::as_bytes),
        "blob" => {
            let size: usize = entry
                .arg("size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(usize::MAX);
            body.len() == size
                && body
                    .iter()
                    .enumerate()
                    .all(|(i, b)| *b == wiremux_engine::demo::blob_byte(i))
        }
        "put" => body == b"ok",
        _ => true,
    };
    if good {
        Ok(())
    } else {
        Err(format!(
            "wrong response to {} (request number {seq}): {} bytes",
            entry.label(),
            body.len()
        ))
    }
}

/// Application errors that are the right answer: `fail` always fails with
/// its message, and `get` of a key nobody put answers `no such key: KEY`.
pub fn expected_error(entry: &Entry, message: &str) -> bool {
    match entry.name.as_str() {
        "fail" => entry.arg("message").unwrap_or("") == message,
        "get" => entry
            .arg("key")
            .is_some_and(|key| message == format!("no such key: {key}")),
        _ => false,
    }
}

/// `chain(len=K)`: how many links.
pub fn chain_len(entry: &Entry) -> Option<usize> {
    (entry.name == "chain").then(|| {
        entry
            .arg("len")
            .and_then(|v| v.parse().ok())
            .expect("checked by Mix::parse")
    })
}

/// The first operand of a chain: derived from its sequence number so that
/// two chains' answers differ.
pub fn chain_start(seq: u64) -> i64 {
    (seq % 1_000_000) as i64
}

/// The answer link `index` of the chain starting at `start` must give:
/// every link adds 1.
pub fn chain_value(start: i64, index: usize) -> i64 {
    start + index as i64 + 1
}

/// Appends one chain link for `id` to `dst`: `add` with `b=1` and `a`
/// either given or taken from an earlier link's kept body (`@use:a=PREV`);
/// `keep` asks the server to keep this link's answer for the next.
pub fn write_link(a: Link, keep: bool, id: u16, dst: &mut BytesMut) {
    let mut command = CommandBuilder::new("add").arg("b", "1");
    command = match a {
        Link::Value(a) => command.arg("a", a.to_string()),
        Link::Use(previous) => command.arg("@use:a", previous.to_string()),
    };
    if keep {
        command = command.arg("@keep", "");
    }
    command
        .encode(id, MAX_SEND_PAYLOAD, dst)
        .expect("short arguments fit in a frame");
}

/// Where a chain link's first operand comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The value itself.
    Value(i64),
    /// The kept body of this earlier request ID.
    Use(u16),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::mix::Mix;
    use wiremux_proto::decode_all;
    use wiremux_proto::human::format_frame;

    fn entry(spec: &str) -> Entry {
        Mix::parse(spec).unwrap().entries()[0].clone()
    }

    #[test]
    fn a_template_request_is_what_the_builder_makes_for_that_id() {
        for (spec, payload) in [
            ("echo", 32),
            ("echo", 3),
            ("echo", 13),
            ("echo", 70000),
            ("sleep(ms=5)", 32),
            ("fail(message=boom)", 0),
        ] {
            let e = entry(spec);
            let t = Template::new(&e, payload);
            let mut got = BytesMut::new();
            t.write(4093, 77, payload, &mut got);
            let mut want = BytesMut::new();
            build(&e, &echo_data(77, payload))
                .encode(4093, MAX_SEND_PAYLOAD, &mut want)
                .unwrap();
            assert_eq!(got, want, "{spec} with {payload} bytes");
            if e.name == "echo" {
                assert!(t.echoed(77, &echo_data(77, payload)));
                assert!(!t.echoed(78, &echo_data(77, payload)));
                assert!(!t.echoed(77, &echo_data(77, payload + 1)));
                for at in [0, payload / 2, payload - 1] {
                    let mut bad = echo_data(77, payload);
                    bad[at] ^= 1;
                    assert!(!t.echoed(77, &bad), "byte {at} of {payload} changed");
                }
            }
        }
    }

    #[test]
    fn checks_know_the_demo_commands() {
        let echo = entry("echo");
        assert_eq!(check(&echo, 5, 10, &echo_data(5, 10)), Ok(()));
        assert_eq!(
            check(&echo, 5, 10, &echo_data(6, 10)),
            Err("wrong response to echo (request number 5): 10 bytes".into())
        );
        assert!(check(&echo, 5, 10, &echo_data(5, 9)).is_err());
        assert_eq!(check(&entry("sleep(ms=5)"), 0, 0, b"5"), Ok(()));
        assert!(check(&entry("sleep(ms=5)"), 0, 0, b"6").is_err());
        assert!(check(&entry("put(key=a)"), 0, 0, b"ok").is_ok());
    }

    #[test]
    fn expected_errors_are_fail_and_get_of_a_missing_key_only() {
        assert!(expected_error(&entry("fail(message=boom)"), "boom"));
        assert!(!expected_error(&entry("fail(message=boom)"), "bang"));
        assert!(expected_error(
            &entry("get(key=missing)"),
            "no such key: missing"
        ));
        assert!(!expected_error(&entry("get(key=a)"), "no such key: b"));
        assert!(!expected_error(&entry("ecco"), "unknown command: ecco"));
        assert!(!expected_error(
            &entry("sleep(msec=5)"),
            "missing argument: ms"
        ));
    }

    #[test]
    fn chain_links_use_the_previous_result_and_keep_all_but_the_last() {
        let mut buf = BytesMut::new();
        write_link(Link::Value(7), true, 1, &mut buf);
        write_link(Link::Use(1), true, 3, &mut buf);
        write_link(Link::Use(3), false, 5, &mut buf);
        let frames: Vec<String> = decode_all(&buf).unwrap().iter().map(format_frame).collect();
        assert_eq!(
            frames,
            [
                "1 command-name have-args add",
                "1 command-argument 0 \\x05\\x00\\x00\\x00@keep",
                "1 command-argument 0 \\x01\\x00\\x01\\x00a7",
                "1 command-argument eoa \\x01\\x00\\x01\\x00b1",
                "3 command-name have-args add",
                "3 command-argument 0 \\x05\\x00\\x00\\x00@keep",
                "3 command-argument 0 \\x06\\x00\\x01\\x00@use:a1",
                "3 command-argument eoa \\x01\\x00\\x01\\x00b1",
                "5 command-name have-args add",
                "5 command-argument 0 \\x06\\x00\\x01\\x00@use:a3",
                "5 command-argument eoa \\x01\\x00\\x01\\x00b1",
            ]
        );
        assert_eq!(chain_value(chain_start(1_000_010), 2), 13);
    }
}
