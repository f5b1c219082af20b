//! The HTTP API against a running server on 127.0.0.1:0, through hyper's
//! client: every row of PROTOCOL.md §7's status table, single commands,
//! multirequest, permissions, debugreflect, limits and malformed bodies.
//! Statuses, headers and bodies are asserted exactly; response frames are
//! decoded with wiremux_proto and compared in human syntax.

use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper::header::{HeaderMap, ALLOW, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Method, Request, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremux_engine::{
    demo, CommandError, Config, Permission, Request as Cmd, Response, Server, SyncHandler,
};
use wiremux_http::{HttpClient, HttpOptions, MEDIA_TYPE};
use wiremux_proto::human::{format_frame, parse_frame};

const TEXT: &str = "text/plain; charset=utf-8";

/// A server with the demo commands (and `boom`, which panics) serving HTTP.
struct Api {
    base: String,
    server: Server,
    client: HttpClient,
}

impl Api {
    async fn start(options: HttpOptions) -> Api {
        Api::start_with(options, Config::default()).await
    }

    async fn start_with(options: HttpOptions, config: Config) -> Api {
        let mut registry = demo::registry();
        registry.insert("boom", Permission::Read, |_req: Cmd| async move {
            if true {
                panic!("boom");
            }
            Ok::<Response, CommandError>(Response::bytes(""))
        });
        // A synchronous handler, and a closure that panics before it
        // returns its future: both panic inside `Registry::start`.
        registry.insert(
            "boom-sync",
            Permission::Read,
            SyncHandler(|_req: Cmd| -> Result<Response, CommandError> { panic!("boom") }),
        );
        registry.insert("boom-early", Permission::Read, |req: Cmd| {
            let n: u64 = req.arg_str("n").unwrap().parse().unwrap();
            async move { Ok::<Response, CommandError>(Response::bytes(n.to_string())) }
        });
        registry.insert("hang", Permission::Read, |_req: Cmd| async move {
            let _guard = DropCount;
            std::future::pending::<()>().await;
            Ok::<Response, CommandError>(Response::bytes(""))
        });
        let server = Server::builder().registry(registry).config(config).build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!(
            "http://{}/api/exp-http-v2-0001/",
            listener.local_addr().unwrap()
        );
        tokio::spawn(wiremux_http::serve(listener, server.clone(), options));
        Api {
            base,
            server,
            client: HttpClient::new(),
        }
    }

    /// Any request; the answer's status, headers and whole body.
    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        // A path from `/` is taken as it is; anything else is under the API root.
        let url = match path.strip_prefix('/') {
            Some(_) => format!(
                "{}{path}",
                self.base.trim_end_matches("/api/exp-http-v2-0001/")
            ),
            None => format!("{}{path}", self.base),
        };
        *request.uri_mut() = url.parse().unwrap();
        for (name, value) in headers {
            request.headers_mut().append(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let response = self.client.send(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        (status, headers, response.bytes().await.unwrap())
    }

    /// A POST with the right media types.
    async fn post(&self, path: &str, body: Bytes) -> (StatusCode, HeaderMap, Bytes) {
        let types = [("content-type", MEDIA_TYPE), ("accept", MEDIA_TYPE)];
        self.request(Method::POST, path, &types, body).await
    }

    /// A POST that must succeed; its response frames in human syntax.
    async fn frames(&self, path: &str, lines: &[&str]) -> Vec<String> {
        let (status, headers, body) = self.post(path, frames(lines)).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(headers[CONTENT_TYPE], MEDIA_TYPE);
        assert_eq!(headers[TRANSFER_ENCODING], "chunked");
        human(&body)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.shutdown();
    }
}

/// How many `hang` handlers have been dropped (cancelled).
static HANGS_DROPPED: AtomicUsize = AtomicUsize::new(0);

struct DropCount;

impl Drop for DropCount {
    fn drop(&mut self) {
        HANGS_DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

/// Human-syntax lines as raw frames.
fn frames(lines: &[&str]) -> Bytes {
    let mut out = BytesMut::new();
    for line in lines {
        parse_frame(line).unwrap().encode(&mut out);
    }
    out.freeze()
}

/// Raw frames as human-syntax lines.
fn human(body: &[u8]) -> Vec<String> {
    wiremux_proto::decode_all(body)
        .unwrap()
        .iter()
        .map(format_frame)
        .collect()
}

/// A text answer: its status, and that it is text with exactly `body`.
fn assert_text(answer: &(StatusCode, HeaderMap, Bytes), status: StatusCode, body: &str) {
    assert_eq!(answer.0, status, "{}", String::from_utf8_lossy(&answer.2));
    assert_eq!(answer.1[CONTENT_TYPE], TEXT);
    assert_eq!(String::from_utf8_lossy(&answer.2), body);
}

/// `put key=<key>` with `data` as request `id`, in human syntax.
fn put(id: u16, key: &str, data: &str) -> Vec<String> {
    vec![
        format!("{id} command-name have-args|have-data put"),
        format!(
            "{id} command-argument eoa \\x03\\x00\\x{:02x}\\x00key{key}",
            key.len()
        ),
        format!("{id} command-data eos {data}"),
    ]
}

/// `get key=<key>` as request `id`.
fn get(id: u16, key: &str) -> Vec<String> {
    vec![
        format!("{id} command-name have-args get"),
        format!(
            "{id} command-argument eoa \\x03\\x00\\x{:02x}\\x00key{key}",
            key.len()
        ),
    ]
}

fn refs(lines: &[String]) -> Vec<&str> {
    lines.iter().map(String::as_str).collect()
}

// ---- §7's status table, row by row ----

#[tokio::test]
async fn get_of_the_api_root_is_200_text() {
    let api = Api::start(HttpOptions::default()).await;
    let description = "wiremux: Mercurial's HTTP API version 2 (frame-based). POST frames of \
        application/mercurial-exp-framing-0002 to /api/exp-http-v2-0001/<ro|rw>/<command>, or to \
        /api/exp-http-v2-0001/<ro|rw>/multirequest for many commands.\n";
    let answer = api.request(Method::GET, "", &[], Bytes::new()).await;
    assert_text(&answer, StatusCode::OK, description);
    // Without the trailing slash too.
    let answer = api
        .request(Method::GET, "/api/exp-http-v2-0001", &[], Bytes::new())
        .await;
    assert_text(&answer, StatusCode::OK, description);
    // HEAD: the same head, no body.
    let answer = api.request(Method::HEAD, "", &[], Bytes::new()).await;
    assert_eq!(answer.0, StatusCode::OK);
    assert_eq!(answer.1[CONTENT_TYPE], TEXT);
    assert_eq!(answer.2, "");
    // The root takes no POST.
    let answer = api.post("", Bytes::new()).await;
    assert_text(
        &answer,
        StatusCode::METHOD_NOT_ALLOWED,
        "the API root answers GET and HEAD only\n",
    );
    assert_eq!(answer.1[ALLOW], "GET, HEAD");
}

#[tokio::test]
async fn one_part_paths_unknown_permissions_and_unknown_commands_are_404() {
    let api = Api::start(HttpOptions::default()).await;
    assert_text(
        &api.post("ro", frames(&["1 command-name eos echo"])).await,
        StatusCode::NOT_FOUND,
        "expected /api/exp-http-v2-0001/<ro|rw>/<command>; `ro` has 1 part(s)\n",
    );
    assert_text(
        &api.post("multirequest", Bytes::new()).await,
        StatusCode::NOT_FOUND,
        "expected /api/exp-http-v2-0001/<ro|rw>/<command>; `multirequest` has 1 part(s)\n",
    );
    assert_text(
        &api.post("admin/echo", frames(&["1 command-name eos echo"]))
            .await,
        StatusCode::NOT_FOUND,
        "unknown permission `admin`: expected `ro` or `rw`\n",
    );
    assert_text(
        &api.post("ro/nope", frames(&["1 command-name eos nope"]))
            .await,
        StatusCode::NOT_FOUND,
        "unknown command: nope\n",
    );
    assert_text(
        &api.post("rw/nope", Bytes::new()).await,
        StatusCode::NOT_FOUND,
        "unknown command: nope\n",
    );
    assert_text(
        &api.post("ro/echo/more", Bytes::new()).await,
        StatusCode::NOT_FOUND,
        "expected /api/exp-http-v2-0001/<ro|rw>/<command>; `ro/echo/more` has 3 part(s)\n",
    );
    assert_text(
        &api.request(Method::GET, "/api/other/", &[], Bytes::new())
            .await,
        StatusCode::NOT_FOUND,
        "no such resource: /api/other/; the API is at /api/exp-http-v2-0001/\n",
    );
}

#[tokio::test]
async fn methods_other_than_post_are_405_with_allow_post() {
    let api = Api::start(HttpOptions::default()).await;
    for (method, name) in [
        (Method::GET, "GET"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
    ] {
        for path in ["ro/echo", "rw/multirequest", "ro/nope"] {
            let answer = api.request(method.clone(), path, &[], Bytes::new()).await;
            assert_text(
                &answer,
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("commands need POST; got {name}\n"),
            );
            assert_eq!(answer.1[ALLOW], "POST");
        }
    }
}

#[tokio::test]
async fn missing_or_wrong_accept_is_406_naming_the_media_type() {
    let api = Api::start(HttpOptions::default()).await;
    let body = frames(&["1 command-name eos echo"]);
    let expected = "the client must send `Accept: application/mercurial-exp-framing-0002`\n";
    for accept in [None, Some("application/json"), Some("*/*")] {
        let mut headers = vec![("content-type", MEDIA_TYPE)];
        headers.extend(accept.map(|a| ("accept", a)));
        for path in ["ro/echo", "ro/multirequest"] {
            let answer = api
                .request(Method::POST, path, &headers, body.clone())
                .await;
            assert_text(&answer, StatusCode::NOT_ACCEPTABLE, expected);
        }
    }
    // The media type among others is accepted.
    let headers = [
        ("content-type", MEDIA_TYPE),
        (
            "accept",
            "text/html, application/mercurial-exp-framing-0002;q=0.9",
        ),
    ];
    let answer = api.request(Method::POST, "ro/echo", &headers, body).await;
    assert_eq!(answer.0, StatusCode::OK);
    assert_eq!(human(&answer.2), ["1 bytes-response eos "]);
}

#[tokio::test]
async fn missing_or_wrong_content_type_is_415_naming_the_media_type() {
    let api = Api::start(HttpOptions::default()).await;
    let body = frames(&["1 command-name eos echo"]);
    let expected = "the client must send `Content-Type: application/mercurial-exp-framing-0002`\n";
    for content_type in [None, Some("application/octet-stream"), Some("text/plain")] {
        let mut headers = vec![("accept", MEDIA_TYPE)];
        headers.extend(content_type.map(|c| ("content-type", c)));
        for path in ["ro/echo", "rw/multirequest"] {
            let answer = api
                .request(Method::POST, path, &headers, body.clone())
                .await;
            assert_text(&answer, StatusCode::UNSUPPORTED_MEDIA_TYPE, expected);
        }
    }
}

#[tokio::test]
async fn a_write_command_under_ro_is_403_and_does_not_run() {
    let api = Api::start(HttpOptions::default()).await;
    let answer = api.post("ro/put", frames(&refs(&put(1, "k", "v")))).await;
    assert_text(
        &answer,
        StatusCode::FORBIDDEN,
        "permission denied: the `ro` URL grants read-only access, and write access is needed by put; no command was run\n",
    );
    assert_eq!(
        api.frames("ro/get", &refs(&get(1, "k"))).await,
        ["1 error-response application no such key: k"]
    );
    // Under rw it runs, and a read under ro then sees it.
    assert_eq!(
        api.frames("rw/put", &refs(&put(1, "k", "v"))).await,
        ["1 bytes-response eos ok"]
    );
    assert_eq!(
        api.frames("ro/get", &refs(&get(1, "k"))).await,
        ["1 bytes-response eos v"]
    );
}

#[tokio::test]
async fn a_read_only_server_refuses_writes_under_rw_too() {
    let config = Config {
        read_only: true,
        ..Config::default()
    };
    let api = Api::start_with(HttpOptions::default(), config).await;
    let forbidden = "permission denied: this server is read-only, and write access is needed by put; no command was run\n";
    assert_text(
        &api.post("rw/put", frames(&refs(&put(1, "k", "v")))).await,
        StatusCode::FORBIDDEN,
        forbidden,
    );
    assert_text(
        &api.post("rw/multirequest", frames(&refs(&put(1, "k", "v")))).await,
        StatusCode::FORBIDDEN,
        "permission denied: this server is read-only, and write access is needed by put (request 1); no command was run\n",
    );
    assert_eq!(
        api.frames(
            "rw/echo",
            &["1 command-name have-data echo", "1 command-data eos x"]
        )
        .await,
        ["1 bytes-response eos x"]
    );
}

// ---- single-command URLs ----

#[tokio::test]
async fn a_single_command_url_runs_its_command() {
    let api = Api::start(HttpOptions::default()).await;
    assert_eq!(
        api.frames(
            "ro/echo",
            &["1 command-name have-data echo", "1 command-data eos hello"]
        )
        .await,
        ["1 bytes-response eos hello"]
    );
    assert_eq!(
        api.frames(
            "ro/fail",
            &[
                "5 command-name have-args fail",
                "5 command-argument eoa \\x07\\x00\\x04\\x00messageoops"
            ]
        )
        .await,
        ["5 error-response application oops"]
    );
    assert_eq!(
        api.frames("ro/boom", &["1 command-name eos boom"]).await,
        ["1 error-response application command failed: the handler panicked"]
    );
    for name in ["boom-sync", "boom-early"] {
        assert_eq!(
            api.frames(
                &format!("ro/{name}"),
                &[&format!("1 command-name eos {name}")]
            )
            .await,
            ["1 error-response application command failed: the handler panicked"],
            "{name}"
        );
    }
    // The server is still fine after a panic.
    assert_eq!(
        api.frames("rw/echo", &["3 command-name eos echo"]).await,
        ["3 bytes-response eos "]
    );
}

#[tokio::test]
async fn a_single_command_url_refuses_another_command_or_a_second_one() {
    let api = Api::start(HttpOptions::default()).await;
    assert_text(
        &api.post("ro/echo", frames(&refs(&get(1, "k")))).await,
        StatusCode::BAD_REQUEST,
        "the URL names `echo` but the body's command is `get` (request 1)\n",
    );
    assert_text(
        &api.post(
            "ro/echo",
            frames(&["1 command-name eos echo", "3 command-name eos echo"]),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "this URL runs exactly one command; the body holds 2 (the second is `echo`, request 3); use multirequest for several\n",
    );
    assert_text(
        &api.post("ro/echo", Bytes::new()).await,
        StatusCode::BAD_REQUEST,
        "this URL runs one `echo` command, and the body holds none\n",
    );
    // A second command, even a write one under rw, never runs.
    let mut lines = vec!["1 command-name eos echo".to_string()];
    lines.extend(put(3, "k", "v"));
    assert_eq!(
        api.post("rw/echo", frames(&refs(&lines))).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        api.frames("ro/get", &refs(&get(1, "k"))).await,
        ["1 error-response application no such key: k"]
    );
}

#[tokio::test]
async fn large_responses_are_split_into_frames_of_32768_bytes() {
    let api = Api::start(HttpOptions::default()).await;
    // A whole response: echo 70000 bytes sent in two data frames.
    let data: Vec<u8> = (0..70000u32).map(|i| (i % 7) as u8 + b'a').collect();
    let mut body = BytesMut::new();
    wiremux_proto::builder::CommandBuilder::new("echo")
        .data(data.clone())
        .encode(1, 35000, &mut body)
        .unwrap();
    let (status, _, answer) = api.post("ro/echo", body.freeze()).await;
    assert_eq!(status, StatusCode::OK);
    let got = wiremux_proto::decode_all(&answer).unwrap();
    let shape: Vec<(usize, String)> = got
        .iter()
        .map(|f| {
            (
                f.payload.len(),
                wiremux_proto::human::format_flags(f.frame_type, f.flags),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            (32768, "continuation".to_string()),
            (32768, "continuation".to_string()),
            (4464, "eos".to_string())
        ]
    );
    let joined: Vec<u8> = got.iter().flat_map(|f| f.payload.to_vec()).collect();
    assert_eq!(joined, data);

    // A streamed response: blob streams chunks of 64 KiB.
    let got = wiremux_proto::decode_all(
        &api.post(
            "ro/blob",
            frames(&[
                "3 command-name have-args blob",
                "3 command-argument eoa \\x04\\x00\\x06\\x00size150000",
            ]),
        )
        .await
        .2,
    )
    .unwrap();
    let sizes: Vec<usize> = got.iter().map(|f| f.payload.len()).collect();
    assert_eq!(sizes, [32768, 32768, 32768, 32768, 18928]);
    assert!(got[..4]
        .iter()
        .all(|f| f.flags.contains(wiremux_proto::Flags::CONTINUATION)));
    assert_eq!(format_frame(&got[4]).split(' ').nth(2), Some("eos"));
    let joined: Vec<u8> = got.iter().flat_map(|f| f.payload.to_vec()).collect();
    assert!(joined
        .iter()
        .enumerate()
        .all(|(i, b)| *b == demo::blob_byte(i)));
}

// ---- multirequest ----

#[tokio::test]
async fn multirequest_runs_interleaved_commands_concurrently_in_completion_order() {
    let api = Api::start(HttpOptions::default()).await;
    let lines = [
        "1 command-name have-args sleep",
        "3 command-name have-data echo",
        "5 command-name have-args sleep",
        "3 command-data continuation hel",
        "1 command-argument eoa \\x02\\x00\\x03\\x00ms900",
        "7 command-name have-args fail",
        "5 command-argument eoa \\x02\\x00\\x03\\x00ms150",
        "3 command-data eos lo",
        "7 command-argument eoa \\x07\\x00\\x04\\x00messagenope",
    ];
    let got = api.frames("ro/multirequest", &lines).await;
    // The echo and the failure are immediate (their relative order is the
    // runtime's), then the short sleep, then the long one: a server that ran
    // them one by one would answer request 1 first.
    let (immediate, later) = got.split_at(2);
    let mut immediate = immediate.to_vec();
    immediate.sort();
    assert_eq!(
        immediate,
        [
            "3 bytes-response eos hello",
            "7 error-response application nope"
        ]
    );
    assert_eq!(
        later,
        ["5 bytes-response eos 150", "1 bytes-response eos 900"]
    );
}

#[tokio::test]
async fn multirequest_under_ro_with_a_write_command_is_403_and_nothing_runs() {
    let api = Api::start(HttpOptions::default()).await;
    // CVE-2018-1000132: a write command smuggled into a read-only batch.
    let mut lines = put(1, "a", "one");
    lines.push("3 command-name have-data echo".into());
    lines.extend(put(5, "b", "two"));
    lines.push("3 command-data eos x".into());
    let answer = api.post("ro/multirequest", frames(&refs(&lines))).await;
    assert_text(
        &answer,
        StatusCode::FORBIDDEN,
        "permission denied: the `ro` URL grants read-only access, and write access is needed by put (request 1), put (request 5); no command was run\n",
    );
    // Neither put stored anything.
    let mut check = get(1, "a");
    check.extend(get(3, "b"));
    let mut got = api.frames("ro/multirequest", &refs(&check)).await;
    got.sort();
    assert_eq!(
        got,
        [
            "1 error-response application no such key: a",
            "3 error-response application no such key: b"
        ]
    );
    // The same body under rw runs all three.
    let mut got = api.frames("rw/multirequest", &refs(&lines)).await;
    got.sort();
    assert_eq!(
        got,
        [
            "1 bytes-response eos ok",
            "3 bytes-response eos x",
            "5 bytes-response eos ok"
        ]
    );
    let mut got = api.frames("ro/multirequest", &refs(&check)).await;
    got.sort();
    assert_eq!(
        got,
        ["1 bytes-response eos one", "3 bytes-response eos two"]
    );
}

#[tokio::test]
async fn multirequest_answers_an_unknown_command_with_its_own_error() {
    let api = Api::start(HttpOptions::default()).await;
    let mut got = api
        .frames(
            "ro/multirequest",
            &["1 command-name eos nope", "3 command-name eos echo"],
        )
        .await;
    got.sort();
    assert_eq!(
        got,
        [
            "1 error-response application unknown command: nope",
            "3 bytes-response eos "
        ]
    );
    // An empty body holds no command: an empty answer.
    assert_eq!(
        api.frames("ro/multirequest", &[]).await,
        Vec::<String>::new()
    );
}

// ---- debugreflect ----

/// The example of PROTOCOL.md §6.
const REFLECT_FRAMES: [&str; 3] = [
    "1 command-name have-args command1",
    "1 command-argument 0 \\x03\\x00\\x04\\x00fooval1",
    "1 command-argument eoa \\x04\\x00\\x03\\x00bar1val",
];

#[tokio::test]
async fn debugreflect_is_404_unless_enabled() {
    let api = Api::start(HttpOptions::default()).await;
    for path in ["ro/debugreflect", "rw/debugreflect"] {
        assert_text(
            &api.post(path, frames(&REFLECT_FRAMES)).await,
            StatusCode::NOT_FOUND,
            "debugreflect is not enabled on this server\n",
        );
    }
}

#[tokio::test]
async fn debugreflect_when_enabled_answers_the_reflect_report() {
    let api = Api::start(HttpOptions::default().debugreflect(true)).await;
    let report = "received: 1 2 1 command1\n\
        [\"wantframe\", {\"state\": \"command-receiving\"}]\n\
        received: 2 0 1 \\x03\\x00\\x04\\x00fooval1\n\
        [\"wantframe\", {\"state\": \"command-receiving\"}]\n\
        received: 2 2 1 \\x04\\x00\\x03\\x00bar1val\n\
        [\"runcommand\", {\"args\": {\"bar1\": \"val\", \"foo\": \"val1\"}, \"command\": \"command1\", \"data\": null, \"requestid\": 1}]\n\
        received: <no frame>\n\
        {\"action\": \"noop\"}\n";
    assert_text(
        &api.post("ro/debugreflect", frames(&REFLECT_FRAMES)).await,
        StatusCode::OK,
        report,
    );
    // It runs nothing, so a write command is only described, even under ro.
    let lines = put(1, "k", "v");
    let answer = api.post("ro/debugreflect", frames(&refs(&lines))).await;
    assert_eq!(answer.0, StatusCode::OK);
    assert!(String::from_utf8_lossy(&answer.2).contains("\"command\": \"put\""));
    assert_eq!(
        api.frames("ro/get", &refs(&get(1, "k"))).await,
        ["1 error-response application no such key: k"]
    );
    // Still POST only.
    let answer = api
        .request(Method::GET, "ro/debugreflect", &[], Bytes::new())
        .await;
    assert_eq!(answer.0, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.1[ALLOW], "POST");
}

// ---- limits and malformed bodies ----

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let api = Api::start(HttpOptions::default().max_body(1000).debugreflect(true)).await;
    let mut body = BytesMut::new();
    wiremux_proto::builder::CommandBuilder::new("echo")
        .data(vec![b'x'; 995])
        .encode(1, 32768, &mut body)
        .unwrap();
    let body = body.freeze();
    assert_eq!(body.len(), 1001 + 6 + 4);
    let expected = "the request body is larger than the limit of 1000 bytes\n";
    for path in ["ro/echo", "ro/multirequest", "ro/debugreflect"] {
        assert_text(
            &api.post(path, body.clone()).await,
            StatusCode::PAYLOAD_TOO_LARGE,
            expected,
        );
    }
    // Just under the limit is fine.
    let mut body = BytesMut::new();
    wiremux_proto::builder::CommandBuilder::new("echo")
        .data(vec![b'x'; 984])
        .encode(1, 32768, &mut body)
        .unwrap();
    assert_eq!(body.len(), 1000);
    let (status, _, answer) = api.post("ro/echo", body.freeze()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        wiremux_proto::decode_all(&answer).unwrap()[0].payload.len(),
        984
    );
}

#[tokio::test]
async fn a_malformed_body_is_400_with_the_reactors_message_and_nothing_runs() {
    let api = Api::start(HttpOptions::default()).await;
    let cases: [(&str, Bytes, &str); 5] = [
        (
            "ro/echo",
            Bytes::from_static(b"\x05\x00\x00\x01\x00\x11ab"),
            "malformed request body: input ended inside a frame: 2 of 5 payload bytes of a frame for request 1\n",
        ),
        (
            "ro/multirequest",
            Bytes::from_static(b"\x00\x00"),
            "malformed request body: input ended inside a frame: 2 of 6 header bytes\n",
        ),
        (
            "ro/multirequest",
            frames(&["2 command-name eos echo"]),
            "malformed request body: request 2: a client command must use an odd request ID\n",
        ),
        (
            "ro/echo",
            frames(&["1 command-name have-data echo"]),
            "malformed request body: request 1: input ended before the command was complete (receiving data)\n",
        ),
        (
            "ro/multirequest",
            frames(&["1 command-name eos echo", "3 command-name have-args get", "3 command-argument eoa \\x03\\x00"]),
            "malformed request body: request 3: command-argument frame of 2 bytes is shorter than its 4-byte header\n",
        ),
    ];
    for (path, body, expected) in cases {
        assert_text(
            &api.post(path, body).await,
            StatusCode::BAD_REQUEST,
            expected,
        );
    }
    // A put next to a malformed command does not run either.
    let mut lines = put(1, "k", "v");
    lines.push("3 command-name 0 echo".into());
    assert_text(
        &api.post("rw/multirequest", frames(&refs(&lines))).await,
        StatusCode::BAD_REQUEST,
        "malformed request body: request 3: command-name flags must be eos alone, or have-args and/or have-data; got 0\n",
    );
    assert_eq!(
        api.frames("ro/get", &refs(&get(1, "k"))).await,
        ["1 error-response application no such key: k"]
    );
}

#[tokio::test]
async fn shutdown_refuses_new_connections() {
    let api = Api::start(HttpOptions::default()).await;
    assert_eq!(
        api.frames("ro/echo", &["1 command-name eos echo"]).await,
        ["1 bytes-response eos "]
    );
    api.server.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = api.base.parse().unwrap();
    // A fresh client: the pooled connection may still be draining.
    let result = HttpClient::new().send(request).await;
    assert!(result.is_err(), "still serving after shutdown");
}

#[tokio::test]
async fn a_body_far_over_the_limit_is_still_answered_413() {
    let api = Api::start(HttpOptions::default().max_body(1000)).await;
    let answer = api
        .post("ro/multirequest", Bytes::from(vec![0u8; 4 << 20]))
        .await;
    assert_text(
        &answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "the request body is larger than the limit of 1000 bytes\n",
    );
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_commands_it_started() {
    let api = Api::start(HttpOptions::default()).await;
    let body = frames(&[
        "1 command-name eos hang",
        "3 command-name eos hang",
        "5 command-name eos echo",
    ]);
    let addr = api.base["http://".len()..]
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/exp-http-v2-0001/ro/multirequest HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: {MEDIA_TYPE}\r\nAccept: {MEDIA_TYPE}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    // The head and the echo's frame (in its chunk) arrive while both hang.
    let mut seen = Vec::new();
    let echo = b"\x00\x00\x00\x05\x00\x42";
    while !seen.windows(echo.len()).any(|w| w == echo) {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the echo's frame within 10 s")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&seen).to_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert_eq!(HANGS_DROPPED.load(Ordering::SeqCst), 0);
    drop(stream);
    for _ in 0..100 {
        if HANGS_DROPPED.load(Ordering::SeqCst) == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} of 2 handlers cancelled 5 s after the client left",
        HANGS_DROPPED.load(Ordering::SeqCst)
    );
}

/// The same exchange as a user would type it: curl --data-binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_drives_the_api() {
    let has_curl = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_curl {
        eprintln!("note: curl is not installed; skipping the curl test");
        return;
    }
    let api = Api::start(HttpOptions::default()).await;
    let dir = std::env::temp_dir().join(format!("wiremux-http-curl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let request = dir.join("request.bin");
    let mut lines = put(1, "fruit", "apple");
    lines.extend([
        "3 command-name have-data echo".to_string(),
        "3 command-data eos pear".to_string(),
    ]);
    std::fs::write(&request, frames(&refs(&lines))).unwrap();
    let curl = |path: &str, with_types: bool| {
        let mut command = std::process::Command::new("curl");
        command
            .args(["--silent", "--show-error", "--include", "--data-binary"])
            .arg(format!("@{}", request.display()));
        if with_types {
            command.args(["-H", &format!("Content-Type: {MEDIA_TYPE}")]);
            command.args(["-H", &format!("Accept: {MEDIA_TYPE}")]);
        }
        command.arg(format!("{}{path}", api.base));
        command
    };
    let run = |mut command: std::process::Command| {
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    // Split an HTTP/1.1 answer into its lower-cased head lines and body.
    fn split(raw: &[u8]) -> (Vec<String>, Vec<u8>) {
        let at = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a head");
        let head = String::from_utf8_lossy(&raw[..at]).to_lowercase();
        let lines = head
            .split("\r\n")
            .filter(|l| !l.starts_with("date:"))
            .map(str::to_string)
            .collect();
        (lines, raw[at + 4..].to_vec())
    }

    let out = run(curl("ro/multirequest", true)).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (head, body) = split(&out.stdout);
    assert_eq!(head[0], "http/1.1 403 forbidden");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "permission denied: the `ro` URL grants read-only access, and write access is needed by put (request 1); no command was run\n"
    );

    let out = run(curl("rw/multirequest", true)).await.unwrap();
    let (head, body) = split(&out.stdout);
    assert_eq!(
        head,
        [
            "http/1.1 200 ok",
            "content-type: application/mercurial-exp-framing-0002",
            "transfer-encoding: chunked"
        ]
    );
    let mut got = human(&body);
    got.sort();
    assert_eq!(
        got,
        ["1 bytes-response eos ok", "3 bytes-response eos pear"]
    );

    let out = run(curl("rw/multirequest", false)).await.unwrap();
    let (head, body) = split(&out.stdout);
    assert_eq!(head[0], "http/1.1 406 not acceptable");
    assert_eq!(
        String::from_utf8_lossy(&body),
        "the client must send `Accept: application/mercurial-exp-framing-0002`\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn multirequest_streams_several_large_responses_whole_and_in_order() {
    let api = Api::start(HttpOptions::default()).await;
    let (status, _, body) = api
        .post(
            "ro/multirequest",
            frames(&[
                "1 command-name have-args blob",
                "3 command-name have-args blob",
                "1 command-argument eoa \\x04\\x00\\x06\\x00size200000",
                "3 command-argument eoa \\x04\\x00\\x06\\x00size100001",
                "5 command-name have-data echo",
                "5 command-data eos small",
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = wiremux_proto::decode_all(&body).unwrap();
    for (id, size) in [(1u16, 200000usize), (3, 100001), (5, 5)] {
        let mine: Vec<_> = got.iter().filter(|f| f.request_id == id).collect();
        let (last, rest) = mine.split_last().unwrap();
        assert!(rest
            .iter()
            .all(|f| format_frame(f).starts_with(&format!("{id} bytes-response continuation "))));
        assert!(format_frame(last).starts_with(&format!("{id} bytes-response eos ")));
        assert!(mine.iter().all(|f| f.payload.len() <= 32768));
        let joined: Vec<u8> = mine.iter().flat_map(|f| f.payload.to_vec()).collect();
        assert_eq!(joined.len(), size, "request {id}");
        if id == 5 {
            assert_eq!(joined, b"small");
        } else {
            assert!(joined
                .iter()
                .enumerate()
                .all(|(i, b)| *b == demo::blob_byte(i)));
        }
    }
    assert_eq!(got.len(), 7 + 4 + 1);
}
