//! `wiremux serve` and `wiremux send`, as a user runs them: real processes,
//! real sockets, exact output.

use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

mod common;

use common::{Serve, BIN};

fn send(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .arg("send")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

#[test]
fn send_prints_responses_as_they_finish() {
    let serve = Serve::start(&["--listen", "127.0.0.1:0"]);
    let out = send(
        &["--connect", &serve.listening],
        "# a slow command first, then two fast ones\n\
         1 command-name have-args sleep\n\
         1 command-argument eoa \\x02\\x00\\x03\\x00ms300\n\
         3 command-name have-data echo\n\
         3 command-data eos hello\n\
         \n\
         5 command-name have-args get\n\
         5 command-argument eoa \\x03\\x00\\x04\\x00keynone\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let got = lines(&out);
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(
        got[2], "1 bytes-response eos 300",
        "the sleep finishes last"
    );
    let mut fast = got[..2].to_vec();
    fast.sort();
    assert_eq!(
        fast,
        [
            "3 bytes-response eos hello",
            "5 error-response application no such key: none"
        ]
    );
}

#[test]
fn lines_can_be_given_as_arguments() {
    let serve = Serve::start(&["--listen", "127.0.0.1:0"]);
    let out = send(
        &["--connect", &serve.listening, "1 command-name eos nope"],
        "",
    );
    assert_eq!(
        lines(&out),
        ["1 error-response application unknown command: nope"]
    );
}

/// `put key=k` with data `value`, then `get key=k`, through `send`: the
/// lines each printed.
fn put_then_get(addr: &str) -> (Vec<String>, Vec<String>) {
    let put = send(
        &[
            "--connect",
            addr,
            "1 command-name have-args|have-data put",
            r"1 command-argument eoa \x03\x00\x01\x00keyk",
            "1 command-data eos value",
        ],
        "",
    );
    let get = send(
        &[
            "--connect",
            addr,
            "1 command-name have-args get",
            r"1 command-argument eoa \x03\x00\x01\x00keyk",
        ],
        "",
    );
    (lines(&put), lines(&get))
}

#[test]
fn read_only_refuses_writes_and_they_have_no_effect() {
    let serve = Serve::start(&["--listen", "127.0.0.1:0", "--read-only"]);
    let (put, get) = put_then_get(&serve.listening);
    assert_eq!(put, ["1 error-response application permission denied: put needs write access and this connection is read-only"]);
    assert_eq!(get, ["1 error-response application no such key: k"]);
}

#[test]
fn writes_work_without_read_only() {
    let serve = Serve::start(&["--listen", "127.0.0.1:0"]);
    let (put, get) = put_then_get(&serve.listening);
    assert_eq!(put, ["1 bytes-response eos ok"]);
    assert_eq!(get, ["1 bytes-response eos value"]);
}

#[test]
fn a_protocol_error_is_printed_and_ends_the_exchange() {
    let serve = Serve::start(&["--listen", "127.0.0.1:0"]);
    let out = send(
        &["--connect", &serve.listening, "2 command-name eos echo"],
        "",
    );
    assert!(!out.status.success());
    assert_eq!(
        lines(&out),
        ["2 error-response protocol request 2: a client command must use an odd request ID"]
    );
    assert_eq!(
        stderr(&out),
        "wiremux: the server answered with a protocol error: request 2: a client command must use an odd request ID\n"
    );
}

#[test]
fn a_protocol_error_for_a_request_never_started_is_printed() {
    let serve = Serve::start(&["--listen", "127.0.0.1:0"]);
    let out = send(&["--connect", &serve.listening, "1 command-data eos x"], "");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        lines(&out),
        ["1 error-response protocol request 1: command-data frame for a request that was never started"]
    );
    assert!(stderr(&out).starts_with("wiremux: the server answered with a protocol error: "));
}

#[test]
fn send_closes_its_writing_side_so_an_incomplete_command_is_answered() {
    let serve = Serve::start(&["--listen", "127.0.0.1:0"]);
    // With a 60 s timeout: a send that kept its writing side open would
    // wait it out (and the test would take a minute) before answering.
    let out = send(
        &[
            "--connect",
            &serve.listening,
            "--timeout",
            "60",
            "1 command-name have-args echo",
        ],
        "",
    );
    assert_eq!(
        lines(&out),
        ["1 error-response application request 1: input ended before the command was complete (receiving arguments)"]
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn send_without_a_server_names_every_way_to_give_one() {
    let out = send(&["1 command-name eos echo"], "");
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    for flag in ["--connect", "--unix", "--http"] {
        assert!(text.contains(flag), "{flag} missing from: {text}");
    }
}

#[test]
fn unix_socket_transport() {
    let dir = std::env::temp_dir().join(format!("wiremux-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("serve.sock");
    let _ = std::fs::remove_file(&path);
    let serve = Serve::start(&["--unix", path.to_str().unwrap()]);
    assert_eq!(serve.listening, path.to_str().unwrap());
    let out = send(
        &[
            "--unix",
            path.to_str().unwrap(),
            "7 command-name have-data echo",
            "7 command-data eos over unix",
        ],
        "",
    );
    assert_eq!(lines(&out), ["7 bytes-response eos over unix"]);
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stdio_transport_serves_one_connection_until_stdin_ends() {
    let mut child = Command::new(BIN)
        .args(["serve", "--stdio"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = Vec::new();
    for line in [
        "1 command-name have-data echo",
        "1 command-data eos piped",
        "3 command-name have-args blob",
        r"3 command-argument eoa \x04\x00\x03\x00size300",
    ] {
        wiremux_proto::human::parse_frame(line)
            .unwrap()
            .encode(&mut input);
    }
    child.stdin.take().unwrap().write_all(&input).unwrap(); // stdin closes here
    let mut output = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut output)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let frames = wiremux_proto::decode_all(&output).unwrap();
    assert_eq!(
        wiremux_proto::human::format_frame(&frames[0]),
        "1 bytes-response eos piped"
    );
    let blob: Vec<u8> = frames[1..]
        .iter()
        .flat_map(|f| f.payload.to_vec())
        .collect();
    assert_eq!(blob, (0..300).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    assert!(frames[1..].iter().all(|f| f.request_id == 3));
}

#[test]
fn send_times_out_with_a_clear_message() {
    let serve = Serve::start(&["--listen", "127.0.0.1:0"]);
    let out = send(
        &[
            "--connect",
            &serve.listening,
            "--timeout",
            "0.3",
            "1 command-name have-args sleep",
            r"1 command-argument eoa \x02\x00\x04\x00ms5000",
        ],
        "",
    );
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out),
        "wiremux: timed out after 0.3 s waiting for responses\n"
    );
}

#[test]
fn send_reports_bad_input_and_unreachable_servers() {
    let out = send(&["--connect", "127.0.0.1:1", "1 command-name eos echo"], "");
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with("wiremux: cannot connect to 127.0.0.1:1: "),
        "{}",
        stderr(&out)
    );
    let out = send(
        &[
            "--connect",
            "127.0.0.1:1",
            "1 command-name eos echo",
            "1 command-nam eos x",
        ],
        "",
    );
    assert_eq!(stderr(&out), "wiremux: argument 2: type: `command-nam` is not a frame type name or a number from 0 to 15\n");
    let out = send(
        &["--connect", "127.0.0.1:1"],
        "1 command-name eos echo\nbogus\n",
    );
    assert_eq!(
        stderr(&out),
        "wiremux: stdin line 2: request id: `bogus` is not a number from 0 to 65535\n"
    );
    assert!(!out.status.success());
}

#[test]
fn serve_reports_an_address_it_cannot_use() {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8(out.stderr).unwrap();
    assert!(
        text.contains("wiremux: cannot listen on not-an-address: "),
        "{text}"
    );
    assert!(!text.contains("panicked"));
}

#[test]
fn http_transport_with_send_http() {
    let serve = Serve::start(&["--http", "127.0.0.1:0"]);
    let base = serve.listening.trim_end_matches('/').to_string();
    let out = send(
        &[
            "--http",
            &format!("{base}/ro/multirequest"),
            "1 command-name have-args sleep",
            "3 command-name have-data echo",
            r"1 command-argument eoa \x02\x00\x03\x00ms200",
            "3 command-data eos over http",
        ],
        "",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        lines(&out),
        ["3 bytes-response eos over http", "1 bytes-response eos 200"]
    );
    let out = send(
        &[
            "--http",
            &format!("{base}/ro/multirequest"),
            "1 command-name have-args|have-data put",
            r"1 command-argument eoa \x03\x00\x01\x00keyk",
            "1 command-data eos v",
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with("wiremux: HTTP 403 Forbidden: "),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("put"), "{}", stderr(&out));
}

/// A `wiremux serve` whose log lines (stderr) the test reads, one by one.
struct LoggedServe {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    listening: String,
}

impl LoggedServe {
    fn start(args: &[&str]) -> LoggedServe {
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut serve = LoggedServe {
            child,
            lines,
            listening: String::new(),
        };
        let first = serve.wait_for("wiremux: listening on ");
        serve.listening = first["wiremux: listening on ".len()..].to_string();
        serve
    }

    /// The next stderr line containing `text` (a test failure after 20 s).
    fn wait_for(&self, text: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(std::time::Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("no stderr line with {text:?}"));
            assert!(!line.contains('\x1b'), "ANSI escape in a log: {line:?}");
            if line.contains(text) {
                return line;
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (at most 30 s) for the process to exit.
    fn wait(&mut self) -> std::process::ExitStatus {
        for _ in 0..3000 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("serve did not exit");
    }
}

impl Drop for LoggedServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects and starts `sleep ms=MS` as request 1, then an echo as request
/// 3; returns once the echo is answered, so the sleep is in flight.
fn sleep_in_flight(addr: &str, ms: &str) -> std::net::TcpStream {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    let mut out = Vec::new();
    let len = ms.len() as u8;
    let arg = format!(r"1 command-argument eoa \x02\x00\x{len:02x}\x00ms{ms}");
    for line in [
        "1 command-name have-args sleep",
        &arg,
        "3 command-name have-data echo",
        "3 command-data eos ready",
    ] {
        wiremux_proto::human::parse_frame(line)
            .unwrap()
            .encode(&mut out);
    }
    conn.write_all(&out).unwrap();
    let first = read_frame(&mut conn).expect("the echo's answer");
    assert_eq!(
        wiremux_proto::human::format_frame(&first),
        "3 bytes-response eos ready"
    );
    conn
}

/// One frame from a blocking stream; `None` at the end of the stream.
fn read_frame(conn: &mut std::net::TcpStream) -> Option<wiremux_proto::Frame> {
    let mut header = [0u8; 6];
    if conn.read_exact(&mut header).is_err() {
        return None;
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    let mut frame = header.to_vec();
    frame.resize(6 + len, 0);
    conn.read_exact(&mut frame[6..]).ok()?;
    let mut frames = wiremux_proto::decode_all(&frame).unwrap();
    Some(frames.remove(0))
}

#[test]
fn sigterm_drains_requests_in_flight_then_exits_0() {
    let mut serve = LoggedServe::start(&["--listen", "127.0.0.1:0", "--drain-secs", "20"]);
    let mut conn = sleep_in_flight(&serve.listening, "300");
    serve.signal("TERM");
    let line = serve.wait_for("shutting down");
    assert!(line.contains("SIGTERM"), "{line}");
    let answer = read_frame(&mut conn).expect("the sleep's answer");
    assert_eq!(
        wiremux_proto::human::format_frame(&answer),
        "1 bytes-response eos 300"
    );
    assert!(
        read_frame(&mut conn).is_none(),
        "then the connection closes"
    );
    let status = serve.wait();
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn a_second_signal_exits_at_once_without_waiting_for_the_drain() {
    let mut serve = LoggedServe::start(&["--listen", "127.0.0.1:0", "--drain-secs", "60"]);
    let mut conn = sleep_in_flight(&serve.listening, "60000");
    serve.signal("INT");
    assert!(serve.wait_for("shutting down").contains("SIGINT"));
    serve.signal("TERM");
    serve.wait_for("wiremux: SIGTERM during the drain; exiting now");
    // Exit status 1, not the 0 of a drain that ran its course (which
    // would take a minute here), and the sleep is never answered.
    assert_eq!(serve.wait().code(), Some(1));
    assert!(read_frame(&mut conn).is_none());
}

#[test]
fn serve_announces_each_listener_once_without_colours_in_a_pipe() {
    let mut serve = LoggedServe::start(&["--listen", "127.0.0.1:0"]);
    serve.signal("TERM");
    // Every line up to the end: no ANSI escapes (checked by wait_for) and
    // no second announcement of the listener.
    let rest: Vec<String> = serve.lines.iter().collect();
    assert_eq!(serve.wait().code(), Some(0));
    assert!(
        rest.iter().all(|l| !l.contains("listening")),
        "announced twice: {rest:?}"
    );
    assert!(rest.iter().all(|l| !l.contains('\x1b')), "{rest:?}");
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
}

/// A self-signed certificate for localhost and 127.0.0.1, as PEM files in
/// a scratch directory (removed on drop).
struct CertFiles {
    dir: std::path::PathBuf,
    cert: String,
    key: String,
}

impl CertFiles {
    fn new(name: &str) -> CertFiles {
        let dir = std::env::temp_dir().join(format!("wiremux-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        CertFiles {
            cert: cert.to_str().unwrap().to_string(),
            key: key.to_str().unwrap().to_string(),
            dir,
        }
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `wiremux serve` with TLS on --listen and --http: (server, TCP address,
/// HTTPS API root).
fn tls_serve(certs: &CertFiles) -> (LoggedServe, String, String) {
    let mut serve = LoggedServe::start(&[
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--tls-cert",
        &certs.cert,
        "--tls-key",
        &certs.key,
    ]);
    let addr = serve
        .listening
        .strip_suffix(" (TLS)")
        .expect("the TLS listener says so")
        .to_string();
    let line = serve.wait_for("wiremux: HTTP API on ");
    let api = line["wiremux: HTTP API on ".len()..].to_string();
    assert!(api.starts_with("https://"), "{api}");
    serve.listening = addr.clone();
    (serve, addr, api)
}

#[test]
fn send_over_tls_verifies_the_certificate() {
    let certs = CertFiles::new("send");
    let (_serve, addr, api) = tls_serve(&certs);
    let echo = [
        "1 command-name have-data echo",
        "1 command-data eos over tls",
    ];
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.extend(echo.iter().map(|s| s.to_string()));
        v
    };
    for flags in [
        vec!["--connect", &addr, "--tls", "--ca", &certs.cert],
        vec!["--connect", &addr, "--ca", &certs.cert],
        vec!["--connect", &addr, "--tls", "--insecure"],
    ] {
        let a = args(&flags);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let out = send(&a, "");
        assert!(out.status.success(), "{flags:?}: {}", stderr(&out));
        assert_eq!(lines(&out), ["1 bytes-response eos over tls"], "{flags:?}");
    }
    // HTTPS through the same flags.
    let url = format!("{api}ro/multirequest");
    let a = args(&["--http", &url, "--ca", &certs.cert]);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = send(&a, "");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&out), ["1 bytes-response eos over tls"]);
    // --tls alone trusts nothing and says what to add.
    let out = send(
        &["--connect", &addr, "--tls", "1 command-name eos echo"],
        "",
    );
    assert_eq!(
        stderr(&out),
        "wiremux: --tls needs --ca PEM (the certificate to trust) or --insecure (trust any)\n"
    );
    // A certificate for another name is refused.
    let out = send(
        &[
            "--connect",
            &addr,
            "--tls",
            "--ca",
            &certs.cert,
            "--server-name",
            "example.com",
            "1 command-name eos echo",
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).starts_with(&format!("wiremux: TLS with {addr}: ")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_plaintext_send_on_the_tls_port_fails_and_the_server_logs_it() {
    let certs = CertFiles::new("plain");
    let (serve, addr, _) = tls_serve(&certs);
    let out = send(
        &[
            "--connect",
            &addr,
            "--timeout",
            "20",
            "1 command-name have-data echo",
            "1 command-data eos plain",
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(!stderr(&out).contains("timed out"), "{}", stderr(&out));
    let line = serve.wait_for("TLS handshake failed; connection closed");
    assert!(line.contains("WARN"), "{line}");
    // The server goes on.
    let out = send(
        &[
            "--connect",
            &addr,
            "--insecure",
            "1 command-name eos unknown",
        ],
        "",
    );
    assert_eq!(
        lines(&out),
        ["1 error-response application unknown command: unknown"]
    );
}

/// Python's `ssl` module, verifying the certificate, as a stock TLS
/// client: a raw-frame echo over the TLS port, and a POST over HTTPS.
#[test]
fn python_ssl_with_verification_talks_to_both_tls_listeners() {
    let certs = CertFiles::new("python");
    let (_serve, addr, api) = tls_serve(&certs);
    let (host, port) = addr.rsplit_once(':').unwrap();
    // https://127.0.0.1:PORT/api/...: the HTTPS port and the API's path.
    let rest = api.strip_prefix("https://127.0.0.1:").unwrap();
    let (http_port, api_path) = rest.split_at(rest.find('/').unwrap());
    let script = r#"
import http.client, socket, ssl, sys
cafile, host, port, http_port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
context = ssl.create_default_context(cafile=cafile)
assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
frames, media = bytes.fromhex(sys.argv[6]), sys.argv[7]
with socket.create_connection((host, port)) as raw:
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(frames)
        got = b""
        while len(got) < 6 or len(got) < 6 + int.from_bytes(got[0:3], "little"):
            chunk = tls.recv(65536)
            if not chunk:
                break
            got += chunk
print("tcp", got.hex())
conn = http.client.HTTPSConnection("localhost", http_port, context=context)
conn.request("POST", path + "ro/echo", body=frames, headers={
    "Content-Type": media, "Accept": media})
response = conn.getresponse()
print("http", response.status, response.read().hex())
"#;
    let mut frames = Vec::new();
    for line in [
        "1 command-name have-data echo",
        "1 command-data eos from python",
    ] {
        wiremux_proto::human::parse_frame(line)
            .unwrap()
            .encode(&mut frames);
    }
    let hex: String = frames.iter().map(|b| format!("{b:02x}")).collect();
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            script,
            &certs.cert,
            host,
            port,
            http_port,
            api_path,
            &hex,
            wiremux_proto::MEDIA_TYPE,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut answer = Vec::new();
    wiremux_proto::human::parse_frame("1 bytes-response eos from python")
        .unwrap()
        .encode(&mut answer);
    let answer: String = answer.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("tcp {answer}\nhttp 200 {answer}\n")
    );
}

#[test]
fn load_runs_over_tls() {
    let certs = CertFiles::new("load");
    let (_serve, addr, _) = tls_serve(&certs);
    let out = Command::new(BIN)
        .args([
            "load",
            "--connect",
            &addr,
            "--tls",
            "--ca",
            &certs.cert,
            "--requests",
            "300",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(text.contains("300 correct responses"), "{text}");
    assert!(
        text.contains("0 mismatched, 0 duplicated, 0 lost"),
        "{text}"
    );
    // Without a certificate to trust, it refuses before the run.
    let out = Command::new(BIN)
        .args(["load", "--connect", &addr, "--tls", "--requests", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--tls needs --ca PEM"),
        "{}",
        stderr(&out)
    );
}

/// `GET path` over plain HTTP/1.1: (status line, body).
fn http_get(addr: &str, method: &str, path: &str) -> (String, String) {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

#[test]
fn serve_metrics_answers_prometheus_text() {
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let (mut metrics_addr, mut listen) = (String::new(), String::new());
    while metrics_addr.is_empty() || listen.is_empty() {
        line.clear();
        use std::io::BufRead;
        assert!(stderr.read_line(&mut line).unwrap() > 0);
        if let Some(rest) = line.trim().strip_prefix("wiremux: metrics on http://") {
            metrics_addr = rest.trim_end_matches("/metrics").to_string();
        }
        if let Some(rest) = line.trim().strip_prefix("wiremux: listening on ") {
            listen = rest.to_string();
        }
    }
    for text in ["one", "two"] {
        let out = send(
            &[
                "--connect",
                &listen,
                "1 command-name have-data echo",
                &format!("1 command-data eos {text}"),
            ],
            "",
        );
        assert!(out.status.success());
    }
    // The server counts a connection closed just after the client sees it
    // close: scrape until it has.
    let mut scrape = http_get(&metrics_addr, "GET", "/metrics");
    for _ in 0..100 {
        if scrape.1.lines().any(|l| l == "wiremux_connections_open 0") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        scrape = http_get(&metrics_addr, "GET", "/metrics");
    }
    let (status, body) = scrape;
    assert_eq!(status, "HTTP/1.1 200 OK");
    for expected in [
        "# TYPE wiremux_connections_accepted_total counter",
        "wiremux_connections_accepted_total 2",
        "wiremux_connections_open 0",
        "wiremux_frames_in_total 4",
        "wiremux_frames_out_total 2",
        "wiremux_requests_started_total 2",
        "wiremux_requests_completed_total 2",
        "wiremux_requests_in_flight 0",
        "# TYPE wiremux_command_request_duration_seconds histogram",
    ] {
        assert!(
            body.lines().any(|l| l == expected),
            "no {expected:?} in:\n{body}"
        );
    }
    assert!(body.contains("wiremux_command_requests_started_total{command=\"echo\"}"));
    assert_eq!(
        http_get(&metrics_addr, "GET", "/").0,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        http_get(&metrics_addr, "POST", "/metrics").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    let _ = child.kill();
    let _ = child.wait();
}
