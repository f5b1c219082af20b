//! The HTTP transport's connections: one hyper HTTP/1.1 connection task
//! per accepted connection, through the engine's one accept loop (and so
//! under its server-wide connection limit), and a graceful stop when the
//! engine's server shuts down.

use crate::options::HttpOptions;
use crate::service::HttpService;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use wiremux_engine::tls::TlsAcceptor;
use wiremux_engine::{Listener, Server};

/// Serves the HTTP API of `server` on `listener` until
/// [`Server::shutdown`]: then stops accepting, lets requests in flight
/// finish within the server's drain timeout, and returns.
///
/// Connections share the server's registry, settings, runtime and
/// connection limit with its other transports: at most `max_connections`
/// (from the server's [`Config`](wiremux_engine::Config)) are open at
/// once across all of the server's listeners.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// let server = wiremux_engine::Server::builder()
///     .registry(wiremux_engine::demo::registry())
///     .build();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// wiremux_http::serve(listener, server, wiremux_http::HttpOptions::default()).await
/// # }
/// ```
pub async fn serve(listener: TcpListener, server: Server, options: HttpOptions) -> io::Result<()> {
    serve_on(listener, server, options).await
}

/// [`serve`] on any [`Listener`] (a Unix socket, say).
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// let server = wiremux_engine::Server::builder().build();
/// let listener = tokio::net::UnixListener::bind("/tmp/wiremux-http.sock")?;
/// wiremux_http::serve_on(listener, server, wiremux_http::HttpOptions::default()).await
/// # }
/// ```
pub async fn serve_on<L: Listener>(
    listener: L,
    server: Server,
    options: HttpOptions,
) -> io::Result<()> {
    let header_timeout = options.header_timeout;
    let service = HttpService::new(server.clone(), options);
    let stop = server.clone();
    server
        .serve_connections(listener, move |io, _peer| {
            connection(io, service.clone(), header_timeout, stop.clone())
        })
        .await
}

/// [`serve_on`] over TLS: each connection's handshake runs in its own
/// task with the acceptor's timeout; one that fails is logged and closed.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// let server = wiremux_engine::Server::builder()
///     .registry(wiremux_engine::demo::registry())
///     .build();
/// let tls = wiremux_engine::tls::TlsAcceptor::from_pem_files(
///     "cert.pem".as_ref(),
///     "key.pem".as_ref(),
/// )?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8443").await?;
/// wiremux_http::serve_tls(listener, server, wiremux_http::HttpOptions::default(), tls).await
/// # }
/// ```
pub async fn serve_tls<L: Listener>(
    listener: L,
    server: Server,
    options: HttpOptions,
    tls: TlsAcceptor,
) -> io::Result<()> {
    let header_timeout = options.header_timeout;
    let service = HttpService::new(server.clone(), options);
    let stop = server.clone();
    server
        .serve_connections(listener, move |io, peer| {
            let (service, stop, tls) = (service.clone(), stop.clone(), tls.clone());
            async move {
                if let Ok(stream) = tls.accept(io, &peer).await {
                    connection(stream, service, header_timeout, stop).await;
                }
            }
        })
        .await
}

/// Serves one connection; on shutdown, lets its current request finish.
pub(crate) async fn connection<IO>(
    io: IO,
    service: HttpService,
    header_timeout: Duration,
    server: Server,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = server.shutdown_requested() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, "http connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    //! The HTTP transport's own time and memory limits, in memory and on
    //! paused time: the exact moment of each cut is asserted.

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::Instant;

    const HEAD: &str = "POST /api/exp-http-v2-0001/rw/echo HTTP/1.1\r\nHost: t\r\n\
        Accept: application/mercurial-exp-framing-0002\r\n\
        Content-Type: application/mercurial-exp-framing-0002\r\n";

    /// `echo` of `data`, as frames.
    fn echo_body(data: &str) -> Vec<u8> {
        let mut wire = bytes::BytesMut::new();
        wiremux_proto::builder::CommandBuilder::new("echo")
            .data(data.to_string())
            .encode(1, 32768, &mut wire)
            .unwrap();
        wire.to_vec()
    }

    fn service(options: HttpOptions) -> HttpService {
        let server = Server::builder()
            .registry(wiremux_engine::demo::registry())
            .build();
        HttpService::new(server, options)
    }

    /// Serves one in-memory connection of `service`; the client's end.
    fn connect(service: &HttpService) -> DuplexStream {
        let (client, io) = tokio::io::duplex(1 << 20);
        let header_timeout = service.options().header_timeout;
        tokio::spawn(connection(
            io,
            service.clone(),
            header_timeout,
            service.server().clone(),
        ));
        client
    }

    /// Everything the server writes until it closes.
    async fn read_all(client: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn headers_sent_one_byte_a_second_are_cut_at_the_header_timeout() {
        let service = service(HttpOptions::default());
        let started = Instant::now();
        let (mut read, mut write) = tokio::io::split(connect(&service));
        // One byte at 0.5 s, 1.5 s, ...: 30 bytes before the 30 s timeout.
        let writer = tokio::spawn(async move {
            let mut sent = 0;
            for byte in HEAD.bytes() {
                tokio::time::sleep(Duration::from_millis(if sent == 0 { 500 } else { 1000 })).await;
                if write.write_all(&[byte]).await.is_err() {
                    break;
                }
                sent += 1;
            }
            sent
        });
        let mut out = Vec::new();
        read.read_to_end(&mut out).await.unwrap();
        // Closed without an answer, at the timeout exactly.
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        assert_eq!(writer.await.unwrap(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_at_the_header_timeout() {
        let service = service(HttpOptions::default());
        let started = Instant::now();
        let mut client = connect(&service);
        assert_eq!(read_all(&mut client).await, "");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunked_body_one_byte_a_second_is_408_at_the_body_timeout() {
        let service = service(HttpOptions::default());
        let started = Instant::now();
        let (mut read, mut write) = tokio::io::split(connect(&service));
        let writer = tokio::spawn(async move {
            let head = format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n");
            write.write_all(head.as_bytes()).await.unwrap();
            // A chunk of one byte every second, for ever.
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if write.write_all(b"1\r\nx\r\n").await.is_err() {
                    break;
                }
            }
        });
        let mut out = Vec::new();
        read.read_to_end(&mut out).await.unwrap();
        // 30 s for the body, then up to 2 s reading and dropping the rest
        // of it (it does not end), then the answer and the close.
        assert_eq!(started.elapsed(), Duration::from_secs(32));
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{out}");
        assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
        assert!(
            out.ends_with("\r\n\r\nthe request body did not arrive within 30000 ms\n"),
            "{out}"
        );
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn bodies_past_the_buffered_budget_are_503_until_room_is_given_back() {
        let body = echo_body(&"x".repeat(64));
        assert_eq!(body.len(), 80);
        let service = service(HttpOptions::default().max_buffered_bodies(100));
        let request = |len: usize| {
            format!("{HEAD}Content-Length: {len}\r\nConnection: close\r\n\r\n").into_bytes()
        };
        // A declares 80 bytes and sends 10 of them: 80 of the 100 are held.
        let mut a = connect(&service);
        a.write_all(&request(80)).await.unwrap();
        a.write_all(&body[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // B's 30 bytes would pass 100: refused before it is read.
        let mut b = connect(&service);
        b.write_all(&request(30)).await.unwrap();
        b.write_all(&[0u8; 30]).await.unwrap();
        let answer = read_all(&mut b).await;
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
        assert!(
            answer.ends_with(
                "\r\n\r\nthe server is busy: request bodies held at once would pass its limit of 100 bytes; retry later\n"
            ),
            "{answer}"
        );
        // A chunked body is held as it arrives: the same refusal once it
        // passes the 20 bytes left.
        let mut c = connect(&service);
        let head = format!("{HEAD}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(b"15\r\n").await.unwrap();
        c.write_all(&[0u8; 21]).await.unwrap();
        c.write_all(b"\r\n0\r\n\r\n").await.unwrap();
        let answer = read_all(&mut c).await;
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        // A finishes and is answered; its share comes back with the answer.
        a.write_all(&body[10..]).await.unwrap();
        let answer = read_all(&mut a).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let mut b = connect(&service);
        b.write_all(&request(80)).await.unwrap();
        b.write_all(&body).await.unwrap();
        let answer = read_all(&mut b).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert_eq!(service.room_for_bodies(), 100);
    }
}
