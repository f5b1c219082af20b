//! Benchmarks of the protocol core (wiremux-proto): frame decoding and
//! encoding, command assembly in the server reactor, and the whole request
//! lifecycle (reactor, section 8 scheduler, send side) per request.
//!
//! Run: `cargo bench --bench proto` (figures in docs/PERFORMANCE.md).
//!
//! Every benchmark works on a batch of frames or commands and reports its
//! throughput per element (frame or command); decoding is also reported in
//! bytes. Inputs are built outside the timed part (`iter_batched`).

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::time::Instant;
use wiremux::proto::builder::{encode_bytes_response, CommandBuilder};
use wiremux::proto::lifecycle::{Event, Lifecycle, LifecycleConfig};
use wiremux::proto::server::{Action, ServerReactor};
use wiremux::proto::{Flags, Frame, FrameCodec, FrameType};

const SMALL: usize = 32;
const LARGE: usize = 32 * 1024;
/// Frames per batch: many small ones, fewer large ones.
const SMALL_BATCH: usize = 1000;
const LARGE_BATCH: usize = 32;

/// `count` data frames of `size` bytes each, on request IDs 1, 3, 5, ...
fn data_frames(count: usize, size: usize) -> Vec<Frame> {
    (0..count)
        .map(|i| {
            Frame::new(
                (2 * i + 1) as u16,
                FrameType::COMMAND_DATA,
                Flags::new(Flags::CONTINUATION),
                vec![i as u8; size],
            )
        })
        .collect()
}

fn wire_of(frames: &[Frame]) -> Vec<u8> {
    let mut wire = Vec::new();
    for f in frames {
        f.encode(&mut wire);
    }
    wire
}

/// Decodes every frame of `buf` into `out`. Both are handed back, so that
/// freeing the read buffer (which the payloads share) falls outside the
/// timed part: a server reuses its read buffer rather than freeing it.
fn decode_into(
    codec: &mut FrameCodec,
    (mut buf, mut out): (BytesMut, Vec<Frame>),
) -> (BytesMut, Vec<Frame>) {
    while let Some(frame) = codec.decode_frame(&mut buf).unwrap() {
        out.push(frame);
    }
    (buf, out)
}

fn decode(c: &mut Criterion) {
    let cases = [
        ("small", data_frames(SMALL_BATCH, SMALL)),
        ("large", data_frames(LARGE_BATCH, LARGE)),
    ];
    // The same work reported two ways: frames per second, then bytes.
    for (group_name, per_bytes) in [("decode", false), ("decode-bytes", true)] {
        let mut group = c.benchmark_group(group_name);
        for (name, frames) in &cases {
            let wire = wire_of(frames);
            group.throughput(if per_bytes {
                Throughput::Bytes(wire.len() as u64)
            } else {
                Throughput::Elements(frames.len() as u64)
            });
            let mut codec = FrameCodec::new();
            group.bench_function(*name, |b| {
                b.iter_batched(
                    || (BytesMut::from(&wire[..]), Vec::with_capacity(frames.len())),
                    |input| decode_into(&mut codec, input),
                    BatchSize::SmallInput,
                )
            });
        }
        group.finish();
    }
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, frames) in [
        ("small", data_frames(SMALL_BATCH, SMALL)),
        ("large", data_frames(LARGE_BATCH, LARGE)),
    ] {
        group.throughput(Throughput::Elements(frames.len() as u64));
        let codec = FrameCodec::new();
        let mut dst = BytesMut::with_capacity(wire_of(&frames).len());
        group.bench_function(name, |b| {
            b.iter(|| {
                dst.clear();
                for frame in &frames {
                    codec.encode_frame(frame, &mut dst).unwrap();
                }
                black_box(dst.len())
            })
        });
    }
    group.finish();
}

/// Feeds frames to the reactor, finishing each command's response at once
/// so its ID is free again; returns the number of commands run.
fn assemble(reactor: &mut ServerReactor, frames: Vec<Frame>) -> usize {
    let mut ran = 0;
    for frame in frames {
        match reactor.on_frame(frame) {
            Action::RunCommand(cmd) => {
                reactor.on_response_finished(cmd.request_id);
                black_box(cmd);
                ran += 1;
            }
            Action::WantFrame { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    ran
}

fn reactor(c: &mut Criterion) {
    let mut group = c.benchmark_group("reactor");

    // One-frame commands, as frames already decoded.
    let one_frame: Vec<Frame> = (0..SMALL_BATCH)
        .flat_map(|i| {
            CommandBuilder::new("heads")
                .frames((2 * i + 1) as u16, 32768)
                .unwrap()
        })
        .collect();
    group.throughput(Throughput::Elements(SMALL_BATCH as u64));
    let mut r = ServerReactor::new();
    group.bench_function("one-frame", |b| {
        b.iter_batched(
            || one_frame.clone(),
            |frames| assert_eq!(assemble(&mut r, frames), SMALL_BATCH),
            BatchSize::SmallInput,
        )
    });

    // The same commands from raw bytes: decoder and reactor together.
    let one_frame_wire = wire_of(&one_frame);
    let mut codec = FrameCodec::new();
    let mut r = ServerReactor::new();
    group.bench_function("one-frame-from-bytes", |b| {
        b.iter_batched(
            || BytesMut::from(&one_frame_wire[..]),
            |mut buf| {
                let mut ran = 0;
                while let Some(frame) = codec.decode_frame(&mut buf).unwrap() {
                    if let Action::RunCommand(cmd) = r.on_frame(frame) {
                        r.on_response_finished(cmd.request_id);
                        ran += 1;
                    }
                }
                assert_eq!(ran, SMALL_BATCH);
            },
            BatchSize::SmallInput,
        )
    });

    // What the engine does per 32-byte echo at the protocol level: decode a
    // command-name frame and its data frame, assemble, and encode the
    // response frame.
    let echo_wire = wire_of(
        &(0..SMALL_BATCH)
            .flat_map(|i| {
                CommandBuilder::new("echo")
                    .data(Bytes::from(vec![b'e'; 32]))
                    .frames((2 * i + 1) as u16, 32768)
                    .unwrap()
            })
            .collect::<Vec<_>>(),
    );
    let mut r = ServerReactor::new();
    let mut out = BytesMut::with_capacity(64 << 10);
    group.bench_function("echo-from-bytes", |b| {
        b.iter_batched(
            || BytesMut::from(&echo_wire[..]),
            |mut buf| {
                let mut ran = 0;
                out.clear();
                while let Some(frame) = codec.decode_frame(&mut buf).unwrap() {
                    if let Action::RunCommand(cmd) = r.on_frame(frame) {
                        let data = cmd.data.unwrap_or_default();
                        encode_bytes_response(cmd.request_id, &data, true, 32768, &mut out);
                        r.on_response_finished(cmd.request_id);
                        ran += 1;
                    }
                }
                assert_eq!(ran, SMALL_BATCH);
            },
            BatchSize::SmallInput,
        )
    });

    // Multi-frame commands, interleaved round-robin: two arguments (one
    // value spanning three frames) and 1 KiB of data in four frames, at a
    // maximum frame payload of 256 bytes: 9 frames per command.
    const COMMANDS: usize = 100;
    let per_command: Vec<Vec<Frame>> = (0..COMMANDS)
        .map(|i| {
            CommandBuilder::new("put")
                .arg("key", format!("key-{i}"))
                .arg("value", vec![b'v'; 600])
                .data(Bytes::from(vec![b'd'; 1024]))
                .frames((2 * i + 1) as u16, 256)
                .unwrap()
        })
        .collect();
    let frames_per_command = per_command[0].len();
    let mut interleaved = Vec::new();
    for n in 0..frames_per_command {
        for frames in &per_command {
            interleaved.push(frames[n].clone());
        }
    }
    group.throughput(Throughput::Elements(COMMANDS as u64));
    let mut r = ServerReactor::new();
    group.bench_function("interleaved-multi-frame", |b| {
        b.iter_batched(
            || interleaved.clone(),
            |frames| assert_eq!(assemble(&mut r, frames), COMMANDS),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The wire of `SMALL_BATCH` 32-byte echoes on IDs 1, 3, 5, ...; with
/// `after_first`, every one but the first runs `@after=1`.
fn echo_wire(after_first: bool) -> Vec<u8> {
    wire_of(
        &(0..SMALL_BATCH)
            .flat_map(|i| {
                let mut echo = CommandBuilder::new("echo");
                if after_first && i > 0 {
                    echo = echo.arg("@after", "1");
                }
                echo.data(Bytes::from(vec![b'e'; 32]))
                    .frames((2 * i + 1) as u16, 32768)
                    .unwrap()
            })
            .collect::<Vec<_>>(),
    )
}

/// What the engine's connection does per request at the protocol level,
/// through the one lifecycle every transport drives: decode, take the
/// frame in, run what it says (the echo answers its data), frame the
/// response. Compare with `reactor/echo-from-bytes`, the reactor alone
/// (what a transport drove before the lifecycle): the difference is the
/// lifecycle's own cost per request, section 8 included. With `@after`,
/// the cost of a request with a reserved argument whose dependency has
/// ended.
fn lifecycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("lifecycle");
    group.throughput(Throughput::Elements(SMALL_BATCH as u64));
    for (name, after_first) in [("echo-from-bytes", false), ("echo-after-from-bytes", true)] {
        let wire = echo_wire(after_first);
        let mut lc = Lifecycle::new(LifecycleConfig::default());
        let mut codec = FrameCodec::new();
        let now = Instant::now();
        group.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| {
                    let mut ran = 0;
                    while let Some(frame) = codec.decode_frame(&mut buf).unwrap() {
                        lc.on_frame(frame, now);
                        while let Some(event) = lc.poll_event() {
                            if let Event::Run(token, request) = event {
                                lc.on_body(token, request.data.unwrap_or_default());
                                ran += 1;
                            }
                        }
                    }
                    assert_eq!(ran, SMALL_BATCH);
                    black_box(lc.poll_transmit(usize::MAX).split());
                    assert!(lc.is_done());
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode, reactor, lifecycle);
criterion_main!(benches);
