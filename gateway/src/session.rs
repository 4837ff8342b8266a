//! The MQTT session core: decoded packets in, decisions out. No sockets here.
//!
//! The connection shell (`connection.rs`) decodes client bytes with the shared codec in
//! `fleet_protocol::mqtt`, hands each packet to [`Session::inbound`] (3.1.1) or
//! [`Session::inbound5`] (5), and carries out the returned [`Inbound`] decision; router
//! notifications go through [`Session::outbound`], which encodes them for the client in the
//! client's protocol version.
//!
//! Version 5 packets are reduced to the 3.1.1 views the rules are written against; what
//! version 5 adds is handled on the way in (topic aliases and subscription identifiers are not
//! offered, so their use is a protocol error; publish properties travel with the message) and
//! on the way out (reason codes, e.g. 0x87 for an ACL refusal, and the client's maximum packet
//! size).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use fleet_protocol::mqtt::v5::{
    self as v5, reason, Ack5, ConnAck5, Connect5, Packet5, Properties, Property, Reason5,
    ReasonList,
};
use fleet_protocol::mqtt::{
    self, ConnAck, Connect, ConnectReturnCode, Packet, QoS, SubAckCode, SubAckCodes,
};
use fleet_protocol::topic::{self, Cert};
use rumqttd::protocol as r;
use rumqttd::Notification;

use std::time::Instant;

use crate::acl::Policy;
use crate::config::Limits;
use crate::identity::Identity;
use crate::limits::TokenBucket;

/// The MQTT protocol version a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 3.1.1 (and 3.1, which shares its packets).
    V311,
    V5,
}

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
    /// A version 5 CONNECT asked for an authentication method; identity comes from the
    /// certificate and no extended authentication is offered.
    AuthMethod(String),
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
            Refusal::AuthMethod(_) => "bad_auth_method",
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
            Refusal::AuthMethod(_) => Some(ConnectReturnCode::BadUserNameOrPassword),
            _ => None,
        }
    }

    /// The version 5 CONNACK reason code, when the refusal happens at CONNECT.
    pub fn reason5(&self) -> Option<u8> {
        match self {
            Refusal::UnsupportedProtocol(_) => Some(reason::UNSUPPORTED_PROTOCOL_VERSION),
            Refusal::ClientIdMismatch { .. } | Refusal::WillDenied(_) => {
                Some(reason::NOT_AUTHORIZED)
            }
            Refusal::RouterUnavailable => Some(reason::SERVER_UNAVAILABLE),
            Refusal::AuthMethod(_) => Some(reason::BAD_AUTHENTICATION_METHOD),
            _ => None,
        }
    }

    /// The CONNACK refusing a client of `version`, if this refusal is answered with one.
    pub fn connack(&self, version: Version) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match version {
            Version::V311 => append(
                &mut out,
                &Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: self.connack_code()?,
                }),
            ),
            Version::V5 => {
                let text = self.to_string();
                let props = [Property::ReasonString(&text)];
                append5(
                    &mut out,
                    &Packet5::ConnAck(ConnAck5 {
                        session_present: false,
                        reason: self.reason5()?,
                        properties: Properties::from_slice(&props),
                    }),
                );
            }
        }
        Some(out)
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
            Refusal::AuthMethod(m) => write!(
                f,
                "authentication method {m:?} is not offered: the client certificate is the identity"
            ),
            Refusal::RouterUnavailable => write!(f, "broker router refused the session"),
        }
    }
}

/// What an accepted CONNECT turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub version: Version,
    /// Always the certificate's device id.
    pub client_id: String,
    /// The client sent an empty client id (version 5 is told the id in CONNACK).
    pub assigned_id: bool,
    pub keep_alive: u16,
    /// Whether the router starts a fresh session that is dropped at disconnect.
    pub clean_session: bool,
    pub will: Option<r::LastWill>,
    /// The largest packet a version 5 client accepts.
    pub client_max_packet: Option<usize>,
}

impl Accepted {
    /// The accepting CONNACK; version 5 also learns the limits the gateway applies.
    pub fn connack(&self, session_present: bool, max_packet_size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        match self.version {
            Version::V311 => append(
                &mut out,
                &Packet::ConnAck(ConnAck {
                    session_present,
                    code: ConnectReturnCode::Accepted,
                }),
            ),
            Version::V5 => {
                let mut props = vec![
                    Property::MaximumPacketSize(max_packet_size.min(u32::MAX as usize) as u32),
                    Property::SubscriptionIdentifierAvailable(0),
                    Property::SharedSubscriptionAvailable(0),
                ];
                if self.assigned_id {
                    props.push(Property::AssignedClientIdentifier(&self.client_id));
                }
                append5(
                    &mut out,
                    &Packet5::ConnAck(ConnAck5 {
                        session_present,
                        reason: reason::SUCCESS,
                        properties: Properties::from_slice(&props),
                    }),
                );
            }
        }
        out
    }
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
        version: Version::V311,
        client_id: identity.id.clone(),
        assigned_id: connect.client_id.is_empty(),
        keep_alive: connect.keep_alive,
        clean_session: connect.clean_session,
        will,
        client_max_packet: None,
    })
}

/// Checks a version 5 CONNECT: the 3.1.1 rules, plus its properties.
pub fn on_connect5(
    identity: &Identity,
    policy: &Policy,
    connect: &Connect5<'_>,
) -> Result<Accepted, Refusal> {
    let mut session_expiry = 0;
    let mut client_max_packet = None;
    for p in connect.properties.iter() {
        match p {
            Property::AuthenticationMethod(m) => return Err(Refusal::AuthMethod(m.to_owned())),
            Property::SessionExpiryInterval(s) => session_expiry = s,
            Property::MaximumPacketSize(n) => client_max_packet = Some(n as usize),
            _ => {}
        }
    }
    let mut accepted = on_connect(identity, policy, &connect.connect)?;
    accepted.version = Version::V5;
    // A session the client does not ask to keep (expiry 0) is not kept: the router's clean
    // session is both "start fresh" and "drop at disconnect".
    accepted.clean_session = connect.connect.clean_session || session_expiry == 0;
    accepted.client_max_packet = client_max_packet;
    Ok(accepted)
}

/// Why a live session ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The client sent DISCONNECT asking for its will to be published (version 5, 0x04).
    ClientDisconnectWithWill,
    /// A version 5 client used a topic alias; the gateway offers none.
    TopicAliasInvalid,
    /// A version 5 client used a subscription identifier; the gateway offers none.
    SubscriptionIdentifiers,
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
#[derive(Debug)]
pub enum Outbound {
    Continue,
    /// The router paused this connection's delivery: tell it we are ready again.
    Wake,
    /// The router ended the session.
    Disconnect,
    /// Hand this packet to the router (an acknowledgement for a message the client's
    /// maximum packet size kept from it).
    Router(Box<r::Packet>),
}

/// Counters a session keeps for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SessionStats {
    pub publishes_in: u64,
    pub publishes_out: u64,
    pub acl_denials: u64,
    /// Messages larger than a version 5 client's maximum packet size, not sent to it.
    pub oversized_out: u64,
}

/// Per-connection MQTT state after CONNECT.
pub struct Session {
    identity: Arc<Identity>,
    policy: Arc<Policy>,
    version: Version,
    client_max_packet: usize,
    /// SUBSCRIBE packet ids whose SUBACK merges our refusals (`Some`, version 5 reason codes)
    /// with the router's answers (`None` positions), in the order the client sent the filters.
    pending_subacks: HashMap<u16, Vec<Option<u8>>>,
    /// QoS 2 publishes the ACL dropped: their PUBREL is answered here, not by the router.
    dropped_qos2: HashSet<u16>,
    /// The filters this session holds, and how many it may.
    subscriptions: HashSet<String>,
    max_subscriptions: usize,
    publish_rate: TokenBucket,
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
        Session {
            identity,
            policy,
            version: Version::V311,
            client_max_packet: usize::MAX,
            pending_subacks: HashMap::new(),
            dropped_qos2: HashSet::new(),
            subscriptions: HashSet::new(),
            max_subscriptions: limits.max_subscriptions,
            publish_rate: TokenBucket::new(limits.publish_rate, limits.publish_burst, now),
            renew_threshold: None,
            stats: SessionStats::default(),
        }
    }

    /// Speaks the version the client connected with, within its limits.
    pub fn for_client(mut self, accepted: &Accepted) -> Session {
        self.client_max_packet = accepted.client_max_packet.unwrap_or(usize::MAX);
        self.speaking(accepted.version)
    }

    /// Encodes what it sends in `version`.
    pub fn speaking(mut self, version: Version) -> Session {
        self.version = version;
        self
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Tells devices to renew when their certificate ends within `threshold`.
    pub fn with_renewal(mut self, threshold: std::time::Duration) -> Session {
        self.renew_threshold = Some(threshold.as_secs() as i64);
        self
    }

    pub fn identity_arc(&self) -> Arc<Identity> {
        self.identity.clone()
    }

    /// A QoS 0 PUBLISH from the gateway to this device on one of its rotation topics
    /// (nothing for services, which have none).
    pub fn cert_message(&self, which: Cert, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut topic = String::new();
        let who = &self.identity;
        if who.kind == crate::identity::Kind::Device
            && topic::cert(&mut topic, &who.tenant, &who.id, which).is_ok()
        {
            let publish = mqtt::Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: &topic,
                packet_id: None,
                payload,
            };
            self.put_publish(&mut out, publish, Properties::EMPTY);
        }
        out
    }

    /// The rotation topics the gateway answers itself (`cert/status/get` and `cert/csr` of a
    /// device's own prefix); `None` for anything else.
    fn rotation(&mut self, p: &mqtt::Publish<'_>) -> Option<Inbound> {
        let who = &self.identity;
        if who.kind != crate::identity::Kind::Device {
            return None;
        }
        let which = topic::cert_topic(p.topic, &who.tenant, &who.id).filter(|c| c.from_device())?;
        let mut ack = Vec::new();
        self.ack_publish(&mut ack, p, reason::SUCCESS);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        // Without a station to renew through, never ask for a renewal.
        let threshold = self.renew_threshold.unwrap_or(i64::MIN / 2);
        if which == Cert::Csr {
            // Only certificates near their end are renewed through the gateway: a device
            // cannot churn the registry and the CRL by asking again and again.
            if self.identity.not_after - now > threshold {
                ack.extend(self.cert_message(
                    Cert::Error,
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
        ack.extend(self.cert_message(Cert::Status, &status));
        Some(Inbound::Reply(ack))
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Decides what to do with one version 5 packet from the client, received at `now`.
    pub fn inbound5(&mut self, packet: Packet5<'_>, now: Instant) -> Inbound {
        let view = match packet {
            Packet5::Publish(p, props) => {
                for prop in props.iter() {
                    match prop {
                        Property::TopicAlias(_) => return Inbound::Close(Close::TopicAliasInvalid),
                        Property::SubscriptionIdentifier(_) => {
                            return Inbound::Close(Close::ProtocolViolation(
                                "a client PUBLISH carries a subscription identifier",
                            ))
                        }
                        _ => {}
                    }
                }
                if !self.publish_rate.take(now) {
                    return Inbound::Close(Close::RateLimited);
                }
                return self.publish(p, props);
            }
            Packet5::Subscribe(s, props) => {
                if props
                    .iter()
                    .any(|p| matches!(p, Property::SubscriptionIdentifier(_)))
                {
                    return Inbound::Close(Close::SubscriptionIdentifiers);
                }
                Packet::Subscribe(s)
            }
            Packet5::PubAck(a) => Packet::PubAck(a.packet_id),
            Packet5::PubRec(a) => Packet::PubRec(a.packet_id),
            Packet5::PubRel(a) => Packet::PubRel(a.packet_id),
            Packet5::PubComp(a) => Packet::PubComp(a.packet_id),
            Packet5::Unsubscribe(u, _) => Packet::Unsubscribe(u),
            Packet5::PingReq => Packet::PingReq,
            Packet5::Disconnect(d) if d.reason == reason::DISCONNECT_WITH_WILL => {
                return Inbound::Close(Close::ClientDisconnectWithWill)
            }
            Packet5::Disconnect(_) => Packet::Disconnect,
            Packet5::Auth(_) => {
                return Inbound::Close(Close::ProtocolViolation(
                    "AUTH without an authentication method",
                ))
            }
            Packet5::Connect(c) => Packet::Connect(c.connect),
            Packet5::ConnAck(_) | Packet5::SubAck(_) | Packet5::UnsubAck(_) | Packet5::PingResp => {
                Packet::PingResp
            }
        };
        self.inbound(view, now)
    }

    /// Decides what to do with one packet from the client, received at `now`.
    pub fn inbound(&mut self, packet: Packet<'_>, now: Instant) -> Inbound {
        match packet {
            Packet::Publish(_) if !self.publish_rate.take(now) => {
                Inbound::Close(Close::RateLimited)
            }
            Packet::Publish(p) => self.publish(p, Properties::EMPTY),
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
                let mut out = Vec::new();
                self.put_ack(&mut out, Packet::PubComp(pkid), reason::SUCCESS);
                Inbound::Reply(out)
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
            Packet::Unsubscribe(u) => {
                for f in u.filters.iter() {
                    self.subscriptions.remove(f);
                }
                to_router(r::Packet::Unsubscribe(
                    r::Unsubscribe {
                        pkid: u.packet_id,
                        filters: u.filters.iter().map(str::to_owned).collect(),
                    },
                    None,
                ))
            }
            Packet::PingReq => {
                let mut out = Vec::new();
                self.put_ack(&mut out, Packet::PingResp, reason::SUCCESS);
                Inbound::Reply(out)
            }
            Packet::Disconnect => Inbound::Close(Close::ClientDisconnect),
            Packet::Connect(_) => Inbound::Close(Close::ProtocolViolation("second CONNECT")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Inbound::Close(Close::ProtocolViolation(
                    "server-only packet sent by client",
                ))
            }
        }
    }

    fn publish(&mut self, p: mqtt::Publish<'_>, props: Properties<'_>) -> Inbound {
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
            // Version 5 acknowledges with "not authorized" (0x87).
            let mut out = Vec::new();
            self.ack_publish(&mut out, &p, reason::NOT_AUTHORIZED);
            return if out.is_empty() {
                Inbound::Nothing
            } else {
                Inbound::Reply(out)
            };
        }
        self.stats.publishes_in += 1;
        to_router(r::Packet::Publish(
            router_publish(&p),
            router_properties(&props),
        ))
    }

    /// Acknowledges a publish the gateway handles itself (QoS 0 needs nothing).
    fn ack_publish(&mut self, out: &mut Vec<u8>, p: &mqtt::Publish<'_>, code: u8) {
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.put_ack(out, Packet::PubAck(id), code),
            (QoS::ExactlyOnce, Some(id)) => {
                self.dropped_qos2.insert(id);
                self.put_ack(out, Packet::PubRec(id), code);
            }
            _ => {}
        }
    }

    /// Encodes an acknowledgement (or PINGRESP) in the client's version; `code` is the
    /// version 5 reason.
    fn put_ack(&self, out: &mut Vec<u8>, packet: Packet<'_>, code: u8) {
        let ack = |packet_id| Ack5 {
            packet_id,
            reason: code,
            properties: Properties::EMPTY,
        };
        match (self.version, packet) {
            (Version::V311, p) => append(out, &p),
            (Version::V5, Packet::PubAck(id)) => append5(out, &Packet5::PubAck(ack(id))),
            (Version::V5, Packet::PubRec(id)) => append5(out, &Packet5::PubRec(ack(id))),
            (Version::V5, Packet::PubRel(id)) => append5(out, &Packet5::PubRel(ack(id))),
            (Version::V5, Packet::PubComp(id)) => append5(out, &Packet5::PubComp(ack(id))),
            (Version::V5, _) => append5(out, &Packet5::PingResp),
        }
    }

    /// Encodes a SUBACK from version 5 reason codes (3.1.1 gets 0x80 for every refusal).
    fn put_suback(&self, out: &mut Vec<u8>, packet_id: u16, reasons: &[u8]) {
        match self.version {
            Version::V311 => {
                let codes: Vec<SubAckCode> = reasons
                    .iter()
                    .map(|&c| match c {
                        0 => SubAckCode::Granted(QoS::AtMostOnce),
                        1 => SubAckCode::Granted(QoS::AtLeastOnce),
                        2 => SubAckCode::Granted(QoS::ExactlyOnce),
                        _ => SubAckCode::Failure,
                    })
                    .collect();
                append(
                    out,
                    &Packet::SubAck(mqtt::SubAck {
                        packet_id,
                        return_codes: SubAckCodes::from_slice(&codes),
                    }),
                );
            }
            Version::V5 => append5(
                out,
                &Packet5::SubAck(ReasonList {
                    packet_id,
                    properties: Properties::EMPTY,
                    reasons,
                }),
            ),
        }
    }

    /// Encodes a PUBLISH in the client's version; version 5 clients get its properties.
    fn put_publish(&self, out: &mut Vec<u8>, p: mqtt::Publish<'_>, props: Properties<'_>) {
        match self.version {
            Version::V311 => append(out, &Packet::Publish(p)),
            Version::V5 => append5(out, &Packet5::Publish(p, props)),
        }
    }

    fn subscribe(&mut self, s: mqtt::Subscribe<'_>) -> Inbound {
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut allowed = Vec::new();
        // 3.1.1 options hold only the QoS, so the version 5 bits read as their defaults.
        for (filter, options) in s.filters.iter_options() {
            let full = self.subscriptions.len() >= self.max_subscriptions
                && !self.subscriptions.contains(filter);
            if full && self.policy.may_subscribe(&self.identity, filter) {
                tracing::warn!(
                    target: "audit",
                    device = %self.identity.id,
                    tenant = %self.identity.tenant,
                    filter,
                    reason = "subscription_quota",
                    "subscribe refused: {} filters held",
                    self.subscriptions.len()
                );
                codes.push(Some(reason::QUOTA_EXCEEDED));
            } else if self.policy.may_subscribe(&self.identity, filter) {
                self.subscriptions.insert(filter.to_owned());
                codes.push(None);
                let qos = QoS::from_bits(options & 0b11).unwrap_or(QoS::AtMostOnce);
                allowed.push(r::Filter {
                    path: filter.to_owned(),
                    qos: qos_to_router(qos),
                    nolocal: options & v5::options::NO_LOCAL != 0,
                    preserve_retain: options & v5::options::RETAIN_AS_PUBLISHED != 0,
                    retain_forward_rule: match (options >> v5::options::RETAIN_HANDLING_SHIFT)
                        & 0b11
                    {
                        0 => r::RetainForwardRule::OnEverySubscribe,
                        1 => r::RetainForwardRule::OnNewSubscribe,
                        _ => r::RetainForwardRule::Never,
                    },
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
                codes.push(Some(reason::NOT_AUTHORIZED));
            }
        }
        if allowed.is_empty() {
            let codes: Vec<u8> = codes.into_iter().flatten().collect();
            let mut out = Vec::new();
            self.put_suback(&mut out, s.packet_id, &codes);
            return Inbound::Reply(out);
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
        let ok = reason::SUCCESS;
        match packet {
            r::Packet::Publish(p, props) => return self.forward(&p, props.as_ref(), out),
            r::Packet::PubAck(a, _) => self.put_ack(out, Packet::PubAck(a.pkid), ok),
            r::Packet::PubRec(a, _) => self.put_ack(out, Packet::PubRec(a.pkid), ok),
            r::Packet::PubRel(a, _) => self.put_ack(out, Packet::PubRel(a.pkid), ok),
            r::Packet::PubComp(a, _) => self.put_ack(out, Packet::PubComp(a.pkid), ok),
            r::Packet::SubAck(a, _) => {
                let mut router_codes = a.return_codes.iter().map(suback_code);
                let merged: Vec<u8> = match self.pending_subacks.remove(&a.pkid) {
                    Some(slots) => slots
                        .into_iter()
                        .map(|s| {
                            s.or_else(|| router_codes.next())
                                .unwrap_or(reason::UNSPECIFIED_ERROR)
                        })
                        .collect(),
                    None => router_codes.collect(),
                };
                self.put_suback(out, a.pkid, &merged);
            }
            r::Packet::UnsubAck(a, _) => match self.version {
                Version::V311 => append(out, &Packet::UnsubAck(a.pkid)),
                Version::V5 => {
                    let reasons: Vec<u8> = a.reasons.iter().map(|&r| unsuback_code(r)).collect();
                    // The router answers every filter; an empty list would be malformed.
                    let reasons = if reasons.is_empty() {
                        vec![ok]
                    } else {
                        reasons
                    };
                    append5(
                        out,
                        &Packet5::UnsubAck(ReasonList {
                            packet_id: a.pkid,
                            properties: Properties::EMPTY,
                            reasons: &reasons,
                        }),
                    );
                }
            },
            r::Packet::PingResp(_) => self.put_ack(out, Packet::PingResp, ok),
            r::Packet::Disconnect(..) => return Outbound::Disconnect,
            _ => {}
        }
        Outbound::Continue
    }

    /// Encodes a message from the router for the client. A message larger than a version 5
    /// client's maximum packet size is not sent (MQTT 5 §3.1.2.11.4); the router is told it
    /// was delivered so it does not wait for it forever.
    fn forward(
        &mut self,
        p: &r::Publish,
        props: Option<&r::PublishProperties>,
        out: &mut Vec<u8>,
    ) -> Outbound {
        let Some(publish) = client_publish(p) else {
            return Outbound::Continue;
        };
        let props = match (self.version, props) {
            (Version::V5, Some(props)) => client_properties(props),
            _ => Vec::new(),
        };
        let props = Properties::from_slice(&props);
        let size = match self.version {
            Version::V311 => Packet::Publish(publish).encoded_len(),
            Version::V5 => Packet5::Publish(publish, props).encoded_len(),
        };
        if size > self.client_max_packet {
            self.stats.oversized_out += 1;
            return match (publish.qos, publish.packet_id) {
                (QoS::AtLeastOnce, Some(pkid)) => Outbound::Router(Box::new(r::Packet::PubAck(
                    r::PubAck {
                        pkid,
                        reason: r::PubAckReason::Success,
                    },
                    None,
                ))),
                (QoS::ExactlyOnce, Some(pkid)) => Outbound::Router(Box::new(r::Packet::PubRec(
                    r::PubRec {
                        pkid,
                        reason: r::PubRecReason::Success,
                    },
                    None,
                ))),
                _ => Outbound::Continue,
            };
        }
        self.stats.publishes_out += 1;
        self.put_publish(out, publish, props);
        Outbound::Continue
    }
}

/// The DISCONNECT a version 5 client gets when the gateway ends its session.
pub fn disconnect5(code: u8, why: &str) -> Vec<u8> {
    let props = [Property::ReasonString(why)];
    let mut out = Vec::new();
    append5(
        &mut out,
        &Packet5::Disconnect(Reason5 {
            reason: code,
            properties: Properties::from_slice(&props),
        }),
    );
    out
}

fn to_router(packet: r::Packet) -> Inbound {
    Inbound::Router(Box::new(packet))
}

/// Appends an encoded packet. Packets built here from validated parts always encode; a
/// failure would be a bug, so it is logged and the packet skipped rather than panicking.
fn append(out: &mut Vec<u8>, packet: &Packet<'_>) {
    append_with(out, packet.encoded_len(), |buf| packet.emit(buf));
}

/// Appends an encoded version 5 packet (see [`append`]).
fn append5(out: &mut Vec<u8>, packet: &Packet5<'_>) {
    append_with(out, packet.encoded_len(), |buf| packet.emit(buf));
}

fn append_with(
    out: &mut Vec<u8>,
    len: usize,
    emit: impl FnOnce(&mut [u8]) -> Result<usize, mqtt::MqttError>,
) {
    let start = out.len();
    out.resize(start + len, 0);
    match emit(&mut out[start..]) {
        Ok(n) => out.truncate(start + n),
        Err(e) => {
            out.truncate(start);
            tracing::error!(error = %e, "could not encode an outbound packet");
        }
    }
}

/// The properties of a client's PUBLISH that travel with the message.
fn router_properties(props: &Properties<'_>) -> Option<r::PublishProperties> {
    if props.is_empty() {
        return None;
    }
    let mut out = r::PublishProperties::default();
    for p in props.iter() {
        match p {
            Property::PayloadFormatIndicator(v) => out.payload_format_indicator = Some(v),
            Property::MessageExpiryInterval(v) => out.message_expiry_interval = Some(v),
            Property::ContentType(s) => out.content_type = Some(s.to_owned()),
            Property::ResponseTopic(s) => out.response_topic = Some(s.to_owned()),
            Property::CorrelationData(b) => out.correlation_data = Some(Bytes::copy_from_slice(b)),
            Property::UserProperty(k, v) => out.user_properties.push((k.to_owned(), v.to_owned())),
            _ => {}
        }
    }
    Some(out)
}

/// A message's properties as a version 5 subscriber gets them (never aliases or
/// subscription identifiers: the gateway offers neither).
fn client_properties(p: &r::PublishProperties) -> Vec<Property<'_>> {
    let mut out = Vec::new();
    if let Some(v) = p.payload_format_indicator.filter(|&v| v <= 1) {
        out.push(Property::PayloadFormatIndicator(v));
    }
    if let Some(v) = p.message_expiry_interval {
        out.push(Property::MessageExpiryInterval(v));
    }
    if let Some(s) = &p.content_type {
        out.push(Property::ContentType(s));
    }
    if let Some(s) = &p.response_topic {
        out.push(Property::ResponseTopic(s));
    }
    if let Some(b) = &p.correlation_data {
        out.push(Property::CorrelationData(b));
    }
    out.extend(
        p.user_properties
            .iter()
            .map(|(k, v)| Property::UserProperty(k, v)),
    );
    out
}

fn unsuback_code(r: r::UnsubAckReason) -> u8 {
    match r {
        r::UnsubAckReason::Success => reason::SUCCESS,
        r::UnsubAckReason::NoSubscriptionExisted => reason::NO_SUBSCRIPTION_EXISTED,
        r::UnsubAckReason::ImplementationSpecificError => reason::IMPLEMENTATION_SPECIFIC_ERROR,
        r::UnsubAckReason::NotAuthorized => reason::NOT_AUTHORIZED,
        r::UnsubAckReason::TopicFilterInvalid => reason::TOPIC_FILTER_INVALID,
        r::UnsubAckReason::PacketIdentifierInUse => reason::PACKET_IDENTIFIER_IN_USE,
        _ => reason::UNSPECIFIED_ERROR,
    }
}

fn qos_to_router(q: QoS) -> r::QoS {
    match q {
        QoS::AtMostOnce => r::QoS::AtMostOnce,
        QoS::AtLeastOnce => r::QoS::AtLeastOnce,
        QoS::ExactlyOnce => r::QoS::ExactlyOnce,
    }
}

/// A router SUBACK code as a version 5 reason code.
fn suback_code(c: &r::SubscribeReasonCode) -> u8 {
    match c {
        r::SubscribeReasonCode::Success(r::QoS::AtMostOnce) | r::SubscribeReasonCode::QoS0 => 0,
        r::SubscribeReasonCode::Success(r::QoS::AtLeastOnce) | r::SubscribeReasonCode::QoS1 => 1,
        r::SubscribeReasonCode::Success(r::QoS::ExactlyOnce) | r::SubscribeReasonCode::QoS2 => 2,
        r::SubscribeReasonCode::NotAuthorized => reason::NOT_AUTHORIZED,
        _ => reason::UNSPECIFIED_ERROR,
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

/// The 3.1.1 view of a router publish (`None`, logged, if its topic is not UTF-8).
fn client_publish(p: &r::Publish) -> Option<mqtt::Publish<'_>> {
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
        return None;
    };
    Some(mqtt::Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: p.retain,
        topic,
        packet_id: (qos != QoS::AtMostOnce).then_some(pkid),
        payload: &p.payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Kind;
    use fleet_protocol::mqtt::{SubscribeFilters, Will};

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
        assert!(matches!(s.outbound(n, &mut out), Outbound::Continue));
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
        assert!(matches!(
            s.outbound(Notification::Unschedule, &mut out),
            Outbound::Wake
        ));
    }

    fn session5() -> Session {
        let connect = Connect5 {
            connect: connect("d1", None),
            properties: Properties::from_slice(&[Property::MaximumPacketSize(200)]),
            will_properties: Properties::EMPTY,
        };
        let accepted = on_connect5(&device("d1"), &Policy::default(), &connect).unwrap();
        session().for_client(&accepted)
    }

    fn decode5(bytes: &[u8]) -> Packet5<'_> {
        Packet5::parse(bytes, 1024).unwrap().unwrap().0
    }

    fn publish5<'a>(topic: &'a str, id: u16, props: &'a [Property<'a>]) -> Packet5<'a> {
        Packet5::Publish(
            mqtt::Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic,
                packet_id: Some(id),
                payload: b"x",
            },
            Properties::from_slice(props),
        )
    }

    #[test]
    fn version_5_refusals_carry_reason_codes() {
        let mut s = session5();
        let now = Instant::now();
        match s.inbound5(publish5("tenants/acme/devices/d2/telemetry", 3, &[]), now) {
            Inbound::Reply(b) => assert_eq!(
                decode5(&b),
                Packet5::PubAck(Ack5 {
                    packet_id: 3,
                    reason: reason::NOT_AUTHORIZED,
                    properties: Properties::EMPTY
                })
            ),
            o => panic!("{o:?}"),
        }
        let filters = [("tenants/acme/devices/d2/cmd/#", QoS::AtLeastOnce)];
        let sub = Packet5::Subscribe(
            mqtt::Subscribe {
                packet_id: 4,
                filters: mqtt::SubscribeFilters::from_slice(&filters),
            },
            Properties::EMPTY,
        );
        match s.inbound5(sub, now) {
            Inbound::Reply(b) => assert_eq!(
                decode5(&b),
                Packet5::SubAck(ReasonList {
                    packet_id: 4,
                    properties: Properties::EMPTY,
                    reasons: &[reason::NOT_AUTHORIZED]
                })
            ),
            o => panic!("{o:?}"),
        }
        // Allowed publishes go to the router with their properties.
        let props = [
            Property::ResponseTopic("tenants/acme/devices/d1/cmd/reply"),
            Property::UserProperty("unit", "C"),
        ];
        let Inbound::Router(p) = s.inbound5(publish5("tenants/acme/devices/d1/t", 5, &props), now)
        else {
            panic!("not forwarded")
        };
        let r::Packet::Publish(_, Some(rp)) = *p else {
            panic!("properties lost")
        };
        assert_eq!(
            rp.response_topic.as_deref(),
            Some("tenants/acme/devices/d1/cmd/reply")
        );
        assert_eq!(rp.user_properties, [("unit".into(), "C".into())]);
    }

    #[test]
    fn version_5_features_not_offered_close_the_session() {
        let now = Instant::now();
        let alias = [Property::TopicAlias(1)];
        assert!(matches!(
            session5().inbound5(publish5("tenants/acme/devices/d1/t", 1, &alias), now),
            Inbound::Close(Close::TopicAliasInvalid)
        ));
        let filters = [("tenants/acme/devices/d1/cmd/#", QoS::AtLeastOnce)];
        let sub_id = [Property::SubscriptionIdentifier(7)];
        let sub = Packet5::Subscribe(
            mqtt::Subscribe {
                packet_id: 1,
                filters: mqtt::SubscribeFilters::from_slice(&filters),
            },
            Properties::from_slice(&sub_id),
        );
        assert!(matches!(
            session5().inbound5(sub, now),
            Inbound::Close(Close::SubscriptionIdentifiers)
        ));
        assert!(matches!(
            session5().inbound5(
                Packet5::Auth(Reason5 {
                    reason: 0,
                    properties: Properties::EMPTY
                }),
                now
            ),
            Inbound::Close(Close::ProtocolViolation(_))
        ));
        let with_will = Reason5 {
            reason: reason::DISCONNECT_WITH_WILL,
            properties: Properties::EMPTY,
        };
        assert!(matches!(
            session5().inbound5(Packet5::Disconnect(with_will), now),
            Inbound::Close(Close::ClientDisconnectWithWill)
        ));
    }

    #[test]
    fn version_5_connect_rules() {
        let id = device("d1");
        let policy = Policy::default();
        let auth = [Property::AuthenticationMethod("SCRAM-SHA-1")];
        let c = Connect5 {
            connect: connect("d1", None),
            properties: Properties::from_slice(&auth),
            will_properties: Properties::EMPTY,
        };
        let refusal = on_connect5(&id, &policy, &c).unwrap_err();
        assert_eq!(refusal.label(), "bad_auth_method");
        let connack = refusal.connack(Version::V5).unwrap();
        let Packet5::ConnAck(a) = decode5(&connack) else {
            panic!("not a CONNACK")
        };
        assert_eq!(a.reason, reason::BAD_AUTHENTICATION_METHOD);
        // Client id mismatch: 0x87 with the reason in words.
        let c = Connect5 {
            connect: connect("d2", None),
            properties: Properties::EMPTY,
            will_properties: Properties::EMPTY,
        };
        let connack = on_connect5(&id, &policy, &c)
            .unwrap_err()
            .connack(Version::V5)
            .unwrap();
        let Packet5::ConnAck(a) = decode5(&connack) else {
            panic!("not a CONNACK")
        };
        assert_eq!(a.reason, reason::NOT_AUTHORIZED);
        assert!(matches!(
            a.properties.iter().next(),
            Some(Property::ReasonString(t)) if t.contains("differs")
        ));
        // Clean start without session expiry is a clean session; with expiry it is kept.
        let keep = [Property::SessionExpiryInterval(3600)];
        let mut c = Connect5 {
            connect: connect("", None),
            properties: Properties::from_slice(&keep),
            will_properties: Properties::EMPTY,
        };
        c.connect.clean_session = false;
        let accepted = on_connect5(&id, &policy, &c).unwrap();
        assert!(!accepted.clean_session);
        c.properties = Properties::EMPTY;
        let accepted = on_connect5(&id, &policy, &c).unwrap();
        assert!(accepted.clean_session);
        // An empty client id is told its identity.
        let connack = accepted.connack(false, 4096);
        let Packet5::ConnAck(a) = decode5(&connack) else {
            panic!("not a CONNACK")
        };
        let props: Vec<Property<'_>> = a.properties.iter().collect();
        assert!(props.contains(&Property::AssignedClientIdentifier("d1")));
        assert!(props.contains(&Property::MaximumPacketSize(4096)));
    }

    #[test]
    fn version_5_clients_get_properties_within_their_packet_size() {
        let mut s = session5();
        let note = |payload: &[u8], qos| {
            let mut p = router_publish(&mqtt::Publish {
                dup: false,
                qos,
                retain: false,
                topic: "tenants/acme/devices/d1/cmd/x",
                packet_id: (qos != QoS::AtMostOnce).then_some(8),
                payload,
            });
            p.retain = false;
            Notification::Forward(rumqttd::Forward {
                cursor: None,
                size: 0,
                publish: p,
                properties: Some(r::PublishProperties {
                    content_type: Some("text/plain".into()),
                    ..Default::default()
                }),
            })
        };
        let mut out = Vec::new();
        assert!(matches!(
            s.outbound(note(b"small", QoS::AtLeastOnce), &mut out),
            Outbound::Continue
        ));
        let Packet5::Publish(p, props) = decode5(&out) else {
            panic!("not a PUBLISH")
        };
        assert_eq!(p.payload, b"small");
        assert_eq!(
            props.iter().collect::<Vec<_>>(),
            [Property::ContentType("text/plain")]
        );
        // Larger than the client's 200-byte maximum: not sent, acknowledged to the router.
        out.clear();
        match s.outbound(note(&[0u8; 300], QoS::AtLeastOnce), &mut out) {
            Outbound::Router(p) => assert!(matches!(*p, r::Packet::PubAck(a, _) if a.pkid == 8)),
            o => panic!("{o:?}"),
        }
        assert!(out.is_empty());
        assert_eq!(s.stats.oversized_out, 1);
        // A 3.1.1 session gets the same message without properties.
        let mut plain = session();
        plain.outbound(note(b"small", QoS::AtMostOnce), &mut out);
        assert!(matches!(decode(&out), Packet::Publish(p) if p.payload == b"small"));
    }

    #[test]
    fn subscriptions_per_session_are_capped() {
        let limits = Limits {
            max_subscriptions: 2,
            ..Limits::default()
        };
        let mut s = Session::new(
            Arc::new(device("d1")),
            Arc::new(Policy::default()),
            &limits,
            Instant::now(),
        )
        .speaking(Version::V5);
        let now = Instant::now();
        let sub = |s: &mut Session, id, filter: &'static str| {
            let filters = [(filter, QoS::AtLeastOnce)];
            let p = Packet5::Subscribe(
                mqtt::Subscribe {
                    packet_id: id,
                    filters: mqtt::SubscribeFilters::from_slice(&filters),
                },
                Properties::EMPTY,
            );
            match s.inbound5(p, now) {
                Inbound::Router(_) => None,
                Inbound::Reply(b) => match decode5(&b) {
                    Packet5::SubAck(l) => Some(l.reasons[0]),
                    o => panic!("{o:?}"),
                },
                o => panic!("{o:?}"),
            }
        };
        assert_eq!(sub(&mut s, 1, "tenants/acme/devices/d1/cmd/a"), None);
        assert_eq!(sub(&mut s, 2, "tenants/acme/devices/d1/cmd/b"), None);
        assert_eq!(
            sub(&mut s, 3, "tenants/acme/devices/d1/cmd/c"),
            Some(reason::QUOTA_EXCEEDED)
        );
        // The same filter again is a replacement, not a new one.
        assert_eq!(sub(&mut s, 4, "tenants/acme/devices/d1/cmd/a"), None);
        let gone = ["tenants/acme/devices/d1/cmd/a"];
        s.inbound5(
            Packet5::Unsubscribe(
                mqtt::Unsubscribe {
                    packet_id: 5,
                    filters: mqtt::UnsubscribeFilters::from_slice(&gone),
                },
                Properties::EMPTY,
            ),
            now,
        );
        assert_eq!(sub(&mut s, 6, "tenants/acme/devices/d1/cmd/c"), None);
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
