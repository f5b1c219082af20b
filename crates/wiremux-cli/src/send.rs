//! `wiremux send`: human-syntax frames to a server, and every frame it
//! answers printed in the same syntax as it arrives.

use crate::CliResult;
use bytes::BytesMut;
use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wiremux_proto::human::{format_frame, parse_frame};
use wiremux_proto::{Flags, Frame, FrameCodec, FrameType};

/// Arguments of `wiremux send`.
#[derive(clap::Args)]
pub struct Args {
    /// TCP address of the server.
    #[arg(long, value_name = "ADDR", required_unless_present_any = ["unix", "http"])]
    connect: Option<String>,
    /// Unix socket path of the server.
    #[arg(long, value_name = "PATH", conflicts_with = "connect")]
    unix: Option<PathBuf>,
    /// POST the frames to this URL of the HTTP API instead (such as
    /// http://127.0.0.1:8080/api/exp-http-v2-0001/ro/multirequest).
    #[arg(long, value_name = "URL", conflicts_with_all = ["connect", "unix"])]
    http: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    timeout: f64,
    /// Frames in human syntax; without any, one per line from stdin.
    lines: Vec<String>,
}

pub fn run(args: Args) -> CliResult {
    let frames = read_frames(&args.lines)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let timeout =
        Duration::try_from_secs_f64(args.timeout).map_err(|e| format!("--timeout: {e}"))?;
    runtime.block_on(async {
        let exchange = async {
            if let Some(url) = &args.http {
                post(url, &frames).await
            } else if let Some(path) = &args.unix {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|e| format!("cannot connect to {}: {e}", path.display()))?;
                exchange(stream, &frames).await
            } else {
                let addr = args.connect.as_deref().unwrap_or_default();
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
                exchange(stream, &frames).await
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("timed out after {} s waiting for responses", args.timeout))?
    })
}

/// Parses the frames from arguments, or from stdin (blank lines and lines
/// starting with `#` skipped).
pub fn read_frames(lines: &[String]) -> Result<Vec<Frame>, String> {
    if !lines.is_empty() {
        return lines
            .iter()
            .enumerate()
            .map(|(n, line)| parse_frame(line).map_err(|e| format!("argument {}: {e}", n + 1)))
            .collect();
    }
    let mut frames = Vec::new();
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| format!("reading stdin: {e}"))?;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        frames.push(parse_frame(&line).map_err(|e| format!("line {}: {e}", n + 1))?);
    }
    Ok(frames)
}

/// Posts the frames over HTTP and prints the answer: frames in human
/// syntax as they arrive, or a text body (debugreflect). A status other
/// than 200 is an error carrying the server's text.
async fn post(url: &str, frames: &[Frame]) -> CliResult {
    let mut response = wiremux_http::HttpClient::new()
        .post_frames(url, frames)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    if !response.has_frames() {
        let text = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("HTTP {status}: {}", text.trim_end()));
        }
        print!("{text}");
        return Ok(());
    }
    while let Some(frame) = response.next_frame().await.map_err(|e| e.to_string())? {
        writeln!(std::io::stdout().lock(), "{}", format_frame(&frame))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes the frames, then prints responses until every request started
/// has its final frame.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, frames: &[Frame]) -> CliResult {
    let mut open: BTreeSet<u16> = frames
        .iter()
        .filter(|f| f.frame_type == FrameType::COMMAND_NAME)
        .map(|f| f.request_id)
        .collect();
    let mut out = BytesMut::new();
    for frame in frames {
        frame.encode(&mut out);
    }
    stream
        .write_all(&out)
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::new();
    let stdout = std::io::stdout();
    while !open.is_empty() {
        while let Some(frame) = codec
            .decode_frame(&mut buf)
            .map_err(|e| format!("bad response: {e}"))?
        {
            writeln!(stdout.lock(), "{}", format_frame(&frame)).map_err(|e| e.to_string())?;
            let last = frame.frame_type == FrameType::ERROR_RESPONSE
                || (frame.frame_type == FrameType::BYTES_RESPONSE
                    && frame.flags.contains(Flags::DATA_EOS));
            if last {
                open.remove(&frame.request_id);
            }
            if frame.frame_type == FrameType::ERROR_RESPONSE
                && frame.flags.contains(Flags::PROTOCOL)
            {
                return Ok(());
            }
        }
        if open.is_empty() {
            break;
        }
        if stream
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("receiving: {e}"))?
            == 0
        {
            let ids: Vec<String> = open.iter().map(u16::to_string).collect();
            return Err(format!(
                "the server closed the connection; no final frame for request(s) {}",
                ids.join(", ")
            ));
        }
    }
    Ok(())
}
