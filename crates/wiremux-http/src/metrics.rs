//! The Prometheus endpoint: `GET /metrics` answers the server's metrics
//! ([`wiremux_engine::metrics`]) as Prometheus text; anything else is 404
//! (405 for another method on `/metrics`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::io;
use std::time::Duration;
use tokio::net::TcpListener;
use wiremux_engine::Server;

/// Serves `GET /metrics` for `server` on `listener` until
/// [`Server::shutdown`]. Scrapes are served by their own small accept
/// loop, outside the server's connection limit, so that a full server can
/// still be watched.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// let server = wiremux_engine::Server::builder()
///     .registry(wiremux_engine::demo::registry())
///     .build();
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9100").await?;
/// tokio::spawn(wiremux_http::serve_metrics(listener, server.clone()));
/// // curl http://127.0.0.1:9100/metrics
/// # Ok(()) }
/// ```
pub async fn serve_metrics(listener: TcpListener, server: Server) -> io::Result<()> {
    let shutdown = server.shutdown_requested();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) if wiremux_engine::is_transient_accept_error(&err) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(err) => return Err(err),
            },
            () = &mut shutdown => return Ok(()),
        };
        let server = server.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(answer(&server, &request)) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(err) = conn.await {
                tracing::debug!(%err, "metrics connection ended with an error");
            }
        });
    }
}

fn answer(server: &Server, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            let mut response = Response::new(Full::new(Bytes::from(
                wiremux_engine::metrics::render(server),
            )));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(wiremux_engine::metrics::CONTENT_TYPE),
            );
            return response;
        }
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        _ => (StatusCode::NOT_FOUND, "metrics are at /metrics\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}
