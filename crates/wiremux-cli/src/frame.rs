//! `wiremux frame`: human-syntax lines to raw frames.

use crate::CliResult;
use std::io::{BufRead, Write};
use wiremux_proto::frame::MAX_WIRE_PAYLOAD;

/// Arguments of `wiremux frame`.
#[derive(clap::Args)]
pub struct Args {
    /// Frames in human syntax (`<request-id> <type> <flags> <payload>`);
    /// without any, one per line from stdin (blank lines and lines starting
    /// with `#` are skipped).
    lines: Vec<String>,
}

/// Parses one line and appends its frame to `out`; an error names `place`.
fn push(out: &mut Vec<u8>, line: &str, place: &str) -> CliResult {
    let frame = wiremux_proto::human::parse_frame(line).map_err(|e| format!("{place}: {e}"))?;
    if frame.payload.len() > MAX_WIRE_PAYLOAD {
        return Err(format!(
            "{place}: payload: {} bytes do not fit a frame (at most {MAX_WIRE_PAYLOAD})",
            frame.payload.len()
        ));
    }
    frame.encode(out);
    Ok(())
}

pub fn run(args: Args) -> CliResult {
    let mut out = Vec::new();
    if args.lines.is_empty() {
        for (n, line) in std::io::stdin().lock().lines().enumerate() {
            let place = format!("stdin line {}", n + 1);
            let line = line.map_err(|e| format!("{place}: {e}"))?;
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            push(&mut out, &line, &place)?;
        }
    } else {
        for (n, line) in args.lines.iter().enumerate() {
            push(&mut out, line, &format!("argument {}", n + 1))?;
        }
    }
    std::io::stdout()
        .lock()
        .write_all(&out)
        .map_err(|e| format!("writing stdout: {e}"))
}
