//! `wiremux serve`: the demo commands over TCP, a Unix socket, stdio or
//! HTTP (Mercurial's HTTP API version 2).

use crate::CliResult;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use wiremux_engine::{demo, Config, Server};

/// Arguments of `wiremux serve`.
#[derive(clap::Args)]
pub struct Args {
    /// TCP address to listen on (default 127.0.0.1:7878 when no other
    /// transport is given).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Unix socket path to listen on.
    #[arg(long, value_name = "PATH")]
    unix: Option<PathBuf>,
    /// Address for the HTTP API (under /api/exp-http-v2-0001/), alone or
    /// beside --listen and --unix: same commands, same worker pool.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Turn on the HTTP API's debugreflect URL (off by default).
    #[arg(long, requires = "http")]
    http_debugreflect: bool,
    /// PEM file of the certificate chain: turns on TLS for --listen and
    /// --http (the Unix socket and stdio stay plain).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM file of the private key for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics on `GET /metrics` at this address.
    #[arg(long, value_name = "ADDR", conflicts_with = "stdio")]
    metrics: Option<String>,
    /// Serve one connection over stdin/stdout (as an SSH-style transport).
    #[arg(long, conflicts_with_all = ["listen", "unix", "http", "tls_cert"])]
    stdio: bool,
    /// Refuse write commands (such as `put`) on every connection.
    #[arg(long)]
    read_only: bool,
    /// Cancel a command that runs longer than this many milliseconds.
    #[arg(long, value_name = "MS")]
    deadline_ms: Option<u64>,
    /// Requests in flight per connection before it stops reading.
    #[arg(long, value_name = "N", default_value_t = Config::default().max_executing)]
    max_executing: usize,
    /// Send responses in request order (an in-order baseline).
    #[arg(long)]
    in_order: bool,
    /// Seconds requests in flight may take to finish after Ctrl-C or
    /// SIGTERM (a second signal exits at once).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    drain_secs: u64,
}

pub fn run(args: Args) -> CliResult {
    init_logging();
    let mut config = Config {
        read_only: args.read_only,
        max_executing: args.max_executing,
        in_order: args.in_order,
        request_deadline: args.deadline_ms.map(Duration::from_millis),
        drain_timeout: Duration::from_secs(args.drain_secs),
        ..Config::default()
    };
    if args.stdio {
        // One peer; idle connections are its business.
        config.idle_timeout = None;
    }
    let server = Server::builder()
        .registry(demo::registry())
        .config(config)
        .build();
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("cannot start the runtime: {e}"))?;
    let http = args.http.map(|addr| {
        let options = wiremux_http::HttpOptions::default().debugreflect(args.http_debugreflect);
        (addr, options)
    });
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            wiremux_engine::tls::TlsAcceptor::from_pem_files(cert, key)
                .map_err(|e| format!("TLS: {e}"))?,
        ),
        _ => None,
    };
    runtime.block_on(async {
        if let Some(addr) = &args.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            eprintln!("wiremux: metrics on http://{local}/metrics");
            tokio::spawn(wiremux_http::serve_metrics(listener, server.clone()));
        }
        serve(server, args.listen, args.unix, http, args.stdio, tls).await
    })
}

async fn serve(
    server: Server,
    listen: Option<String>,
    unix: Option<PathBuf>,
    http: Option<(String, wiremux_http::HttpOptions)>,
    stdio: bool,
    tls: Option<wiremux_engine::tls::TlsAcceptor>,
) -> CliResult {
    if stdio {
        let io = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
        return server
            .serve_io(io)
            .await
            .map_err(|e| format!("stdio connection: {e}"));
    }
    // Before anything is announced: a signal sent as soon as the server
    // says it listens must find the handlers in place.
    let signals = Signals::new().map_err(|e| format!("cannot watch signals: {e}"))?;
    let listen = match (&listen, &unix, &http) {
        (None, None, None) => Some("127.0.0.1:7878".to_string()),
        _ => listen,
    };
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(addr) = listen {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let s = server.clone();
        match tls.clone() {
            Some(tls) => {
                eprintln!("wiremux: listening on {local} (TLS)");
                tasks.spawn(async move {
                    s.serve_tls(listener, tls)
                        .await
                        .map_err(|e| format!("TLS listener: {e}"))
                });
            }
            None => {
                eprintln!("wiremux: listening on {local}");
                tasks.spawn(async move {
                    s.serve_tcp(listener)
                        .await
                        .map_err(|e| format!("TCP listener: {e}"))
                });
            }
        }
    }
    if let Some(path) = unix {
        let listener = tokio::net::UnixListener::bind(&path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        eprintln!("wiremux: listening on {}", path.display());
        let s = server.clone();
        tasks.spawn(async move {
            s.serve_unix(listener)
                .await
                .map_err(|e| format!("Unix listener: {e}"))
        });
    }
    if let Some((addr, options)) = http {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!(
            "wiremux: HTTP API on {scheme}://{local}{}",
            wiremux_http::API_ROOT
        );
        let s = server.clone();
        tasks.spawn(async move {
            match tls {
                Some(tls) => wiremux_http::serve_tls(listener, s, options, tls).await,
                None => wiremux_http::serve(listener, s, options).await,
            }
            .map_err(|e| format!("HTTP listener: {e}"))
        });
    }
    tokio::spawn(signals.watch(server.clone()));
    while let Some(result) = tasks.join_next().await {
        result.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// SIGINT (Ctrl-C) and SIGTERM, registered before the server announces
/// itself.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The name of the next signal to arrive.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }

    /// The first signal starts a graceful shutdown (the listeners stop
    /// accepting, requests in flight get the drain timeout, and `serve`
    /// then returns: exit status 0); a second one exits at once, status 1.
    async fn watch(mut self, server: Server) {
        let first = self.next().await;
        tracing::info!(
            signal = first,
            drain_secs = server.config().drain_timeout.as_secs_f64(),
            "shutting down: draining requests in flight; a second signal exits at once"
        );
        server.shutdown();
        let second = self.next().await;
        eprintln!("wiremux: {second} during the drain; exiting now");
        std::process::exit(1);
    }
}

/// Logs to stderr through tracing; `RUST_LOG` picks the level (default:
/// info). Colours only when stderr is a terminal.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
