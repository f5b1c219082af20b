//! `wiremux load`: the load-test harness (being written).

use crate::CliResult;

/// Arguments of `wiremux load`.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> CliResult {
    Err("load is not implemented yet".into())
}
