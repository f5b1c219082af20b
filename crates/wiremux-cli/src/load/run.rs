//! One load run: generator threads, their connections, the open-loop
//! schedule, and the measurements.
//!
//! `--threads N` generator threads each run a current-thread tokio runtime
//! and own every N-th connection; each connection is one task
//! ([`super::conn::Conn`]) on its own socket.
//!
//! Closed loop: each connection keeps `inflight` requests out and starts a
//! new one as soon as one is answered.
//!
//! Open loop (`--rate`): each generator thread has its share of the
//! schedule. A ticker thread sleeps until each request's due time (with the
//! OS timer's precision, not tokio's millisecond wheel) and wakes the
//! thread's dispatcher, which puts what is due on the thread's backlog and
//! wakes connections; whichever connection has room in its window sends
//! it. A request is measured from its due time: the time it waited in the
//! generator (a full window, a busy thread) is kept apart as `queued`, the
//! time from the write to the answer as `wire`, and the latency reported
//! is their sum, so a server that stalls shows in the percentiles.

use super::conn::Wake;
use super::conn::{Conn, Stream};
use super::mix::Mix;
use super::requests::Template;
use hdrhistogram::Histogram;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

/// Where to send the load.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(String),
    Unix(std::path::PathBuf),
    /// The HTTP API at this root URL.
    Http(String),
}

impl Target {
    fn label(&self) -> String {
        match self {
            Target::Tcp(addr) | Target::Http(addr) => addr.clone(),
            Target::Unix(path) => path.display().to_string(),
        }
    }
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
    /// Generator threads.
    pub threads: usize,
    /// Chains sent link by link, each after the previous answer.
    pub sequential_chains: bool,
}

/// Kinds of failure, as the report counts them; `Measured::errors` is
/// indexed by the constants of [`failure`].
pub const ERROR_KINDS: [&str; 5] = ["application", "protocol", "connection", "mismatch", "lost"];

/// Indices into `Measured::errors`, in the order of [`ERROR_KINDS`].
pub mod failure {
    /// An application error the mix did not expect.
    pub const APPLICATION: usize = 0;
    /// A protocol error from the server.
    pub const PROTOCOL: usize = 1;
    /// The connection failed.
    pub const CONNECTION: usize = 2;
    /// A response that does not match its request.
    pub const MISMATCH: usize = 3;
    /// A request never answered.
    pub const LOST: usize = 4;
}

/// What a run (or one connection of it) measured. Only requests due in
/// the measured part count.
pub struct Measured {
    /// Latency per mix entry, from due time to answer.
    pub per_command: Vec<Histogram<u64>>,
    /// Latency of every correct answer, from due time to answer.
    pub all: Histogram<u64>,
    /// From the write to the answer: what the wire and the server took.
    pub wire: Histogram<u64>,
    /// From the due time to the write: the wait inside the generator.
    pub queued: Histogram<u64>,
    /// Per second of the measured run, by the second each request was due.
    pub timeline: Vec<Histogram<u64>>,
    /// Correct answers, expected errors included.
    pub ok: u64,
    /// Of `ok`: the application errors the mix asked for.
    pub expected_errors: u64,
    /// Requests answered in any way (the denominator of every share).
    pub answered: u64,
    pub errors: [u64; 5],
    pub bytes: u64,
    /// Answers that overtook at least one earlier request on their connection.
    pub overtook: u64,
    /// Sum and maximum of the number of earlier requests overtaken.
    pub overtaken_sum: u64,
    pub overtaken_max: u64,
    /// Answers to a request that was not out.
    pub duplicates: u64,
    /// The first connection-level failure, if any.
    pub fatal: Option<String>,
    /// The first wrong or unexpected answer, with the server's message.
    pub first_error: Option<String>,
    /// Latencies not yet in `timeline` (see [`Measured::finish`]).
    pub tally: super::histo::Tally,
}

impl Measured {
    /// Nothing measured yet, for `commands` mix entries.
    pub fn empty(commands: usize) -> Measured {
        Measured {
            per_command: (0..commands).map(|_| histogram()).collect(),
            all: histogram(),
            wire: histogram(),
            queued: histogram(),
            timeline: Vec::new(),
            ok: 0,
            expected_errors: 0,
            answered: 0,
            errors: [0; 5],
            bytes: 0,
            overtook: 0,
            overtaken_sum: 0,
            overtaken_max: 0,
            duplicates: 0,
            fatal: None,
            first_error: None,
            tally: Default::default(),
        }
    }

    /// Adds `other` into `self`; timelines are aligned at their start.
    pub fn merge(&mut self, other: Measured) {
        self.merge_at(other, 0);
    }

    /// Adds `other`, whose timeline starts `offset` seconds later.
    pub fn merge_at(&mut self, other: Measured, offset: usize) {
        for (a, b) in self.per_command.iter_mut().zip(&other.per_command) {
            a.add(b).expect("same bounds");
        }
        self.all.add(&other.all).expect("same bounds");
        self.wire.add(&other.wire).expect("same bounds");
        self.queued.add(&other.queued).expect("same bounds");
        for (i, h) in other.timeline.into_iter().enumerate() {
            let i = i + offset;
            while self.timeline.len() <= i {
                self.timeline.push(histogram());
            }
            self.timeline[i].add(&h).expect("same bounds");
        }
        self.ok += other.ok;
        self.expected_errors += other.expected_errors;
        self.answered += other.answered;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.bytes += other.bytes;
        self.overtook += other.overtook;
        self.overtaken_sum += other.overtaken_sum;
        self.overtaken_max = self.overtaken_max.max(other.overtaken_max);
        self.duplicates += other.duplicates;
        self.fatal = self.fatal.take().or(other.fatal);
        self.first_error = self.first_error.take().or(other.first_error);
    }

    /// Ends one connection's measurement: adds the tally to the timeline,
    /// then fills `all` (and, with a single command, that command's
    /// histogram) from the timeline. The hot path records each correct
    /// answer once, into the tally or the histogram of the second it was
    /// due in; every such answer is in exactly one second, so the sum is
    /// exactly the histogram of all of them.
    pub fn finish(&mut self) {
        self.tally.flush(&mut self.timeline);
        for h in &self.timeline {
            self.all.add(h).expect("same bounds");
        }
        if self.per_command.len() == 1 {
            self.per_command[0] = self.all.clone();
        }
    }

    /// Requests that ended, well or not (the lost ones did not).
    pub fn completed(&self) -> u64 {
        self.ok + self.errors[..failure::LOST].iter().sum::<u64>()
    }
}

/// Latency histogram in microseconds, 1 µs to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HISTOGRAM_LOW, HISTOGRAM_HIGH, HISTOGRAM_SIGFIG)
        .expect("valid bounds")
}

/// The histograms' bounds (microseconds) and precision.
pub const HISTOGRAM_LOW: u64 = 1;
pub const HISTOGRAM_HIGH: u64 = 100_000_000;
pub const HISTOGRAM_SIGFIG: u8 = 3;

/// Live counters for the progress bar.
#[derive(Default)]
pub struct Live {
    pub completed: AtomicU64,
    pub stop: AtomicBool,
}

/// How busy the generator was.
#[derive(Debug, Clone, Default)]
pub struct Busy {
    /// CPU time of each generator thread over its wall time (0..=1), when
    /// the OS tells (Linux).
    pub threads: Vec<f64>,
    /// CPU time of all generator threads (tickers included), seconds.
    pub cpu_seconds: Option<f64>,
}

impl Busy {
    /// The busiest thread's share.
    pub fn max(&self) -> Option<f64> {
        self.threads.iter().copied().reduce(f64::max)
    }
}

/// The result of a run.
pub struct Outcome {
    pub measured: Measured,
    /// Measured time (warm-up excluded).
    pub elapsed: Duration,
    /// When the measured part began (wall clock).
    pub started: SystemTime,
    pub busy: Busy,
    /// CPU time of the embedded server's threads during the run, seconds.
    pub server_cpu_seconds: Option<f64>,
}

/// Per-thread state shared by its connections.
///
/// Times on the hot path are nanoseconds since `base` (the run's start)
/// as plain integers: one clock read per batch of answers, and integer
/// subtraction per request instead of `Instant` arithmetic.
pub struct Shared {
    pub plan: Plan,
    pub templates: Vec<Template>,
    /// The run's start; the origin of every `u64` time below.
    pub base: Instant,
    pub deadline: Option<Instant>,
    /// Where the measured part begins (the warm-up ends), in nanoseconds
    /// since `base`.
    pub measure_from_ns: u64,
    /// `deadline`, in nanoseconds since `base`.
    pub deadline_ns: Option<u64>,
    /// Measured requests started, over all threads (for `--requests`).
    pub issued: Arc<AtomicU64>,
    pub live: Arc<Live>,
    /// No request is to be started any more (the schedule, or the count,
    /// is done).
    pub stopping: Cell<bool>,
    /// Open loop: due times of requests due and not yet sent.
    backlog: RefCell<VecDeque<u64>>,
}

impl Shared {
    /// Now, in nanoseconds since `base`.
    #[inline]
    pub fn now(&self) -> u64 {
        self.ns(Instant::now())
    }

    /// `t` in nanoseconds since `base` (0 before it).
    #[inline]
    pub fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_nanos() as u64
    }

    /// The oldest due request of the backlog.
    pub fn take_due(&self) -> Option<u64> {
        self.backlog.borrow_mut().pop_front()
    }

    pub fn backlog_empty(&self) -> bool {
        self.backlog.borrow().is_empty()
    }

    /// Drops the backlog (the request count is reached).
    pub fn clear_backlog(&self) {
        self.backlog.borrow_mut().clear();
    }
}

/// Runs the plan: starts the generator threads, waits for them, merges.
pub fn run(plan: &Plan, live: Arc<Live>) -> Result<Outcome, String> {
    let threads = plan.threads.clamp(1, plan.connections);
    let issued = Arc::new(AtomicU64::new(0));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut go = Vec::new();
    let mut handles = Vec::new();
    for t in 0..threads {
        let (go_tx, go_rx) = mpsc::channel::<Option<Instant>>();
        go.push(go_tx);
        let plan = plan.clone();
        let (live, issued, ready) = (live.clone(), issued.clone(), ready_tx.clone());
        let handle = std::thread::Builder::new()
            .name(format!("wiremux-load-{t}"))
            .spawn(move || generator(plan, t, threads, live, issued, ready, go_rx))
            .map_err(|e| format!("cannot start a generator thread: {e}"))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut failed = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            Err(_) => {
                failed.get_or_insert("a generator thread failed".to_string());
            }
        }
    }
    let start = Instant::now();
    let started = SystemTime::now() + plan.warmup;
    for g in &go {
        let _ = g.send(failed.is_none().then_some(start));
    }
    let mut measured = Measured::empty(plan.mix.entries().len());
    let mut busy = Busy::default();
    let mut cpu = Some(0.0);
    for h in handles {
        let Ok(Some(result)) = h.join() else {
            failed.get_or_insert("a generator thread failed".to_string());
            continue;
        };
        measured.merge(result.measured);
        if let Some(share) = result.busy {
            busy.threads.push(share);
        }
        cpu = cpu.zip(result.cpu_seconds).map(|(a, b)| a + b);
    }
    if let Some(e) = failed {
        return Err(e);
    }
    busy.cpu_seconds = cpu;
    let measure_from = start + plan.warmup;
    let elapsed = Instant::now().saturating_duration_since(measure_from);
    let elapsed = match plan.duration {
        // The measured part is the schedule (requests due in it), not the
        // drain of the last answers after it.
        Some(d) if elapsed > d => d,
        _ => elapsed,
    };
    Ok(Outcome {
        measured,
        elapsed,
        started,
        busy,
        server_cpu_seconds: None,
    })
}

/// What one generator thread hands back.
struct ThreadResult {
    measured: Measured,
    busy: Option<f64>,
    cpu_seconds: Option<f64>,
}

fn generator(
    plan: Plan,
    t: usize,
    threads: usize,
    live: Arc<Live>,
    issued: Arc<AtomicU64>,
    ready: mpsc::Sender<Result<(), String>>,
    go: mpsc::Receiver<Option<Instant>>,
) -> Option<ThreadResult> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start the runtime: {e}")));
            return None;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        // Connect this thread's share of the connections first.
        let mine: Vec<usize> = (t..plan.connections).step_by(threads).collect();
        let mut streams = Vec::with_capacity(mine.len());
        let http = match &plan.target {
            Target::Http(root) => Some(root.clone()),
            _ => None,
        };
        for _ in mine.iter().filter(|_| http.is_none()) {
            match connect(&plan.target).await {
                Ok(s) => streams.push(s),
                Err(e) => {
                    let _ = ready.send(Err(e));
                    return None;
                }
            }
        }
        let _ = ready.send(Ok(()));
        let start = go.recv().ok().flatten()?;
        let cpu_before = thread_cpu();
        let measure_from = start + plan.warmup;
        let deadline = plan.duration.map(|d| measure_from + d);
        let templates = plan
            .mix
            .entries()
            .iter()
            .map(|e| Template::new(e, plan.payload))
            .collect();
        let shared = Rc::new(Shared {
            plan: plan.clone(),
            templates,
            base: start,
            deadline,
            measure_from_ns: plan.warmup.as_nanos() as u64,
            deadline_ns: deadline.map(|d| d.saturating_duration_since(start).as_nanos() as u64),
            issued,
            live,
            stopping: Cell::new(false),
            backlog: RefCell::new(VecDeque::new()),
        });
        let notifies: Vec<Rc<Wake>> = streams.iter().map(|_| Rc::new(Wake::default())).collect();
        let mut tasks = Vec::new();
        if let Some(root) = &http {
            for _ in &mine {
                tasks.push(tokio::task::spawn_local(super::http::worker(
                    shared.clone(),
                    root.clone(),
                )));
            }
        }
        for (stream, notify) in streams.into_iter().zip(&notifies) {
            let conn = Conn::new(stream, shared.clone(), notify.clone());
            tasks.push(tokio::task::spawn_local(conn.run()));
        }
        let mut ticker = None;
        match plan.rate {
            Some(rate) => {
                let schedule = Schedule {
                    start,
                    offset: t as f64 / rate,
                    period: threads as f64 / rate,
                };
                let tick = Arc::new(Notify::new());
                let done = Arc::new(AtomicBool::new(false));
                ticker = Some((
                    done.clone(),
                    std::thread::Builder::new()
                        .name(format!("wiremux-tick-{t}"))
                        .spawn({
                            let tick = tick.clone();
                            move || ticker_thread(schedule, tick, done)
                        })
                        .expect("ticker thread"),
                ));
                let (shared, notifies) = (shared.clone(), notifies.clone());
                tokio::task::spawn_local(async move {
                    dispatch(schedule, &shared, &notifies, tick).await;
                });
            }
            None => {
                if let Some(deadline) = deadline {
                    let (shared, notifies) = (shared.clone(), notifies.clone());
                    tokio::task::spawn_local(async move {
                        tokio::time::sleep_until(deadline.into()).await;
                        shared.stopping.set(true);
                        notifies.iter().for_each(|n| n.wake());
                    });
                }
            }
        }
        let mut measured = Measured::empty(plan.mix.entries().len());
        for task in tasks {
            if let Ok(m) = task.await {
                measured.merge(m);
            }
            // One connection's end (`--requests`, a failure) ends the
            // schedule for every connection of the thread.
        }
        shared.stopping.set(true);
        let wall = start.elapsed().as_secs_f64();
        let cpu = thread_cpu().zip(cpu_before).map(|(a, b)| a - b);
        let mut cpu_seconds = cpu;
        if let Some((done, handle)) = ticker {
            done.store(true, Relaxed);
            let ticker_cpu = handle.join().ok().flatten();
            cpu_seconds = cpu_seconds.zip(ticker_cpu).map(|(a, b)| a + b);
        }
        Some(ThreadResult {
            measured,
            busy: cpu.map(|c| (c / wall.max(1e-9)).min(1.0)),
            cpu_seconds,
        })
    })
}

async fn connect(target: &Target) -> Result<Stream, String> {
    let fail = |e: std::io::Error| format!("cannot connect to {}: {e}", target.label());
    match target {
        Target::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr.as_str())
                .await
                .map_err(fail)?;
            s.set_nodelay(true).map_err(fail)?;
            Ok(Stream::Tcp(s))
        }
        #[cfg(unix)]
        Target::Unix(path) => Ok(Stream::Unix(
            tokio::net::UnixStream::connect(path).await.map_err(fail)?,
        )),
        #[cfg(not(unix))]
        Target::Unix(_) => Err("Unix sockets need a Unix system".into()),
        Target::Http(_) => unreachable!("HTTP workers connect by themselves"),
    }
}

/// One thread's share of the open-loop schedule: request k is due at
/// `start + offset + k * period`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    offset: f64,
    period: f64,
}

impl Schedule {
    fn due(&self, k: u64) -> Instant {
        self.start + Duration::from_secs_f64(self.offset + k as f64 * self.period)
    }

    /// The first k due after `now`.
    fn next_after(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.start).as_secs_f64() - self.offset;
        if since < 0.0 {
            0
        } else {
            (since / self.period).floor() as u64 + 1
        }
    }
}

/// Sleeps until each due time with the OS timer and wakes the dispatcher;
/// due times already past when it wakes are covered by that one wake.
/// Returns its CPU time.
fn ticker_thread(schedule: Schedule, tick: Arc<Notify>, done: Arc<AtomicBool>) -> Option<f64> {
    let before = thread_cpu();
    let mut k = 0;
    while !done.load(Relaxed) {
        let due = schedule.due(k);
        let now = Instant::now();
        if due > now {
            // At most 50 ms at a time, to notice the end.
            std::thread::sleep((due - now).min(Duration::from_millis(50)));
            if Instant::now() < due {
                continue;
            }
        }
        tick.notify_one();
        k = schedule.next_after(Instant::now()).max(k + 1);
    }
    thread_cpu().zip(before).map(|(a, b)| a - b)
}

/// Puts what is due on the backlog and wakes connections to send it.
async fn dispatch(schedule: Schedule, shared: &Shared, conns: &[Rc<Wake>], tick: Arc<Notify>) {
    let mut k = 0u64;
    let mut next_conn = 0;
    'run: while !shared.stopping.get() {
        tick.notified().await;
        let now = Instant::now();
        let mut new = 0;
        loop {
            let due = schedule.due(k);
            if due > now || shared.stopping.get() {
                break;
            }
            if shared.deadline.is_some_and(|d| due >= d) {
                break 'run;
            }
            shared.backlog.borrow_mut().push_back(shared.ns(due));
            k += 1;
            new += 1;
        }
        for _ in 0..new.min(conns.len()) {
            conns[next_conn].wake();
            next_conn = (next_conn + 1) % conns.len();
        }
    }
    shared.stopping.set(true);
    conns.iter().for_each(|n| n.wake());
}

/// CPU time of the calling thread, in seconds (Linux).
pub fn thread_cpu() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(nanos as f64 / 1e9)
}

/// CPU time of this process's threads whose name starts with `prefix`,
/// in seconds (Linux).
pub fn threads_cpu(prefix: &str) -> Option<f64> {
    let mut total = 0.0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        let text = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let nanos: u64 = text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        total += nanos as f64 / 1e9;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_spreads_threads_evenly() {
        let start = Instant::now();
        // 1000/s over 4 threads: thread 1 is due at 1 ms, 5 ms, 9 ms, …
        let s = Schedule {
            start,
            offset: 1.0 / 1000.0,
            period: 4.0 / 1000.0,
        };
        assert_eq!(s.due(0) - start, Duration::from_millis(1));
        assert_eq!(s.due(2) - start, Duration::from_millis(9));
        assert_eq!(s.next_after(start), 0);
        assert_eq!(s.next_after(start + Duration::from_millis(5)), 2);
        assert_eq!(s.next_after(start + Duration::from_micros(5500)), 2);
    }

    #[test]
    fn merging_adds_counts_and_aligns_timelines() {
        let mut a = Measured::empty(1);
        a.ok = 2;
        a.answered = 3;
        a.timeline = vec![histogram()];
        a.timeline[0].record(10).unwrap();
        let mut b = Measured::empty(1);
        b.ok = 5;
        b.answered = 5;
        b.first_error = Some("x".into());
        b.timeline = vec![histogram()];
        b.timeline[0].record(20).unwrap();
        a.merge_at(b, 2);
        assert_eq!((a.ok, a.answered), (7, 8));
        assert_eq!(a.timeline.len(), 3);
        assert_eq!(
            a.timeline.iter().map(|h| h.len()).collect::<Vec<_>>(),
            [1, 0, 1]
        );
        assert_eq!(a.first_error.as_deref(), Some("x"));
    }
}
