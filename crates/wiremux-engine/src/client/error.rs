//! The client's error type: what failed, an [`io::ErrorKind`] for code that
//! handles I/O errors generically, and the underlying error as
//! [`std::error::Error::source`].

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use wiremux_proto::builder::BuildError;

/// Why a call failed.
///
/// Every error has an [`io::ErrorKind`] ([`Error::kind`]) and, where one
/// exists, the error underneath it ([`std::error::Error::source`]): the
/// socket's [`io::Error`], the malformed frame, the refused command.
///
/// ```
/// use std::error::Error as _;
/// use wiremux_engine::client::Error;
///
/// let err = Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
/// assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
/// assert!(err.source().unwrap().downcast_ref::<std::io::Error>().is_some());
/// assert_eq!(Error::Application("boom".into()).kind(), std::io::ErrorKind::Other);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The command failed on the server; the server's message.
    Application(String),
    /// The server reported a protocol error and closes the connection.
    Protocol(String),
    /// The connection ended before the response arrived.
    ConnectionLost(Reason),
    /// Connecting failed.
    Connect(Reason),
    /// The command cannot be put into frames.
    Build(BuildError),
    /// The call's timeout passed before its answer came (whether the
    /// server said so, after the `@deadline` the client sent it, or the
    /// client gave up waiting).
    TimedOut(Duration),
    /// The call was cancelled ([`crate::Pipeline::cancel`]) before its
    /// answer came.
    Cancelled,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Application(m) => write!(f, "application error: {m}"),
            Error::Protocol(m) => write!(f, "protocol error from the server: {m}"),
            Error::ConnectionLost(r) => write!(f, "connection lost: {r}"),
            Error::Connect(r) => write!(f, "cannot connect: {r}"),
            Error::Build(e) => write!(f, "invalid command: {e}"),
            Error::TimedOut(d) => write!(f, "timed out after {} ms", d.as_millis()),
            Error::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl StdError for Error {
    /// The socket's [`io::Error`] or the malformed response under a lost
    /// connection, the [`BuildError`] under a command that cannot be
    /// framed; nothing for what the server said.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::ConnectionLost(r) | Error::Connect(r) => r.source(),
            Error::Build(e) => Some(e),
            _ => None,
        }
    }
}

impl From<BuildError> for Error {
    fn from(err: BuildError) -> Error {
        Error::Build(err)
    }
}

impl Error {
    /// The kind of I/O error this is closest to: the socket's own kind for
    /// a lost or refused connection, [`io::ErrorKind::InvalidData`] for a
    /// protocol error, [`io::ErrorKind::InvalidInput`] for a command that
    /// cannot be framed, [`io::ErrorKind::TimedOut`] for a timeout, and
    /// [`io::ErrorKind::Other`] for a command that failed on the server or
    /// was cancelled.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Error::Application(_) | Error::Cancelled => io::ErrorKind::Other,
            Error::Protocol(_) => io::ErrorKind::InvalidData,
            Error::ConnectionLost(reason) | Error::Connect(reason) => reason.kind(),
            Error::Build(_) => io::ErrorKind::InvalidInput,
            Error::TimedOut(_) => io::ErrorKind::TimedOut,
        }
    }

    /// Whether the connection is gone: the call may well succeed on a new
    /// one (nothing says whether the server ran it).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost(_) | Error::Connect(_) | Error::Protocol(_)
        )
    }
}

/// An I/O error lost the connection.
impl From<io::Error> for Error {
    fn from(err: io::Error) -> Error {
        Error::ConnectionLost(Reason::io(err))
    }
}

/// For code that works in [`io::Result`]s: the same kind, and this error
/// as the source.
impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        io::Error::new(err.kind(), err)
    }
}

/// What ended or refused a connection: a message for a person, an
/// [`io::ErrorKind`], and the error underneath, if any.
///
/// Two reasons are equal when their messages are, so a test can compare
/// an error with `Error::ConnectionLost("...".into())`.
///
/// ```
/// use wiremux_engine::client::Reason;
///
/// let reason = Reason::from("the server closed the connection");
/// assert_eq!(reason, "the server closed the connection");
/// assert_eq!(reason.kind(), std::io::ErrorKind::Other);
/// let reset = Reason::io(std::io::ErrorKind::ConnectionReset.into());
/// assert_eq!(reset.kind(), std::io::ErrorKind::ConnectionReset);
/// ```
#[derive(Clone)]
pub struct Reason {
    message: String,
    kind: io::ErrorKind,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl Reason {
    /// A reason with this message and kind, and no error underneath.
    pub fn new(kind: io::ErrorKind, message: impl Into<String>) -> Reason {
        Reason {
            message: message.into(),
            kind,
            source: None,
        }
    }

    /// An I/O error: its message, its kind, and itself as the source.
    pub fn io(err: io::Error) -> Reason {
        Reason {
            message: err.to_string(),
            kind: err.kind(),
            source: Some(Arc::new(err)),
        }
    }

    /// Another error underneath: its message, `kind`, and itself as the
    /// source.
    pub fn caused_by(
        kind: io::ErrorKind,
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Reason {
        Reason {
            message: message.into(),
            kind,
            source: Some(Arc::new(source)),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The kind of I/O error.
    pub fn kind(&self) -> io::ErrorKind {
        self.kind
    }
}

/// A plain message, of kind [`io::ErrorKind::Other`].
impl From<&str> for Reason {
    fn from(message: &str) -> Reason {
        Reason::new(io::ErrorKind::Other, message)
    }
}

/// A plain message, of kind [`io::ErrorKind::Other`].
impl From<String> for Reason {
    fn from(message: String) -> Reason {
        Reason::new(io::ErrorKind::Other, message)
    }
}

impl std::ops::Deref for Reason {
    type Target = str;
    fn deref(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Reason").field(&self.message).finish()
    }
}

impl PartialEq for Reason {
    fn eq(&self, other: &Reason) -> bool {
        self.message == other.message
    }
}

impl Eq for Reason {}

impl PartialEq<str> for Reason {
    fn eq(&self, other: &str) -> bool {
        self.message == other
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.message == *other
    }
}

impl StdError for Reason {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wiremux_proto::client::ClientError;
    use wiremux_proto::FrameType;

    #[test]
    fn every_error_has_a_kind_and_a_message() {
        let cases = [
            (
                Error::Application("boom".into()),
                io::ErrorKind::Other,
                "application error: boom",
            ),
            (
                Error::Protocol("bad frame".into()),
                io::ErrorKind::InvalidData,
                "protocol error from the server: bad frame",
            ),
            (
                Error::ConnectionLost(Reason::new(io::ErrorKind::UnexpectedEof, "gone")),
                io::ErrorKind::UnexpectedEof,
                "connection lost: gone",
            ),
            (
                Error::Connect(Reason::io(io::ErrorKind::ConnectionRefused.into())),
                io::ErrorKind::ConnectionRefused,
                "cannot connect: connection refused",
            ),
            (
                Error::Build(BuildError::FrameSizeTooSmall(0)),
                io::ErrorKind::InvalidInput,
                "invalid command: a maximum frame payload of 0 bytes is too small",
            ),
            (
                Error::TimedOut(Duration::from_millis(1500)),
                io::ErrorKind::TimedOut,
                "timed out after 1500 ms",
            ),
            (Error::Cancelled, io::ErrorKind::Other, "cancelled"),
        ];
        for (err, kind, message) in cases {
            assert_eq!(err.kind(), kind, "{err:?}");
            assert_eq!(err.to_string(), message);
        }
    }

    #[test]
    fn the_error_underneath_is_the_source() {
        let err = Error::from(io::Error::new(io::ErrorKind::BrokenPipe, "pipe broke"));
        assert_eq!(err, Error::ConnectionLost("pipe broke".into()));
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let source = err.source().unwrap().downcast_ref::<io::Error>().unwrap();
        assert_eq!(source.kind(), io::ErrorKind::BrokenPipe);
        assert_eq!(source.to_string(), "pipe broke");

        let bad = ClientError::UnexpectedType {
            request_id: 1,
            frame_type: FrameType::COMMAND_NAME,
        };
        let err = Error::ConnectionLost(Reason::caused_by(
            io::ErrorKind::InvalidData,
            "invalid response",
            bad.clone(),
        ));
        assert_eq!(
            err.source().unwrap().downcast_ref::<ClientError>(),
            Some(&bad)
        );

        let err = Error::from(BuildError::FrameSizeTooSmall(0));
        assert_eq!(
            err.source().unwrap().downcast_ref::<BuildError>(),
            Some(&BuildError::FrameSizeTooSmall(0))
        );
        assert!(Error::Application("boom".into()).source().is_none());
        assert!(Error::ConnectionLost("plain".into()).source().is_none());
    }

    #[test]
    fn into_io_error_keeps_the_kind_and_the_error() {
        let io_err = io::Error::from(Error::TimedOut(Duration::from_millis(5)));
        assert_eq!(io_err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(io_err.to_string(), "timed out after 5 ms");
        let inner = io_err.into_inner().unwrap().downcast::<Error>().unwrap();
        assert_eq!(*inner, Error::TimedOut(Duration::from_millis(5)));
    }

    #[test]
    fn reasons_compare_by_message() {
        let a = Reason::new(io::ErrorKind::UnexpectedEof, "closed");
        assert_eq!(a, Reason::from("closed"));
        assert_eq!(a, "closed");
        assert_eq!(&*a, "closed");
        assert_eq!(a.message(), "closed");
        assert_ne!(a, Reason::from(String::from("open")));
        assert_eq!(format!("{a:?}"), r#"Reason("closed")"#);
    }
}
