//! A small client for the HTTP API: posts frames with the right headers
//! and reads the answer, frame by frame as it arrives.

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::{HeaderMap, Method, Request, StatusCode, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use wiremux_engine::tls::rustls;
use wiremux_proto::{CodecError, Frame, FrameCodec, MEDIA_TYPE};

/// What can go wrong talking to an HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL does not parse.
    #[error("bad URL `{url}`: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The request could not be sent or the answer's head not read.
    #[error("HTTP request failed: {0}")]
    Request(String),
    /// The answer's body could not be read.
    #[error("reading the HTTP response body: {0}")]
    Body(String),
    /// The answer's body is not whole frames.
    #[error("bad frames in the response: {0}")]
    Frames(#[from] CodecError),
}

/// An HTTP/1.1 client for the frame API, on hyper-util's pooled client.
///
/// ```no_run
/// # async fn demo() -> Result<(), wiremux_http::HttpError> {
/// use wiremux_proto::human::parse_frame;
/// let client = wiremux_http::HttpClient::new();
/// let frames = [parse_frame("1 command-name eos echo").unwrap()];
/// let mut response = client
///     .post_frames("http://127.0.0.1:8080/api/exp-http-v2-0001/ro/echo", &frames)
///     .await?;
/// while let Some(frame) = response.next_frame().await? {
///     println!("{}", wiremux_proto::human::format_frame(&frame));
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient::new()
    }
}

impl HttpClient {
    /// A client with a connection pool, for `http://` URLs (an `https://`
    /// URL fails: no certificate is trusted; see [`HttpClient::with_tls`]).
    pub fn new() -> HttpClient {
        let roots = wiremux_engine::tls::client_config_with_roots(rustls::RootCertStore::empty())
            .expect("the ring provider supports the default versions");
        HttpClient::with_tls(roots)
    }

    /// A client for `http://` and `https://` URLs, with `config` saying
    /// which server certificates to trust
    /// ([`wiremux_engine::tls::client_config`] for your CA,
    /// [`wiremux_engine::tls::insecure_client_config`] for a self-signed
    /// test server).
    ///
    /// ```no_run
    /// # fn demo() -> std::io::Result<()> {
    /// let config = wiremux_engine::tls::client_config(&std::fs::read("ca.pem")?)?;
    /// let client = wiremux_http::HttpClient::with_tls(config);
    /// # Ok(()) }
    /// ```
    pub fn with_tls(config: Arc<rustls::ClientConfig>) -> HttpClient {
        let config = (*config).clone();
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Posts `frames` to `url` with the frame media type as `Content-Type`
    /// and `Accept`.
    pub async fn post_frames(
        &self,
        url: &str,
        frames: &[Frame],
    ) -> Result<HttpResponse, HttpError> {
        let mut body = BytesMut::new();
        for frame in frames {
            frame.encode(&mut body);
        }
        self.post(url, body.freeze()).await
    }

    /// Posts raw bytes to `url` with the frame media type as `Content-Type`
    /// and `Accept`.
    pub async fn post(&self, url: &str, body: Bytes) -> Result<HttpResponse, HttpError> {
        let uri: Uri =
            url.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| HttpError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
        headers.insert(ACCEPT, HeaderValue::from_static(MEDIA_TYPE));
        self.send(request).await
    }

    /// Sends any request (for other methods or headers).
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<HttpResponse, HttpError> {
        let response = self
            .inner
            .request(request)
            .await
            .map_err(|e| HttpError::Request(error_chain(&e)))?;
        let (parts, body) = response.into_parts();
        Ok(HttpResponse {
            status: parts.status,
            headers: parts.headers,
            body,
            buf: BytesMut::new(),
            codec: FrameCodec::new().max_recv_payload(wiremux_proto::frame::MAX_WIRE_PAYLOAD),
            ended: false,
        })
    }
}

/// An answer whose body is read on demand.
#[derive(Debug)]
pub struct HttpResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Incoming,
    buf: BytesMut,
    codec: FrameCodec,
    ended: bool,
}

impl HttpResponse {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Whether the body is frames (its `Content-Type` is the media type).
    pub fn has_frames(&self) -> bool {
        self.headers
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(MEDIA_TYPE.as_bytes()))
    }

    /// The next frame of the body, as soon as it has arrived; `None` at the
    /// end. A body that ends inside a frame is an error.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, HttpError> {
        loop {
            if let Some(frame) = self.codec.decode_frame(&mut self.buf)? {
                return Ok(Some(frame));
            }
            if self.ended {
                return Ok(self.codec.decode_frame_eof(&mut self.buf)?);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(HttpError::Body(error_chain(&e))),
                None => self.ended = true,
            }
        }
    }

    /// Every frame of the body.
    pub async fn frames(mut self) -> Result<Vec<Frame>, HttpError> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next_frame().await? {
            frames.push(frame);
        }
        Ok(frames)
    }

    /// The whole body.
    pub async fn bytes(mut self) -> Result<Bytes, HttpError> {
        let rest = self
            .body
            .collect()
            .await
            .map_err(|e| HttpError::Body(error_chain(&e)))?
            .to_bytes();
        self.buf.extend_from_slice(&rest);
        Ok(self.buf.freeze())
    }

    /// The whole body as text (lossy).
    pub async fn text(self) -> Result<String, HttpError> {
        Ok(String::from_utf8_lossy(&self.bytes().await?).into_owned())
    }
}

/// An error and its sources, on one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
