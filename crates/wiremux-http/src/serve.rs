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
