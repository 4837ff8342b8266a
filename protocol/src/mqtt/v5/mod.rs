//! MQTT 5.0 framing, as a layer over the 3.1.1 packet views.
//!
//! Version 5 keeps the 3.1.1 packets and adds reason codes, properties and AUTH. [`Packet5`]
//! carries the 3.1.1 view of each packet ([`Connect`], [`Publish`], [`Subscribe`], …) plus what
//! version 5 added, so logic written against the 3.1.1 views (the gateway's session) serves
//! both versions. Like [`Packet::parse`](super::Packet::parse), [`Packet5::parse`] borrows,
//! allocates nothing and refuses everything the specification calls malformed: unknown
//! properties, a property in a packet that may not carry it, a duplicate, an out-of-range
//! value, a reason code the packet does not define.
//!
//! What the wire shares with 3.1.1 (fixed header, strings, packet ids, CONNECT's flags, will
//! and credentials, PUBLISH's flags and topic, the filter lists) is read and written by the
//! 3.1.1 code (`mqtt::shared`); this layer adds [`properties`](Property), [`reason`] codes and
//! the packets' version 5 shapes (`packets`: parse, `emit`: emit).
//!
//! The device client speaks 3.1.1 only (smaller); nothing here is linked into a firmware image
//! that does not call it.

mod emit;
mod packets;
mod properties;
pub mod reason;

pub use properties::{Context, Properties, Property};

use super::packet::{Connect, Publish, Subscribe, Unsubscribe};

/// CONNECT (level 5): the 3.1.1 view plus the connection's and the will's properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect5<'a> {
    /// `clean_session` holds the Clean Start flag.
    pub connect: Connect<'a>,
    pub properties: Properties<'a>,
    /// Empty when there is no will.
    pub will_properties: Properties<'a>,
}

/// CONNACK (version 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck5<'a> {
    pub session_present: bool,
    pub reason: u8,
    pub properties: Properties<'a>,
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (version 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack5<'a> {
    pub packet_id: u16,
    pub reason: u8,
    pub properties: Properties<'a>,
}

impl Ack5<'_> {
    /// A plain success acknowledgement.
    pub fn success(packet_id: u16) -> Ack5<'static> {
        Ack5 {
            packet_id,
            reason: reason::SUCCESS,
            properties: Properties::EMPTY,
        }
    }
}

/// SUBACK or UNSUBACK (version 5): one reason code per filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonList<'a> {
    pub packet_id: u16,
    pub properties: Properties<'a>,
    pub reasons: &'a [u8],
}

/// DISCONNECT or AUTH (version 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reason5<'a> {
    pub reason: u8,
    pub properties: Properties<'a>,
}

/// Any MQTT 5 control packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet5<'a> {
    Connect(Connect5<'a>),
    ConnAck(ConnAck5<'a>),
    Publish(Publish<'a>, Properties<'a>),
    PubAck(Ack5<'a>),
    PubRec(Ack5<'a>),
    PubRel(Ack5<'a>),
    PubComp(Ack5<'a>),
    /// The 3.1.1 view masks each filter's options to its QoS; the full options byte is in
    /// [`SubscribeFilters::iter_options`](crate::mqtt::SubscribeFilters::iter_options).
    Subscribe(Subscribe<'a>, Properties<'a>),
    SubAck(ReasonList<'a>),
    Unsubscribe(Unsubscribe<'a>, Properties<'a>),
    UnsubAck(ReasonList<'a>),
    PingReq,
    PingResp,
    Disconnect(Reason5<'a>),
    Auth(Reason5<'a>),
}

/// Subscription option bits of version 5 (§3.8.3.1) above the QoS.
pub mod options {
    pub const NO_LOCAL: u8 = 0b0000_0100;
    pub const RETAIN_AS_PUBLISHED: u8 = 0b0000_1000;
    /// Retain handling: 0 send on subscribe, 1 only on a new subscription, 2 never.
    pub const RETAIN_HANDLING_SHIFT: u8 = 4;
}

#[cfg(test)]
mod tests;
