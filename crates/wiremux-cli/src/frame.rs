//! `wiremux frame`: human-syntax lines to raw frames.

use crate::CliResult;
use std::io::{BufRead, Write};

/// Arguments of `wiremux frame`.
#[derive(clap::Args)]
pub struct Args {
    /// Frames in human syntax (`<request-id> <type> <flags> <payload>`);
    /// without any, one per line from stdin.
    lines: Vec<String>,
}

pub fn run(args: Args) -> CliResult {
    let mut out = Vec::new();
    let mut push = |line: &str, where_: String| -> CliResult {
        let frame = wiremux_proto::human::parse_frame(line).map_err(|e| format!("{where_}: {e}"))?;
        frame.encode(&mut out);
        Ok(())
    };
    if args.lines.is_empty() {
        for (n, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.map_err(|e| format!("reading stdin: {e}"))?;
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            push(&line, format!("line {}", n + 1))?;
        }
    } else {
        for (n, line) in args.lines.iter().enumerate() {
            push(line, format!("argument {}", n + 1))?;
        }
    }
    std::io::stdout().lock().write_all(&out).map_err(|e| format!("writing stdout: {e}"))
}
