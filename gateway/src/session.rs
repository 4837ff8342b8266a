//! The MQTT session core: decoded packets in, decisions out. No sockets here.
//!
//! The connection shell (`connection.rs`) decodes client bytes with the shared codec in
//! `fleet_firmware::mqtt`, hands each packet to [`Session::inbound`], and carries out the
//! returned [`Inbound`] decision; router notifications go through [`Session::outbound`], which
//! encodes them for the client.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use fleet_firmware::mqtt::{
    self, ConnAck, Connect, ConnectReturnCode, Packet, QoS, SubAckCode, SubAckCodes,
};
use rumqttd::protocol as r;
use rumqttd::Notification;

use std::time::Instant;

use crate::acl::Policy;
use crate::config::Limits;
use crate::identity::Identity;
use crate::limits::TokenBucket;

/// Why a client was refused or disconnected: logged as the audit reason and used as a metric
/// label.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The TLS handshake failed; the label says why (see [`crate::tls::failure_reason`]).
    Handshake(&'static str),
    HandshakeTimeout,
    /// The verified certificate does not name a usable identity.
    BadIdentity(String),
    ConnectTimeout,
    /// The first packet was not a well-formed CONNECT.
    BadConnect(String),
    UnsupportedProtocol(u8),
    /// The CONNECT client id is neither empty nor the certificate's device id.
    ClientIdMismatch {
        sent: String,
        cert: String,
    },
    /// The CONNECT will topic is outside the client's ACL.
    WillDenied(String),
    /// The router refused to open a session.
    RouterUnavailable,
}

impl Refusal {
    /// Stable label for metrics and the audit log.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Handshake(reason) => reason,
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::BadIdentity(_) => "bad_identity",
            Refusal::ConnectTimeout => "connect_timeout",
            Refusal::BadConnect(_) => "bad_connect",
            Refusal::UnsupportedProtocol(_) => "unsupported_protocol",
            Refusal::ClientIdMismatch { .. } => "client_id_mismatch",
            Refusal::WillDenied(_) => "acl_will",
            Refusal::RouterUnavailable => "router_unavailable",
        }
    }

    /// The CONNACK code to send, when the refusal happens at CONNECT.
    pub fn connack_code(&self) -> Option<ConnectReturnCode> {
        match self {
            Refusal::UnsupportedProtocol(_) => Some(ConnectReturnCode::UnacceptableProtocolVersion),
            Refusal::ClientIdMismatch { .. } | Refusal::WillDenied(_) => {
                Some(ConnectReturnCode::NotAuthorized)
            }
            Refusal::RouterUnavailable => Some(ConnectReturnCode::ServerUnavailable),
            _ => None,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Handshake(reason) => write!(f, "TLS handshake failed: {reason}"),
            Refusal::HandshakeTimeout => write!(f, "TLS handshake did not finish in time"),
            Refusal::BadIdentity(e) => write!(f, "{e}"),
            Refusal::ConnectTimeout => write!(f, "no CONNECT received in time"),
            Refusal::BadConnect(e) => write!(f, "first packet is not a valid CONNECT: {e}"),
            Refusal::UnsupportedProtocol(level) => {
                write!(f, "MQTT protocol level {level} is not supported")
            }
            Refusal::ClientIdMismatch { sent, cert } => write!(
                f,
                "client id {sent:?} differs from the certificate's device id {cert:?}"
            ),
            Refusal::WillDenied(topic) => write!(f, "will topic {topic:?} is not allowed"),
            Refusal::RouterUnavailable => write!(f, "broker router refused the session"),
        }
    }
}

/// What an accepted CONNECT turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Always the certificate's device id.
    pub client_id: String,
    pub keep_alive: u16,
    pub clean_session: bool,
    pub will: Option<r::LastWill>,
}

/// Checks a CONNECT against the certificate identity and the ACL.
pub fn on_connect(
    identity: &Identity,
    policy: &Policy,
    connect: &Connect<'_>,
) -> Result<Accepted, Refusal> {
    if !connect.client_id.is_empty() && connect.client_id != identity.id {
        return Err(Refusal::ClientIdMismatch {
            sent: connect.client_id.to_owned(),
            cert: identity.id.clone(),
        });
    }
    let will = match &connect.will {
        Some(w) if !policy.may_publish(identity, w.topic) => {
            return Err(Refusal::WillDenied(w.topic.to_owned()))
        }
        Some(w) => Some(r::LastWill {
            topic: Bytes::copy_from_slice(w.topic.as_bytes()),
            message: Bytes::copy_from_slice(w.payload),
            qos: qos_to_router(w.qos),
            retain: w.retain,
        }),
        None => None,
    };
    Ok(Accepted {
        client_id: identity.id.clone(),
        keep_alive: connect.keep_alive,
        clean_session: connect.clean_session,
        will,
    })
}

/// Why a live session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The client broke the protocol (the text says how).
    ProtocolViolation(&'static str),
    /// The client published faster than its rate limit.
    RateLimited,
}

/// The decision for one inbound packet.
#[derive(Debug)]
pub enum Inbound {
    /// Hand this packet to the router.
    Router(Box<r::Packet>),
    /// Answer the client directly with these encoded bytes.
    Reply(Vec<u8>),
    /// Nothing to do (e.g. a QoS 0 publish the ACL dropped).
    Nothing,
    /// End the session.
    Close(Close),
    /// The device sent a certificate request (`cert/csr`): relay it to the station. `ack`
    /// holds the encoded acknowledgement to send now (empty for QoS 0).
    Renew { csr: Vec<u8>, ack: Vec<u8> },
}

/// What the shell does after an outbound notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    Continue,
    /// The router paused this connection's delivery: tell it we are ready again.
    Wake,
    /// The router ended the session.
    Disconnect,
}

/// Counters a session keeps for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    pub publishes_in: u64,
    pub publishes_out: u64,
    pub acl_denials: u64,
}

/// Per-connection MQTT state after CONNECT.
pub struct Session {
    identity: Arc<Identity>,
    policy: Arc<Policy>,
    /// SUBSCRIBE packet ids whose SUBACK merges our refusals (`Some`) with the router's
    /// answers (`None` positions), in the order the client sent the filters.
    pending_subacks: HashMap<u16, Vec<Option<SubAckCode>>>,
    /// QoS 2 publishes the ACL dropped: their PUBREL is answered here, not by the router.
    dropped_qos2: HashSet<u16>,
    publish_rate: TokenBucket,
    /// `tenants/{tenant}/devices/{device}/cert/` for devices: the rotation topics the
    /// gateway answers itself.
    cert_prefix: Option<String>,
    /// Devices whose certificate ends within this many seconds are told to renew.
    renew_threshold: Option<i64>,
    pub stats: SessionStats,
}

impl Session {
    pub fn new(
        identity: Arc<Identity>,
        policy: Arc<Policy>,
        limits: &Limits,
        now: Instant,
    ) -> Session {
        let cert_prefix = (identity.kind == crate::identity::Kind::Device)
            .then(|| format!("tenants/{}/devices/{}/cert/", identity.tenant, identity.id));
        Session {
            identity,
            policy,
            pending_subacks: HashMap::new(),
            dropped_qos2: HashSet::new(),
            publish_rate: TokenBucket::new(limits.publish_rate, limits.publish_burst, now),
            cert_prefix,
            renew_threshold: None,
            stats: SessionStats::default(),
        }
    }

    /// Tells devices to renew when their certificate ends within `threshold`.
    pub fn with_renewal(mut self, threshold: std::time::Duration) -> Session {
        self.renew_threshold = Some(threshold.as_secs() as i64);
        self
    }

    pub fn identity_arc(&self) -> Arc<Identity> {
        self.identity.clone()
    }

    /// A QoS 0 PUBLISH from the gateway to this device under its `cert/` topics.
    pub fn cert_message(&self, leaf: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(prefix) = &self.cert_prefix {
            let topic = format!("{prefix}{leaf}");
            append(
                &mut out,
                &Packet::Publish(mqtt::Publish {
                    dup: false,
                    qos: QoS::AtMostOnce,
                    retain: false,
                    topic: &topic,
                    packet_id: None,
                    payload,
                }),
            );
        }
        out
    }

    /// The rotation topics the gateway answers itself; `None` for anything else.
    fn rotation(&mut self, p: &mqtt::Publish<'_>) -> Option<Inbound> {
        let leaf = p.topic.strip_prefix(self.cert_prefix.as_deref()?)?;
        if leaf != "status/get" && leaf != "csr" {
            return None;
        }
        let mut ack = Vec::new();
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => append(&mut ack, &Packet::PubAck(id)),
            (QoS::ExactlyOnce, Some(id)) => {
                self.dropped_qos2.insert(id);
                append(&mut ack, &Packet::PubRec(id));
            }
            _ => {}
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // Without a station to renew through, never ask for a renewal.
        let threshold = self.renew_threshold.unwrap_or(i64::MIN / 2);
        if leaf == "csr" {
            // Only certificates near their end are renewed through the gateway: a device
            // cannot churn the registry and the CRL by asking again and again.
            if self.identity.not_after - now > threshold {
                ack.extend(self.cert_message(
                    "error",
                    b"not due for renewal: the certificate is not near its end",
                ));
                return Some(Inbound::Reply(ack));
            }
            return Some(Inbound::Renew {
                csr: p.payload.to_vec(),
                ack,
            });
        }
        let status = crate::renewal::status_payload(&self.identity, now, threshold);
        ack.extend(self.cert_message("status", &status));
        Some(Inbound::Reply(ack))
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Decides what to do with one packet from the client, received at `now`.
    pub fn inbound(&mut self, packet: Packet<'_>, now: Instant) -> Inbound {
        match packet {
            Packet::Publish(_) if !self.publish_rate.take(now) => {
                Inbound::Close(Close::RateLimited)
            }
            Packet::Publish(p) => self.publish(p),
            Packet::PubAck(pkid) => to_router(r::Packet::PubAck(
                r::PubAck {
                    pkid,
                    reason: r::PubAckReason::Success,
                },
                None,
            )),
            Packet::PubRec(pkid) => to_router(r::Packet::PubRec(
                r::PubRec {
                    pkid,
                    reason: r::PubRecReason::Success,
                },
                None,
            )),
            Packet::PubRel(pkid) if self.dropped_qos2.remove(&pkid) => {
                reply(&Packet::PubComp(pkid))
            }
            Packet::PubRel(pkid) => to_router(r::Packet::PubRel(
                r::PubRel {
                    pkid,
                    reason: r::PubRelReason::Success,
                },
                None,
            )),
            Packet::PubComp(pkid) => to_router(r::Packet::PubComp(
                r::PubComp {
                    pkid,
                    reason: r::PubCompReason::Success,
                },
                None,
            )),
            Packet::Subscribe(s) => self.subscribe(s),
            Packet::Unsubscribe(u) => to_router(r::Packet::Unsubscribe(
                r::Unsubscribe {
                    pkid: u.packet_id,
                    filters: u.filters.iter().map(str::to_owned).collect(),
                },
                None,
            )),
            Packet::PingReq => reply(&Packet::PingResp),
            Packet::Disconnect => Inbound::Close(Close::ClientDisconnect),
            Packet::Connect(_) => Inbound::Close(Close::ProtocolViolation("second CONNECT")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Inbound::Close(Close::ProtocolViolation(
                    "server-only packet sent by client",
                ))
            }
        }
    }

    fn publish(&mut self, p: mqtt::Publish<'_>) -> Inbound {
        if let Some(answer) = self.rotation(&p) {
            return answer;
        }
        if !self.policy.may_publish(&self.identity, p.topic) {
            self.stats.acl_denials += 1;
            tracing::warn!(
                target: "audit",
                device = %self.identity.id,
                tenant = %self.identity.tenant,
                topic = p.topic,
                reason = "acl_publish",
                "publish denied"
            );
            // MQTT 3.1.1 has no negative acknowledgement: QoS 0 is dropped silently, QoS 1
            // and 2 are acknowledged and dropped so the client does not retry forever.
            return match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => reply(&Packet::PubAck(id)),
                (QoS::ExactlyOnce, Some(id)) => {
                    self.dropped_qos2.insert(id);
                    reply(&Packet::PubRec(id))
                }
                _ => Inbound::Nothing,
            };
        }
        self.stats.publishes_in += 1;
        to_router(r::Packet::Publish(router_publish(&p), None))
    }

    fn subscribe(&mut self, s: mqtt::Subscribe<'_>) -> Inbound {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut allowed = Vec::new();
        for (filter, qos) in s.filters.iter() {
            if self.policy.may_subscribe(&self.identity, filter) {
                codes.push(None);
                allowed.push(r::Filter {
                    path: filter.to_owned(),
                    qos: qos_to_router(qos),
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: r::RetainForwardRule::OnEverySubscribe,
                });
            } else {
                self.stats.acl_denials += 1;
                tracing::warn!(
                    target: "audit",
                    device = %self.identity.id,
                    tenant = %self.identity.tenant,
                    filter,
                    reason = "acl_subscribe",
                    "subscribe denied"
                );
                codes.push(Some(SubAckCode::Failure));
            }
        }
        if allowed.is_empty() {
            let codes: Vec<SubAckCode> = codes.into_iter().flatten().collect();
            return reply(&Packet::SubAck(mqtt::SubAck {
                packet_id: s.packet_id,
                return_codes: SubAckCodes::from_slice(&codes),
            }));
        }
        self.pending_subacks.insert(s.packet_id, codes);
        to_router(r::Packet::Subscribe(
            r::Subscribe {
                pkid: s.packet_id,
                filters: allowed,
            },
            None,
        ))
    }

    /// Encodes a router notification for the client, appending to `out`.
    pub fn outbound(&mut self, notification: Notification, out: &mut Vec<u8>) -> Outbound {
        if matches!(notification, Notification::Unschedule) {
            return Outbound::Wake;
        }
        let packet: Option<r::Packet> = notification.into();
        let Some(packet) = packet else {
            return Outbound::Continue;
        };
        match packet {
            r::Packet::Publish(p, _) => {
                self.stats.publishes_out += 1;
                emit_router_publish(&p, out);
            }
            r::Packet::PubAck(a, _) => append(out, &Packet::PubAck(a.pkid)),
            r::Packet::PubRec(a, _) => append(out, &Packet::PubRec(a.pkid)),
            r::Packet::PubRel(a, _) => append(out, &Packet::PubRel(a.pkid)),
            r::Packet::PubComp(a, _) => append(out, &Packet::PubComp(a.pkid)),
            r::Packet::SubAck(a, _) => {
                let mut router_codes = a.return_codes.iter().map(suback_code);
                let merged: Vec<SubAckCode> = match self.pending_subacks.remove(&a.pkid) {
                    Some(slots) => slots
                        .into_iter()
                        .map(|s| {
                            s.or_else(|| router_codes.next())
                                .unwrap_or(SubAckCode::Failure)
                        })
                        .collect(),
                    None => router_codes.collect(),
                };
                append(
                    out,
                    &Packet::SubAck(mqtt::SubAck {
                        packet_id: a.pkid,
                        return_codes: SubAckCodes::from_slice(&merged),
                    }),
                );
            }
            r::Packet::UnsubAck(a, _) => append(out, &Packet::UnsubAck(a.pkid)),
            r::Packet::PingResp(_) => append(out, &Packet::PingResp),
            r::Packet::Disconnect(..) => return Outbound::Disconnect,
            _ => {}
        }
        Outbound::Continue
    }
}

/// Encodes a CONNACK.
pub fn connack(code: ConnectReturnCode, session_present: bool) -> Vec<u8> {
    let mut out = Vec::new();
    append(
        &mut out,
        &Packet::ConnAck(ConnAck {
            session_present: session_present && code == ConnectReturnCode::Accepted,
            code,
        }),
    );
    out
}

fn to_router(packet: r::Packet) -> Inbound {
    Inbound::Router(Box::new(packet))
}

fn reply(packet: &Packet<'_>) -> Inbound {
    let mut out = Vec::new();
    append(&mut out, packet);
    Inbound::Reply(out)
}

/// Appends an encoded packet. Packets built here from validated parts always encode; a
/// failure would be a bug, so it is logged and the packet skipped rather than panicking.
fn append(out: &mut Vec<u8>, packet: &Packet<'_>) {
    let start = out.len();
    out.resize(start + packet.encoded_len(), 0);
    match packet.emit(&mut out[start..]) {
        Ok(n) => out.truncate(start + n),
        Err(e) => {
            out.truncate(start);
            tracing::error!(error = %e, "could not encode an outbound packet");
        }
    }
}

fn qos_to_router(q: QoS) -> r::QoS {
    match q {
        QoS::AtMostOnce => r::QoS::AtMostOnce,
        QoS::AtLeastOnce => r::QoS::AtLeastOnce,
        QoS::ExactlyOnce => r::QoS::ExactlyOnce,
    }
}

fn suback_code(c: &r::SubscribeReasonCode) -> SubAckCode {
    match c {
        r::SubscribeReasonCode::Success(r::QoS::AtMostOnce) | r::SubscribeReasonCode::QoS0 => {
            SubAckCode::Granted(QoS::AtMostOnce)
        }
        r::SubscribeReasonCode::Success(r::QoS::AtLeastOnce) | r::SubscribeReasonCode::QoS1 => {
            SubAckCode::Granted(QoS::AtLeastOnce)
        }
        r::SubscribeReasonCode::Success(r::QoS::ExactlyOnce) | r::SubscribeReasonCode::QoS2 => {
            SubAckCode::Granted(QoS::ExactlyOnce)
        }
        _ => SubAckCode::Failure,
    }
}

/// rumqttd keeps a publish's QoS and packet id private and offers only its own record format
/// (`Publish::serialize`/`deserialize`: flags byte, packet id, topic length, topic, payload)
/// to carry them, so that format is the bridge in both directions.
fn router_publish(p: &mqtt::Publish<'_>) -> r::Publish {
    let mut b = BytesMut::with_capacity(5 + p.topic.len() + p.payload.len());
    b.put_u8(0x30 | (p.dup as u8) << 3 | (p.qos as u8) << 1 | p.retain as u8);
    b.put_u16(p.packet_id.unwrap_or(0));
    b.put_u16(p.topic.len() as u16);
    b.put_slice(p.topic.as_bytes());
    b.put_slice(p.payload);
    r::Publish::deserialize(b.freeze())
}

fn emit_router_publish(p: &r::Publish, out: &mut Vec<u8>) {
    let record = p.serialize();
    let flags = record[0];
    let qos = match (flags >> 1) & 0b11 {
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtMostOnce,
    };
    let pkid = u16::from_be_bytes([record[1], record[2]]);
    let Ok(topic) = std::str::from_utf8(&p.topic) else {
        tracing::error!("router forwarded a publish with a non-UTF-8 topic");
        return;
    };
    append(
        out,
        &Packet::Publish(mqtt::Publish {
            dup: flags & 0b1000 != 0,
            qos,
            retain: p.retain,
            topic,
            packet_id: (qos != QoS::AtMostOnce).then_some(pkid),
            payload: &p.payload,
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Kind;
    use fleet_firmware::mqtt::{SubscribeFilters, Will};

    fn device(id: &str) -> Identity {
        Identity {
            id: id.into(),
            tenant: "acme".into(),
            kind: Kind::Device,
            serial: vec![7],
            issuer: vec![],
            fingerprint: [0; 32],
            not_after: 0,
        }
    }

    fn connect<'a>(client_id: &'a str, will: Option<Will<'a>>) -> Connect<'a> {
        Connect {
            clean_session: true,
            keep_alive: 30,
            client_id,
            will,
            username: None,
            password: None,
        }
    }

    fn decode(bytes: &[u8]) -> Packet<'_> {
        Packet::parse(bytes, 1024).unwrap().unwrap().0
    }

    fn publish_from(topic: &str, qos: QoS, payload: &[u8]) -> mqtt::Publish<'static> {
        let topic: &'static str = Box::leak(topic.to_owned().into_boxed_str());
        let payload: &'static [u8] = Box::leak(payload.to_vec().into_boxed_slice());
        mqtt::Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id: (qos != QoS::AtMostOnce).then_some(9),
            payload,
        }
    }

    #[test]
    fn the_gateway_answers_rotation_topics_itself() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut who = device("acme-000001");
        who.not_after = now + 10 * 86_400;
        let mut s = Session::new(
            Arc::new(who),
            Arc::new(Policy::default()),
            &Limits::default(),
            Instant::now(),
        )
        .with_renewal(std::time::Duration::from_secs(30 * 86_400));
        let prefix = "tenants/acme/devices/acme-000001/cert/";
        // status/get → PUBACK, then cert/status saying renew.
        let Inbound::Reply(bytes) = s.inbound(
            Packet::Publish(publish_from(
                &format!("{prefix}status/get"),
                QoS::AtLeastOnce,
                b"",
            )),
            Instant::now(),
        ) else {
            panic!("status/get is answered by the gateway")
        };
        let (first, n) = Packet::parse(&bytes, 1024).unwrap().unwrap();
        assert_eq!(first, Packet::PubAck(9));
        let Packet::Publish(status) = decode(&bytes[n..]) else {
            panic!("expected cert/status")
        };
        assert_eq!(status.topic, format!("{prefix}status"));
        let text = std::str::from_utf8(status.payload).unwrap();
        assert!(text.ends_with("\"renew\":true}"), "{text}");
        // csr → handed to the shell, never to the router.
        match s.inbound(
            Packet::Publish(publish_from(
                &format!("{prefix}csr"),
                QoS::AtMostOnce,
                b"DER",
            )),
            Instant::now(),
        ) {
            Inbound::Renew { csr, ack } => {
                assert_eq!(csr, b"DER");
                assert!(ack.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
        // Another device's rotation topics are just topics (and the ACL denies them).
        assert!(matches!(
            s.inbound(
                Packet::Publish(publish_from(
                    "tenants/acme/devices/acme-000002/cert/csr",
                    QoS::AtMostOnce,
                    b"x"
                )),
                Instant::now()
            ),
            Inbound::Nothing
        ));
        // Without renewal configured the status never asks for one.
        let mut plain = Session::new(
            Arc::new(device("acme-000001")),
            Arc::new(Policy::default()),
            &Limits::default(),
            Instant::now(),
        );
        let Inbound::Reply(bytes) = plain.inbound(
            Packet::Publish(publish_from(
                &format!("{prefix}status/get"),
                QoS::AtMostOnce,
                b"",
            )),
            Instant::now(),
        ) else {
            panic!("answered")
        };
        let Packet::Publish(status) = decode(&bytes) else {
            panic!("expected cert/status")
        };
        assert!(std::str::from_utf8(status.payload)
            .unwrap()
            .ends_with("\"renew\":false}"));
        // A request when the certificate is not due is answered with cert/error.
        let Inbound::Reply(bytes) = plain.inbound(
            Packet::Publish(publish_from(
                &format!("{prefix}csr"),
                QoS::AtMostOnce,
                b"DER",
            )),
            Instant::now(),
        ) else {
            panic!("an early CSR is refused by the gateway itself")
        };
        let Packet::Publish(error) = decode(&bytes) else {
            panic!("expected cert/error")
        };
        assert_eq!(error.topic, format!("{prefix}error"));
    }

    #[test]
    fn client_id_is_the_certificate_cn() {
        let id = device("d1");
        let policy = Policy::default();
        assert_eq!(
            on_connect(&id, &policy, &connect("d1", None))
                .unwrap()
                .client_id,
            "d1"
        );
        assert_eq!(
            on_connect(&id, &policy, &connect("", None))
                .unwrap()
                .client_id,
            "d1"
        );
        let refusal = on_connect(&id, &policy, &connect("d2", None)).unwrap_err();
        assert_eq!(
            refusal.connack_code(),
            Some(ConnectReturnCode::NotAuthorized)
        );
        assert_eq!(refusal.label(), "client_id_mismatch");
    }

    #[test]
    fn will_topic_goes_through_the_acl() {
        let id = device("d1");
        let policy = Policy::default();
        let will = |topic| Will {
            topic,
            payload: b"gone",
            qos: QoS::AtLeastOnce,
            retain: false,
        };
        let ok = on_connect(
            &id,
            &policy,
            &connect("d1", Some(will("tenants/acme/devices/d1/status"))),
        )
        .unwrap();
        assert_eq!(
            ok.will.unwrap().topic.as_ref(),
            b"tenants/acme/devices/d1/status"
        );
        let refusal = on_connect(
            &id,
            &policy,
            &connect("d1", Some(will("tenants/acme/devices/d2/status"))),
        )
        .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::WillDenied("tenants/acme/devices/d2/status".into())
        );
        assert_eq!(
            refusal.connack_code(),
            Some(ConnectReturnCode::NotAuthorized)
        );
    }

    fn session() -> Session {
        Session::new(
            Arc::new(device("d1")),
            Arc::new(Policy::default()),
            &Limits::default(),
            Instant::now(),
        )
    }

    /// One packet, at the time the session was made (well within its rate limit).
    trait At {
        fn inbound_now(&mut self, p: Packet<'_>) -> Inbound;
    }

    impl At for Session {
        fn inbound_now(&mut self, p: Packet<'_>) -> Inbound {
            self.inbound(p, Instant::now())
        }
    }

    #[test]
    fn publishing_above_the_rate_limit_closes_the_session() {
        let limits = Limits {
            publish_rate: 10.0,
            publish_burst: 5.0,
            ..Limits::default()
        };
        let t0 = Instant::now();
        let mut s = Session::new(
            Arc::new(device("d1")),
            Arc::new(Policy::default()),
            &limits,
            t0,
        );
        let topic = "tenants/acme/devices/d1/telemetry";
        for _ in 0..5 {
            assert!(matches!(
                s.inbound(publish(topic, QoS::AtMostOnce, None), t0),
                Inbound::Router(_)
            ));
        }
        assert!(matches!(
            s.inbound(publish(topic, QoS::AtMostOnce, None), t0),
            Inbound::Close(Close::RateLimited)
        ));
        let later = t0 + std::time::Duration::from_millis(100);
        assert!(matches!(
            s.inbound(publish(topic, QoS::AtMostOnce, None), later),
            Inbound::Router(_)
        ));
        // Other packets are not rate limited.
        assert!(matches!(s.inbound(Packet::PingReq, t0), Inbound::Reply(_)));
    }

    fn publish(topic: &str, qos: QoS, id: Option<u16>) -> Packet<'_> {
        Packet::Publish(mqtt::Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id: id,
            payload: b"x",
        })
    }

    #[test]
    fn allowed_publish_goes_to_the_router_with_qos_and_id() {
        let mut s = session();
        let Inbound::Router(packet) = s.inbound_now(publish(
            "tenants/acme/devices/d1/telemetry",
            QoS::AtLeastOnce,
            Some(9),
        )) else {
            panic!("not forwarded")
        };
        let r::Packet::Publish(p, None) = *packet else {
            panic!("not a PUBLISH")
        };
        let record = p.serialize();
        assert_eq!(record[0] & 0b0110, 0b0010, "QoS 1 kept");
        assert_eq!(&record[1..3], &[0, 9], "packet id kept");
        assert_eq!(p.topic.as_ref(), b"tenants/acme/devices/d1/telemetry");
        assert_eq!(s.stats.publishes_in, 1);
    }

    #[test]
    fn denied_publishes_are_acknowledged_and_dropped() {
        let mut s = session();
        let other = "tenants/acme/devices/d2/telemetry";
        assert!(matches!(
            s.inbound_now(publish(other, QoS::AtMostOnce, None)),
            Inbound::Nothing
        ));
        match s.inbound_now(publish(other, QoS::AtLeastOnce, Some(3))) {
            Inbound::Reply(b) => assert_eq!(decode(&b), Packet::PubAck(3)),
            o => panic!("{o:?}"),
        }
        match s.inbound_now(publish(other, QoS::ExactlyOnce, Some(4))) {
            Inbound::Reply(b) => assert_eq!(decode(&b), Packet::PubRec(4)),
            o => panic!("{o:?}"),
        }
        // The PUBREL of the dropped QoS 2 message is completed here, not by the router.
        match s.inbound_now(Packet::PubRel(4)) {
            Inbound::Reply(b) => assert_eq!(decode(&b), Packet::PubComp(4)),
            o => panic!("{o:?}"),
        }
        assert!(matches!(
            s.inbound_now(Packet::PubRel(5)),
            Inbound::Router(p) if matches!(*p, r::Packet::PubRel(..))
        ));
        assert_eq!(s.stats.acl_denials, 3);
        assert_eq!(s.stats.publishes_in, 0);
    }

    #[test]
    fn subscribe_forwards_only_allowed_filters() {
        let mut s = session();
        let all_denied = [
            ("#", QoS::AtMostOnce),
            ("tenants/acme/devices/+/cmd/#", QoS::AtLeastOnce),
        ];
        match s.inbound_now(Packet::Subscribe(mqtt::Subscribe {
            packet_id: 1,
            filters: SubscribeFilters::from_slice(&all_denied),
        })) {
            Inbound::Reply(b) => match decode(&b) {
                Packet::SubAck(a) => {
                    assert_eq!(a.packet_id, 1);
                    assert!(a.return_codes.iter().all(|c| c == SubAckCode::Failure));
                    assert_eq!(a.return_codes.len(), 2);
                }
                o => panic!("{o:?}"),
            },
            o => panic!("{o:?}"),
        }
        let mixed = [
            ("#", QoS::AtMostOnce),
            ("tenants/acme/devices/d1/cmd/#", QoS::AtLeastOnce),
        ];
        match s.inbound_now(Packet::Subscribe(mqtt::Subscribe {
            packet_id: 2,
            filters: SubscribeFilters::from_slice(&mixed),
        })) {
            Inbound::Router(p) => {
                let r::Packet::Subscribe(sub, None) = *p else {
                    panic!("not a SUBSCRIBE")
                };
                assert_eq!(sub.pkid, 2);
                assert_eq!(sub.filters.len(), 1);
                assert_eq!(sub.filters[0].path, "tenants/acme/devices/d1/cmd/#");
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn outbound_publish_is_encoded_for_the_client() {
        let mut s = session();
        let mut out = Vec::new();
        let p = router_publish(&mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "tenants/acme/devices/d1/cmd/reboot",
            packet_id: Some(77),
            payload: b"now",
        });
        let n = Notification::Forward(rumqttd::Forward {
            cursor: None,
            size: 0,
            publish: p,
            properties: None,
        });
        assert_eq!(s.outbound(n, &mut out), Outbound::Continue);
        match decode(&out) {
            Packet::Publish(p) => {
                assert_eq!(p.topic, "tenants/acme/devices/d1/cmd/reboot");
                assert_eq!(
                    (p.qos, p.packet_id, p.payload),
                    (QoS::AtLeastOnce, Some(77), &b"now"[..])
                );
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(
            s.outbound(Notification::Unschedule, &mut out),
            Outbound::Wake
        );
    }

    #[test]
    fn protocol_violations_close() {
        let mut s = session();
        assert!(matches!(
            s.inbound_now(Packet::PingResp),
            Inbound::Close(Close::ProtocolViolation(_))
        ));
        assert!(matches!(
            s.inbound_now(Packet::Connect(connect("d1", None))),
            Inbound::Close(Close::ProtocolViolation(_))
        ));
        assert!(matches!(
            s.inbound_now(Packet::Disconnect),
            Inbound::Close(Close::ClientDisconnect)
        ));
        match s.inbound_now(Packet::PingReq) {
            Inbound::Reply(b) => assert_eq!(b, [0xD0, 0x00]),
            o => panic!("{o:?}"),
        }
    }
}
