//! The one accept loop: `max_connections` holds for the whole server,
//! across its TCP, Unix and HTTP listeners, and any value is accepted.

mod common;

use common::{wait_stats, within};
use std::time::Duration;
use tokio::task::JoinHandle;
use wiremux::engine::{demo, Client, Config, Server};
use wiremux::proto::human::parse_frame;

fn server(max_connections: usize) -> Server {
    Server::builder()
        .registry(demo::registry())
        .config(Config {
            max_connections,
            ..Config::default()
        })
        .build()
}

/// A scratch directory for socket files, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("wiremux-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Serves `server` on a loopback TCP port and on a Unix socket in `dir`.
async fn serve_both(server: &Server, dir: &TempDir) -> (std::net::SocketAddr, std::path::PathBuf) {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let path = dir.0.join("s.sock");
    let unix = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn({
        let server = server.clone();
        async move { server.serve(tcp).await }
    });
    tokio::spawn({
        let server = server.clone();
        async move { server.serve(unix).await }
    });
    (addr, path)
}

/// An echo on `client`, as a task.
fn echo(client: &Client, text: &'static str) -> JoinHandle<String> {
    let client = client.clone();
    tokio::spawn(async move {
        let reply = client.call("echo").data(text).send().await.unwrap();
        String::from_utf8(reply.body.to_vec()).unwrap()
    })
}

/// Lets a connection that is going to be served be served: a server that
/// broke the limit would have accepted within this time on loopback.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn max_connections_holds_for_the_server_across_tcp_and_unix_listeners() {
    let dir = TempDir::new("limit");
    let server = server(2);
    let (addr, path) = serve_both(&server, &dir).await;
    let tcp_a = Client::connect(addr).await.unwrap();
    let unix_b = Client::connect_unix(&path).await.unwrap();
    assert_eq!(within("a", echo(&tcp_a, "a")).await.unwrap(), "a");
    assert_eq!(within("b", echo(&unix_b, "b")).await.unwrap(), "b");
    // The server is full: one more of each kind waits, unserved.
    let tcp_c = Client::connect(addr).await.unwrap();
    let unix_d = Client::connect_unix(&path).await.unwrap();
    let c = echo(&tcp_c, "c");
    let d = echo(&unix_d, "d");
    settle().await;
    assert_eq!(server.stats().connections_accepted, 2);
    assert!(!c.is_finished() && !d.is_finished());
    // Closing the TCP connection frees one slot: one of the two waiting
    // connections (whichever loop wins it) is served, not both.
    drop(tcp_a);
    wait_stats(&server, "a third connection", |s| {
        s.connections_accepted == 3
    })
    .await;
    within("one waiting call answered", async {
        while !c.is_finished() && !d.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    settle().await;
    assert_eq!(server.stats().connections_open, 2);
    assert!(
        c.is_finished() != d.is_finished(),
        "exactly one waiting call is answered"
    );
    drop(unix_b);
    assert_eq!(within("c", c).await.unwrap(), "c");
    assert_eq!(within("d", d).await.unwrap(), "d");
    assert_eq!(server.stats().connections_accepted, 4);
    server.shutdown();
}

#[tokio::test]
async fn a_limit_above_the_semaphore_maximum_is_clamped_not_a_panic() {
    let dir = TempDir::new("clamp");
    for max in [usize::MAX, 0] {
        let server = server(max);
        let (addr, path) = serve_both(&server, &dir).await;
        let tcp = Client::connect(addr).await.unwrap();
        let unix = Client::connect_unix(&path).await.unwrap();
        // Zero counts as one: the second connection waits for the first.
        let first = within("tcp", echo(&tcp, "tcp")).await.unwrap();
        assert_eq!(first, "tcp", "max_connections = {max}");
        if max == 0 {
            drop(tcp);
        }
        assert_eq!(within("unix", echo(&unix, "unix")).await.unwrap(), "unix");
        server.shutdown();
        let _ = std::fs::remove_file(&path);
    }
}

#[tokio::test]
async fn http_connections_count_against_the_same_limit() {
    let server = server(1);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}{}ro/echo",
        http.local_addr().unwrap(),
        wiremux::http::API_ROOT
    );
    tokio::spawn({
        let server = server.clone();
        async move { server.serve(tcp).await }
    });
    tokio::spawn(wiremux::http::serve(
        http,
        server.clone(),
        wiremux::http::HttpOptions::default(),
    ));
    let client = Client::connect(addr).await.unwrap();
    assert_eq!(within("tcp", echo(&client, "tcp")).await.unwrap(), "tcp");
    let post = tokio::spawn(async move {
        let frames = [
            parse_frame("1 command-name have-data echo").unwrap(),
            parse_frame("1 command-data eos over http").unwrap(),
        ];
        let response = wiremux::http::HttpClient::new()
            .post_frames(&url, &frames)
            .await
            .unwrap();
        response.frames().await.unwrap()
    });
    settle().await;
    assert!(!post.is_finished(), "the HTTP connection must wait");
    drop(client);
    let frames = within("the HTTP answer", post).await.unwrap();
    assert_eq!(&frames[0].payload[..], b"over http");
    server.shutdown();
}

#[tokio::test]
async fn an_idle_listener_holds_no_slot_that_another_listener_needs() {
    let dir = TempDir::new("idle");
    let server = server(1);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::spawn({
        let server = server.clone();
        async move { server.serve(tcp).await }
    });
    // The TCP loop is up and waiting for a peer that never comes...
    settle().await;
    let path = dir.0.join("s.sock");
    let unix = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn({
        let server = server.clone();
        async move { server.serve(unix).await }
    });
    // ...and the one slot is still there for the Unix peer.
    let client = Client::connect_unix(&path).await.unwrap();
    assert_eq!(within("unix", echo(&client, "unix")).await.unwrap(), "unix");
    server.shutdown();
}
