//! `wiremux reflect`: raw frames on stdin, the reflect report on stdout.

use crate::CliResult;
use bytes::BytesMut;
use std::io::{Read, Write};
use wiremux_proto::FrameCodec;

/// Arguments of `wiremux reflect`.
#[derive(clap::Args)]
pub struct Args {}

/// The report goes to stdout in full, malformed input included (it ends
/// with a `<malformed input>` entry); input that is not whole frames also
/// fails the command, with the codec's error and the offset of the frame.
pub fn run(_args: Args) -> CliResult {
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    let report = wiremux_proto::reflect::reflect(&input);
    std::io::stdout()
        .lock()
        .write_all(report.as_bytes())
        .map_err(|e| format!("writing stdout: {e}"))?;
    check_whole_frames(&input)
}

/// Fails with the codec's error if `input` is not a sequence of whole
/// frames, naming the byte offset where the bad frame starts.
fn check_whole_frames(input: &[u8]) -> CliResult {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(input);
    loop {
        let offset = input.len() - buf.len();
        match codec.decode_frame_eof(&mut buf) {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("stdin: byte {offset}: {e}")),
        }
    }
}
