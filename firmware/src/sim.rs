//! The simulated device: the same core on a host over tokio (feature `std`).
//!
//! Used by the demo, the end-to-end tests and load generation. It is the firmware's code, not
//! a re-implementation: only the socket, the clock and the RNG come from the host.

use std::net::SocketAddr;

use embedded_io_adapters::tokio_1::FromTokio;
use rand_core::OsRng;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::bundle::Bundle;
use crate::device::{self, App, Buffers, Clock, Options, Stats};
use crate::Error;

/// Milliseconds since the clock was made, on tokio's timer.
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock {
            start: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    async fn sleep_until(&self, at_ms: u64) {
        tokio::time::sleep_until(self.start + std::time::Duration::from_millis(at_ms)).await
    }
}

/// Where to connect: the bundle's host and port, or an override (tests run the gateway on a
/// random port). The TLS server name is always the bundle's host.
pub async fn connect_tcp(
    bundle: &Bundle<'_>,
    to: Option<SocketAddr>,
) -> std::io::Result<TcpStream> {
    match to {
        Some(addr) => TcpStream::connect(addr).await,
        None => TcpStream::connect((bundle.gateway_host, bundle.gateway_port)).await,
    }
}

/// One connection attempt, run until it ends. Returns why it ended.
pub async fn connect_once<A: App>(
    bundle: &Bundle<'_>,
    to: Option<SocketAddr>,
    app: &mut A,
    options: &Options,
    stats: &mut Stats,
) -> Error {
    let tcp = match connect_tcp(bundle, to).await {
        Ok(s) => s,
        Err(_) => return Error::Closed,
    };
    let _ = tcp.set_nodelay(true);
    let (rd, wr) = tcp.into_split();
    let mut buffers = Box::new(Buffers::new());
    let clock = TokioClock::default();
    let Err(ended) = device::run_connection(
        FromTokio::new(rd),
        FromTokio::new(wr),
        bundle,
        OsRng,
        &clock,
        app,
        options,
        &mut buffers,
        stats,
    )
    .await;
    ended
}

/// How a simulated device reaches the gateway and reconnects.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimConfig {
    /// Overrides the bundle's gateway address (the TLS server name stays the bundle's host).
    pub to: Option<SocketAddr>,
    pub options: Options,
    pub backoff: Backoff,
}

/// Keeps a device connected until `stop` turns true, reconnecting with backoff and jitter.
/// Calls `on_end` with each connection's end reason.
pub async fn run<A: App>(
    bundle: &Bundle<'_>,
    config: &SimConfig,
    app: &mut A,
    stats: &mut Stats,
    mut stop: watch::Receiver<bool>,
    mut on_end: impl FnMut(&Error),
) {
    let mut attempt = 0;
    while !*stop.borrow() {
        let connects_before = stats.connects;
        let ended = tokio::select! {
            e = connect_once(bundle, config.to, app, &config.options, stats) => e,
            _ = stop.changed() => return,
        };
        on_end(&ended);
        attempt = if stats.connects > connects_before {
            0
        } else {
            attempt + 1
        };
        let delay = config.backoff.delay_ms(attempt, &mut OsRng);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(u64::from(delay))) => {}
            _ = stop.changed() => return,
        }
    }
}
