//! The hyper service: routes a request, makes the checks of PROTOCOL.md §7
//! in a fixed order, reads the body, and answers.
//!
//! The order of the checks (the first that fails decides the status):
//! 1. the path: outside the API, one part, more than two parts, an unknown
//!    permission: 404. The API root answers `GET`/`HEAD` with 200.
//! 2. the method: anything but `POST`: 405 with `Allow: POST`.
//! 3. `debugreflect` when it is off: 404.
//! 4. an unknown command: 404.
//! 5. `Accept` without the media type: 406; `Content-Type` other than the
//!    media type: 415.
//! 6. a single command needing more than the URL grants: 403.
//! 7. the body: over the limit 413, too slow 408, past the server-wide
//!    budget of bodies held at once 503 (with `Retry-After: 1`),
//!    malformed 400.
//! 8. `multirequest`: any command needing more than the URL grants: 403,
//!    and nothing runs. A single-command URL whose body holds another
//!    command, or more than one: 400.

use crate::exchange::{assemble, check_all, check_single, name};
use crate::options::HttpOptions;
use crate::responses::Responses;
use crate::route::{route, Route, Target, UrlPermission, API_ROOT};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Body;
use hyper::header::{
    HeaderValue, ACCEPT, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER,
};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wiremux_engine::{Permission, Refusal, Server};
use wiremux_proto::MEDIA_TYPE;

/// The body of every response: text, or a stream of frames.
pub type HttpBody = UnsyncBoxBody<Bytes, Infallible>;

/// The content type of text answers.
const TEXT: &str = "text/plain; charset=utf-8";

/// How long to keep reading and dropping the body of a refused request, so
/// that the client reads the refusal instead of a reset connection.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The most of a refused request's body read and dropped.
const DRAIN_MAX: usize = 1 << 20;

/// The HTTP API of one [`Server`] as a hyper service. Cheap to clone.
///
/// [`serve`](crate::serve) runs it on a TCP listener; use it directly to
/// mount the API in another hyper server.
///
/// ```
/// use wiremux_http::{HttpOptions, HttpService};
/// let service = HttpService::new(wiremux_engine::Server::builder().build(), HttpOptions::default());
/// # let _ = service;
/// ```
#[derive(Clone, Debug)]
pub struct HttpService {
    server: Server,
    options: Arc<HttpOptions>,
    /// Bytes of request bodies that may still be held
    /// ([`HttpOptions::max_buffered_bodies`]).
    bodies: Arc<Semaphore>,
}

/// The share of [`HttpService::bodies`] one request's body holds, given
/// back when dropped (with the response body, once sent).
struct BodyPermit {
    bodies: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl BodyPermit {
    /// Holds `total` bytes in all; `false` (holding what it held) if the
    /// budget has no room for the rest.
    fn hold(&mut self, total: usize) -> bool {
        if total <= self.bytes {
            return true;
        }
        let Ok(more) = u32::try_from(total - self.bytes) else {
            return false;
        };
        let Ok(permit) = self.bodies.clone().try_acquire_many_owned(more) else {
            return false;
        };
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        self.bytes = total;
        true
    }
}

/// A refusal before any command runs: a status and a text body.
struct Refused {
    status: StatusCode,
    message: String,
    allow: Option<&'static str>,
    retry_after: bool,
}

impl Refused {
    fn new(status: StatusCode, message: impl Into<String>) -> Refused {
        Refused {
            status,
            message: message.into(),
            allow: None,
            retry_after: false,
        }
    }
}

type Answer = Result<Response<HttpBody>, Refused>;

impl HttpService {
    /// The API of `server`, with `options`.
    pub fn new(server: Server, options: HttpOptions) -> HttpService {
        let budget = options.max_buffered_bodies.min(Semaphore::MAX_PERMITS);
        HttpService {
            server,
            options: Arc::new(options),
            bodies: Arc::new(Semaphore::new(budget)),
        }
    }

    /// The server whose API this is.
    #[cfg(test)]
    pub(crate) fn server(&self) -> &Server {
        &self.server
    }

    /// The settings.
    #[cfg(test)]
    pub(crate) fn options(&self) -> &HttpOptions {
        &self.options
    }

    /// Bytes of the budget of bodies held not taken now.
    #[cfg(test)]
    pub(crate) fn room_for_bodies(&self) -> usize {
        self.bodies.available_permits()
    }

    /// Answers one request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<HttpBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display,
    {
        let (parts, mut body) = request.into_parts();
        match self
            .answer(&parts.method, &parts.uri, &parts.headers, &mut body)
            .await
        {
            Ok(response) => response,
            Err(refused) => {
                let drained = drain(&mut body, self.options.max_body.min(DRAIN_MAX)).await;
                let mut response = text(refused.status, refused.message);
                if let Some(allow) = refused.allow {
                    response
                        .headers_mut()
                        .insert(ALLOW, HeaderValue::from_static(allow));
                }
                if refused.retry_after {
                    response
                        .headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                }
                if !drained {
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                response
            }
        }
    }

    async fn answer<B>(
        &self,
        method: &Method,
        uri: &hyper::Uri,
        headers: &HeaderMap,
        body: &mut B,
    ) -> Answer
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let (url_permission, target) = match route(uri.path()) {
            Route::NotFound(why) => return Err(Refused::new(StatusCode::NOT_FOUND, why)),
            Route::Root if method == Method::GET || method == Method::HEAD => {
                return Ok(text(
                    StatusCode::OK,
                    format!(
                        "wiremux: Mercurial's HTTP API version 2 (frame-based). \
                         POST frames of {MEDIA_TYPE} to {API_ROOT}<ro|rw>/<command>, \
                         or to {API_ROOT}<ro|rw>/multirequest for many commands."
                    ),
                ))
            }
            Route::Root => {
                return Err(Refused {
                    allow: Some("GET, HEAD"),
                    ..Refused::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "the API root answers GET and HEAD only",
                    )
                })
            }
            Route::Command { permission, target } => (permission, target),
        };
        if method != Method::POST {
            return Err(Refused {
                allow: Some("POST"),
                ..Refused::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("commands need POST; got {method}"),
                )
            });
        }
        if self.server.is_shutting_down() {
            return Err(Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ));
        }
        // The URL grants at most what the server grants every connection.
        let granted = url_permission.permission().min(self.server.granted());
        let registry = self.server.registry();
        match target {
            Target::Debugreflect if !self.options.debugreflect => {
                return Err(Refused::new(
                    StatusCode::NOT_FOUND,
                    "debugreflect is not enabled on this server",
                ))
            }
            Target::Debugreflect => {
                let (body, _held) = self.read_body(headers, body).await?;
                let report = wiremux_proto::reflect::reflect_with(
                    wiremux_proto::server::ServerReactor::with_limits(
                        self.server.config().limits.clone(),
                    ),
                    wiremux_proto::FrameCodec::new()
                        .max_recv_payload(self.server.config().max_recv_payload),
                    &body,
                );
                return Ok(text(StatusCode::OK, report));
            }
            Target::Command(command) => {
                if let Err(Refusal::Unknown(_)) = registry.check(command.as_bytes(), granted) {
                    return Err(Refused::new(
                        StatusCode::NOT_FOUND,
                        format!("unknown command: {command}"),
                    ));
                }
            }
            Target::Multirequest => {}
        }
        check_media_types(headers)?;
        if let Target::Command(command) = target {
            if let Err(Refusal::ReadOnly(_)) = registry.check(command.as_bytes(), granted) {
                return Err(forbidden(url_permission, granted, command));
            }
        }
        let (body, held) = self.read_body(headers, body).await?;
        let body = body.freeze();
        let assembled =
            assemble(BytesMut::from(&body[..]), self.server.config()).map_err(|message| {
                Refused::new(
                    StatusCode::BAD_REQUEST,
                    format!("malformed request body: {message}"),
                )
            })?;
        match target {
            Target::Command(command) => check_single(command, &assembled.commands)
                .map_err(|message| Refused::new(StatusCode::BAD_REQUEST, message))?,
            _ => check_all(registry, &assembled.commands, granted)
                .map_err(|names| forbidden(url_permission, granted, &names))?,
        }
        tracing::debug!(
            commands = ?assembled.commands.iter().map(name).collect::<Vec<_>>(),
            "http: running"
        );
        let responses = Responses::start(&self.server, body, granted);
        // The body's share of the budget is given back with the response.
        let body = StreamBody::new(responses.map(move |chunk| {
            let _held = &held;
            Ok::<_, Infallible>(hyper::body::Frame::data(chunk))
        }));
        let mut response = Response::new(BodyExt::boxed_unsync(body));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
        Ok(response)
    }

    /// Reads the whole body, within the size limit, the body timeout and
    /// the server-wide budget of bodies held; the body's share of that
    /// budget comes with it.
    async fn read_body<B>(
        &self,
        headers: &HeaderMap,
        body: &mut B,
    ) -> Result<(BytesMut, BodyPermit), Refused>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let max = self.options.max_body;
        let too_large = || {
            Refused::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the limit of {max} bytes"),
            )
        };
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max as u64) {
            return Err(too_large());
        }
        let budget = self.options.max_buffered_bodies;
        let busy = || {
            Refused {
            retry_after: true,
            ..Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the server is busy: request bodies held at once would pass its limit of {budget} bytes; retry later"
                ),
            )
        }
        };
        let mut held = BodyPermit {
            bodies: self.bodies.clone(),
            held: None,
            bytes: 0,
        };
        // A declared length is held whole before any of it is read.
        if !held.hold(declared.unwrap_or(0) as usize) {
            return Err(busy());
        }
        let read = async {
            let mut buf = BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| {
                    Refused::new(
                        StatusCode::BAD_REQUEST,
                        format!("reading the request body: {e}"),
                    )
                })?;
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > max {
                        return Err(too_large());
                    }
                    if !held.hold(buf.len() + data.len()) {
                        return Err(busy());
                    }
                    buf.extend_from_slice(&data);
                }
            }
            Ok(buf)
        };
        let timeout = self.options.body_timeout;
        let buf = tokio::time::timeout(timeout, read)
            .await
            .unwrap_or_else(|_| {
                Err(Refused::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} ms",
                        timeout.as_millis()
                    ),
                ))
            })?;
        Ok((buf, held))
    }
}

impl<B> hyper::service::Service<Request<B>> for HttpService
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    type Response = Response<HttpBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<HttpBody>, Infallible>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        let service = self.clone();
        async move { Ok(service.handle(request).await) }.boxed()
    }
}

/// 406 unless `Accept` lists the media type; 415 unless `Content-Type` is it.
fn check_media_types(headers: &HeaderMap) -> Result<(), Refused> {
    let accepts = headers.get_all(ACCEPT).iter().any(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',')
                .any(|item| is_media_type(item.split(';').next().unwrap_or_default()))
        })
    });
    if !accepts {
        return Err(Refused::new(
            StatusCode::NOT_ACCEPTABLE,
            format!("the client must send `Accept: {MEDIA_TYPE}`"),
        ));
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default());
    if !content_type.is_some_and(is_media_type) {
        return Err(Refused::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("the client must send `Content-Type: {MEDIA_TYPE}`"),
        ));
    }
    Ok(())
}

fn is_media_type(text: &str) -> bool {
    text.trim().eq_ignore_ascii_case(MEDIA_TYPE)
}

/// 403 naming what needs more access than the URL grants.
fn forbidden(url: UrlPermission, granted: Permission, commands: &str) -> Refused {
    let why = if url == UrlPermission::Rw && granted == Permission::Read {
        "this server is read-only".to_string()
    } else {
        format!("the `{}` URL grants read-only access", url.as_str())
    };
    Refused::new(
        StatusCode::FORBIDDEN,
        format!("permission denied: {why}, and write access is needed by {commands}; no command was run"),
    )
}

/// A text answer.
fn text(status: StatusCode, mut message: String) -> Response<HttpBody> {
    if !message.ends_with('\n') {
        message.push('\n');
    }
    let mut response = Response::new(BodyExt::boxed_unsync(Full::new(Bytes::from(message))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    response
}

/// Reads and drops what is left of a refused request's body (at most
/// `max` bytes, briefly), so that closing does not reset the connection
/// under the refusal. `false` if the body was not read to its end.
async fn drain<B>(body: &mut B, max: usize) -> bool
where
    B: Body<Data = Bytes> + Unpin,
{
    if body.is_end_stream() {
        return true;
    }
    let read = async {
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Ok(data) = frame.into_data() {
                seen += data.len();
                if seen > max {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIMEOUT, read)
        .await
        .unwrap_or(false)
}
