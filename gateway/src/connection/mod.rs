//! One client connection: TLS handshake → identity → CONNECT → the broker core → two-way pump.
//!
//! This is the I/O shell around [`crate::session`] (the rules of one connection) and
//! [`crate::hub`] (the broker core every connection shares); every decision is made there.
//! `pump` is the loop of a live session.
//!
//! Memory: an idle session costs about 12.7 KiB of resident memory (`cargo xtask bench
//! gateway`). Measured with heaptrack at 5,000 idle TLS 1.3 sessions, per session: rustls'
//! read buffer 4 KiB (its buffered API keeps 4 KiB between records), the TLS stream in its
//! split halves 1.2 KiB, traffic keys and key schedule 2.2 KiB, the client's certificate
//! chain 1 KiB, other rustls state 1.1 KiB; the session's future (`after_handshake`,
//! boxed) 1.2 KiB; the tokio task and I/O registration 0.9 KiB; the rest is the broker core
//! and the session registry. The handshake and the CONNECT step run in boxes of their own,
//! freed when they end, so none of their state stays with a session that has become idle.

mod pump;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleet_protocol::mqtt::v5::{reason, Packet5};
use fleet_protocol::mqtt::{MqttError, Packet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::audit::AuditEvent;
use crate::broker::{ConnId, ConnectRequest, Ending, Handle};
use crate::hub::Outbox;
use crate::identity::Identity;
use crate::metrics::{ReasonLabels, TenantLabels};
use crate::registry::{Kick, SessionInfo};
use crate::session::{self, Accepted, Close, Refusal, ServerLimits, Session, Version};
use crate::state::Shared;
use crate::tls;

/// How a session that got past CONNECT ended.
#[derive(Debug)]
pub enum Ended {
    Client(Close),
    Kicked(Kick),
    KeepAliveTimeout,
    /// The client closed the socket (or it broke) without DISCONNECT.
    ConnectionLost,
    /// The client sent bytes that are not MQTT.
    Malformed(MqttError),
    /// The broker core closed the connection with this version 5 reason: 0x97 its queue
    /// overflowed (overflow policy `disconnect`), 0x93 the client exceeded the Receive
    /// Maximum, 0x90 an invalid topic name, 0x82 another protocol error.
    Broker(u8),
    /// A 3.1.1 client's publish could not be acknowledged (a version 5 reason it cannot be
    /// told): closed so that it publishes again.
    AckRefused(u8),
    /// The client did not read what it was sent within [`WRITE_TIMEOUT`].
    WriteTimeout,
}

/// How long the TLS close (close_notify) to a departing client may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a write to a client may stall before the session is closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl Ended {
    fn label(&self) -> &'static str {
        match self {
            Ended::Client(Close::ClientDisconnect(_)) => "client_disconnect",
            Ended::Client(Close::ClientDisconnectWithWill(_)) => "client_disconnect_with_will",
            Ended::Client(Close::TopicAliasInvalid) => "topic_alias_invalid",
            Ended::Client(Close::SubscriptionIdentifiers) => "subscription_identifiers",
            Ended::Client(Close::ProtocolViolation(_)) => "protocol_violation",
            Ended::Client(Close::RateLimited) => "rate_limited",
            Ended::Kicked(k) => k.label(),
            Ended::KeepAliveTimeout => "keepalive_timeout",
            Ended::ConnectionLost => "connection_lost",
            Ended::Malformed(_) => "malformed_packet",
            Ended::Broker(reason::QUOTA_EXCEEDED) => "queue_overflow",
            Ended::Broker(reason::RECEIVE_MAXIMUM_EXCEEDED) => "receive_maximum_exceeded",
            Ended::Broker(reason::TOPIC_NAME_INVALID) => "topic_name_invalid",
            Ended::Broker(reason::PROTOCOL_ERROR) => "protocol_violation",
            Ended::Broker(_) => "broker_closed",
            Ended::AckRefused(_) => "publish_not_acknowledged",
            Ended::WriteTimeout => "write_timeout",
        }
    }

    /// The DISCONNECT a version 5 client is sent when the gateway ends the session: reason
    /// code and text. `None` when the client ended it or cannot be written to.
    fn disconnect5(&self) -> Option<(u8, String)> {
        let code = match self {
            Ended::Client(Close::ProtocolViolation(_)) => reason::PROTOCOL_ERROR,
            Ended::Client(Close::RateLimited) => reason::MESSAGE_RATE_TOO_HIGH,
            Ended::Client(Close::TopicAliasInvalid) => reason::TOPIC_ALIAS_INVALID,
            Ended::Client(Close::SubscriptionIdentifiers) => {
                reason::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED
            }
            Ended::Kicked(Kick::Takeover) => reason::SESSION_TAKEN_OVER,
            Ended::Kicked(Kick::Admin) => reason::ADMINISTRATIVE_ACTION,
            Ended::Kicked(Kick::Revoked) => reason::NOT_AUTHORIZED,
            Ended::Kicked(Kick::Shutdown) => reason::SERVER_SHUTTING_DOWN,
            Ended::KeepAliveTimeout => reason::KEEP_ALIVE_TIMEOUT,
            Ended::Malformed(MqttError::PacketTooLarge { .. }) => reason::PACKET_TOO_LARGE,
            Ended::Malformed(_) => reason::MALFORMED_PACKET,
            Ended::Broker(code) => *code,
            Ended::Client(Close::ClientDisconnect(_) | Close::ClientDisconnectWithWill(_))
            | Ended::ConnectionLost
            | Ended::AckRefused(_)
            | Ended::WriteTimeout => return None,
        };
        let why = match self {
            Ended::Client(Close::ProtocolViolation(what)) => what.to_string(),
            Ended::Malformed(e) => e.to_string(),
            Ended::Kicked(Kick::Revoked) => "the client certificate has been revoked".into(),
            other => other.label().replace('_', " "),
        };
        Some((code, why))
    }

    /// How the broker sees this end: only a normal DISCONNECT discards the will
    /// [MQTT-3.1.2-10]; a version 5 DISCONNECT may set a new Session Expiry Interval.
    fn ending(&self) -> (Ending, Option<u32>) {
        match self {
            Ended::Client(Close::ClientDisconnect(expiry)) => (Ending::Normal, *expiry),
            Ended::Client(Close::ClientDisconnectWithWill(expiry)) => (Ending::WithWill, *expiry),
            _ => (Ending::Abnormal, None),
        }
    }
}

/// Serves one accepted TCP connection to its end, recording the outcome.
pub async fn serve(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, conn: u64) {
    let _ = tcp.set_nodelay(true);
    match run(&shared, tcp, peer, conn).await {
        Ok((identity, ended)) => {
            shared
                .metrics
                .session_ends
                .get_or_create(&ReasonLabels {
                    reason: ended.label(),
                })
                .inc();
            if matches!(ended, Ended::Malformed(_)) {
                shared.metrics.malformed_packets.inc();
            }
            if let Ended::Kicked(kick) = &ended {
                shared.audit.record(&AuditEvent::new(
                    "ended",
                    kick.label(),
                    format!("session closed by the gateway: {}", kick.label()),
                    peer,
                    Some(&identity),
                ));
            }
            tracing::info!(
                peer = %peer,
                device = %identity.id,
                tenant = %identity.tenant,
                reason = ended.label(),
                detail = ?ended,
                "session ended"
            );
        }
        Err((refusal, identity)) => {
            shared.metrics.connect(Some(refusal.label()));
            shared.audit_refusal(&AuditEvent::new(
                "refused",
                refusal.label(),
                refusal.to_string(),
                peer,
                identity.as_deref(),
            ));
        }
    }
}

type Refused = (Refusal, Option<Arc<Identity>>);

async fn run(
    shared: &Shared,
    tcp: TcpStream,
    peer: SocketAddr,
    conn: u64,
) -> Result<(Arc<Identity>, Ended), Refused> {
    let limits = shared.config.limits;
    let config = shared.acceptor().config().clone();
    // The ClientHello is awaited without a handshake slot: a client that connects and sends
    // nothing, or trickles, waits only on its own timeout and never in front of others. The
    // slot bounds the handshakes doing work; they wait for one within their own timeout too.
    // The handshake future holds rustls' whole handshake state inline (two connection
    // structures, its buffers): in a box of its own, freed when the handshake ends, it does
    // not size the task, which an idle session keeps for as long as it lives.
    let handshake = Box::pin(async {
        // No TLS state at all until the client sends something.
        tcp.readable().await?;
        let hello =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        let _slot = shared.handshakes.acquire().await;
        hello.into_stream(config).await
    });
    let tls = match timeout(limits.handshake_timeout, handshake).await {
        Err(_) => return Err((Refusal::HandshakeTimeout, None)),
        Ok(Err(e)) => return Err((Refusal::Handshake(tls::failure_reason(&e)), None)),
        Ok(Ok(s)) => s,
    };
    // Everything after the handshake lives in its own allocation, made only now: a
    // connection still waiting for its handshake costs just the handshake's state. It gets
    // the stream's two halves (a pointer each), not the stream by value: an async function
    // keeps room for its arguments, and for any local it borrowed, for as long as it lives,
    // and rustls' connection state is over a kilobyte.
    let (identity, rd, wr) = split_with_identity(shared, tls).map_err(|r| (r, None))?;
    Box::pin(after_handshake(
        shared,
        identity,
        rd,
        wr,
        peer,
        ConnId(conn),
    ))
    .await
}

/// The TLS stream of a client whose handshake succeeded.
type Tls = tokio_rustls::server::TlsStream<TcpStream>;

/// A client's identity and its TLS stream's two halves.
type Split = (Arc<Identity>, ReadHalf<Tls>, WriteHalf<Tls>);

/// Who the client is, from the certificate it presented, and the stream in two halves.
fn split_with_identity(shared: &Shared, tls: Tls) -> Result<Split, Refusal> {
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(Refusal::Handshake("no_client_certificate"))?;
    let identity = Identity::from_cert_der(cert, &shared.config.service_ou)
        .map_err(|e| Refusal::BadIdentity(e.to_string()))?;
    let (rd, wr) = tokio::io::split(tls);
    Ok((Arc::new(identity), rd, wr))
}

/// A client whose CONNECT the broker core accepted and who was sent its CONNACK.
struct Joined {
    session: Session,
    handle: Handle,
    outbox: Arc<Outbox>,
    version: Version,
    keep_alive: u16,
}

/// The broker session and the pump, for a client whose handshake succeeded.
///
/// An idle session keeps this future (boxed) for as long as it lives, so the CONNECT step
/// before the pump and the close after it, with timers and parsed packets of their own, run
/// in boxes of their own that are freed when they end: what stays is the pump's state.
async fn after_handshake(
    shared: &Shared,
    identity: Arc<Identity>,
    mut rd: ReadHalf<Tls>,
    mut wr: WriteHalf<Tls>,
    peer: SocketAddr,
    conn: ConnId,
) -> Result<(Arc<Identity>, Ended), Refused> {
    let mut buf = Vec::with_capacity(1024);
    let joined = Box::pin(join(
        shared,
        identity.clone(),
        &mut rd,
        &mut wr,
        &mut buf,
        conn,
    ))
    .await
    .map_err(|r| (r, Some(identity.clone())))?;
    let Some(Joined {
        session,
        handle,
        outbox,
        version,
        keep_alive,
    }) = joined
    else {
        return Ok((identity, Ended::ConnectionLost));
    };
    let info = SessionInfo {
        identity: identity.clone(),
        peer,
        connected_at: SystemTime::now(),
        version,
    };
    let (registration, kick) = shared.sessions.register(info, conn.0);
    tracing::info!(peer = %peer, device = %identity.id, tenant = %identity.tenant, "session started");
    shared.metrics.connect(None);
    // A clone of the gauge, not the family's lock guard, is held across the session.
    let tenant_gauge = shared
        .metrics
        .sessions
        .get_or_create(&TenantLabels {
            tenant: identity.tenant.clone(),
        })
        .clone();
    tenant_gauge.inc();

    let keep_alive = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
    // The CONNECT's read buffer goes: a session that stays idle holds none (a busy one grows
    // its own, and keeps up to 4 KiB of it).
    if buf.is_empty() {
        buf = Vec::new();
    }
    let mut pump = pump::Pump::new(shared, session, handle, outbox, kick);
    let ended = pump.run(&mut rd, &mut wr, &mut buf, keep_alive).await;
    tenant_gauge.dec();
    let (ending, expiry) = ended.ending();
    shared.hub.disconnect(
        conn,
        Some(handle),
        ending,
        expiry,
        std::time::Instant::now(),
    );
    // The session is over for everyone else now, whether or not the client reads our
    // close_notify: a client that stopped reading gets a bounded goodbye.
    drop(registration);
    let last = match (version, ended.disconnect5()) {
        (Version::V5, Some((code, why))) => Some(session::disconnect5(code, &why)),
        _ => None,
    };
    Box::pin(close(&mut wr, last)).await;
    Ok((identity, ended))
}

/// Reads and checks the CONNECT, joins the broker core and sends the CONNACK. `None` when
/// the client went away before its CONNACK could be written.
async fn join(
    shared: &Shared,
    identity: Arc<Identity>,
    rd: &mut ReadHalf<Tls>,
    wr: &mut WriteHalf<Tls>,
    buf: &mut Vec<u8>,
    conn: ConnId,
) -> Result<Option<Joined>, Refusal> {
    let limits = &shared.config.limits;
    let connect = timeout(
        limits.connect_timeout,
        read_connect(rd, buf, limits.max_packet_size, &identity, shared),
    )
    .await
    .unwrap_or(Err((Version::V311, Refusal::ConnectTimeout)));
    let accepted = match connect {
        Ok(a) => a,
        Err((version, refusal)) => {
            if let Some(connack) = refusal.connack(version) {
                close(wr, Some(connack)).await;
            }
            return Err(refusal);
        }
    };
    // A CRL may have arrived while this handshake used the previous TLS state.
    if shared.is_revoked(&identity) {
        return Err(Refusal::Handshake("revoked"));
    }

    let now = std::time::Instant::now();
    let session =
        Session::new(identity.clone(), shared.policy.clone(), limits, now).for_client(&accepted);
    let session = match &shared.config.renewal {
        Some(r) => session.with_renewal(r.threshold),
        None => session,
    };
    let outbox = Arc::new(Outbox::default());
    let request = connect_request(&accepted, &identity, conn, &session);
    let joined = shared.hub.connect(request, outbox.clone(), now);
    let server = ServerLimits {
        max_packet_size: limits.max_packet_size,
        receive_maximum: shared.hub.config().server_receive_maximum.get(),
        session_expiry: joined.session_expiry,
    };
    let connack = accepted.connack(joined.session_present, server);
    if wr.write_all(&connack).await.is_err() {
        shared
            .hub
            .disconnect(conn, Some(joined.handle), Ending::Abnormal, None, now);
        return Ok(None);
    }
    Ok(Some(Joined {
        session,
        handle: joined.handle,
        outbox,
        version: accepted.version,
        keep_alive: accepted.keep_alive,
    }))
}

/// Writes `last` (a refusing CONNACK, a version 5 DISCONNECT) if there is one, then the TLS
/// close_notify, each within [`CLOSE_TIMEOUT`].
async fn close(wr: &mut WriteHalf<Tls>, last: Option<Vec<u8>>) {
    if let Some(bytes) = last {
        let _ = timeout(CLOSE_TIMEOUT, wr.write_all(&bytes)).await;
    }
    let _ = timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
}

/// What the broker core is asked for: the session of this identity (keyed by tenant and
/// device id, so two tenants' devices never share one), its expiry, will, Receive Maximum,
/// and the ACL that filters what it receives.
fn connect_request(
    accepted: &Accepted,
    identity: &Identity,
    conn: ConnId,
    session: &Session,
) -> ConnectRequest {
    let key = format!("{}/{}", identity.tenant, identity.id);
    let mut request = ConnectRequest::v311(&key, conn, accepted.clean_start);
    request.session_expiry = accepted.session_expiry;
    request.will = accepted.will.clone();
    request.receive_maximum = accepted.receive_maximum;
    request.with_filter(session.receive_filter())
}

/// Reads the first packet, which must be a CONNECT of MQTT 3.1.1 or 5, and checks it. A
/// refusal carries the version to answer it in.
async fn read_connect<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
    identity: &Identity,
    shared: &Shared,
) -> Result<Accepted, (Version, Refusal)> {
    let v311 = |r| (Version::V311, r);
    loop {
        let parsed = match Packet::parse(buf, max) {
            Ok(Some((Packet::Connect(c), n))) => Some((
                session::on_connect(identity, &shared.policy, &c).map_err(v311),
                n,
            )),
            Ok(Some(_)) => return Err(v311(Refusal::BadConnect("not a CONNECT".into()))),
            Err(MqttError::UnsupportedProtocolLevel(5)) => match Packet5::parse(buf, max) {
                Ok(Some((Packet5::Connect(c), n))) => Some((
                    session::on_connect5(identity, &shared.policy, &c)
                        .map_err(|r| (Version::V5, r)),
                    n,
                )),
                Ok(_) => None,
                Err(e) => return Err(v311(Refusal::BadConnect(e.to_string()))),
            },
            Err(MqttError::UnsupportedProtocolLevel(level)) => {
                return Err(v311(Refusal::UnsupportedProtocol(level)))
            }
            Err(e) => return Err(v311(Refusal::BadConnect(e.to_string()))),
            Ok(None) => None,
        };
        if let Some((accepted, n)) = parsed {
            buf.drain(..n);
            return accepted;
        }
        match rd.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(v311(Refusal::BadConnect("connection closed".into()))),
            Ok(_) => {}
        }
    }
}
