//! A `wiremux serve` child process for the tests that run the binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub mod hostile;

/// The built `wiremux` binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_wiremux");

/// A `wiremux serve` process; killed on drop.
pub struct Serve {
    pub child: Child,
    /// What it announced: the TCP address, the socket path or the HTTP
    /// API's URL, from its first "listening on" or "HTTP API on" line.
    pub listening: String,
    /// Every `wiremux: ...` line read before it started serving, without
    /// the `wiremux: ` prefix ("listening on ...", "HTTP API on ...",
    /// "metrics on ...").
    pub announced: Vec<String>,
}

impl Serve {
    /// Starts `wiremux serve ARGS` and waits until it listens.
    pub fn start(args: &[&str]) -> Serve {
        Serve::start_announcing(args, 1)
    }

    /// Starts `wiremux serve ARGS` and waits until it has announced
    /// `listeners` listeners ("listening on" or "HTTP API on" lines);
    /// `listening` is the first of them.
    pub fn start_announcing(args: &[&str], listeners: usize) -> Serve {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wiremux serve");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        let mut announced = Vec::new();
        let mut listening = Vec::new();
        while listening.len() < listeners {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "serve exited before listening"
            );
            let Some(text) = line.trim().strip_prefix("wiremux: ") else {
                continue;
            };
            announced.push(text.to_string());
            if let Some(rest) = text
                .strip_prefix("listening on ")
                .or_else(|| text.strip_prefix("HTTP API on "))
            {
                listening.push(rest.to_string());
            }
        }
        // Keep draining stderr so the child never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Serve {
            child,
            listening: listening.swap_remove(0),
            announced,
        }
    }

    /// Resident memory of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib_of(self.child.id()).expect("the server process's /proc status")
    }

    /// Stops the server now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of process `pid`, in KiB, if it is still there.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}
