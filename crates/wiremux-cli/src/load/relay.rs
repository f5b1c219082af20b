//! `--rtt DURATION`: an in-process TCP relay between the generator and its
//! target that holds every chunk of bytes for half the round trip in each
//! direction, so a loopback run shows what a wide-area link would.
//!
//! The relay has its own thread and runtime. Each accepted connection gets
//! a connection to the target and, per direction, a reader that stamps
//! each chunk with the time it may leave and a writer that sends it then.
//! Chunks keep their order; the delay is added to every byte, not to every
//! request, as a link's propagation delay is.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A running relay; stops when dropped.
pub struct Relay {
    /// Where the generator connects.
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Starts a relay to `target` adding `rtt` to each round trip.
pub fn start(target: &str, rtt: Duration) -> Result<Relay, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("wiremux-relay")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the relay: {e}"))?;
    let listener = runtime
        .block_on(TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("cannot start the relay: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let target = target.to_string();
    let half = rtt / 2;
    runtime.spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&target).await else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, half));
                tokio::spawn(pump(sr, cw, half));
            });
        }
    });
    Ok(Relay {
        addr,
        runtime: Some(runtime),
    })
}

/// Copies `from` to `to`, each chunk `delay` after it was read.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With paused time: an echo through the relay takes the whole round
    /// trip, half each way.
    #[tokio::test(start_paused = true)]
    async fn each_direction_waits_half_the_round_trip() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        tokio::spawn(async move {
            let (client, _) = relay.accept().await.unwrap();
            let server = TcpStream::connect(echo_addr).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, Duration::from_millis(10)));
            tokio::spawn(pump(sr, cw, Duration::from_millis(10)));
        });
        let mut c = TcpStream::connect(relay_addr).await.unwrap();
        let start = Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(20) && took < Duration::from_millis(22),
            "{took:?}"
        );
    }
}
