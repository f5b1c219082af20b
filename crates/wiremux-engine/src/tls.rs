//! TLS on rustls (through tokio-rustls) for the server's listeners and
//! for the client.
//!
//! Serving: build a [`TlsAcceptor`] from PEM files (or from any
//! [`rustls::ServerConfig`]) and give it to [`Server::serve_tls`] with
//! any [`Listener`]. Each handshake runs in its connection's own task,
//! never in the accept loop, and has a timeout
//! ([`TlsAcceptor::handshake_timeout`]); a peer that does not speak TLS
//! (a plaintext client on a TLS port) fails its handshake, is logged and
//! closed, and the server goes on.
//!
//! Connecting: [`Client::connect_tls`] with a [`rustls::ClientConfig`],
//! from [`client_config`] (your root certificates, from PEM) or, for a
//! test server with a self-signed certificate, [`insecure_client_config`].
//!
//! ```no_run
//! use std::path::Path;
//! use wiremux_engine::tls::{self, TlsAcceptor};
//! use wiremux_engine::{demo, Client, Server};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder().registry(demo::registry()).build();
//! let acceptor = TlsAcceptor::from_pem_files(Path::new("cert.pem"), Path::new("key.pem"))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7443").await?;
//! tokio::spawn({
//!     let server = server.clone();
//!     async move { server.serve_tls(listener, acceptor).await }
//! });
//!
//! let roots = tls::client_config(&std::fs::read("ca.pem")?)?;
//! let client = Client::connect_tls("127.0.0.1:7443", "localhost", roots).await?;
//! let reply = client.call("echo").data("over TLS").send().await?;
//! assert_eq!(reply.body, "over TLS");
//! # Ok(()) }
//! ```

use crate::client::{Client, Error, Reason};
use crate::listener::Listener;
use crate::server::Server;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
pub use tokio_rustls::client::TlsStream as ClientTlsStream;
pub use tokio_rustls::rustls;
pub use tokio_rustls::server::TlsStream;

/// The crypto provider every config built here uses: *ring*, named
/// explicitly so that no process-wide default is needed.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: &str, err: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {err}"))
}

/// Every certificate in a PEM text.
pub fn certificates_from_pem(pem: &[u8]) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate PEM", e))?;
    if certs.is_empty() {
        return Err(invalid("certificate PEM", "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM text.
pub fn private_key_from_pem(pem: &[u8]) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| invalid("private key PEM", e))
}

/// The server side: a [`rustls::ServerConfig`] and a handshake timeout.
/// Cheap to clone.
///
/// ```
/// # fn demo(cert_pem: &[u8], key_pem: &[u8]) -> std::io::Result<()> {
/// let acceptor = wiremux_engine::tls::TlsAcceptor::from_pem(cert_pem, key_pem)?
///     .handshake_timeout(std::time::Duration::from_secs(5));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Handshakes that take longer are abandoned and their connection
    /// closed, unless [`TlsAcceptor::handshake_timeout`] says otherwise.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

    /// An acceptor for any server configuration (client certificates,
    /// resumption, ALPN: whatever rustls offers).
    pub fn new(config: Arc<ServerConfig>) -> TlsAcceptor {
        TlsAcceptor {
            inner: tokio_rustls::TlsAcceptor::from(config),
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }

    /// An acceptor for a certificate chain and its private key in PEM (no
    /// client authentication, rustls' safe default protocol versions).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<TlsAcceptor> {
        let certs = certificates_from_pem(cert_pem)?;
        let key = private_key_from_pem(key_pem)?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("TLS versions", e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| invalid("certificate and key", e))?;
        Ok(TlsAcceptor::new(Arc::new(config)))
    }

    /// [`TlsAcceptor::from_pem`] from two files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> io::Result<TlsAcceptor> {
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        TlsAcceptor::from_pem(&read(cert)?, &read(key)?)
    }

    /// How long a handshake may take (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> TlsAcceptor {
        self.handshake_timeout = timeout;
        self
    }

    /// Runs the server side of the handshake on `io`, within the timeout.
    /// A failure is logged (at `warn`, with `peer`) and returned; the
    /// caller drops the connection, which closes it.
    pub async fn accept<IO>(&self, io: IO, peer: &str) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let result = match tokio::time::timeout(self.handshake_timeout, self.inner.accept(io)).await
        {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no TLS handshake within {} s",
                    self.handshake_timeout.as_secs_f64()
                ),
            )),
        };
        if let Err(err) = &result {
            tracing::warn!(%peer, %err, "TLS handshake failed; connection closed");
        }
        result
    }
}

impl Server {
    /// Serves the frame protocol over TLS on every connection of
    /// `listener` (the same accept loop, connection limit and drain as
    /// [`Server::serve`]). A connection whose handshake fails or times out
    /// is logged and closed.
    pub async fn serve_tls<L: Listener>(&self, listener: L, tls: TlsAcceptor) -> io::Result<()> {
        let server = self.clone();
        self.serve_connections(listener, move |io, peer| {
            let server = server.clone();
            let tls = tls.clone();
            async move {
                let Ok(stream) = tls.accept(io, &peer).await else {
                    return;
                };
                if let Err(err) = server.serve_io(stream).await {
                    tracing::debug!(%err, "TLS connection ended with an error");
                }
            }
        })
        .await
    }
}

/// A client configuration that trusts the certificates in `ca_pem` (one
/// or more PEM blocks: your CA, or a self-signed server certificate).
pub fn client_config(ca_pem: &[u8]) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in certificates_from_pem(ca_pem)? {
        roots.add(cert).map_err(|e| invalid("CA certificate", e))?;
    }
    client_config_with_roots(roots)
}

/// A client configuration that trusts `roots`.
pub fn client_config_with_roots(roots: RootCertStore) -> io::Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client configuration that accepts **any** server certificate, for
/// test servers with a self-signed one: the connection is encrypted but
/// the server is not authenticated, so anyone on the path can pose as
/// it. Signatures in the handshake are still checked.
pub fn insecure_client_config() -> Arc<ClientConfig> {
    let provider = provider();
    let verifier = Arc::new(AnyCertificate(provider.clone()));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// Accepts every certificate; checks handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Runs the client side of a TLS handshake on a connected stream.
pub async fn connect_stream<IO>(
    io: IO,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> io::Result<ClientTlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| invalid(&format!("server name `{server_name}`"), e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, io)
        .await
}

impl Client {
    /// Connects over TCP and TLS: `server_name` (a DNS name or an IP
    /// address) is what the server's certificate must name, `config` says
    /// which certificates to trust ([`client_config`],
    /// [`insecure_client_config`], or any rustls configuration).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = wiremux_engine::tls::client_config(&std::fs::read("ca.pem")?)?;
    /// let client = wiremux_engine::Client::connect_tls("db.example:7443", "db.example", config).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        server_name: &str,
        config: Arc<ClientConfig>,
    ) -> Result<Client, Error> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| Error::Connect(Reason::io(e)))?;
        let _ = stream.set_nodelay(true);
        let stream = connect_stream(stream, server_name, config)
            .await
            .map_err(|e| Error::Connect(Reason::io(e)))?;
        Ok(Client::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acceptor() -> TlsAcceptor {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        TlsAcceptor::from_pem(
            made.cert.pem().as_bytes(),
            made.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_never_handshakes_is_dropped_at_the_timeout() {
        let acceptor = acceptor().handshake_timeout(Duration::from_secs(3));
        let (server_side, _client_side) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        let err = acceptor.accept(server_side, "silent").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "no TLS handshake within 3 s");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_handshake_over_duplex_needs_no_real_time() {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let acceptor = TlsAcceptor::from_pem(
            made.cert.pem().as_bytes(),
            made.signing_key.serialize_pem().as_bytes(),
        )
        .unwrap();
        let config = client_config(made.cert.pem().as_bytes()).unwrap();
        let (server_side, client_side) = tokio::io::duplex(64 << 10);
        let (served, connected) = tokio::join!(
            acceptor.accept(server_side, "duplex"),
            connect_stream(client_side, "localhost", config)
        );
        served.unwrap();
        connected.unwrap();
    }

    #[test]
    fn pem_errors_say_what_is_wrong() {
        let err = TlsAcceptor::from_pem(b"not pem", b"not pem").unwrap_err();
        assert_eq!(err.to_string(), "certificate PEM: no CERTIFICATE block");
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let err = TlsAcceptor::from_pem(made.cert.pem().as_bytes(), b"").unwrap_err();
        assert!(err.to_string().starts_with("private key PEM: "), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = client_config(b"").unwrap_err();
        assert_eq!(err.to_string(), "certificate PEM: no CERTIFICATE block");
    }
}
