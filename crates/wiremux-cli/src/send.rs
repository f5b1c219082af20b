//! `wiremux send`: human-syntax frames to a server, and every frame it
//! answers printed in the same syntax as it arrives.

use crate::CliResult;
use bytes::BytesMut;
use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wiremux_engine::tls::rustls::ClientConfig;
use wiremux_proto::human::{format_frame, parse_frame};
use wiremux_proto::{Flags, Frame, FrameCodec, FrameType};

/// Arguments of `wiremux send`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("server").required(true).args(["connect", "unix", "http"])))]
pub struct Args {
    /// TCP address of the server.
    #[arg(long, value_name = "ADDR")]
    connect: Option<String>,
    /// Unix socket path of the server.
    #[arg(long, value_name = "PATH", conflicts_with = "connect")]
    unix: Option<PathBuf>,
    /// POST the frames to this URL of the HTTP API instead (such as
    /// http://127.0.0.1:8080/api/exp-http-v2-0001/ro/multirequest).
    #[arg(long, value_name = "URL", conflicts_with_all = ["connect", "unix"])]
    http: Option<String>,
    /// Speak TLS to the --connect address (trusting --ca, or anything with
    /// --insecure). Implied by an https:// URL for --http.
    #[arg(long, conflicts_with = "unix")]
    tls: bool,
    /// PEM file of the certificate(s) to trust: the server's CA, or its
    /// self-signed certificate.
    #[arg(long, value_name = "PEM", conflicts_with = "unix")]
    ca: Option<PathBuf>,
    /// Accept any server certificate (an encrypted connection to a server
    /// that is NOT authenticated): for test servers only.
    #[arg(long, conflicts_with_all = ["unix", "ca"])]
    insecure: bool,
    /// The name the server's certificate must carry (default: the host
    /// part of --connect).
    #[arg(long, value_name = "NAME", requires = "tls")]
    server_name: Option<String>,
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
                let client = if args.ca.is_some() || args.insecure {
                    wiremux_http::HttpClient::with_tls(tls_config(&args)?)
                } else {
                    wiremux_http::HttpClient::new()
                };
                post(&client, url, &frames).await
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
                if args.tls || args.ca.is_some() || args.insecure {
                    let name = match &args.server_name {
                        Some(name) => name.clone(),
                        None => crate::tls::host_of(addr),
                    };
                    let stream =
                        wiremux_engine::tls::connect_stream(stream, &name, tls_config(&args)?)
                            .await
                            .map_err(|e| format!("TLS with {addr}: {e}"))?;
                    exchange(stream, &frames).await
                } else {
                    exchange(stream, &frames).await
                }
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("timed out after {} s waiting for responses", args.timeout))?
    })
}

/// The TLS client configuration the flags ask for.
fn tls_config(args: &Args) -> Result<Arc<ClientConfig>, String> {
    crate::tls::client_config(true, args.ca.as_deref(), args.insecure)
        .map(|config| config.expect("asked for TLS"))
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
        let place = format!("stdin line {}", n + 1);
        let line = line.map_err(|e| format!("{place}: {e}"))?;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        frames.push(parse_frame(&line).map_err(|e| format!("{place}: {e}"))?);
    }
    Ok(frames)
}

/// Prints one frame; returns the message of a protocol error.
fn print_frame(frame: &Frame) -> Result<Option<String>, String> {
    writeln!(std::io::stdout().lock(), "{}", format_frame(frame))
        .map_err(|e| format!("writing stdout: {e}"))?;
    let protocol =
        frame.frame_type == FrameType::ERROR_RESPONSE && frame.flags.contains(Flags::PROTOCOL);
    Ok(protocol.then(|| String::from_utf8_lossy(&frame.payload).into_owned()))
}

/// The error for a protocol error the server answered (already printed).
fn protocol_error(message: &str) -> String {
    format!("the server answered with a protocol error: {message}")
}

/// Posts the frames over HTTP and prints the answer: frames in human
/// syntax as they arrive, or a text body (debugreflect). A status other
/// than 200 is an error carrying the server's text, and so is a protocol
/// error among the frames (printed first, like every frame).
async fn post(client: &wiremux_http::HttpClient, url: &str, frames: &[Frame]) -> CliResult {
    let mut response = client
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
    let mut failed = None;
    while let Some(frame) = response.next_frame().await.map_err(|e| e.to_string())? {
        if let Some(message) = print_frame(&frame)? {
            failed.get_or_insert(message);
        }
    }
    match failed {
        Some(message) => Err(protocol_error(&message)),
        None if !status.is_success() => Err(format!("HTTP {status}")),
        None => Ok(()),
    }
}

/// Writes the frames and then closes the writing side, while printing
/// every frame the server sends until it closes the connection. A
/// protocol error from the server, or a request left without its final
/// frame, is an error.
async fn exchange<S: AsyncRead + AsyncWrite>(stream: S, frames: &[Frame]) -> CliResult {
    let mut open: BTreeSet<u16> = frames
        .iter()
        .filter(|f| f.frame_type == FrameType::COMMAND_NAME)
        .map(|f| f.request_id)
        .collect();
    let mut out = BytesMut::new();
    for frame in frames {
        frame.encode(&mut out);
    }
    let (mut reader, mut writer) = tokio::io::split(stream);
    // Write and read at once: a server may answer (and block on a full
    // socket) before it has read everything.
    let send = async move {
        writer.write_all(&out).await?;
        // The server sees the end of input: it answers what it can (or
        // says what is incomplete) and closes, with no wait for a timeout.
        writer.shutdown().await
    };
    let receive = async {
        let mut codec = FrameCodec::new().max_recv_payload(wiremux_proto::frame::MAX_WIRE_PAYLOAD);
        let mut buf = BytesMut::new();
        let mut failed: Option<String> = None;
        loop {
            while let Some(frame) = codec
                .decode_frame(&mut buf)
                .map_err(|e| format!("bad response: {e}"))?
            {
                if let Some(message) = print_frame(&frame)? {
                    failed.get_or_insert(message);
                }
                let last = frame.frame_type == FrameType::ERROR_RESPONSE
                    || (frame.frame_type == FrameType::BYTES_RESPONSE
                        && frame.flags.contains(Flags::DATA_EOS));
                if last {
                    open.remove(&frame.request_id);
                }
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) => break,
                Ok(_) => {}
                // A reset after a protocol error is the server closing.
                Err(_) if failed.is_some() => break,
                Err(e) => return Err(format!("receiving: {e}")),
            }
        }
        if let Some(message) = failed {
            return Err(protocol_error(&message));
        }
        if !buf.is_empty() {
            return Err("the server closed the connection inside a frame".to_string());
        }
        if !open.is_empty() {
            let ids: Vec<String> = open.iter().map(u16::to_string).collect();
            return Err(format!(
                "the server closed the connection; no final frame for request(s) {}",
                ids.join(", ")
            ));
        }
        Ok(())
    };
    let (sent, received) = tokio::join!(send, receive);
    // What the server said comes first: a write that failed because the
    // server closed after an error is only a consequence.
    received?;
    sent.map_err(|e| format!("sending: {e}"))
}
