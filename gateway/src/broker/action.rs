//! What the broker asks of its caller (send, close) and what it counts (drops).

use std::sync::Arc;

use fleet_protocol::mqtt::{v5::Property, Publish, QoS};

use super::message::Message;

/// A network connection, named by the caller: unique for as long as the broker lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// One PUBLISH to a subscriber. The message is shared; only what differs per delivery is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(message QoS, granted QoS) [MQTT-3.8.4-6].
    pub qos: QoS,
    /// Set on every resend of a PUBLISH already sent [MQTT-3.3.1-1].
    pub dup: bool,
    pub retain: bool,
    /// `Some` exactly when `qos` is above 0.
    pub packet_id: Option<u16>,
    /// The identifiers of every subscription of this session the message matched.
    pub subscription_ids: Box<[u32]>,
    /// What is left of the Message Expiry Interval [MQTT-3.3.2-6].
    pub message_expiry: Option<u32>,
}

impl Delivery {
    /// The PUBLISH view the codec encodes.
    pub fn publish(&self) -> Publish<'_> {
        Publish {
            dup: self.dup,
            qos: self.qos,
            retain: self.retain,
            topic: &self.message.topic,
            packet_id: self.packet_id,
            payload: &self.message.payload,
        }
    }

    /// The version 5 properties of this PUBLISH: the message's own, the remaining expiry
    /// and the subscription identifiers.
    pub fn properties(&self) -> Vec<Property<'_>> {
        let mut out = Vec::new();
        if let Some(p) = &self.message.properties {
            p.push_to(&mut out);
        }
        if let Some(s) = self.message_expiry {
            out.push(Property::MessageExpiryInterval(s));
        }
        out.extend(
            self.subscription_ids
                .iter()
                .map(|&id| Property::SubscriptionIdentifier(id)),
        );
        out
    }
}

/// A packet for one client. Reasons are version 5 reason codes; a 3.1.1 shell drops them,
/// and closes the connection on an acknowledgement with a failure reason (0x80 or above),
/// since 3.1.1 has no negative acknowledgement and the client must resend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Publish(Delivery),
    PubAck { packet_id: u16, reason: u8 },
    PubRec { packet_id: u16, reason: u8 },
    PubRel { packet_id: u16, reason: u8 },
    PubComp { packet_id: u16, reason: u8 },
}

/// Why messages did not reach a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The session's queue was full (see [`super::Overflow`]).
    QueueFull,
    /// The Message Expiry Interval passed before delivery started [MQTT-3.3.2-5].
    Expired,
    /// The session's delivery filter refused it (e.g. the ACL, for a wildcard subscription
    /// that overlaps a denied topic).
    Denied,
    /// The session ended with these messages queued or unacknowledged.
    SessionEnded,
    /// A retained message was not stored: the retained store is full (live delivery still
    /// happened).
    RetainedStoreFull,
}

impl DropReason {
    /// Stable label for metrics.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::Denied => "denied",
            DropReason::SessionEnded => "session_ended",
            DropReason::RetainedStoreFull => "retained_store_full",
        }
    }
}

/// A decision for the caller, in the order they must be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write this packet to the connection.
    Send { conn: ConnId, packet: Outgoing },
    /// Close the connection; a version 5 client is sent DISCONNECT with `reason` first. The
    /// broker has already ended its side: calls with that connection's handle do nothing.
    Close { conn: ConnId, reason: u8 },
    /// Messages not delivered, for metrics and logs (the client id, when one is concerned).
    Dropped {
        client_id: Option<Arc<str>>,
        reason: DropReason,
        messages: u32,
    },
}

/// Running totals of what the broker dropped and ended, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub queue_full: u64,
    pub expired: u64,
    pub denied: u64,
    pub session_ended: u64,
    pub retained_refused: u64,
    /// Connections closed, or offline sessions ended, by [`super::Overflow::Disconnect`].
    pub overflow_disconnects: u64,
    pub sessions_expired: u64,
    pub sessions_taken_over: u64,
    pub wills_published: u64,
}

impl Stats {
    /// Counts a drop and reports it (nothing for zero messages).
    pub(super) fn count_drop(
        &mut self,
        actions: &mut Vec<Action>,
        client_id: Option<&Arc<str>>,
        reason: DropReason,
        messages: u32,
    ) {
        if messages == 0 {
            return;
        }
        let total = match reason {
            DropReason::QueueFull => &mut self.queue_full,
            DropReason::Expired => &mut self.expired,
            DropReason::Denied => &mut self.denied,
            DropReason::SessionEnded => &mut self.session_ended,
            DropReason::RetainedStoreFull => &mut self.retained_refused,
        };
        *total += u64::from(messages);
        actions.push(Action::Dropped {
            client_id: client_id.cloned(),
            reason,
            messages,
        });
    }
}
