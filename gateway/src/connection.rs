//! One client connection: TLS handshake → identity → CONNECT → router link → two-way pump.
//!
//! This is the I/O shell around [`crate::session`]; every decision is made there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fleet_protocol::mqtt::v5::{reason, Packet5};
use fleet_protocol::mqtt::{MqttError, Packet};
use fleet_protocol::topic::Cert;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol as r;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use crate::audit::AuditEvent;
use crate::identity::Identity;
use crate::metrics::{DirectionLabels, ReasonLabels, TenantLabels};
use crate::registry::{Kick, SessionInfo};
use crate::renewal::RenewalError;
use crate::server::Shared;
use crate::session::{
    self, Accepted, Close, Inbound, Outbound, Refusal, Session, SessionStats, Version,
};
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
    /// The router dropped the session (e.g. taken over inside the router).
    RouterClosed,
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
            Ended::Client(Close::ClientDisconnect) => "client_disconnect",
            Ended::Client(Close::ClientDisconnectWithWill) => "client_disconnect_with_will",
            Ended::Client(Close::TopicAliasInvalid) => "topic_alias_invalid",
            Ended::Client(Close::SubscriptionIdentifiers) => "subscription_identifiers",
            Ended::Client(Close::ProtocolViolation(_)) => "protocol_violation",
            Ended::Client(Close::RateLimited) => "rate_limited",
            Ended::Kicked(k) => k.label(),
            Ended::KeepAliveTimeout => "keepalive_timeout",
            Ended::ConnectionLost => "connection_lost",
            Ended::Malformed(_) => "malformed_packet",
            Ended::RouterClosed => "router_closed",
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
            Ended::Client(Close::ClientDisconnect | Close::ClientDisconnectWithWill)
            | Ended::ConnectionLost
            | Ended::RouterClosed
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

    /// Whether the client's will message must be published (MQTT 3.1.1 §3.1.2.5).
    fn fires_will(&self) -> bool {
        !matches!(
            self,
            Ended::Client(Close::ClientDisconnect) | Ended::RouterClosed
        )
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
    let handshake = async {
        // No TLS state at all until the client sends something.
        tcp.readable().await?;
        let hello =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        let _slot = shared.handshakes.acquire().await;
        hello.into_stream(config).await
    };
    let tls = match timeout(limits.handshake_timeout, handshake).await {
        Err(_) => return Err((Refusal::HandshakeTimeout, None)),
        Ok(Err(e)) => return Err((Refusal::Handshake(tls::failure_reason(&e)), None)),
        Ok(Ok(s)) => s,
    };
    // Everything after the handshake lives in its own allocation, made only now: a
    // connection still waiting for its handshake costs just the handshake's state.
    Box::pin(after_handshake(shared, tls, peer, conn)).await
}

/// Identity, CONNECT, router link and the session, for a client whose handshake succeeded.
async fn after_handshake(
    shared: &Shared,
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    conn: u64,
) -> Result<(Arc<Identity>, Ended), Refused> {
    let limits = shared.config.limits;
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or((Refusal::Handshake("no_client_certificate"), None))?;
    let identity = Arc::new(
        Identity::from_cert_der(cert, &shared.config.service_ou)
            .map_err(|e| (Refusal::BadIdentity(e.to_string()), None))?,
    );
    let refused = |r: Refusal| (r, Some(identity.clone()));
    let (mut rd, mut wr) = tokio::io::split(tls);
    let mut buf = Vec::with_capacity(1024);

    let connect = timeout(
        limits.connect_timeout,
        read_connect(&mut rd, &mut buf, limits.max_packet_size, &identity, shared),
    )
    .await
    .unwrap_or(Err((Version::V311, Refusal::ConnectTimeout)));
    let accepted = match connect {
        Ok(a) => a,
        Err((version, refusal)) => {
            if let Some(connack) = refusal.connack(version) {
                let _ = wr.write_all(&connack).await;
                let _ = timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
            }
            return Err(refused(refusal));
        }
    };

    let info = SessionInfo {
        identity: identity.clone(),
        peer,
        connected_at: SystemTime::now(),
        version: accepted.version,
    };
    let (registration, mut kick) = shared.sessions.register(info, conn).await;
    // A CRL may have arrived while this handshake used the previous TLS state.
    if shared.is_revoked(&identity) {
        return Err(refused(Refusal::Handshake("revoked")));
    }
    let (mut link_tx, mut link_rx, session_present) =
        match shared.router.open(&identity, accepted.clean_session).await {
            Some(link) => link,
            None => {
                let refusal = Refusal::RouterUnavailable;
                if let Some(connack) = refusal.connack(accepted.version) {
                    let _ = wr.write_all(&connack).await;
                }
                return Err(refused(refusal));
            }
        };
    if wr
        .write_all(&accepted.connack(session_present, limits.max_packet_size))
        .await
        .is_err()
    {
        close_link(&mut link_tx, None).await;
        return Ok((identity, Ended::ConnectionLost));
    }
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

    let mut session = Session::new(
        identity.clone(),
        shared.policy.clone(),
        &limits,
        std::time::Instant::now(),
    )
    .for_client(&accepted);
    if let Some(r) = &shared.config.renewal {
        session = session.with_renewal(r.threshold);
    }
    let keep_alive = (accepted.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(accepted.keep_alive) * 1500));
    let ended = pump(
        shared,
        &mut session,
        &mut rd,
        &mut wr,
        &mut buf,
        &mut link_tx,
        &mut link_rx,
        &mut kick,
        keep_alive,
        limits.max_packet_size,
    )
    .await;
    tenant_gauge.dec();
    if !matches!(ended, Ended::RouterClosed) {
        let will = ended.fires_will().then_some(accepted.will).flatten();
        close_link(&mut link_tx, will).await;
    }
    // The session is over for everyone else now, whether or not the client reads our
    // close_notify: a client that stopped reading gets a bounded goodbye.
    drop(registration);
    if let (Version::V5, Some((code, why))) = (accepted.version, ended.disconnect5()) {
        let _ = timeout(
            CLOSE_TIMEOUT,
            wr.write_all(&session::disconnect5(code, &why)),
        )
        .await;
    }
    let _ = timeout(CLOSE_TIMEOUT, wr.shutdown()).await;
    Ok((identity, ended))
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

/// Parses the next whole packet in the client's version and lets the session decide on it:
/// `Ok(None)` when more bytes are needed.
fn next_inbound(
    session: &mut Session,
    buf: &[u8],
    max: usize,
) -> Result<Option<(Inbound, usize)>, MqttError> {
    let now = std::time::Instant::now();
    Ok(match session.version() {
        Version::V311 => {
            Packet::parse(buf, max)?.map(|(packet, n)| (session.inbound(packet, now), n))
        }
        Version::V5 => {
            Packet5::parse(buf, max)?.map(|(packet, n)| (session.inbound5(packet, now), n))
        }
    })
}

#[allow(clippy::too_many_arguments)]
async fn pump<R, W>(
    shared: &Shared,
    session: &mut Session,
    rd: &mut R,
    wr: &mut W,
    buf: &mut Vec<u8>,
    link_tx: &mut LinkTx,
    link_rx: &mut LinkRx,
    kick: &mut tokio::sync::oneshot::Receiver<Kick>,
    keep_alive: Option<Duration>,
    max: usize,
) -> Ended
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let far = Duration::from_secs(86400 * 365);
    let mut seen = SessionStats::default();
    let mut deadline = Instant::now() + keep_alive.unwrap_or(far);
    let mut out = Vec::with_capacity(1024);
    // At most one certificate renewal in flight per session; its answer comes back here.
    let (renewed_tx, mut renewed_rx) =
        tokio::sync::mpsc::channel::<Result<Vec<u8>, RenewalError>>(1);
    let mut renewing = false;
    loop {
        // Act on every whole packet already buffered.
        let mut used = 0;
        loop {
            match next_inbound(session, &buf[used..], max) {
                Ok(Some((inbound, n))) => {
                    used += n;
                    match inbound {
                        Inbound::Router(p) => {
                            if link_tx.send(*p).await.is_err() {
                                return Ended::RouterClosed;
                            }
                        }
                        Inbound::Reply(bytes) => out.extend_from_slice(&bytes),
                        Inbound::Renew { csr, ack } => {
                            out.extend_from_slice(&ack);
                            match (&shared.renewal, renewing) {
                                (None, _) => out.extend(session.cert_message(
                                    Cert::Error,
                                    b"certificate renewal is not configured on this gateway",
                                )),
                                (Some(_), true) => out.extend(session.cert_message(
                                    Cert::Error,
                                    b"a renewal is already in progress",
                                )),
                                (Some(client), false) => {
                                    renewing = true;
                                    let client = client.clone();
                                    let who = session.identity_arc();
                                    let tx = renewed_tx.clone();
                                    tracing::info!(device = %who.id, tenant = %who.tenant, "relaying a certificate renewal to the station");
                                    tokio::spawn(async move {
                                        let _ = tx.send(client.renew(&who, &csr).await).await;
                                    });
                                }
                            }
                        }
                        Inbound::Nothing => {}
                        Inbound::Close(c) => return Ended::Client(c),
                    }
                }
                Ok(None) => break,
                Err(e) => return Ended::Malformed(e),
            }
        }
        buf.drain(..used);
        account(shared, session, &mut seen);
        if !out.is_empty() {
            // A client that stops reading must not hold its session open against a kick
            // (revocation, takeover, shutdown): the write races the kick and a deadline.
            tokio::select! {
                written = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&out)) => match written {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Ended::ConnectionLost,
                    Err(_) => return Ended::WriteTimeout,
                },
                k = &mut *kick => return match k {
                    Ok(reason) => Ended::Kicked(reason),
                    Err(_) => Ended::Kicked(Kick::Shutdown),
                },
            }
            shared
                .metrics
                .bytes
                .get_or_create(&OUT)
                .inc_by(out.len() as u64);
            out.clear();
        }

        tokio::select! {
            read = rd.read_buf(buf) => match read {
                Ok(0) | Err(_) => return Ended::ConnectionLost,
                Ok(n) => {
                    shared.metrics.bytes.get_or_create(&IN).inc_by(n as u64);
                    deadline = Instant::now() + keep_alive.unwrap_or(far);
                }
            },
            note = link_rx.next() => match note {
                Ok(Some(n)) => match session.outbound(n, &mut out) {
                    Outbound::Continue => {}
                    Outbound::Wake => {
                        if link_rx.wake().await.is_err() {
                            return Ended::RouterClosed;
                        }
                    }
                    Outbound::Disconnect => return Ended::RouterClosed,
                    Outbound::Router(p) => {
                        if link_tx.send(*p).await.is_err() {
                            return Ended::RouterClosed;
                        }
                    }
                },
                Ok(None) => {}
                Err(_) => return Ended::RouterClosed,
            },
            Some(renewed) = renewed_rx.recv() => {
                renewing = false;
                let who = session.identity();
                match renewed {
                    Ok(der) => {
                        tracing::info!(device = %who.id, tenant = %who.tenant, "new certificate sent to the device");
                        out.extend(session.cert_message(Cert::New, &der));
                    }
                    Err(e) => {
                        tracing::warn!(device = %who.id, tenant = %who.tenant, "renewal failed: {e}");
                        out.extend(session.cert_message(Cert::Error, e.to_string().as_bytes()));
                    }
                }
            },
            k = &mut *kick => return match k {
                Ok(reason) => Ended::Kicked(reason),
                Err(_) => Ended::Kicked(Kick::Shutdown),
            },
            _ = tokio::time::sleep_until(deadline) => return Ended::KeepAliveTimeout,
        }
    }
}

const IN: DirectionLabels = DirectionLabels { direction: "in" };
const OUT: DirectionLabels = DirectionLabels { direction: "out" };

/// Adds what the session counted since the last call to the gateway's metrics.
fn account(shared: &Shared, session: &Session, seen: &mut SessionStats) {
    let now = session.stats;
    let m = &shared.metrics;
    m.messages
        .get_or_create(&IN)
        .inc_by(now.publishes_in - seen.publishes_in);
    m.messages
        .get_or_create(&OUT)
        .inc_by(now.publishes_out - seen.publishes_out);
    m.acl_denials.inc_by(now.acl_denials - seen.acl_denials);
    *seen = now;
}

/// Ends the router session: publishes the will first when it must fire.
async fn close_link(link_tx: &mut LinkTx, will: Option<r::LastWill>) {
    if let Some(w) = will {
        let publish = r::Publish::new(w.topic, w.message, w.retain);
        let _ = link_tx.send(r::Packet::Publish(publish, None)).await;
    }
    let _ = link_tx
        .send(r::Packet::Disconnect(
            r::Disconnect {
                reason_code: r::DisconnectReasonCode::NormalDisconnection,
            },
            None,
        ))
        .await;
}
