//! One connection of a device: TLS → CONNECT → SUBSCRIBE → telemetry and commands.
//!
//! Runtime-agnostic: the board (or the `std` simulation) supplies the socket halves, the RNG
//! and a [`Clock`]. After CONNECT the connection runs as two loops raced against each other —
//! a reader that handles what the gateway sends and a writer that sends telemetry, pings and
//! acknowledgements — because a TLS read cannot be cancelled halfway through a record.
//! Whichever loop ends first ends the connection; the caller reconnects.

use core::cell::{Cell, RefCell};
use core::convert::Infallible;
use core::future::Future;

use embassy_futures::select::{select, Either};
use embassy_sync::blocking_mutex::raw::NoopRawMutex;
use embassy_sync::signal::Signal;
use embedded_io_async::{Read, Write};
use heapless::{String, Vec};
use rand_core::CryptoRngCore;

use crate::bundle::Bundle;
use crate::mqtt::{
    Connect, ConnectReturnCode, Control, Emit, Packet, Publish, QoS, SubAckCode, Subscribe,
    SubscribeFilters,
};
use crate::outbox::Outbox;
use crate::socket::SplitSocket;
use crate::tls::Connection;
use crate::Error;

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
pub const MAX_TOPIC: usize = 160;
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
    /// A renewed identity bundle; valid for the length [`Error::Renewed`] reports.
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

/// What the reader hands to the writer.
#[derive(Default)]
struct Pending {
    pubacks: Vec<u16, 8>,
    replies: Vec<Vec<u8, MAX_PAYLOAD>, 4>,
    ping_outstanding: bool,
    /// The gateway said the certificate should be renewed.
    renew: bool,
    /// A certificate from the gateway for the key made for it.
    new_cert: Option<Vec<u8, MAX_PACKET>>,
}

/// Runs one connection until it ends. It never ends well: the `Err` says why it ended —
/// [`Error::Renewed`] when a renewed identity is waiting in `buffers.bundle_out` to be stored
/// and used for the next connection.
///
/// QoS 1 telemetry goes through `outbox`, which the caller keeps across connections: what
/// the gateway has not acknowledged is sent again (DUP) on the next connection.
#[allow(clippy::too_many_arguments)]
pub async fn run_connection<R, W, C, A, G, const Q: usize>(
    rd: R,
    wr: W,
    bundle: &Bundle<'_>,
    rng: &mut G,
    clock: &C,
    app: &mut A,
    options: &Options,
    outbox: &mut Outbox<Q, MAX_PAYLOAD>,
    buffers: &mut Buffers,
    stats: &mut Stats,
) -> Result<Infallible, Error>
where
    R: Read,
    W: Write,
    C: Clock,
    A: App,
    G: CryptoRngCore,
{
    let socket = SplitSocket::new(rd, wr);
    let bundle_out = &mut buffers.bundle_out;
    let mut tls = Connection::open(
        &socket,
        &mut buffers.tls_read,
        &mut buffers.tls_write,
        bundle,
        &buffers.verified_chain,
        &mut *rng,
    )
    .await?;

    let topics = Topics::new(bundle)?;
    let mut rx = [0u8; MAX_PACKET];
    let mut rx_len = 0;
    let mut tx = [0u8; MAX_PACKET];

    // CONNECT → CONNACK.
    send(
        &mut tls,
        &mut tx,
        &Connect {
            clean_session: true,
            keep_alive: options.keep_alive_secs,
            client_id: bundle.device_id,
            will: None,
            username: None,
            password: None,
        },
    )
    .await?;
    let deadline = clock.now_ms() + options.ack_timeout_ms;
    let (code, n) = match expect(&mut tls, &mut rx, &mut rx_len, clock, deadline).await? {
        (Packet::ConnAck(ack), n) => (ack.code, n),
        _ => return Err(Error::Protocol("expected CONNACK")),
    };
    consume(&mut rx, &mut rx_len, n);
    if code != ConnectReturnCode::Accepted {
        return Err(Error::Refused(code));
    }
    stats.connects += 1;

    // SUBSCRIBE to our own commands and certificate messages → SUBACK.
    let filters = [
        (topics.commands.as_str(), QoS::AtLeastOnce),
        (topics.cert.as_str(), QoS::AtMostOnce),
    ];
    send(
        &mut tls,
        &mut tx,
        &Subscribe {
            packet_id: 1,
            filters: SubscribeFilters::from_slice(&filters),
        },
    )
    .await?;
    let (refused, n) = match expect(&mut tls, &mut rx, &mut rx_len, clock, deadline).await? {
        (Packet::SubAck(ack), n) => (ack.return_codes.iter().any(|c| c == SubAckCode::Failure), n),
        _ => return Err(Error::Protocol("expected SUBACK")),
    };
    consume(&mut rx, &mut rx_len, n);
    if refused {
        return Err(Error::Protocol("gateway refused the command subscription"));
    }
    app.on_connected();

    outbox.reconnected();
    let outbox = RefCell::new(outbox);
    let pending = RefCell::new(Pending::default());
    let wake = Signal::<NoopRawMutex, ()>::new();
    let app = RefCell::new(app);
    let stats = RefCell::new(stats);
    let (mut reader, mut writer) = tls.split();

    let reading = async {
        loop {
            if rx_len == rx.len() {
                return Err::<Infallible, _>(Error::Protocol(
                    "packet larger than the receive buffer",
                ));
            }
            let n = reader.read(&mut rx[rx_len..]).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
            rx_len += n;
            let mut used = 0;
            while let Some((packet, n)) =
                Packet::parse_from_server(&rx[used..rx_len], MAX_PACKET).map_err(Error::Mqtt)?
            {
                used += n;
                handle(packet, &topics, &pending, &app, &stats, &outbox)?;
                wake.signal(());
            }
            consume(&mut rx, &mut rx_len, used);
        }
    };

    let writing = async {
        let keep_alive_ms = u64::from(options.keep_alive_secs) * 1000;
        let mut next_telemetry = clock.now_ms();
        let mut next_ping = clock.now_ms() + keep_alive_ms;
        let mut seq: u32 = 0;
        let mut payload = [0u8; MAX_PAYLOAD];
        let mut new_key: Option<p256::SecretKey> = None;
        if options.rotation {
            publish(
                &mut writer,
                &mut tx,
                topics.cert_status_get.as_str(),
                &[],
                QoS::AtMostOnce,
                None,
            )
            .await?;
        }
        loop {
            let renew = core::mem::take(&mut pending.borrow_mut().renew);
            if renew && new_key.is_none() {
                let key = p256::SecretKey::random(&mut *rng);
                let mut csr = [0u8; crate::csr::MAX_CSR];
                let n = crate::csr::write_csr(&key, bundle.device_id, bundle.tenant, &mut csr)
                    .map_err(|_| Error::Protocol("certificate request does not fit"))?;
                publish(
                    &mut writer,
                    &mut tx,
                    topics.cert_csr.as_str(),
                    &csr[..n],
                    QoS::AtMostOnce,
                    None,
                )
                .await?;
                new_key = Some(key);
                app.borrow_mut().on_rotation(RotationEvent::Requested);
            }
            let arrived = pending.borrow_mut().new_cert.take();
            if let (Some(cert), Some(key)) = (arrived, new_key.as_ref()) {
                match renewed_bundle(bundle, &cert, key, &mut bundle_out[..]) {
                    Some((generation, len)) => {
                        app.borrow_mut()
                            .on_rotation(RotationEvent::Renewed { generation });
                        return Err(Error::Renewed(len));
                    }
                    None => app.borrow_mut().on_rotation(RotationEvent::Rejected),
                }
            }
            let (acks, replies) = {
                let mut p = pending.borrow_mut();
                (
                    core::mem::take(&mut p.pubacks),
                    core::mem::take(&mut p.replies),
                )
            };
            for id in acks {
                send(&mut writer, &mut tx, &Control::PubAck(id)).await?;
            }
            for reply in replies {
                publish(
                    &mut writer,
                    &mut tx,
                    topics.ack.as_str(),
                    &reply,
                    QoS::AtMostOnce,
                    None,
                )
                .await?;
            }
            let now = clock.now_ms();
            if options.telemetry_period_ms > 0 && now >= next_telemetry {
                let len = app
                    .borrow_mut()
                    .telemetry(seq, &mut payload)
                    .min(MAX_PAYLOAD);
                seq = seq.wrapping_add(1);
                if options.telemetry_qos == QoS::AtMostOnce {
                    publish(
                        &mut writer,
                        &mut tx,
                        topics.telemetry.as_str(),
                        &payload[..len],
                        QoS::AtMostOnce,
                        None,
                    )
                    .await?;
                    stats.borrow_mut().published += 1;
                } else {
                    // Fits by construction (len <= MAX_PAYLOAD): the error cannot happen.
                    let _ = outbox.borrow_mut().push(&payload[..len]);
                }
                next_telemetry = now + options.telemetry_period_ms;
            }
            // Everything queued and not yet sent on this connection, oldest first.
            loop {
                let due = outbox.borrow_mut().next_due().map(|d| {
                    (
                        d.packet_id,
                        d.dup,
                        Vec::<u8, MAX_PAYLOAD>::from_slice(d.payload).unwrap_or_default(),
                    )
                });
                let Some((id, dup, body)) = due else { break };
                let p = Publish {
                    dup,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: topics.telemetry.as_str(),
                    packet_id: Some(id),
                    payload: &body,
                };
                send(&mut writer, &mut tx, &p).await?;
                stats.borrow_mut().published += 1;
            }
            if keep_alive_ms > 0 && now >= next_ping {
                if pending.borrow().ping_outstanding {
                    return Err::<Infallible, _>(Error::Timeout(
                        "no PINGRESP within the keep-alive",
                    ));
                }
                pending.borrow_mut().ping_outstanding = true;
                send(&mut writer, &mut tx, &Control::PingReq).await?;
                next_ping = now + keep_alive_ms;
            }
            let telemetry_at = if options.telemetry_period_ms > 0 {
                next_telemetry
            } else {
                u64::MAX
            };
            let at = if keep_alive_ms > 0 {
                telemetry_at.min(next_ping)
            } else {
                telemetry_at
            };
            select(clock.sleep_until(at), wake.wait()).await;
        }
    };

    match select(reading, writing).await {
        Either::First(r) | Either::Second(r) => r,
    }
}

fn handle<A: App, const Q: usize>(
    packet: Packet<'_>,
    topics: &Topics,
    pending: &RefCell<Pending>,
    app: &RefCell<&mut A>,
    stats: &RefCell<&mut Stats>,
    outbox: &RefCell<&mut Outbox<Q, MAX_PAYLOAD>>,
) -> Result<(), Error> {
    match packet {
        Packet::Publish(p) if p.topic.starts_with(topics.cert_prefix.as_str()) => {
            let leaf = &p.topic[topics.cert_prefix.len()..];
            let mut pending = pending.borrow_mut();
            match leaf {
                "status" => {
                    const RENEW: &[u8] = b"\"renew\":true";
                    let renew = p.payload.windows(RENEW.len()).any(|w| w == RENEW);
                    pending.renew |= renew;
                    app.borrow_mut()
                        .on_rotation(RotationEvent::Status { renew });
                }
                "new" => pending.new_cert = Vec::from_slice(p.payload).ok(),
                "error" => app.borrow_mut().on_rotation(RotationEvent::Refused(
                    core::str::from_utf8(p.payload).unwrap_or("(not text)"),
                )),
                _ => {}
            }
            if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                pending
                    .pubacks
                    .push(id)
                    .map_err(|_| Error::Protocol("too many unacknowledged messages"))?;
            }
            Ok(())
        }
        Packet::Publish(p) => {
            stats.borrow_mut().commands += 1;
            let mut reply = [0u8; MAX_PAYLOAD];
            let replied = app.borrow_mut().on_command(p.topic, p.payload, &mut reply);
            let mut pending = pending.borrow_mut();
            if let Some(n) = replied {
                let _ = pending
                    .replies
                    .push(Vec::from_slice(&reply[..n.min(MAX_PAYLOAD)]).unwrap_or_default());
            }
            if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                pending
                    .pubacks
                    .push(id)
                    .map_err(|_| Error::Protocol("too many unacknowledged commands"))?;
            }
            Ok(())
        }
        Packet::PubAck(id) => {
            if outbox.borrow_mut().acked(id) {
                stats.borrow_mut().acked += 1;
            }
            Ok(())
        }
        Packet::PingResp => {
            pending.borrow_mut().ping_outstanding = false;
            Ok(())
        }
        Packet::SubAck(_) | Packet::UnsubAck(_) => Ok(()),
        _ => Err(Error::Protocol("unexpected packet from the gateway")),
    }
}

/// A bundle like `current` with the new certificate and key and the next generation, written
/// into `out`; `None` unless `cert` is a certificate for `key`. Returns (generation, length).
fn renewed_bundle(
    current: &Bundle<'_>,
    cert: &[u8],
    key: &p256::SecretKey,
    out: &mut [u8],
) -> Option<(u32, usize)> {
    // The certificate must carry our new public key (its uncompressed point).
    let point = crate::ec::public_key(key);
    if !cert.windows(65).any(|w| w == point) {
        return None;
    }
    let mut key_der = [0u8; crate::csr::SEC1_KEY_LEN];
    let key_len = crate::csr::write_sec1_key(key, &mut key_der).ok()?;
    let generation = current.generation.checked_add(1)?;
    let next = Bundle {
        generation,
        cert_der: cert,
        private_key_der: Some(&key_der[..key_len]),
        ..*current
    };
    let len = next.emit(out).ok()?;
    Some((generation, len))
}

/// The topics a device uses, built once from its bundle.
struct Topics {
    telemetry: String<MAX_TOPIC>,
    commands: String<MAX_TOPIC>,
    ack: String<MAX_TOPIC>,
    /// `…/cert/#`, `…/cert/`, `…/cert/status/get`, `…/cert/csr`.
    cert: String<MAX_TOPIC>,
    cert_prefix: String<MAX_TOPIC>,
    cert_status_get: String<MAX_TOPIC>,
    cert_csr: String<MAX_TOPIC>,
}

impl Topics {
    fn new(b: &Bundle<'_>) -> Result<Topics, Error> {
        let prefix = |suffix: &str| -> Result<String<MAX_TOPIC>, Error> {
            let mut s = String::new();
            for part in ["tenants/", b.tenant, "/devices/", b.device_id, "/", suffix] {
                s.push_str(part)
                    .map_err(|_| Error::Protocol("topic longer than MAX_TOPIC"))?;
            }
            Ok(s)
        };
        Ok(Topics {
            telemetry: prefix("telemetry")?,
            commands: prefix("cmd/#")?,
            ack: prefix("ack")?,
            cert: prefix("cert/#")?,
            cert_prefix: prefix("cert/")?,
            cert_status_get: prefix("cert/status/get")?,
            cert_csr: prefix("cert/csr")?,
        })
    }
}

async fn publish<W: Write>(
    w: &mut W,
    tx: &mut [u8],
    topic: &str,
    payload: &[u8],
    qos: QoS,
    packet_id: Option<u16>,
) -> Result<(), Error>
where
    Error: From<W::Error>,
{
    let p = Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        packet_id,
        payload,
    };
    send(w, tx, &p).await
}

/// Writes one packet. Generic over the packet type, so the device carries the encoders of
/// the packets it sends and no others.
async fn send<W: Write>(w: &mut W, tx: &mut [u8], packet: &impl Emit) -> Result<(), Error>
where
    Error: From<W::Error>,
{
    let n = packet.emit(tx).map_err(Error::Mqtt)?;
    write_all(w, &tx[..n]).await
}

async fn write_all<W: Write>(w: &mut W, bytes: &[u8]) -> Result<(), Error>
where
    Error: From<W::Error>,
{
    w.write_all(bytes).await?;
    w.flush().await?;
    Ok(())
}

/// Reads until one whole packet is buffered, or the deadline passes.
async fn expect<'b, T: Read, C: Clock>(
    t: &mut T,
    rx: &'b mut [u8; MAX_PACKET],
    rx_len: &mut usize,
    clock: &C,
    deadline: u64,
) -> Result<(Packet<'b>, usize), Error>
where
    Error: From<T::Error>,
{
    loop {
        if Packet::parse_from_server(&rx[..*rx_len], MAX_PACKET)
            .map_err(Error::Mqtt)?
            .is_some()
        {
            break;
        }
        if *rx_len == rx.len() {
            return Err(Error::Protocol("packet larger than the receive buffer"));
        }
        // Cancelling this read on timeout is safe: the connection is abandoned then.
        match select(t.read(&mut rx[*rx_len..]), clock.sleep_until(deadline)).await {
            Either::First(Ok(0)) => return Err(Error::Closed),
            Either::First(Ok(n)) => *rx_len += n,
            Either::First(Err(e)) => return Err(e.into()),
            Either::Second(()) => {
                return Err(Error::Timeout("no acknowledgement from the gateway"))
            }
        }
    }
    match Packet::parse_from_server(&rx[..*rx_len], MAX_PACKET) {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(Error::Protocol("incomplete packet")),
        Err(e) => Err(Error::Mqtt(e)),
    }
}

fn consume(rx: &mut [u8], len: &mut usize, n: usize) {
    rx.copy_within(n..*len, 0);
    *len -= n;
}
