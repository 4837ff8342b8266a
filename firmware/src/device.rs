//! One connection of a device: TLS → CONNECT → SUBSCRIBE → telemetry and commands.
//!
//! The protocol is [`DeviceSession`] (no I/O); [`run_connection`] is its pump: it opens TLS,
//! feeds the session what the gateway sends, writes what the session says and sleeps until
//! the session's next deadline. Runtime-agnostic: the board (or the `std` simulation)
//! supplies the socket halves, the RNG and a [`Clock`]. The pump runs as two loops raced
//! against each other — a reader that feeds the session and a writer that sends for it —
//! because a TLS read cannot be cancelled halfway through a record. Whichever loop ends first
//! ends the connection; the caller reconnects (see [`crate::supervisor`]).

use core::cell::{Cell, RefCell};
use core::future::Future;

use embassy_futures::select::{select, Either};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use embedded_io_async::{Read, Write};
use rand_core::CryptoRngCore;

use crate::bundle::Bundle;
use crate::mqtt::QoS;
use crate::outbox::Outbox;
use crate::session::{DeviceSession, Step};
use crate::socket::SplitSocket;
use crate::tls::Connection;
use crate::Error;

pub use crate::session::Outcome;

/// Milliseconds since some fixed start, and a way to wait.
pub trait Clock {
    fn now_ms(&self) -> u64;
    fn sleep_until(&self, at_ms: u64) -> impl Future<Output = ()>;
}

/// What the device does with its connection.
pub trait App {
    /// Writes the next telemetry payload into `out` and returns its length.
    fn telemetry(&mut self, seq: u32, out: &mut [u8]) -> usize;
    /// A command arrived. Write a reply into `reply` and return its length to acknowledge it
    /// on `.../ack`, or return `None`.
    fn on_command(&mut self, topic: &str, payload: &[u8], reply: &mut [u8]) -> Option<usize>;
    /// The gateway accepted the session and the command subscription.
    fn on_connected(&mut self) {}
    /// Certificate rotation progress (for logs).
    fn on_rotation(&mut self, _event: RotationEvent<'_>) {}
}

/// Steps of a certificate rotation, as the device sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationEvent<'a> {
    /// The gateway reported the certificate's state.
    Status { renew: bool },
    /// A new key was made and its request sent.
    Requested,
    /// The gateway could not get a new certificate.
    Refused(&'a str),
    /// A new certificate arrived and a bundle with it and the new key is ready to store.
    Renewed { generation: u32 },
    /// What arrived is not a certificate for the new key.
    Rejected,
    /// The renewed identity was stored; the next connection uses it.
    Stored { slot: usize },
    /// The renewed identity could not be stored; the current one stays in use.
    NotStored,
    /// The renewed identity connected and is now the confirmed one.
    Confirmed { slot: usize },
    /// The renewed identity kept failing: erased, back to the previous one.
    RolledBack { from: usize, to: usize },
}

/// Connection settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub keep_alive_secs: u16,
    /// How often `App::telemetry` is asked for a message; 0: never (the caller queues
    /// messages in the outbox itself).
    pub telemetry_period_ms: u64,
    pub telemetry_qos: QoS,
    /// How long to wait for CONNACK and SUBACK.
    pub ack_timeout_ms: u64,
    /// Ask the gateway about the certificate after connecting, and renew when it says so.
    pub rotation: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keep_alive_secs: 30,
            telemetry_period_ms: 1000,
            telemetry_qos: QoS::AtMostOnce,
            ack_timeout_ms: 10_000,
            rotation: true,
        }
    }
}

/// Largest MQTT packet the device accepts or sends.
pub const MAX_PACKET: usize = 1024;
/// Largest topic the device builds.
pub const MAX_TOPIC: usize = crate::limits::DEVICE_MAX_TOPIC;
/// Largest telemetry payload, command reply and queued QoS 1 message.
pub const MAX_PAYLOAD: usize = 512;
/// Largest identity bundle the device writes when it renews.
pub const MAX_BUNDLE: usize = 2048;

/// Counters that survive reconnects (the caller owns them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub connects: u32,
    pub published: u32,
    pub acked: u32,
    pub commands: u32,
}

/// Buffers one connection needs, and what connections pass on (the verified gateway chain);
/// keep them in a `static` on boards.
pub struct Buffers {
    pub tls_read: [u8; crate::tls::READ_BUFFER],
    pub tls_write: [u8; crate::tls::WRITE_BUFFER],
    /// A renewed identity bundle; valid for the length [`Outcome::Renewed`] reports.
    pub bundle_out: [u8; MAX_BUNDLE],
    /// The gateway chain last verified (see [`crate::tls::ChainCache`]).
    pub verified_chain: crate::tls::ChainCache,
}

impl Buffers {
    pub const fn new() -> Self {
        Buffers {
            tls_read: [0; crate::tls::READ_BUFFER],
            tls_write: [0; crate::tls::WRITE_BUFFER],
            bundle_out: [0; MAX_BUNDLE],
            verified_chain: Cell::new(None),
        }
    }
}

impl Default for Buffers {
    fn default() -> Self {
        Self::new()
    }
}

/// The device's side of one connection besides the socket: its identity, settings and app,
/// and what the caller keeps across connections.
pub struct Device<'a, A, const Q: usize> {
    pub bundle: &'a Bundle<'a>,
    pub options: Options,
    pub app: &'a mut A,
    /// QoS 1 telemetry not yet acknowledged; sent again (DUP) on the next connection.
    pub outbox: &'a mut Outbox<Q, MAX_PAYLOAD>,
    pub buffers: &'a mut Buffers,
    pub stats: &'a mut Stats,
}

/// Runs one connection until it ends: `Ok` when it ended with an [`Outcome`] (a renewed
/// identity waiting in `buffers.bundle_out` to be stored and used for the next connection),
/// otherwise the error that ended it.
pub async fn run_connection<R, W, C, G, A, const Q: usize>(
    rd: R,
    wr: W,
    clock: &C,
    rng: &mut G,
    device: Device<'_, A, Q>,
) -> Result<Outcome, Error>
where
    R: Read,
    W: Write,
    C: Clock,
    G: CryptoRngCore,
    A: App,
{
    let Device {
        bundle,
        options,
        app,
        outbox,
        buffers,
        stats,
    } = device;
    let session = DeviceSession::new(bundle, options, outbox, stats, &mut buffers.bundle_out)?;
    let socket = SplitSocket::new(rd, wr);
    let mut tls = Connection::open(
        &socket,
        &mut buffers.tls_read,
        &mut buffers.tls_write,
        bundle,
        &buffers.verified_chain,
        &mut *rng,
    )
    .await?;
    let (mut reader, mut writer) = tls.split();
    let session = RefCell::new(session);
    let app = RefCell::new(app);
    let wake = Signal::<NoopRawMutex, ()>::new();

    let reading = async {
        let mut rx = [0u8; MAX_PACKET];
        let mut len = 0;
        loop {
            if len == rx.len() {
                return Err(Error::Protocol("packet larger than the receive buffer"));
            }
            let n = reader.read(&mut rx[len..]).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
            len += n;
            let used = session.borrow_mut().received(
                &rx[..len],
                clock.now_ms(),
                &mut **app.borrow_mut(),
            )?;
            rx.copy_within(used..len, 0);
            len -= used;
            wake.signal(());
        }
    };

    let writing = async {
        let mut tx = [0u8; MAX_PACKET];
        loop {
            let step = session.borrow_mut().poll(
                clock.now_ms(),
                &mut tx,
                &mut **app.borrow_mut(),
                &mut *rng,
            )?;
            match step {
                Step::Send(n) => {
                    writer.write_all(&tx[..n]).await?;
                    writer.flush().await?;
                }
                Step::Wait { until_ms } => {
                    select(clock.sleep_until(until_ms), wake.wait()).await;
                }
                Step::Done(outcome) => return Ok(outcome),
            }
        }
    };

    match select(reading, writing).await {
        Either::First(r) | Either::Second(r) => r,
    }
}
