//! The `wiremux` command: a thin layer of argument parsing over the
//! wiremux crates. Each subcommand lives in its own module; none holds
//! protocol or engine logic of its own.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod frame;
mod load;
mod reflect;
mod send;
mod serve;
mod tls;

/// One connection, many requests in flight: tools for Mercurial's frame protocol.
#[derive(Parser)]
#[command(name = "wiremux", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Turn human-syntax lines into raw frames on stdout.
    Frame(frame::Args),
    /// Read raw frames on stdin and print the server reactor's reflect report.
    Reflect(reflect::Args),
    /// Serve the demo commands over TCP, a Unix socket or stdio.
    Serve(serve::Args),
    /// Send human-syntax frames to a server and print what comes back.
    Send(send::Args),
    /// Load-test a server (an embedded one by default) and report.
    Load(Box<load::Args>),
}

/// An error for the user: printed as one line, exit code 1.
pub type CliResult = Result<(), String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Frame(args) => frame::run(args),
        Command::Reflect(args) => reflect::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Send(args) => send::run(args),
        Command::Load(args) => load::run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wiremux: {message}");
            ExitCode::FAILURE
        }
    }
}
