//! The loop of a live session: client packets through the session rules to the broker core,
//! the broker's packets for this client from its outbox to the socket, kicks, keep-alive and
//! certificate renewals.

use std::sync::Arc;
use std::time::Duration;

use fleet_protocol::mqtt::v5::{reason, Packet5};
use fleet_protocol::mqtt::{MqttError, Packet, QoS};
use fleet_protocol::topic::Cert;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Ended, WRITE_TIMEOUT};
use crate::broker::Handle;
use crate::hub::Outbox;
use crate::metrics::DirectionLabels;
use crate::registry::Kick;
use crate::renewal::RenewalError;
use crate::session::{Encoded, Inbound, Session, SessionStats, Version};
use crate::state::Shared;

const IN: DirectionLabels = DirectionLabels { direction: "in" };
const OUT: DirectionLabels = DirectionLabels { direction: "out" };

type Renewed = Result<Vec<u8>, RenewalError>;

/// One live session's state in its connection task.
pub(super) struct Pump<'a> {
    shared: &'a Shared,
    session: Session,
    handle: Handle,
    outbox: Arc<Outbox>,
    kick: oneshot::Receiver<Kick>,
    /// Encoded bytes for the client, written once per turn of the loop.
    out: Vec<u8>,
    /// The last publish went into a backlogged queue: hold this publisher back.
    held: bool,
    /// The session is paused until what was taken from the outbox is written.
    resume_after_write: bool,
    /// The certificate renewal in flight, at most one per session: its answer comes back
    /// here. Made only when a renewal starts, so an idle session holds no channel.
    renewal: Option<oneshot::Receiver<Renewed>>,
    seen: SessionStats,
}

impl<'a> Pump<'a> {
    pub fn new(
        shared: &'a Shared,
        session: Session,
        handle: Handle,
        outbox: Arc<Outbox>,
        kick: oneshot::Receiver<Kick>,
    ) -> Pump<'a> {
        Pump {
            shared,
            session,
            handle,
            outbox,
            kick,
            out: Vec::new(),
            resume_after_write: false,
            held: false,
            renewal: None,
            seen: SessionStats::default(),
        }
    }

    pub async fn run<R, W>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        buf: &mut Vec<u8>,
        keep_alive: Option<Duration>,
    ) -> Ended
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let far = Duration::from_secs(86400 * 365);
        let mut deadline = Instant::now() + keep_alive.unwrap_or(far);
        let max = self.shared.config.limits.max_packet_size;
        loop {
            if let Err(ended) = self.take_buffered(buf, max) {
                return ended;
            }
            if let Err(ended) = self.drain_outbox() {
                return ended;
            }
            // In a cluster, a SUBACK goes out once its subscription reached NATS.
            if let Some(cluster) = &self.shared.cluster {
                cluster.settled().await;
            }
            self.account();
            if let Err(ended) = self.write(wr).await {
                return ended;
            }
            // A publisher ahead of a subscriber's backlog waits before reading more, so TCP
            // holds it back (bounded: `hub::HOLD`).
            if std::mem::take(&mut self.held) {
                self.shared.hub.held_back().await;
            }
            // An idle session holds no buffers between packets.
            if buf.is_empty() && buf.capacity() > 4096 {
                *buf = Vec::new();
            }
            tokio::select! {
                read = rd.read_buf(buf) => match read {
                    Ok(0) | Err(_) => return Ended::ConnectionLost,
                    Ok(n) => {
                        self.shared.metrics.bytes.get_or_create(&IN).inc_by(n as u64);
                        deadline = Instant::now() + keep_alive.unwrap_or(far);
                    }
                },
                () = self.outbox.ready() => {}
                renewed = renewal_answer(&mut self.renewal) => {
                    self.renewal = None;
                    // A renewal task that ended without an answer (it cannot) is dropped.
                    if let Ok(renewed) = renewed {
                        self.renewed(renewed);
                    }
                }
                k = &mut self.kick => return kicked(k),
                _ = tokio::time::sleep_until(deadline) => return Ended::KeepAliveTimeout,
            }
        }
    }

    /// Acts on every whole packet already buffered.
    fn take_buffered(&mut self, buf: &mut Vec<u8>, max: usize) -> Result<(), Ended> {
        let mut used = 0;
        let result = loop {
            match next_inbound(&mut self.session, &buf[used..], max) {
                Ok(Some((inbound, n))) => {
                    used += n;
                    if let Err(ended) = self.act(inbound) {
                        break Err(ended);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Ended::Malformed(e)),
            }
        };
        buf.drain(..used);
        result
    }

    /// Carries out one decision of the session rules.
    fn act(&mut self, inbound: Inbound) -> Result<(), Ended> {
        let (hub, h) = (&self.shared.hub, self.handle);
        let now = std::time::Instant::now();
        match inbound {
            Inbound::Publish { packet_id, message } => {
                self.held |= hub.publish(h, packet_id, message, now);
            }
            Inbound::PubAck(id) => hub.puback(h, id, now),
            Inbound::PubRec { packet_id, code } => hub.pubrec(h, packet_id, code, now),
            Inbound::PubRel(id) => hub.pubrel(h, id),
            Inbound::PubComp(id) => hub.pubcomp(h, id, now),
            Inbound::Subscribe { packet_id, filters } => {
                // What the broker sent before comes first; the retained messages after SUBACK.
                self.drain_outbox()?;
                let max = self.shared.config.limits.max_subscriptions;
                if let Some(reasons) = hub.subscribe(h, &filters, max, now) {
                    self.session.suback(packet_id, &reasons, &mut self.out);
                }
            }
            Inbound::Unsubscribe { packet_id, filters } => {
                self.drain_outbox()?;
                if let Some(reasons) = hub.unsubscribe(h, &filters) {
                    self.session.unsuback(packet_id, &reasons, &mut self.out);
                }
            }
            Inbound::Reply(bytes) => {
                // Acknowledgements go out in the order their PUBLISHes came in.
                self.drain_outbox()?;
                self.out.extend_from_slice(&bytes);
            }
            Inbound::Renew { csr, ack } => {
                self.drain_outbox()?;
                self.out.extend_from_slice(&ack);
                self.renew(csr);
            }
            Inbound::Nothing => {}
            Inbound::Close(c) => return Err(Ended::Client(c)),
        }
        Ok(())
    }

    /// Encodes what the broker has for this client; ends the session if the broker closed
    /// it.
    fn drain_outbox(&mut self) -> Result<(), Ended> {
        let taken = self.outbox.take();
        self.resume_after_write |= taken.paused;
        if let Some(code) = taken.close {
            return Err(match code {
                reason::SESSION_TAKEN_OVER => Ended::Kicked(Kick::Takeover),
                code => Ended::Broker(code),
            });
        }
        for packet in &taken.packets {
            match self.session.encode(packet, &mut self.out) {
                Encoded::Written => {}
                Encoded::Refused(code) => return Err(Ended::AckRefused(code)),
                Encoded::TooLarge { qos, packet_id } => self.skip(qos, packet_id),
            }
        }
        Ok(())
    }

    /// A message too large for the client is not sent; the broker finishes its flow as if
    /// the client had taken it (MQTT 5 §3.1.2.11.4: "behave as if it had completed sending").
    fn skip(&self, qos: QoS, packet_id: Option<u16>) {
        let now = std::time::Instant::now();
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.shared.hub.puback(self.handle, id, now),
            (QoS::ExactlyOnce, Some(id)) => {
                self.shared
                    .hub
                    .pubrec(self.handle, id, reason::UNSPECIFIED_ERROR, now)
            }
            _ => {}
        }
    }

    /// Writes what is encoded. A client that stops reading must not hold its session open
    /// against a kick (revocation, takeover, shutdown): the write races the kick and a
    /// deadline.
    async fn write<W: AsyncWrite + Unpin>(&mut self, wr: &mut W) -> Result<(), Ended> {
        if !self.out.is_empty() {
            tokio::select! {
                written = tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&self.out)) => match written {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(Ended::ConnectionLost),
                    Err(_) => return Err(Ended::WriteTimeout),
                },
                k = &mut self.kick => return Err(kicked(k)),
            }
            self.shared
                .metrics
                .bytes
                .get_or_create(&OUT)
                .inc_by(self.out.len() as u64);
            self.out.clear();
            if self.out.capacity() > 64 * 1024 {
                self.out = Vec::new();
            }
        }
        // Everything taken from the outbox is written (or was not to be sent at all).
        if std::mem::take(&mut self.resume_after_write) {
            self.shared
                .hub
                .resume(self.handle, std::time::Instant::now());
        }
        Ok(())
    }

    /// Relays a certificate request to the station (one at a time).
    fn renew(&mut self, csr: Vec<u8>) {
        let refuse = |s: &Session, why: &[u8]| s.cert_message(Cert::Error, why);
        match (&self.shared.renewal, self.renewal.is_some()) {
            (None, _) => {
                let m = refuse(
                    &self.session,
                    b"certificate renewal is not configured on this gateway",
                );
                self.out.extend(m);
            }
            (Some(_), true) => {
                let m = refuse(&self.session, b"a renewal is already in progress");
                self.out.extend(m);
            }
            (Some(client), false) => {
                let (tx, rx) = oneshot::channel();
                self.renewal = Some(rx);
                let client = client.clone();
                let who = self.session.identity_arc();
                tracing::info!(device = %who.id, tenant = %who.tenant, "relaying a certificate renewal to the station");
                tokio::spawn(async move {
                    let _ = tx.send(client.renew(&who, &csr).await);
                });
            }
        }
    }

    fn renewed(&mut self, renewed: Renewed) {
        let who = self.session.identity();
        let message = match renewed {
            Ok(der) => {
                tracing::info!(device = %who.id, tenant = %who.tenant, "new certificate sent to the device");
                self.session.cert_message(Cert::New, &der)
            }
            Err(e) => {
                tracing::warn!(device = %who.id, tenant = %who.tenant, "renewal failed: {e}");
                self.session
                    .cert_message(Cert::Error, e.to_string().as_bytes())
            }
        };
        self.out.extend(message);
    }

    /// Adds what the session counted since the last call to the gateway's metrics.
    fn account(&mut self) {
        let now = self.session.stats;
        let (m, seen) = (&self.shared.metrics, self.seen);
        m.messages
            .get_or_create(&IN)
            .inc_by(now.publishes_in - seen.publishes_in);
        m.messages
            .get_or_create(&OUT)
            .inc_by(now.publishes_out - seen.publishes_out);
        m.acl_denials.inc_by(now.acl_denials - seen.acl_denials);
        self.seen = now;
    }
}

/// The answer of the renewal in flight; never resolves when there is none.
async fn renewal_answer(
    renewal: &mut Option<oneshot::Receiver<Renewed>>,
) -> Result<Renewed, oneshot::error::RecvError> {
    match renewal {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

fn kicked(k: Result<Kick, oneshot::error::RecvError>) -> Ended {
    match k {
        Ok(reason) => Ended::Kicked(reason),
        Err(_) => Ended::Kicked(Kick::Shutdown),
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
