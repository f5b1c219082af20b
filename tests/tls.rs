//! TLS end to end: certificates made at run time (rcgen), the engine's
//! client and the HTTP client against TLS listeners, a plaintext client
//! on a TLS port, and the handshake timeout.

mod common;

use common::within;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremux::engine::tls::{self, TlsAcceptor};
use wiremux::engine::{demo, Client, Server};
use wiremux::proto::human::parse_frame;

/// A self-signed certificate for `localhost` and 127.0.0.1: (cert PEM, key PEM).
fn certificate() -> (String, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (made.cert.pem(), made.signing_key.serialize_pem())
}

async fn tls_server() -> (Server, std::net::SocketAddr, String) {
    let (cert, key) = certificate();
    let acceptor = TlsAcceptor::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let server = Server::builder().registry(demo::registry()).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn({
        let server = server.clone();
        async move { server.serve_tls(listener, acceptor).await }
    });
    (server, addr, cert)
}

#[tokio::test]
async fn a_verifying_client_calls_over_tls() {
    let (server, addr, cert) = tls_server().await;
    let config = tls::client_config(cert.as_bytes()).unwrap();
    for name in ["localhost", "127.0.0.1"] {
        let client = within("connect", Client::connect_tls(addr, name, config.clone()))
            .await
            .unwrap();
        let calls = (0..200).map(|i| {
            let client = client.clone();
            async move {
                let reply = client.call("echo").data(format!("tls {i}")).send().await;
                assert_eq!(reply.unwrap().body, format!("tls {i}"));
            }
        });
        within("200 echoes", futures::future::join_all(calls)).await;
        let blob = within("a blob", client.call("blob").arg("size", "300000").send())
            .await
            .unwrap();
        assert_eq!(blob.body.len(), 300_000);
    }
    server.shutdown();
}

#[tokio::test]
async fn a_certificate_for_another_name_or_issuer_is_refused() {
    let (server, addr, cert) = tls_server().await;
    let config = tls::client_config(cert.as_bytes()).unwrap();
    let err = Client::connect_tls(addr, "example.com", config)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // Trusting some other certificate: not this server's.
    let (other, _) = certificate();
    let config = tls::client_config(other.as_bytes()).unwrap();
    let err = Client::connect_tls(addr, "localhost", config)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    // The insecure configuration takes it (and the server still works).
    let client = Client::connect_tls(addr, "localhost", tls::insecure_client_config())
        .await
        .unwrap();
    let reply = within("echo", client.call("echo").data("any").send()).await;
    assert_eq!(reply.unwrap().body, "any");
    server.shutdown();
}

#[tokio::test]
async fn a_plaintext_client_on_a_tls_port_is_closed_and_the_server_goes_on() {
    let (server, addr, cert) = tls_server().await;
    // Raw frames where a ClientHello belongs: the handshake fails and the
    // server closes the connection (after a TLS alert), without a wait.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    parse_frame("1 command-name eos echo")
        .unwrap()
        .encode(&mut out);
    raw.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    // Ends (at the end of the stream, or with a reset) rather than hangs.
    let _ = within("the server to close", raw.read_to_end(&mut got)).await;
    assert!(
        wiremux::proto::decode_all(&got).map_or(true, |f| f.is_empty()),
        "no frame answers a plaintext client: {got:?}"
    );
    // The engine's plaintext client gets an error for its call, not a hang.
    let plain = Client::connect(addr).await.unwrap();
    let err = within("a plaintext call", plain.call("echo").data("x").send())
        .await
        .unwrap_err();
    assert!(err.is_connection_error(), "{err}");
    // And TLS clients are served as before.
    let config = tls::client_config(cert.as_bytes()).unwrap();
    let client = Client::connect_tls(addr, "localhost", config)
        .await
        .unwrap();
    let reply = within("echo", client.call("echo").data("after").send()).await;
    assert_eq!(reply.unwrap().body, "after");
    server.shutdown();
}

#[tokio::test]
async fn the_http_api_over_https() {
    let (cert, key) = certificate();
    let acceptor = TlsAcceptor::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let server = Server::builder().registry(demo::registry()).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}{}ro/echo",
        listener.local_addr().unwrap().port(),
        wiremux::http::API_ROOT
    );
    tokio::spawn(wiremux::http::serve_tls(
        listener,
        server.clone(),
        wiremux::http::HttpOptions::default(),
        acceptor,
    ));
    let frames = [
        parse_frame("1 command-name have-data echo").unwrap(),
        parse_frame("1 command-data eos over https").unwrap(),
    ];
    let client = wiremux::http::HttpClient::with_tls(tls::client_config(cert.as_bytes()).unwrap());
    for _ in 0..3 {
        let response = within("POST", client.post_frames(&url, &frames))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer = within("frames", response.frames()).await.unwrap();
        assert_eq!(&answer[0].payload[..], b"over https");
    }
    // A client that trusts nothing refuses the server.
    let err = wiremux::http::HttpClient::new()
        .post_frames(&url, &frames)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    server.shutdown();
}
