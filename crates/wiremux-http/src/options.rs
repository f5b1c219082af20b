//! The settings of the HTTP transport, each with its default.

use std::time::Duration;

/// Settings of the HTTP transport. The engine's [`Config`](wiremux_engine::Config)
/// still governs everything per command (frame and argument limits, the
/// request deadline, read-only mode); these cover what is HTTP's own.
///
/// ```
/// use wiremux_http::HttpOptions;
///
/// let options = HttpOptions { debugreflect: true, ..HttpOptions::default() };
/// assert_eq!(options.max_body, 32 << 20);
/// assert_eq!(options.max_buffered_bodies, 256 << 20);
/// let same = HttpOptions::default().debugreflect(true);
/// assert_eq!(options, same);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Serve `<ro|rw>/debugreflect` (the reflect report). Default false:
    /// the URL then answers 404.
    pub debugreflect: bool,
    /// Largest request body accepted, in bytes. A larger one is answered
    /// 413. Default 32 MiB (the reactor's default per-connection buffer).
    pub max_body: usize,
    /// Longest time the request body may take to arrive once the headers
    /// are in. Slower: 408. Default 30 s.
    pub body_timeout: Duration,
    /// Longest time the request headers may take to arrive (hyper's header
    /// read timeout; it runs from the moment the connection waits for a
    /// request, so an idle kept-alive connection is closed after it too).
    /// The connection is closed without an answer. Default 30 s.
    pub header_timeout: Duration,
    /// Most bytes of request bodies held at once, across every connection
    /// of one [`HttpService`](crate::HttpService): a body counts from its
    /// first byte (or, with `Content-Length`, its whole length at once)
    /// until its response has been sent. A request whose body would pass
    /// it is answered 503 with `Retry-After: 1`. Default 256 MiB (eight
    /// bodies of the largest size); running a body's commands holds about
    /// as much again (their arguments and data).
    pub max_buffered_bodies: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            debugreflect: false,
            max_body: 32 << 20,
            body_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            max_buffered_bodies: 256 << 20,
        }
    }
}

impl HttpOptions {
    /// Turns the `debugreflect` URL on or off.
    pub fn debugreflect(mut self, on: bool) -> HttpOptions {
        self.debugreflect = on;
        self
    }

    /// Sets the largest request body accepted.
    pub fn max_body(mut self, bytes: usize) -> HttpOptions {
        self.max_body = bytes;
        self
    }

    /// Sets how long the request body may take to arrive.
    pub fn body_timeout(mut self, timeout: Duration) -> HttpOptions {
        self.body_timeout = timeout;
        self
    }

    /// Sets how long the request headers may take to arrive.
    pub fn header_timeout(mut self, timeout: Duration) -> HttpOptions {
        self.header_timeout = timeout;
        self
    }

    /// Sets the most bytes of request bodies held at once.
    pub fn max_buffered_bodies(mut self, bytes: usize) -> HttpOptions {
        self.max_buffered_bodies = bytes;
        self
    }
}
