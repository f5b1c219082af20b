//! A stepped open loop, to find the knee: `--rate 20k..400k --steps 10
//! --step-duration 5s --slo p99=2ms` measures each rate in turn and names
//! the highest one that met the objective.
//!
//! A step meets the objective when its run is clean, the server answered
//! at least 95% of the rate asked for, and every percentile of the
//! objective is at or under its bound. Once a step is answered at less
//! than 80% of its rate the server is past its capacity: the higher steps
//! are not run.

use super::report::{self, micros, Context, Summary};
use super::run::{Outcome, Plan};
use crate::CliResult;
use serde_json::{json, Value};
use std::fmt::Write;
use std::time::Duration;

/// A latency objective: percentiles and their bounds in microseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Slo(pub Vec<(f64, u64)>);

impl std::fmt::Display for Slo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(q, us)| format!("p{q}={}", micros(*us)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses `p99=2ms`, `p50=500us,p99.9=10ms`.
pub fn parse_slo(text: &str) -> Result<Slo, String> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let bad = || format!("`{part}` is not an objective like p99=2ms");
        let (name, bound) = part.trim().split_once('=').ok_or_else(bad)?;
        let q: f64 = name
            .strip_prefix('p')
            .and_then(|q| q.parse().ok())
            .filter(|q| *q > 0.0 && *q <= 100.0)
            .ok_or_else(bad)?;
        let bound = super::parse_duration(bound)?;
        out.push((q, (bound.as_micros() as u64).max(1)));
    }
    Ok(Slo(out))
}

/// The rates of the steps, evenly spaced from `from` to `to`.
pub fn rates(from: f64, to: f64, steps: usize) -> Vec<f64> {
    (0..steps)
        .map(|i| (from + (to - from) * i as f64 / (steps - 1) as f64).round())
        .collect()
}

/// What to step through.
pub struct Steps {
    pub rates: Vec<f64>,
    pub duration: Duration,
    pub slo: Slo,
}

/// One measured step.
pub struct Step {
    pub rate: f64,
    pub outcome: Outcome,
}

/// Whether a step met the objective, and why not.
pub fn verdict(step: &Step, slo: &Slo) -> Result<(), String> {
    let s = Summary::of(&step.outcome);
    if let Some(problem) = s.problem() {
        return Err(problem);
    }
    let answered = s.answered as f64 / s.seconds;
    if answered < 0.95 * step.rate {
        return Err(format!("answered {answered:.0}/s"));
    }
    for (q, bound) in &slo.0 {
        let v = step.outcome.measured.all.value_at_quantile(q / 100.0);
        if v > *bound {
            return Err(format!("p{q} {} > {}", micros(v), micros(*bound)));
        }
    }
    Ok(())
}

/// Runs the steps in order with `measure`, stopping past capacity.
pub fn run(
    plan: &Plan,
    steps: &Steps,
    _ctx: &Context,
    mut measure: impl FnMut(&Plan) -> Result<Outcome, String>,
) -> Result<Vec<Step>, String> {
    let mut done = Vec::new();
    for (i, &rate) in steps.rates.iter().enumerate() {
        let mut p = plan.clone();
        p.rate = Some(rate);
        p.duration = Some(steps.duration);
        p.requests = None;
        if i > 0 {
            // The connections are new, the server is warm.
            p.warmup = p.warmup.min(Duration::from_millis(200));
        }
        let outcome = measure(&p)?;
        let s = Summary::of(&outcome);
        let overloaded = (s.answered as f64 / s.seconds) < 0.8 * rate || s.problem().is_some();
        done.push(Step { rate, outcome });
        if overloaded {
            break;
        }
    }
    Ok(done)
}

/// The highest rate that met the objective (from the lowest up, stopping
/// at the first step that did not).
pub fn knee(steps: &[Step], slo: &Slo) -> Option<f64> {
    steps
        .iter()
        .take_while(|s| verdict(s, slo).is_ok())
        .last()
        .map(|s| s.rate)
}

/// The text table of the steps.
pub fn text(ctx: &Context, steps: &Steps, done: &[Step]) -> String {
    let mut out = format!(
        "wiremux load --rate {}..{}: {}\n  {} steps of {:?}, {}\n  {}\n\n",
        steps.rates[0],
        steps.rates[steps.rates.len() - 1],
        ctx.target,
        steps.rates.len(),
        steps.duration,
        ctx.shape,
        ctx.workload
    );
    let _ = writeln!(
        out,
        "{:>10} {:>12} {:>10} {:>10} {:>10} {:>10} {:>8}  objective {}",
        "rate/s",
        "answered/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "errors",
        if steps.slo.0.is_empty() {
            "(none: --slo)".to_string()
        } else {
            steps.slo.to_string()
        }
    );
    for step in done {
        let s = Summary::of(&step.outcome);
        let h = &step.outcome.measured.all;
        let v = verdict(step, &steps.slo);
        let _ = writeln!(
            out,
            "{:>10} {:>12.0} {:>10} {:>10} {:>10} {:>10} {:>8}  {}",
            step.rate,
            s.answered as f64 / s.seconds,
            micros(h.value_at_quantile(0.5)),
            micros(h.value_at_quantile(0.99)),
            micros(h.value_at_quantile(0.999)),
            micros(h.max()),
            s.failed,
            match v {
                Ok(()) => "met".to_string(),
                Err(why) => format!("missed: {why}"),
            }
        );
    }
    if done.len() < steps.rates.len() {
        let _ = writeln!(
            out,
            "(the higher steps were not run: the server answered less than 80% of the last rate, or failed)"
        );
    }
    let _ = writeln!(out);
    match knee(done, &steps.slo) {
        Some(rate) => {
            let _ = writeln!(
                out,
                "knee          {rate} requests/s is the highest rate that met {} (every step up to it met it)",
                if steps.slo.0.is_empty() {
                    "no objective but the answered rate".to_string()
                } else {
                    steps.slo.to_string()
                }
            );
        }
        None => {
            let _ = writeln!(out, "knee          no step met the objective");
        }
    }
    for step in done {
        for w in report::warnings(ctx, &step.outcome) {
            let _ = writeln!(out, "warning       at {}/s: {w}", step.rate);
        }
    }
    out
}

/// The JSON document of the steps: each step's full document, and the knee.
pub fn json(ctx: &Context, steps: &Steps, done: &[Step]) -> Value {
    json!({
        "slo": steps.slo.to_string(),
        "step_seconds": steps.duration.as_secs_f64(),
        "rates": steps.rates,
        "knee": knee(done, &steps.slo),
        "steps": done.iter().map(|step| {
            let mut c = ctx.clone();
            c.rate = Some(step.rate);
            json!({
                "rate": step.rate,
                "meets_slo": verdict(step, &steps.slo).is_ok(),
                "verdict": verdict(step, &steps.slo).err(),
                "run": report::json(&c, &step.outcome),
            })
        }).collect::<Vec<_>>(),
    })
}

/// Prints the steps and turns failures into the exit code.
pub fn finish(
    as_json: bool,
    ctx: &Context,
    steps: &Steps,
    result: Result<Vec<Step>, String>,
) -> CliResult {
    let done = result?;
    if as_json {
        println!("{}", json(ctx, steps, &done));
    } else {
        print!("{}", text(ctx, steps, &done));
    }
    let failures: Vec<String> = done
        .iter()
        .filter_map(|s| {
            Summary::of(&s.outcome)
                .problem()
                .map(|p| format!("at {}/s: {p}", s.rate))
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::run::{Busy, Measured};
    use std::time::SystemTime;

    fn step(rate: f64, answered: u64, p99_us: u64) -> Step {
        let mut m = Measured::empty(1);
        for _ in 0..99 {
            m.all.record(10).unwrap();
        }
        m.all.record(p99_us).unwrap();
        m.all.record(p99_us).unwrap();
        m.ok = answered;
        m.answered = answered;
        Step {
            rate,
            outcome: Outcome {
                measured: m,
                elapsed: Duration::from_secs(1),
                started: SystemTime::now(),
                busy: Busy::default(),
                server_cpu_seconds: None,
            },
        }
    }

    #[test]
    fn objectives_parse() {
        assert_eq!(parse_slo("p99=2ms"), Ok(Slo(vec![(99.0, 2000)])));
        assert_eq!(
            parse_slo("p50=500us,p99.9=10ms"),
            Ok(Slo(vec![(50.0, 500), (99.9, 10_000)]))
        );
        assert_eq!(
            parse_slo("q99=1ms").unwrap_err(),
            "`q99=1ms` is not an objective like p99=2ms"
        );
        assert_eq!(parse_slo("p99=2ms").unwrap().to_string(), "p99=2000 µs");
    }

    #[test]
    fn rates_are_evenly_spaced_and_include_both_ends() {
        assert_eq!(
            rates(20_000.0, 400_000.0, 5),
            [20_000.0, 115_000.0, 210_000.0, 305_000.0, 400_000.0]
        );
    }

    #[test]
    fn the_knee_is_the_last_step_of_the_unbroken_run_that_met_the_objective() {
        let slo = parse_slo("p99=2ms").unwrap();
        let steps = [
            step(100.0, 100, 500),
            step(200.0, 199, 1500),
            step(300.0, 300, 2500),
            step(400.0, 400, 1000),
        ];
        assert_eq!(knee(&steps, &slo), Some(200.0));
        assert_eq!(
            verdict(&steps[2], &slo).unwrap_err(),
            "p99 2501 µs > 2000 µs"
        );
        let slow = step(100.0, 90, 10);
        assert_eq!(verdict(&slow, &slo).unwrap_err(), "answered 90/s");
        assert_eq!(knee(&[slow], &slo), None);
    }
}
