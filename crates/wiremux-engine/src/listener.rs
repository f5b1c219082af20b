//! Listeners and the one accept loop that every transport of a server
//! shares: TCP, Unix sockets, the HTTP API, TLS on any of them.
//!
//! Each connection takes a slot from the server-wide connection limit
//! ([`Config::max_connections`](crate::Config::max_connections)) before
//! it is served, so the limit holds for the server as a whole however
//! many listeners it has. When all slots are taken, each listener holds
//! at most one accepted connection (unserved, unread) until a slot frees,
//! and further peers wait in the kernel's listen queue.

use crate::server::Server;
use std::future::Future;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinSet;
use tracing::Instrument;

/// A source of connections for [`Server::serve`] and
/// [`Server::serve_connections`]: implemented for tokio's
/// [`TcpListener`] (which turns on `TCP_NODELAY` for each connection) and
/// [`UnixListener`], and implementable for any other.
///
/// ```
/// use std::io;
/// use wiremux_engine::Listener;
///
/// /// Connections handed over through a channel (by a test, say).
/// struct Handed(tokio::sync::mpsc::Receiver<tokio::io::DuplexStream>);
///
/// impl Listener for Handed {
///     type Io = tokio::io::DuplexStream;
///     async fn accept(&mut self) -> io::Result<(Self::Io, String)> {
///         let io = self.0.recv().await.ok_or(io::ErrorKind::NotConnected)?;
///         Ok((io, "handed".to_string()))
///     }
/// }
/// ```
pub trait Listener: Send + 'static {
    /// A connection's byte stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The next connection and a name for its peer (for logs). An error
    /// for which [`is_transient_accept_error`] holds is retried; any other
    /// ends the loop.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Io, String)>> + Send;
}

impl Listener for TcpListener {
    type Io = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, String)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer.to_string()))
    }
}

impl Listener for UnixListener {
    type Io = UnixStream;

    async fn accept(&mut self) -> io::Result<(UnixStream, String)> {
        let (stream, _) = UnixListener::accept(self).await?;
        Ok((stream, "unix".to_string()))
    }
}

impl Server {
    /// Serves the frame protocol on every connection of `listener` until
    /// [`Server::shutdown`], then drains them (see
    /// [`Server::serve_connections`]).
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// let server = wiremux_engine::Server::builder()
    ///     .registry(wiremux_engine::demo::registry())
    ///     .build();
    /// let tcp = tokio::net::TcpListener::bind("127.0.0.1:7878").await?;
    /// let unix = tokio::net::UnixListener::bind("/tmp/wiremux.sock")?;
    /// // Both count against the one max_connections of the server.
    /// let (a, b) = tokio::join!(server.serve(tcp), server.serve(unix));
    /// a?;
    /// b
    /// # }
    /// ```
    pub async fn serve<L: Listener>(&self, listener: L) -> io::Result<()> {
        let server = self.clone();
        self.serve_connections(listener, move |io, _peer| {
            let server = server.clone();
            async move {
                if let Err(err) = server.serve_io(io).await {
                    tracing::debug!(%err, "connection ended with an error");
                }
            }
        })
        .await
    }

    /// The accept loop under every transport: accepts connections from
    /// `listener` and runs `serve(io, peer)` for each as its own task,
    /// with at most
    /// [`Config::max_connections`](crate::Config::max_connections)
    /// connections open across all the listeners of this server. A
    /// transport of its own (TLS, HTTP, a handshake of any kind) goes in
    /// `serve`, so that it never holds up the loop.
    ///
    /// On [`Server::shutdown`] it stops accepting; connections are
    /// expected to drain on their own (those of [`Server::serve_io`] do);
    /// whatever is still running after the drain timeout and one more
    /// second is stopped, and the loop returns.
    ///
    /// ```no_run
    /// # async fn demo() -> std::io::Result<()> {
    /// use tokio::io::AsyncWriteExt;
    /// let server = wiremux_engine::Server::builder().build();
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// // A toy transport: greet, then close.
    /// server
    ///     .serve_connections(listener, |mut io, peer| async move {
    ///         let _ = io.write_all(format!("hello, {peer}\n").as_bytes()).await;
    ///     })
    ///     .await
    /// # }
    /// ```
    pub async fn serve_connections<L, F, Fut>(
        &self,
        mut listener: L,
        mut serve: F,
    ) -> io::Result<()>
    where
        L: Listener,
        F: FnMut(L::Io, String) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let slots = self.connection_slots().clone();
        let shutdown = self.shutdown_requested();
        tokio::pin!(shutdown);
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let (io, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(err) if is_transient_accept_error(&err) => {
                    tracing::warn!(%err, "accept failed; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(err) => return Err(err),
            };
            // Accept, then wait for a slot: a loop never holds a slot for
            // a peer that has not come (which would starve the server's
            // other listeners). While the server is full, this connection
            // waits unserved and the loop accepts no more: later peers
            // wait in the listen queue.
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    tracing::debug!(%peer, "connection limit reached; waiting for a slot");
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => slot.expect("never closed"),
                        () = &mut shutdown => break,
                    }
                }
            };
            let span = tracing::debug_span!("connection", %peer);
            let task = serve(io, peer);
            connections.spawn(
                async move {
                    task.await;
                    drop(slot);
                }
                .instrument(span),
            );
            // Reap finished connections so the set does not grow.
            while connections.try_join_next().is_some() {}
        }
        // Shutdown: connections drain on their own within the drain
        // timeout; give them a little longer, then stop what is left.
        let grace = self.config().drain_timeout + Duration::from_secs(1);
        let drained = tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            connections.abort_all();
        }
        Ok(())
    }
}

/// Whether an error from `accept` concerns one peer or a passing shortage
/// of file descriptors rather than the listener: an accept loop should
/// retry after such an error, and stop after any other.
///
/// ```
/// use std::io;
/// assert!(wiremux_engine::is_transient_accept_error(&io::ErrorKind::ConnectionAborted.into()));
/// assert!(!wiremux_engine::is_transient_accept_error(&io::Error::from_raw_os_error(9)));
/// ```
pub fn is_transient_accept_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
    ) || err.raw_os_error() == Some(24) // EMFILE: too many open files
        || err.raw_os_error() == Some(23) // ENFILE
}

#[cfg(test)]
mod tests {
    use super::is_transient_accept_error;
    use std::io;

    #[test]
    fn accept_errors_of_one_peer_or_of_descriptors_are_transient() {
        for kind in [
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::Interrupted,
        ] {
            assert!(
                is_transient_accept_error(&io::Error::from(kind)),
                "{kind:?}"
            );
        }
        // EMFILE and ENFILE: out of file descriptors, for now.
        assert!(is_transient_accept_error(&io::Error::from_raw_os_error(24)));
        assert!(is_transient_accept_error(&io::Error::from_raw_os_error(23)));
        // A broken listener (EBADF, EINVAL) is not retried.
        assert!(!is_transient_accept_error(&io::Error::from_raw_os_error(9)));
        assert!(!is_transient_accept_error(&io::Error::from_raw_os_error(
            22
        )));
    }
}
