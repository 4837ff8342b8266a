//! What every embassy-net board runs (feature `embassy`): the pump around the
//! [`Supervisor`] (A/B identity slots with rotation and rollback, backoff with full jitter)
//! and the connection ([`device::run_connection`]), telemetry and command replies, and one
//! `fleet:` log line per event. A board supplies its network stack, RNG, slot storage and log
//! output through [`Board`].

use core::fmt::{self, Write as _};

use embassy_net::tcp::TcpSocket;
use embassy_net::{Ipv4Address, Stack};
use embassy_time::{Duration, Instant, Timer};
use rand_core::CryptoRngCore;

use crate::backoff::Backoff;
use crate::bundle::{Bundle, BundleError};
use crate::device::{
    self, App, Buffers, Clock, Device, Options, Outcome, RotationEvent, Stats, MAX_PAYLOAD,
};
use crate::outbox::Outbox;
use crate::slots::SlotStore;
use crate::supervisor::{Ending, Next, Supervised, Supervisor};
use crate::Error;

pub use crate::supervisor::ROLLBACK_AFTER;

/// What a board provides.
pub trait Board {
    /// Board name in telemetry.
    const NAME: &'static str;
    /// Writes one log line.
    fn log(&mut self, line: fmt::Arguments<'_>);
    /// The newest valid identity, read from the memory-mapped slots.
    fn identity(&self) -> Result<(usize, Bundle<'static>), BundleError>;
    /// A TCP connection to the gateway is up (measurements start here).
    fn tcp_connected(&mut self) {}
    /// The gateway accepted the session.
    fn session_accepted(&mut self) {}
    /// Extra text for the telemetry log line.
    fn telemetry_note(&mut self, _out: &mut dyn fmt::Write) {}
}

/// At boot: with the `p256-cm4` feature, the known-answer test of the device's ECDSA
/// ([`crate::ec::self_test`]: the host tests cannot run that path); then the newest valid
/// identity, logged with its slot and gateway; the gateway's IPv4 address and port, or
/// (logged) why the board cannot start.
pub fn boot_identity<B: Board>(
    board: &mut B,
) -> Result<(Bundle<'static>, Ipv4Address), &'static str> {
    if cfg!(feature = "p256-cm4") {
        if !crate::ec::self_test() {
            line(
                board,
                format_args!("P-256 self-test failed: not connecting"),
            );
            return Err("P-256 self-test");
        }
        line(board, format_args!("P-256 (p256-cm4) self-test passed"));
    }
    let (slot_index, bundle) = match board.identity() {
        Ok(found) => found,
        Err(e) => {
            line(
                board,
                format_args!("no valid identity bundle in slot A or B: {e}"),
            );
            return Err("no identity");
        }
    };
    line(
        board,
        format_args!(
            "identity {} tenant {} generation {} from slot {} gateway {}:{}",
            bundle.device_id,
            bundle.tenant,
            bundle.generation,
            slot_name(slot_index),
            bundle.gateway_host,
            bundle.gateway_port
        ),
    );
    match bundle.gateway_host.parse::<Ipv4Address>() {
        Ok(gateway) => Ok((bundle, gateway)),
        Err(_) => {
            line(
                board,
                format_args!(
                    "gateway host {} is not an IPv4 address (no DNS resolver on the boards yet)",
                    bundle.gateway_host
                ),
            );
            Err("gateway address")
        }
    }
}

/// embassy-time as the firmware core's clock.
pub struct EmbassyClock;

impl Clock for EmbassyClock {
    fn now_ms(&self) -> u64 {
        Instant::now().as_millis()
    }

    async fn sleep_until(&self, at_ms: u64) {
        Timer::at(Instant::from_millis(at_ms)).await
    }
}

/// "A" or "B".
pub fn slot_name(slot: usize) -> &'static str {
    if slot == 0 {
        "A"
    } else {
        "B"
    }
}

/// Formats a `fleet: [uptime ms] …` line through the board.
fn line<B: Board>(board: &mut B, args: fmt::Arguments<'_>) {
    board.log(format_args!(
        "fleet: [{:>8}] {}",
        Instant::now().as_millis(),
        args
    ));
}

/// A TCP connect error in words (board images print no `Debug` output).
fn connect_error(e: embassy_net::tcp::ConnectError) -> &'static str {
    use embassy_net::tcp::ConnectError;
    match e {
        ConnectError::InvalidState => "socket in the wrong state",
        ConnectError::ConnectionReset => "connection refused or reset",
        ConnectError::TimedOut => "timed out",
        ConnectError::NoRoute => "no route to the gateway",
    }
}

/// `core::fmt::Write` into a byte slice, truncating.
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// A small fixed buffer for the telemetry note.
struct Note {
    buf: [u8; 64],
    len: usize,
}

impl fmt::Write for Note {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// The device's application: telemetry, command replies, rotation log.
struct BoardApp<'a, B: Board> {
    board: &'a mut B,
    id: &'a str,
}

impl<B: Board> App for BoardApp<'_, B> {
    fn telemetry(&mut self, seq: u32, out: &mut [u8]) -> usize {
        let mut w = SliceWriter { buf: out, len: 0 };
        let _ = write!(
            w,
            "{{\"seq\":{seq},\"uptime_ms\":{},\"board\":\"{}\"}}",
            Instant::now().as_millis(),
            B::NAME
        );
        let mut note = Note {
            buf: [0; 64],
            len: 0,
        };
        self.board.telemetry_note(&mut note);
        let note = core::str::from_utf8(&note.buf[..note.len]).unwrap_or("");
        line(self.board, format_args!("telemetry seq={seq}{note}"));
        w.len
    }

    fn on_command(&mut self, topic: &str, payload: &[u8], reply: &mut [u8]) -> Option<usize> {
        let text = core::str::from_utf8(payload).unwrap_or("<binary>");
        line(
            self.board,
            format_args!("command topic={topic} payload={text}"),
        );
        let mut w = SliceWriter { buf: reply, len: 0 };
        let _ = write!(
            w,
            "{{\"ok\":true,\"device\":\"{}\",\"echo\":{}}}",
            self.id,
            payload.len()
        );
        Some(w.len)
    }

    fn on_connected(&mut self) {
        self.board.session_accepted();
        line(self.board, format_args!("connected as {}", self.id));
    }

    fn on_rotation(&mut self, event: RotationEvent<'_>) {
        rotation_line(self.board, event);
    }
}

/// One `rotation:` log line.
fn rotation_line<B: Board>(board: &mut B, event: RotationEvent<'_>) {
    match event {
        RotationEvent::Status { renew } => {
            line(board, format_args!("rotation: status renew={renew}"))
        }
        RotationEvent::Requested => line(board, format_args!("rotation: new key made, CSR sent")),
        RotationEvent::Refused(why) => line(board, format_args!("rotation: refused: {why}")),
        RotationEvent::Renewed { generation } => line(
            board,
            format_args!("rotation: new certificate, generation {generation}"),
        ),
        RotationEvent::Rejected => line(
            board,
            format_args!("rotation: the certificate is not for our new key"),
        ),
        RotationEvent::Stored { slot } => line(
            board,
            format_args!(
                "rotation: stored the renewed identity in slot {}",
                slot_name(slot)
            ),
        ),
        RotationEvent::NotStored => line(
            board,
            format_args!("rotation: could not store the renewed identity"),
        ),
        RotationEvent::Confirmed { slot } => line(
            board,
            format_args!(
                "rotation: confirmed the identity in slot {}",
                slot_name(slot)
            ),
        ),
        RotationEvent::RolledBack { from, to } => line(
            board,
            format_args!(
                "rotation: slot {} failed {ROLLBACK_AFTER} times, rolled back to slot {}",
                slot_name(from),
                slot_name(to)
            ),
        ),
    }
}

/// Buffers the loop needs; keep them in `static`s.
pub struct Resources<'a, const Q: usize> {
    pub tls: &'a mut Buffers,
    pub outbox: &'a mut Outbox<Q, MAX_PAYLOAD>,
    pub tcp_rx: &'a mut [u8],
    pub tcp_tx: &'a mut [u8],
}

/// Keeps the device connected to `gateway:port` forever: a connection, then what the
/// [`Supervisor`] decides, again and again.
pub async fn run<B: Board, S: SlotStore, R: CryptoRngCore, const Q: usize>(
    board: &mut B,
    slots: S,
    stack: Stack<'static>,
    gateway: Ipv4Address,
    port: u16,
    rng: &mut R,
    res: Resources<'_, Q>,
) -> ! {
    let mut pump = Pump {
        board,
        supervisor: Supervisor::new(slots, Backoff::default()),
        stack,
        gateway,
        port,
        rng,
        res,
        stats: Stats::default(),
        id: heapless::String::new(),
    };
    loop {
        let connects = pump.stats.connects;
        let ended = pump.connection().await;
        let accepted = pump.stats.connects > connects;
        let ending = Ending::of(accepted, &ended, &pump.res.tls.bundle_out);
        let decision = pump.supervisor.ended(ending, &mut *pump.rng);
        if let Some(event) = decision.event {
            rotation_line(pump.board, event);
        }
        if let Next::After { delay_ms, attempt } = decision.next {
            line(
                pump.board,
                format_args!("reconnecting in {delay_ms} ms (attempt {attempt})"),
            );
            Timer::after_millis(u64::from(delay_ms)).await;
        }
    }
}

/// What the board loop holds.
struct Pump<'a, B, S, R, const Q: usize> {
    board: &'a mut B,
    supervisor: Supervisor<S>,
    stack: Stack<'static>,
    gateway: Ipv4Address,
    port: u16,
    rng: &'a mut R,
    res: Resources<'a, Q>,
    stats: Stats,
    /// The device id of the identity in use.
    id: heapless::String<64>,
}

impl<B: Board, S: SlotStore, R: CryptoRngCore, const Q: usize> Pump<'_, B, S, R, Q> {
    /// One connection with the newest identity: TCP, then [`device::run_connection`]; logs
    /// how it ends. A TCP connect that fails is [`Error::Closed`].
    async fn connection(&mut self) -> Result<Outcome, Error> {
        // The slots are memory-mapped: the bundle borrows the slot itself, and only until
        // this returns; the supervisor writes slots after it.
        let (slot, bundle) = match self.board.identity() {
            Ok(found) => found,
            Err(e) => {
                line(
                    self.board,
                    format_args!("FATAL no valid identity bundle: {e}"),
                );
                loop {
                    Timer::after_secs(3600).await;
                }
            }
        };
        self.id.clear();
        let _ = self.id.push_str(bundle.device_id);
        let (gateway, port) = (self.gateway, self.port);
        let mut socket = TcpSocket::new(self.stack, &mut *self.res.tcp_rx, &mut *self.res.tcp_tx);
        socket.set_timeout(Some(Duration::from_secs(90)));
        let started = Instant::now();
        let ended = match socket.connect((gateway, port)).await {
            Err(e) => {
                line(
                    self.board,
                    format_args!("tcp connect to {gateway}:{port}: {}", connect_error(e)),
                );
                Err(Error::Closed)
            }
            Ok(()) => {
                line(
                    self.board,
                    format_args!(
                        "tcp connected to {gateway}:{port} with slot {} generation {}",
                        slot_name(slot),
                        bundle.generation
                    ),
                );
                self.board.tcp_connected();
                let (rd, wr) = socket.split();
                let mut app = BoardApp {
                    board: &mut *self.board,
                    id: &self.id,
                };
                let device = Device {
                    bundle: &bundle,
                    options: Options::default(),
                    app: &mut Supervised {
                        app: &mut app,
                        supervisor: &mut self.supervisor,
                    },
                    outbox: &mut *self.res.outbox,
                    buffers: &mut *self.res.tls,
                    stats: &mut self.stats,
                };
                let ended =
                    device::run_connection(rd, wr, &EmbassyClock, &mut *self.rng, device).await;
                let why: &dyn fmt::Display = match &ended {
                    Ok(outcome) => outcome,
                    Err(e) => e,
                };
                line(
                    self.board,
                    format_args!(
                        "connection ended after {} ms: {why}",
                        started.elapsed().as_millis()
                    ),
                );
                ended
            }
        };
        socket.abort();
        let _ = socket.flush().await;
        ended
    }
}
