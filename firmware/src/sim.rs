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
use crate::device::{self, App, Buffers, Clock, Options, RotationEvent, Stats, MAX_PAYLOAD};
use crate::outbox::Outbox;
use crate::slots::{Outcome, SlotStore, Slots};
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

/// One connection attempt, run until it ends. Returns why it ended; for
/// [`Error::Renewed`] the new bundle is in `buffers.bundle_out`.
#[allow(clippy::too_many_arguments)]
pub async fn connect_once<A: App, const Q: usize>(
    bundle: &Bundle<'_>,
    to: Option<SocketAddr>,
    app: &mut A,
    options: &Options,
    outbox: &mut Outbox<Q, MAX_PAYLOAD>,
    stats: &mut Stats,
    buffers: &mut Buffers,
) -> Error {
    let tcp = match connect_tcp(bundle, to).await {
        Ok(s) => s,
        Err(_) => return Error::Closed,
    };
    let _ = tcp.set_nodelay(true);
    let (rd, wr) = tcp.into_split();
    let clock = TokioClock::default();
    let Err(ended) = device::run_connection(
        FromTokio::new(rd),
        FromTokio::new(wr),
        bundle,
        &mut OsRng,
        &clock,
        app,
        options,
        outbox,
        buffers,
        stats,
    )
    .await;
    ended
}

/// Two identity slots in memory (the simulation's flash).
pub struct MemSlots(pub [Vec<u8>; 2]);

impl SlotStore for MemSlots {
    fn read(&self, slot: usize) -> &[u8] {
        &self.0[slot % 2]
    }

    fn write(&mut self, slot: usize, bytes: &[u8]) -> bool {
        self.0[slot % 2] = bytes.to_vec();
        true
    }

    fn erase(&mut self, slot: usize) -> bool {
        self.0[slot % 2].clear();
        true
    }
}

/// How a simulated device reaches the gateway and reconnects.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimConfig {
    /// Overrides the bundle's gateway address (the TLS server name stays the bundle's host).
    pub to: Option<SocketAddr>,
    pub options: Options,
    pub backoff: Backoff,
}

/// QoS 1 messages a simulated device keeps for the gateway across reconnects.
pub const SIM_OUTBOX: usize = 32;

/// Failed connections of a renewed identity before the device rolls back to the previous one.
pub const ROLLBACK_AFTER: u32 = 3;

/// Keeps a device connected until `stop` turns true, reconnecting with backoff and jitter,
/// renewing its certificate when the gateway says so (slot A/B, rollback after
/// [`ROLLBACK_AFTER`] failures of a renewed identity). Calls `on_end` with each
/// connection's end reason.
pub async fn run<A: App>(
    identity: &[u8],
    config: &SimConfig,
    app: &mut A,
    stats: &mut Stats,
    mut stop: watch::Receiver<bool>,
    mut on_end: impl FnMut(&Error),
) {
    let mut slots = Slots::new(MemSlots([identity.to_vec(), Vec::new()]), ROLLBACK_AFTER);
    let mut buffers = Box::new(Buffers::new());
    let mut outbox = Box::new(Outbox::<SIM_OUTBOX, MAX_PAYLOAD>::new());
    let mut attempt = 0;
    while !*stop.borrow() {
        let connects_before = stats.connects;
        // A copy of the identity in use, so the slots stay free for confirming it.
        let Ok((_, current)) = slots.current() else {
            return;
        };
        let mut bytes = std::vec![0u8; current.encoded_len()];
        if current.emit(&mut bytes).is_err() {
            return;
        }
        let Ok(bundle) = Bundle::parse(&bytes) else {
            return;
        };
        let mut confirming = Confirming {
            app: &mut *app,
            slots: &mut slots,
        };
        let ended = tokio::select! {
            e = connect_once(&bundle, config.to, &mut confirming, &config.options, &mut outbox, stats, &mut buffers) => e,
            _ = stop.changed() => return,
        };
        on_end(&ended);
        let connected = stats.connects > connects_before;
        if !connected {
            if let Outcome::RolledBack { from, to } = slots.failed() {
                app.on_rotation(RotationEvent::RolledBack { from, to });
            }
        }
        if let Error::Renewed(len) = ended {
            let renewed = &buffers.bundle_out[..len.min(buffers.bundle_out.len())];
            if slots.store_renewed(renewed) {
                if let Ok((slot, _)) = slots.current() {
                    app.on_rotation(RotationEvent::Stored { slot });
                }
                attempt = 0;
                continue;
            }
        }
        attempt = if connected { 0 } else { attempt + 1 };
        let delay = config.backoff.delay_ms(attempt, &mut OsRng);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(u64::from(delay))) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Passes everything to the device's app, and confirms a renewed identity as soon as the
/// gateway accepts a session with it.
struct Confirming<'a, A, S> {
    app: &'a mut A,
    slots: &'a mut Slots<S>,
}

impl<A: App, S: SlotStore> App for Confirming<'_, A, S> {
    fn telemetry(&mut self, seq: u32, out: &mut [u8]) -> usize {
        self.app.telemetry(seq, out)
    }

    fn on_command(&mut self, topic: &str, payload: &[u8], reply: &mut [u8]) -> Option<usize> {
        self.app.on_command(topic, payload, reply)
    }

    fn on_connected(&mut self) {
        if let Outcome::Confirmed { slot } = self.slots.connected() {
            self.app.on_rotation(RotationEvent::Confirmed { slot });
        }
        self.app.on_connected();
    }

    fn on_rotation(&mut self, event: RotationEvent<'_>) {
        self.app.on_rotation(event);
    }
}
