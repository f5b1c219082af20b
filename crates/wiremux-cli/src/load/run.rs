//! One load run: connections, the request loop, checks, measurements.
//!
//! Each connection is a task keeping up to `inflight` calls going on one
//! [`Client`], through a [`Pipeline`](wiremux_engine::Pipeline): no future
//! per call, answers in completion order. Closed loop: a new call starts as
//! soon as one finishes.
//! Open loop (`--rate`): calls start on a fixed schedule and each latency
//! is measured from the call's scheduled time, so a server that stalls
//! shows in the percentiles instead of silently slowing the schedule.

use super::mix::{Entry, Mix};
use bytes::Bytes;
use hdrhistogram::Histogram;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wiremux_engine::client::{Error, Response};
use wiremux_engine::Client;
use wiremux_proto::builder::CommandBuilder;

/// Where to send the load.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(String),
    Unix(std::path::PathBuf),
}

/// The shape of a run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub connections: usize,
    pub inflight: usize,
    /// Stop after this long (after warm-up), unless `requests` comes first.
    pub duration: Option<Duration>,
    /// Stop after this many measured requests.
    pub requests: Option<u64>,
    pub warmup: Duration,
    /// Open loop: requests per second over all connections.
    pub rate: Option<f64>,
    pub mix: Mix,
    pub payload: usize,
}

/// Kinds of failure, as the report counts them; `Measured::errors` is
/// indexed by the constants of [`failure`].
pub const ERROR_KINDS: [&str; 5] = ["application", "protocol", "connection", "mismatch", "lost"];

/// Indices into `Measured::errors`, in the order of [`ERROR_KINDS`].
pub mod failure {
    /// An application error the mix did not ask for.
    pub const APPLICATION: usize = 0;
    /// A protocol error from the server.
    pub const PROTOCOL: usize = 1;
    /// The connection failed.
    pub const CONNECTION: usize = 2;
    /// A response that does not match its request.
    pub const MISMATCH: usize = 3;
    /// A call never answered.
    pub const LOST: usize = 4;
}

/// What one connection measured.
pub struct Measured {
    pub per_command: Vec<Histogram<u64>>,
    pub all: Histogram<u64>,
    /// Per second of the measured run: completions and a latency histogram.
    pub timeline: Vec<Histogram<u64>>,
    pub ok: u64,
    pub errors: [u64; 5],
    pub bytes: u64,
    /// Responses that overtook at least one earlier call on their connection.
    pub overtook: u64,
    /// Sum and maximum of the number of earlier calls overtaken.
    pub overtaken_sum: u64,
    pub overtaken_max: u64,
    /// Completions of a call that had already completed.
    pub duplicates: u64,
    /// The first connection-level error seen, if any.
    pub fatal: Option<String>,
}

impl Measured {
    /// Nothing measured yet, for `commands` mix entries.
    pub fn empty(commands: usize) -> Measured {
        Measured {
            per_command: (0..commands).map(|_| histogram()).collect(),
            all: histogram(),
            timeline: Vec::new(),
            ok: 0,
            errors: [0; 5],
            bytes: 0,
            overtook: 0,
            overtaken_sum: 0,
            overtaken_max: 0,
            duplicates: 0,
            fatal: None,
        }
    }

    fn merge(&mut self, other: Measured) {
        for (a, b) in self.per_command.iter_mut().zip(&other.per_command) {
            a.add(b).expect("same bounds");
        }
        self.all.add(&other.all).expect("same bounds");
        for (i, h) in other.timeline.into_iter().enumerate() {
            if i >= self.timeline.len() {
                self.timeline.push(h);
            } else {
                self.timeline[i].add(&h).expect("same bounds");
            }
        }
        self.ok += other.ok;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.bytes += other.bytes;
        self.overtook += other.overtook;
        self.overtaken_sum += other.overtaken_sum;
        self.overtaken_max = self.overtaken_max.max(other.overtaken_max);
        self.duplicates += other.duplicates;
        self.fatal = self.fatal.take().or(other.fatal);
    }

    /// Calls that completed, well or not.
    pub fn completed(&self) -> u64 {
        self.ok + self.errors[..failure::LOST].iter().sum::<u64>()
    }
}

/// Latency histogram in microseconds, 1 µs to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid bounds")
}

/// Live counters for the progress bar.
#[derive(Default)]
pub struct Live {
    pub completed: AtomicU64,
    pub stop: AtomicBool,
}

/// The result of a run.
pub struct Outcome {
    pub measured: Measured,
    /// Measured time (warm-up excluded).
    pub elapsed: Duration,
}

/// Runs the plan on the current runtime.
pub async fn run(plan: &Plan, live: Arc<Live>) -> Result<Outcome, String> {
    let mut clients = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        let client = match &plan.target {
            Target::Tcp(addr) => Client::connect(addr.as_str()).await,
            Target::Unix(path) => Client::connect_unix(path).await,
        };
        clients.push(client.map_err(|e| match &plan.target {
            Target::Tcp(addr) => format!("cannot connect to {addr}: {}", strip_connect(&e)),
            Target::Unix(path) => format!(
                "cannot connect to {}: {}",
                path.display(),
                strip_connect(&e)
            ),
        })?);
    }
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (index, client) in clients.into_iter().enumerate() {
        let plan = plan.clone();
        let (live, issued) = (live.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            connection(client, index, &plan, measure_from, &live, &issued).await
        }));
    }
    let mut measured = Measured::empty(plan.mix.entries().len());
    for task in tasks {
        measured.merge(task.await.map_err(|e| format!("load task failed: {e}"))?);
    }
    let elapsed = Instant::now().saturating_duration_since(measure_from);
    Ok(Outcome { measured, elapsed })
}

fn strip_connect(e: &Error) -> String {
    match e {
        Error::Connect(m) => m.to_string(),
        other => other.to_string(),
    }
}

/// A call's bookkeeping while it runs.
struct Call {
    seq: u64,
    entry: usize,
    /// When it was due (open loop) or sent (closed loop).
    due: Instant,
    measured: bool,
}

async fn connection(
    client: Client,
    index: usize,
    plan: &Plan,
    measure_from: Instant,
    live: &Live,
    issued: &AtomicU64,
) -> Measured {
    let mut m = Measured::empty(plan.mix.entries().len());
    let entries = plan.mix.entries();
    let mut outstanding: BTreeSet<u64> = BTreeSet::new();
    let mut pipeline = client.pipeline();
    // Calls in flight by pipeline tag; free tags are reused.
    let mut calls: Vec<Option<(Call, Bytes)>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut seq = 0u64;
    let deadline = plan.duration.map(|d| measure_from + d);
    // Open loop: this connection's share of the rate, on a fixed schedule.
    let interval = plan
        .rate
        .map(|r| Duration::from_secs_f64(plan.connections as f64 / r));
    let first = Instant::now()
        + interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(index as f64 / plan.connections as f64)
        });
    let mut next_due = first;
    let mut stopping = false;
    loop {
        let now = Instant::now();
        if !stopping {
            let time_left = deadline.map_or(true, |d| now < d);
            stopping = !time_left || live.stop.load(Relaxed) || m.fatal.is_some();
        }
        // Start calls: closed loop fills the window; open loop starts what is due.
        while !stopping && pipeline.in_flight() < plan.inflight {
            let due = match interval {
                None => Instant::now(),
                Some(step) if next_due <= Instant::now() => {
                    let due = next_due;
                    next_due += step;
                    due
                }
                Some(_) => break,
            };
            if plan
                .requests
                .is_some_and(|n| due >= measure_from && issued.fetch_add(1, Relaxed) >= n)
            {
                stopping = true;
                break;
            }
            let entry = plan.mix.pick(seq);
            let call = Call {
                seq,
                entry,
                due,
                measured: due >= measure_from,
            };
            let data = payload(seq, plan.payload);
            let tag = free.pop().unwrap_or_else(|| {
                calls.push(None);
                calls.len() - 1
            });
            if let Err(err) = pipeline.start(tag as u64, build(&entries[entry], data.clone())) {
                free.push(tag);
                m.errors[failure::CONNECTION] += 1;
                m.fatal.get_or_insert(err.to_string());
                stopping = true;
                break;
            }
            outstanding.insert(seq);
            calls[tag] = Some((call, data));
            seq += 1;
        }
        if stopping && pipeline.in_flight() == 0 {
            break;
        }
        // Wait for a completion, or for the next scheduled start.
        let wake = if stopping || interval.is_none() || pipeline.in_flight() >= plan.inflight {
            None
        } else {
            Some(next_due)
        };
        let done = match wake {
            None => match tokio::time::timeout(Duration::from_secs(30), pipeline.next()).await {
                Ok(done) => done,
                Err(_) => {
                    // Nothing for 30 s: whatever is still out is lost.
                    m.errors[failure::LOST] += pipeline.in_flight() as u64;
                    m.fatal.get_or_insert_with(|| "no response for 30 s".into());
                    break;
                }
            },
            // `next` is cancel-safe: a late answer is kept for the next call.
            Some(at) => tokio::select! {
                done = pipeline.next() => done,
                _ = tokio::time::sleep_until(at.into()) => continue,
            },
        };
        let Some((tag, result)) = done else {
            continue;
        };
        let Some((call, data)) = calls.get_mut(tag as usize).and_then(Option::take) else {
            // The pipeline answers each call once; a second answer is a bug.
            m.duplicates += 1;
            continue;
        };
        free.push(tag as usize);
        let now = Instant::now();
        live.completed.fetch_add(1, Relaxed);
        // Out-of-order accounting: earlier calls of this connection still out.
        if !outstanding.remove(&call.seq) {
            m.duplicates += 1;
            continue;
        }
        let overtaken = outstanding.range(..call.seq).count() as u64;
        if !call.measured {
            continue;
        }
        if overtaken > 0 {
            m.overtook += 1;
            m.overtaken_sum += overtaken;
            m.overtaken_max = m.overtaken_max.max(overtaken);
        }
        let micros = now
            .saturating_duration_since(call.due)
            .as_micros()
            .clamp(1, 100_000_000) as u64;
        let command = &entries[call.entry];
        // A correct answer: the bytes it moved. (An expected application
        // error, from `fail`, is a correct answer too.)
        let answered = match result {
            Ok(response) => match check(command, &data, &response) {
                Ok(()) => Some(data.len() + response.body.len()),
                Err(why) => {
                    m.errors[failure::MISMATCH] += 1;
                    m.fatal.get_or_insert(why);
                    None
                }
            },
            Err(Error::Application(message)) if expected_error(command, &message) => Some(0),
            Err(Error::Application(_)) => {
                m.errors[failure::APPLICATION] += 1;
                None
            }
            Err(Error::Protocol(message)) => {
                m.errors[failure::PROTOCOL] += 1;
                m.fatal
                    .get_or_insert(format!("protocol error from the server: {message}"));
                None
            }
            Err(other) => {
                m.errors[failure::CONNECTION] += 1;
                m.fatal.get_or_insert(other.to_string());
                None
            }
        };
        if let Some(bytes) = answered {
            m.ok += 1;
            m.bytes += bytes as u64;
            m.per_command[call.entry].saturating_record(micros);
            m.all.saturating_record(micros);
            let second = now.saturating_duration_since(measure_from).as_secs() as usize;
            while m.timeline.len() <= second {
                m.timeline.push(histogram());
            }
            m.timeline[second].saturating_record(micros);
        }
    }
    m
}

/// Echo data: the request's sequence number, then filler, so a response
/// routed to the wrong call cannot pass the check.
fn payload(seq: u64, size: usize) -> Bytes {
    let mut data = vec![b'.'; size];
    let stamp = seq.to_le_bytes();
    let n = size.min(8);
    data[..n].copy_from_slice(&stamp[..n]);
    Bytes::from(data)
}

fn build(entry: &Entry, data: Bytes) -> CommandBuilder {
    let mut command = CommandBuilder::new(entry.name.clone());
    for (k, v) in &entry.args {
        command = command.arg(k.clone(), v.clone());
    }
    if entry.name == "echo" {
        command = command.data(data);
    }
    command
}

/// Checks a response against what the demo command must answer.
fn check(entry: &Entry, data: &Bytes, response: &Response) -> Result<(), String> {
    let body = &response.body;
    let good = match entry.name.as_str() {
        "echo" => body == data,
        "sleep" => Some(body.as_ref()) == entry.arg("ms").map(str::as_bytes),
        "spin" => Some(body.as_ref()) == entry.arg("us").map(str::as_bytes),
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
        "put" => body == "ok",
        _ => true,
    };
    if good {
        Ok(())
    } else {
        Err(format!(
            "wrong response to {} (request {}): {} bytes",
            entry.label(),
            response.request_id,
            body.len()
        ))
    }
}

/// Application errors that are the right answer: `fail` always fails.
fn expected_error(entry: &Entry, message: &str) -> bool {
    entry.name == "fail" && entry.arg("message") == Some(message)
}
