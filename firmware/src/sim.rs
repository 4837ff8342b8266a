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
use crate::device::{self, App, Buffers, Clock, Device, Options, Outcome, Stats, MAX_PAYLOAD};
use crate::outbox::Outbox;
use crate::slots::SlotStore;
use crate::supervisor::{Ending, Next, Supervised, Supervisor};
use crate::Error;

pub use crate::supervisor::ROLLBACK_AFTER;

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
        let at = std::time::Duration::from_millis(at_ms);
        match self.start.checked_add(at) {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            // Beyond what the clock can express: never.
            None => core::future::pending().await,
        }
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

/// One connection attempt, run until it ends: `Ok` with a renewed identity in
/// `device.buffers.bundle_out`, otherwise why it ended.
pub async fn connect_once<A: App, const Q: usize>(
    to: Option<SocketAddr>,
    device: Device<'_, A, Q>,
) -> Result<Outcome, Error> {
    let tcp = connect_tcp(device.bundle, to)
        .await
        .map_err(|_| Error::Closed)?;
    let _ = tcp.set_nodelay(true);
    let (rd, wr) = tcp.into_split();
    let clock = TokioClock::default();
    device::run_connection(
        FromTokio::new(rd),
        FromTokio::new(wr),
        &clock,
        &mut OsRng,
        device,
    )
    .await
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

/// Keeps a device connected until `stop` turns true, reconnecting with backoff and jitter,
/// renewing its certificate when the gateway says so (slot A/B, rollback after
/// [`ROLLBACK_AFTER`] failures of a renewed identity): the [`Supervisor`] decides. Calls
/// `on_end` with each connection's end.
pub async fn run<A: App>(
    identity: &[u8],
    config: &SimConfig,
    app: &mut A,
    stats: &mut Stats,
    mut stop: watch::Receiver<bool>,
    mut on_end: impl FnMut(&Result<Outcome, Error>),
) {
    let slots = MemSlots([identity.to_vec(), Vec::new()]);
    let mut supervisor = Supervisor::new(slots, config.backoff);
    let mut buffers = Box::new(Buffers::new());
    let mut outbox = Box::new(Outbox::<SIM_OUTBOX, MAX_PAYLOAD>::new());
    while !*stop.borrow() {
        // A copy of the identity in use, so the supervisor's slots stay free for confirming it.
        let Some(bytes) = current_identity(&supervisor) else {
            return;
        };
        let Ok(bundle) = Bundle::parse(&bytes) else {
            return;
        };
        let connects_before = stats.connects;
        let device = Device {
            bundle: &bundle,
            options: config.options,
            app: &mut Supervised {
                app: &mut *app,
                supervisor: &mut supervisor,
            },
            outbox: &mut outbox,
            buffers: &mut buffers,
            stats: &mut *stats,
        };
        let ended = tokio::select! {
            e = connect_once(config.to, device) => e,
            _ = stop.changed() => return,
        };
        on_end(&ended);
        let ending = Ending::of(
            stats.connects > connects_before,
            &ended,
            &buffers.bundle_out,
        );
        let decision = supervisor.ended(ending, &mut OsRng);
        if let Some(event) = decision.event {
            app.on_rotation(event);
        }
        if let Next::After { delay_ms, .. } = decision.next {
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(u64::from(delay_ms))) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

/// The supervisor's current identity, re-emitted into a buffer of its own.
fn current_identity<S: SlotStore>(supervisor: &Supervisor<S>) -> Option<Vec<u8>> {
    let (_, current) = supervisor.identity().ok()?;
    let mut bytes = std::vec![0u8; current.encoded_len()];
    current.emit(&mut bytes).ok()?;
    Some(bytes)
}
