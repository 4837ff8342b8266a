//! The MQTT session rules of one connection: decoded packets in, decisions out. No sockets,
//! no locks here.
//!
//! The connection shell (`connection.rs`) decodes client bytes with the shared codec in
//! `fleet_protocol::mqtt`, hands each packet to [`Session::inbound`] (3.1.1) or
//! [`Session::inbound5`] (5), and carries out the returned [`Inbound`] decision: most go to
//! the broker core ([`crate::broker`], shared by every connection through [`crate::hub`]),
//! some are answered here (ACL refusals, certificate rotation, PINGRESP). The broker's
//! packets for the client are encoded by [`wire::encode`] in the client's version.
//!
//! - [`connect`]: CONNECT checks and refusals, the CONNACK.
//! - [`v5`]: what version 5 adds on the way in.
//! - [`wire`]: encoding for the client (acknowledgements, SUBACK/UNSUBACK, deliveries).
//! - `rotation`: the certificate rotation topics the gateway answers itself.

mod connect;
mod rotation;
mod v5;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use fleet_protocol::mqtt::v5::{reason, Properties};
use fleet_protocol::mqtt::{self, Packet, QoS};

pub use connect::{on_connect, on_connect5, Accepted, Refusal, ServerLimits};
pub use wire::{disconnect5, Encoded};

use crate::acl::Policy;
use crate::broker::{Message, Subscription};
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

impl Version {
    /// As the admin API and the console spell it: `3.1.1` or `5`.
    pub fn name(self) -> &'static str {
        match self {
            Version::V311 => "3.1.1",
            Version::V5 => "5",
        }
    }
}

/// Why a live session ends at the client's doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// The client sent DISCONNECT (version 5: with this Session Expiry Interval, if any).
    ClientDisconnect(Option<u32>),
    /// The client sent DISCONNECT asking for its will to be published (version 5, 0x04).
    ClientDisconnectWithWill(Option<u32>),
    /// A version 5 client used a topic alias; the gateway offers none.
    TopicAliasInvalid,
    /// A version 5 client used a subscription identifier; the gateway offers none.
    SubscriptionIdentifiers,
    /// The client broke the protocol (the text says how).
    ProtocolViolation(&'static str),
    /// The client published faster than its rate limit.
    RateLimited,
}

/// One filter of a SUBSCRIBE after the session rules: refused here, or for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// Refused with this version 5 reason code (0x87: outside the ACL).
    Refused(u8),
    Granted(String, Subscription),
}

/// The decision for one inbound packet.
#[derive(Debug)]
pub enum Inbound {
    /// A PUBLISH the ACL allows: the broker routes it (`packet_id` as decoded).
    Publish {
        packet_id: Option<u16>,
        message: Message,
    },
    PubAck(u16),
    /// PUBREC with its reason (0 in 3.1.1).
    PubRec {
        packet_id: u16,
        code: u8,
    },
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        packet_id: u16,
        filters: Vec<Requested>,
    },
    Unsubscribe {
        packet_id: u16,
        filters: Vec<String>,
    },
    /// Answer the client directly with these encoded bytes.
    Reply(Vec<u8>),
    /// Nothing to do (e.g. a QoS 0 publish the ACL dropped).
    Nothing,
    /// End the session.
    Close(Close),
    /// The device sent a certificate request (`cert/csr`): relay it to the station. `ack`
    /// holds the encoded acknowledgement to send now (empty for QoS 0).
    Renew {
        csr: Vec<u8>,
        ack: Vec<u8>,
    },
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

/// Per-connection MQTT rules after CONNECT: identity, ACL, rate limit, protocol version.
pub struct Session {
    identity: Arc<Identity>,
    policy: Arc<Policy>,
    version: Version,
    client_max_packet: usize,
    /// QoS 2 publishes the ACL dropped: their PUBREL is answered here, not by the broker.
    dropped_qos2: HashSet<u16>,
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
            dropped_qos2: HashSet::new(),
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
        self.renew_threshold = Some(i64::try_from(threshold.as_secs()).unwrap_or(i64::MAX));
        self
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn identity_arc(&self) -> Arc<Identity> {
        self.identity.clone()
    }

    /// Encodes a packet of the broker for this client (see [`wire::encode`]), counting
    /// what it sends and what was too large for it.
    pub fn encode(&mut self, packet: &crate::broker::Outgoing, out: &mut Vec<u8>) -> Encoded {
        let encoded = wire::encode(self.version, self.client_max_packet, packet, out);
        match (encoded, packet) {
            (Encoded::Written, crate::broker::Outgoing::Publish(_)) => {
                self.stats.publishes_out += 1
            }
            (Encoded::TooLarge { .. }, _) => self.stats.oversized_out += 1,
            _ => {}
        }
        encoded
    }

    /// The SUBACK for `reasons` (version 5 codes, one per filter).
    pub fn suback(&self, packet_id: u16, reasons: &[u8], out: &mut Vec<u8>) {
        wire::put_suback(self.version, out, packet_id, reasons);
    }

    /// The UNSUBACK for `reasons` (version 5 codes, one per filter).
    pub fn unsuback(&self, packet_id: u16, reasons: &[u8], out: &mut Vec<u8>) {
        wire::put_unsuback(self.version, out, packet_id, reasons);
    }

    /// Decides what to do with one packet from the client, received at `now`.
    pub fn inbound(&mut self, packet: Packet<'_>, now: Instant) -> Inbound {
        match packet {
            Packet::Publish(_) if !self.publish_rate.take(now) => {
                Inbound::Close(Close::RateLimited)
            }
            Packet::Publish(p) => self.publish(p, Properties::EMPTY),
            Packet::PubAck(id) => Inbound::PubAck(id),
            Packet::PubRec(id) => Inbound::PubRec {
                packet_id: id,
                code: reason::SUCCESS,
            },
            Packet::PubRel(id) if self.dropped_qos2.remove(&id) => {
                let mut out = Vec::new();
                wire::put_ack(self.version, &mut out, Packet::PubComp(id), reason::SUCCESS);
                Inbound::Reply(out)
            }
            Packet::PubRel(id) => Inbound::PubRel(id),
            Packet::PubComp(id) => Inbound::PubComp(id),
            Packet::Subscribe(s) => self.subscribe(s, None),
            Packet::Unsubscribe(u) => Inbound::Unsubscribe {
                packet_id: u.packet_id,
                filters: u.filters.iter().map(str::to_owned).collect(),
            },
            Packet::PingReq => {
                let mut out = Vec::new();
                wire::put_ack(self.version, &mut out, Packet::PingResp, reason::SUCCESS);
                Inbound::Reply(out)
            }
            Packet::Disconnect => Inbound::Close(Close::ClientDisconnect(None)),
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
        Inbound::Publish {
            packet_id: p.packet_id,
            message: Message::from_publish(&p).with_v5_properties(&props),
        }
    }

    /// Acknowledges a publish the gateway handles itself (QoS 0 needs nothing).
    fn ack_publish(&mut self, out: &mut Vec<u8>, p: &mqtt::Publish<'_>, code: u8) {
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => {
                wire::put_ack(self.version, out, Packet::PubAck(id), code)
            }
            (QoS::ExactlyOnce, Some(id)) => {
                self.dropped_qos2.insert(id);
                wire::put_ack(self.version, out, Packet::PubRec(id), code);
            }
            _ => {}
        }
    }

    /// The ACL decides each filter: refused (0x87 in version 5, 0x80 in 3.1.1) when it is
    /// not inside an allow rule or wholly inside a deny rule; granted otherwise, and a
    /// granted filter that overlaps a deny rule has the denied topics filtered out at
    /// delivery. `id`: the Subscription Identifier (never offered, so always `None` today).
    fn subscribe(&mut self, s: mqtt::Subscribe<'_>, id: Option<NonZeroU32>) -> Inbound {
        let mut filters = Vec::new();
        // 3.1.1 options hold only the QoS, so the version 5 bits read as their defaults.
        for (filter, options) in s.filters.iter_options() {
            let Some(sub) = Subscription::from_options(options, id) else {
                return Inbound::Close(Close::ProtocolViolation("malformed subscription options"));
            };
            if self.policy.may_subscribe(&self.identity, filter) {
                filters.push(Requested::Granted(filter.to_owned(), sub));
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
                filters.push(Requested::Refused(reason::NOT_AUTHORIZED));
            }
        }
        Inbound::Subscribe {
            packet_id: s.packet_id,
            filters,
        }
    }

    /// Whether this session's identity may receive `message` (the ACL at delivery).
    pub fn receive_filter(&self) -> impl Fn(&Message) -> bool + Send + 'static {
        let rules = self.policy.receive_rules(&self.identity);
        move |m: &Message| rules.allows(&m.topic)
    }
}
