//! `wiremux reflect`: raw frames on stdin, the reflect report on stdout.

use crate::CliResult;
use std::io::{Read, Write};

/// Arguments of `wiremux reflect`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> CliResult {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).map_err(|e| format!("reading stdin: {e}"))?;
    let report = wiremux_proto::reflect::reflect(&input);
    std::io::stdout().lock().write_all(report.as_bytes()).map_err(|e| format!("writing stdout: {e}"))
}
