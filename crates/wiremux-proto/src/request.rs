//! A complete request, as the reactor assembles it and as a handler
//! receives it: one type from the wire to the handler.
//!
//! ```
//! use wiremux_proto::request::Request;
//!
//! let req = Request::new("sleep").with_arg("ms", "x5");
//! assert_eq!(req.arg_parse::<u64>("ms").unwrap_err().to_string(), "malformed argument ms: `x5` is not a valid value");
//! assert_eq!(req.arg_parse::<u64>("us").unwrap_err().to_string(), "missing argument: us");
//! ```

use bytes::Bytes;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// A complete command, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request ID the response must carry.
    pub request_id: u16,
    /// The command name, as sent.
    pub name: Bytes,
    /// Arguments in the order they arrived (names are unique). Reserved
    /// arguments (PROTOCOL.md §8, names beginning with `@`) are taken out
    /// before a handler sees the request.
    pub args: Vec<(Bytes, Bytes)>,
    /// The command's data, if it announced any.
    pub data: Option<Bytes>,
    /// When the request will be stopped if it has not ended (its own
    /// `@deadline` or the server's per-request deadline, the earlier one).
    pub deadline: Option<Instant>,
}

impl Request {
    /// A request with no arguments and no data (for tests and embedding).
    pub fn new(name: impl Into<Bytes>) -> Request {
        Request {
            request_id: 1,
            name: name.into(),
            args: Vec::new(),
            data: None,
            deadline: None,
        }
    }

    /// Adds an argument.
    pub fn with_arg(mut self, name: impl Into<Bytes>, value: impl Into<Bytes>) -> Request {
        self.args.push((name.into(), value.into()));
        self
    }

    /// Sets the data.
    pub fn with_data(mut self, data: impl Into<Bytes>) -> Request {
        self.data = Some(data.into());
        self
    }

    /// The command name as text (lossy for non-UTF-8 names).
    pub fn name(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }

    /// The raw value of argument `name`, if given.
    pub fn arg(&self, name: &str) -> Option<&Bytes> {
        self.args
            .iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// The value of a required argument as UTF-8 text; an error naming the
    /// argument if it is missing or not text.
    pub fn arg_str(&self, name: &str) -> Result<&str, CommandError> {
        let raw = self
            .arg(name)
            .ok_or_else(|| CommandError::new(format!("missing argument: {name}")))?;
        std::str::from_utf8(raw)
            .map_err(|_| CommandError::new(format!("malformed argument {name}: not UTF-8 text")))
    }

    /// A required argument parsed with `FromStr`; an error naming the
    /// argument if it is missing or does not parse.
    pub fn arg_parse<T: FromStr>(&self, name: &str) -> Result<T, CommandError> {
        let text = self.arg_str(name)?;
        text.parse().map_err(|_| {
            CommandError::new(format!(
                "malformed argument {name}: `{text}` is not a valid value"
            ))
        })
    }

    /// The data, or empty bytes if none was sent.
    pub fn data(&self) -> Bytes {
        self.data.clone().unwrap_or_default()
    }

    /// How long the request has left before its deadline (zero once it has
    /// passed), or `None` without a deadline. Measured against `now`; a
    /// handler passes the current time.
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// let now = Instant::now();
    /// let mut req = wiremux_proto::request::Request::new("sleep");
    /// assert_eq!(req.time_left(now), None);
    /// req.deadline = Some(now + Duration::from_millis(40));
    /// assert_eq!(req.time_left(now), Some(Duration::from_millis(40)));
    /// assert_eq!(req.time_left(now + Duration::from_secs(1)), Some(Duration::ZERO));
    /// ```
    pub fn time_left(&self, now: Instant) -> Option<Duration> {
        self.deadline.map(|at| at.saturating_duration_since(now))
    }
}

/// A command's failure: sent to the client as an `application`
/// error-response carrying the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    message: String,
}

impl CommandError {
    /// An error with a message for the client.
    pub fn new(message: impl Into<String>) -> CommandError {
        CommandError {
            message: message.into(),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What a request gets when its handler panicked. The panic's own
    /// message goes to the server's log, not to the peer.
    pub fn panicked() -> CommandError {
        CommandError::new("command failed: the handler panicked")
    }
}
