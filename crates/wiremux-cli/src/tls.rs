//! TLS for the client commands: the configuration `--tls`, `--ca` and
//! `--insecure` ask for, and the relay that gives `wiremux load`'s raw
//! socket driver a TLS connection without changing it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use wiremux_engine::tls::rustls::ClientConfig;

/// The TLS client configuration the flags ask for: `None` for plain TCP.
/// `--ca` or `--insecure` imply `--tls`.
pub fn client_config(
    tls: bool,
    ca: Option<&Path>,
    insecure: bool,
) -> Result<Option<Arc<ClientConfig>>, String> {
    if insecure {
        return Ok(Some(wiremux_engine::tls::insecure_client_config()));
    }
    match ca {
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?;
            wiremux_engine::tls::client_config(&pem)
                .map(Some)
                .map_err(|e| format!("--ca {}: {e}", ca.display()))
        }
        None if tls => {
            Err("--tls needs --ca PEM (the certificate to trust) or --insecure (trust any)".into())
        }
        None => Ok(None),
    }
}

/// The host part of `host:port` (without the brackets of `[::1]:port`).
pub fn host_of(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_string()
}

/// A loopback listener on its own thread that forwards each plaintext
/// connection to `target` over TLS. Stopped (and its thread joined) on
/// drop. `wiremux load --tls` points its generator at it: the server does
/// all its TLS work as for any client; the generator's side pays one more
/// copy per byte, on the relay's thread.
pub struct TlsRelay {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsRelay {
    /// Starts the relay to `target`, checking `server_name` against the
    /// server's certificate with `config`.
    pub fn start(
        target: &str,
        server_name: &str,
        config: Arc<ClientConfig>,
    ) -> Result<TlsRelay, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the TLS relay: {e}"))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| format!("TLS relay: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        // One handshake first, so a bad certificate is an error here and
        // not a connection failure in the middle of the run.
        let (target, name) = (target.to_string(), server_name.to_string());
        runtime.block_on(async {
            let stream = tokio::net::TcpStream::connect(&target)
                .await
                .map_err(|e| format!("cannot connect to {target}: {e}"))?;
            wiremux_engine::tls::connect_stream(stream, &name, config.clone())
                .await
                .map(drop)
                .map_err(|e| format!("TLS with {target}: {e}"))
        })?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("tls-relay".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        () = relay(listener, target, name, config) => {}
                    }
                })
            })
            .map_err(|e| format!("cannot start the TLS relay: {e}"))?;
        Ok(TlsRelay {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where to connect in plaintext.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TlsRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn relay(
    listener: tokio::net::TcpListener,
    target: String,
    name: String,
    config: Arc<ClientConfig>,
) {
    while let Ok((mut plain, _)) = listener.accept().await {
        let _ = plain.set_nodelay(true);
        let (target, name, config) = (target.clone(), name.clone(), config.clone());
        tokio::spawn(async move {
            let Ok(stream) = tokio::net::TcpStream::connect(&target).await else {
                return;
            };
            let _ = stream.set_nodelay(true);
            let Ok(mut tls) = wiremux_engine::tls::connect_stream(stream, &name, config).await
            else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut plain, &mut tls).await;
        });
    }
}
