//! Version 5 packets on the way in: what version 5 adds is handled here (topic aliases and
//! subscription identifiers are not offered, so their use is a protocol error; publish
//! properties travel with the message; DISCONNECT may carry a reason and a new Session Expiry
//! Interval), then the packet is reduced to the 3.1.1 view the rules are written against.

use std::time::Instant;

use fleet_protocol::mqtt::v5::{reason, Packet5, Properties, Property};
use fleet_protocol::mqtt::Packet;

use super::{Close, Inbound, Session};

impl Session {
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
                return self.subscribe(s, None);
            }
            Packet5::PubRec(a) => {
                return Inbound::PubRec {
                    packet_id: a.packet_id,
                    code: a.reason,
                }
            }
            Packet5::PubAck(a) => Packet::PubAck(a.packet_id),
            Packet5::PubRel(a) => Packet::PubRel(a.packet_id),
            Packet5::PubComp(a) => Packet::PubComp(a.packet_id),
            Packet5::Unsubscribe(u, _) => Packet::Unsubscribe(u),
            Packet5::PingReq => Packet::PingReq,
            Packet5::Disconnect(d) => {
                // Only a normal disconnection (0x00) discards the will [MQTT-3.1.2-10];
                // 0x04 and the client's error reasons publish it.
                let expiry = session_expiry(&d.properties);
                return Inbound::Close(if d.reason == reason::SUCCESS {
                    Close::ClientDisconnect(expiry)
                } else {
                    Close::ClientDisconnectWithWill(expiry)
                });
            }
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
}

/// The Session Expiry Interval a DISCONNECT sets, if it sets one.
fn session_expiry(props: &Properties<'_>) -> Option<u32> {
    props.iter().find_map(|p| match p {
        Property::SessionExpiryInterval(s) => Some(s),
        _ => None,
    })
}
