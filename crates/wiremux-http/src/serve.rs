//! The accept loop: one hyper HTTP/1.1 connection task per TCP connection,
//! a graceful stop when the engine's server shuts down.

use crate::options::HttpOptions;
use crate::service::HttpService;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;
use wiremux_engine::Server;

/// Serves the HTTP API of `server` on `listener` until
/// [`Server::shutdown`]: then stops accepting, lets requests in flight
/// finish within the server's drain timeout, and returns.
///
/// Connections share the server's registry, settings and runtime with its
/// other transports; at most `max_connections` (from the server's
/// [`Config`](wiremux_engine::Config)) are served at once.
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
    let header_timeout = options.header_timeout;
    let service = HttpService::new(server.clone(), options);
    let slots = Arc::new(Semaphore::new(
        server.config().max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut connections = JoinSet::new();
    let shutdown = server.shutdown_requested();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) if wiremux_engine::is_transient_accept_error(&err) => {
                tracing::warn!(%err, "http: accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(err) => return Err(err),
        };
        let _ = stream.set_nodelay(true);
        let span = tracing::debug_span!("http connection", %peer);
        connections.spawn(
            connection(
                stream,
                service.clone(),
                header_timeout,
                stop_rx.clone(),
                slot,
            )
            .instrument(span),
        );
        while connections.try_join_next().is_some() {}
    }
    // Shutdown: every connection finishes the request it is on, then
    // closes; whatever is left after the drain timeout is stopped.
    let _ = stop_tx.send(true);
    let grace = server.config().drain_timeout + Duration::from_secs(1);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.abort_all();
    }
    Ok(())
}

/// Serves one connection; on shutdown, lets its current request finish.
async fn connection(
    stream: TcpStream,
    service: HttpService,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let stopped = async move {
        // A closed channel means the loop is gone: stop as well.
        let _ = stop.wait_for(|stop| *stop).await.map(|_| ());
    };
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stopped => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, "http connection ended with an error");
    }
}
