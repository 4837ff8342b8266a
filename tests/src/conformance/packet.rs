//! The packets of the conformance suite's client: its own plain types (a message, CONNECT
//! options, a SUBSCRIBE filter) and their mapping to and from rumqttc's `mqttbytes` (v4 =
//! 3.1.1, v5), whose reason enums do not carry the spec's bytes.

use std::fmt;

use bytes::Bytes;
use rumqttc::mqttbytes::{v4, QoS as QoS4};
use rumqttc::v5::mqttbytes::{v5, QoS as QoS5};

/// The protocol level of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.
    V5,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V4 => "3.1.1",
            Version::V5 => "5",
        })
    }
}

/// A packet as rumqttc decoded it.
// A test client holds a few packets at a time; boxing the version 5 one would only make
// every match on it longer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pkt {
    V4(v4::Packet),
    V5(v5::Packet),
}

/// An application message as it was on the wire (either version).
#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub dup: bool,
    pub retain: bool,
    /// 0 when the packet has no packet identifier (QoS 0).
    pub pkid: u16,
}

impl Msg {
    /// A fresh (DUP=0, RETAIN=0) message.
    pub fn new(topic: &str, payload: &str, qos: u8, pkid: u16) -> Msg {
        Msg {
            topic: topic.to_owned(),
            payload: payload.as_bytes().to_vec(),
            qos,
            dup: false,
            retain: false,
            pkid,
        }
    }

    pub fn retained(mut self) -> Msg {
        self.retain = true;
        self
    }

    pub fn dup(mut self) -> Msg {
        self.dup = true;
        self
    }

    /// Asserts this is `want` in every field but the packet id's value, which must be absent
    /// (0) exactly when the QoS is 0 [MQTT-2.3.1-1, 2.3.1-5 (3.1.1) / 2.2.1-2 (5)].
    pub fn check(&self, want: &Msg, what: &str) {
        let same_id = Msg {
            pkid: self.pkid,
            ..want.clone()
        };
        assert_eq!(self, &same_id, "{what}: got {self:?}, want {want:?}");
        assert_eq!(
            self.pkid == 0,
            self.qos == 0,
            "{what}: packet id {} at QoS {}",
            self.pkid,
            self.qos
        );
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// The payload as text (every payload in the suite is), for readable failures.
impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Msg")
            .field("topic", &self.topic)
            .field("payload", &self.text())
            .field("qos", &self.qos)
            .field("dup", &self.dup)
            .field("retain", &self.retain)
            .field("pkid", &self.pkid)
            .finish()
    }
}

impl Pkt {
    /// The message, if this is a PUBLISH.
    pub fn publish(&self) -> Option<Msg> {
        match self {
            Pkt::V4(v4::Packet::Publish(p)) => Some(Msg {
                topic: p.topic.clone(),
                payload: p.payload.to_vec(),
                qos: p.qos as u8,
                dup: p.dup,
                retain: p.retain,
                pkid: p.pkid,
            }),
            Pkt::V5(v5::Packet::Publish(p)) => Some(Msg {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload.to_vec(),
                qos: p.qos as u8,
                dup: p.dup,
                retain: p.retain,
                pkid: p.pkid,
            }),
            _ => None,
        }
    }
}

/// A will message.
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: String,
    pub payload: String,
    pub qos: u8,
    pub retain: bool,
    /// Will Delay Interval in seconds (version 5 only).
    pub delay: Option<u32>,
}

/// What a CONNECT asks for; `Options::default()` is a clean session without a will.
#[derive(Debug, Clone)]
pub struct Options {
    /// The client id to send; `None` sends the identity's name (its certificate CN).
    pub client_id: Option<String>,
    /// CleanSession (3.1.1) / Clean Start (5).
    pub clean: bool,
    /// Session Expiry Interval (5).
    pub session_expiry: Option<u32>,
    /// Receive Maximum (5).
    pub receive_maximum: Option<u16>,
    pub will: Option<Will>,
    pub keep_alive: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            client_id: None,
            clean: true,
            session_expiry: None,
            receive_maximum: None,
            will: None,
            keep_alive: 60,
        }
    }
}

/// The CONNACK: session present and the return (3.1.1) or reason (5) code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: u8,
}

/// One SUBSCRIBE filter with its options (the version 5 ones are ignored in 3.1.1).
#[derive(Debug, Clone)]
pub struct Sub {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// Retain Handling: 0 send retained, 1 only if the subscription is new, 2 never.
    pub retain_handling: u8,
}

impl Sub {
    pub fn new(filter: &str, qos: u8) -> Sub {
        Sub {
            filter: filter.to_owned(),
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
        }
    }
}

pub(super) fn qos4(q: u8) -> QoS4 {
    match q {
        0 => QoS4::AtMostOnce,
        1 => QoS4::AtLeastOnce,
        _ => QoS4::ExactlyOnce,
    }
}

pub(super) fn qos5(q: u8) -> QoS5 {
    match q {
        0 => QoS5::AtMostOnce,
        1 => QoS5::AtLeastOnce,
        _ => QoS5::ExactlyOnce,
    }
}

pub(super) fn connect4(id: &str, o: &Options) -> v4::Connect {
    let mut c = v4::Connect::new(id);
    c.clean_session = o.clean;
    c.keep_alive = o.keep_alive;
    c.last_will = o.will.as_ref().map(|w| v4::LastWill {
        topic: w.topic.clone(),
        message: Bytes::from(w.payload.clone().into_bytes()),
        qos: qos4(w.qos),
        retain: w.retain,
    });
    c
}

pub(super) fn connect5(id: &str, o: &Options) -> (v5::Connect, Option<v5::LastWill>) {
    let properties = (o.session_expiry.is_some() || o.receive_maximum.is_some()).then(|| {
        v5::ConnectProperties {
            session_expiry_interval: o.session_expiry,
            receive_maximum: o.receive_maximum,
            max_packet_size: None,
            topic_alias_max: None,
            request_response_info: None,
            request_problem_info: None,
            user_properties: Vec::new(),
            authentication_method: None,
            authentication_data: None,
        }
    });
    let c = v5::Connect {
        keep_alive: o.keep_alive,
        client_id: id.to_owned(),
        clean_start: o.clean,
        properties,
    };
    let will = o.will.as_ref().map(|w| {
        let properties = w.delay.map(|d| v5::LastWillProperties {
            delay_interval: Some(d),
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_properties: Vec::new(),
        });
        v5::LastWill::new(
            w.topic.clone(),
            w.payload.clone(),
            qos5(w.qos),
            w.retain,
            properties,
        )
    });
    (c, will)
}

pub(super) fn filter5(s: &Sub) -> v5::Filter {
    let mut f = v5::Filter::new(s.filter.clone(), qos5(s.qos));
    f.nolocal = s.no_local;
    f.preserve_retain = s.retain_as_published;
    f.retain_forward_rule = match s.retain_handling {
        0 => v5::RetainForwardRule::OnEverySubscribe,
        1 => v5::RetainForwardRule::OnNewSubscribe,
        _ => v5::RetainForwardRule::Never,
    };
    f
}

/// The kinds of acknowledgement of a QoS 1/2 flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

/// A predicate for `next_where`: an acknowledgement of this kind.
pub fn is_ack(kind: Ack) -> impl Fn(&Pkt) -> bool {
    move |p| ack_kind(p) == Some(kind)
}

pub fn ack_kind(p: &Pkt) -> Option<Ack> {
    Some(match p {
        Pkt::V4(v4::Packet::PubAck(_)) | Pkt::V5(v5::Packet::PubAck(_)) => Ack::PubAck,
        Pkt::V4(v4::Packet::PubRec(_)) | Pkt::V5(v5::Packet::PubRec(_)) => Ack::PubRec,
        Pkt::V4(v4::Packet::PubRel(_)) | Pkt::V5(v5::Packet::PubRel(_)) => Ack::PubRel,
        Pkt::V4(v4::Packet::PubComp(_)) | Pkt::V5(v5::Packet::PubComp(_)) => Ack::PubComp,
        _ => return None,
    })
}

/// (packet id, success) of an acknowledgement; success is a reason below 0x80 (always in
/// 3.1.1). rumqttc's reason enums do not carry the spec's bytes, hence the match.
pub fn ack_fields(p: &Pkt) -> Option<(u16, bool)> {
    use v5::{PubAckReason as A, PubCompReason as C, PubRecReason as R, PubRelReason as L};
    Some(match p {
        Pkt::V4(v4::Packet::PubAck(a)) => (a.pkid, true),
        Pkt::V4(v4::Packet::PubRec(a)) => (a.pkid, true),
        Pkt::V4(v4::Packet::PubRel(a)) => (a.pkid, true),
        Pkt::V4(v4::Packet::PubComp(a)) => (a.pkid, true),
        Pkt::V5(v5::Packet::PubAck(a)) => (
            a.pkid,
            matches!(a.reason, A::Success | A::NoMatchingSubscribers),
        ),
        Pkt::V5(v5::Packet::PubRec(a)) => (
            a.pkid,
            matches!(a.reason, R::Success | R::NoMatchingSubscribers),
        ),
        Pkt::V5(v5::Packet::PubRel(a)) => (a.pkid, a.reason == L::Success),
        Pkt::V5(v5::Packet::PubComp(a)) => (a.pkid, a.reason == C::Success),
        _ => return None,
    })
}

/// The reason code of a version 5 DISCONNECT.
pub fn disconnect_reason(p: &Pkt) -> Option<u8> {
    match p {
        Pkt::V5(v5::Packet::Disconnect(d)) => Some(d.reason_code as u8),
        _ => None,
    }
}

pub(super) fn suback4(c: &v4::SubscribeReasonCode) -> u8 {
    match c {
        v4::SubscribeReasonCode::Success(q) => *q as u8,
        v4::SubscribeReasonCode::Failure => 0x80,
    }
}

pub(super) fn suback5(c: &v5::SubscribeReasonCode) -> u8 {
    use v5::SubscribeReasonCode as C;
    match c {
        C::Success(q) => *q as u8,
        C::Failure | C::Unspecified => 0x80,
        C::ImplementationSpecific => 0x83,
        C::NotAuthorized => 0x87,
        C::TopicFilterInvalid => 0x8F,
        C::PkidInUse => 0x91,
        C::QuotaExceeded => 0x97,
        C::SharedSubscriptionsNotSupported => 0x9E,
        C::SubscriptionIdNotSupported => 0xA1,
        C::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

pub(super) fn unsuback5(r: v5::UnsubAckReason) -> u8 {
    use v5::UnsubAckReason as R;
    match r {
        R::Success => 0x00,
        R::NoSubscriptionExisted => 0x11,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicFilterInvalid => 0x8F,
        R::PacketIdentifierInUse => 0x91,
    }
}

/// The spec's byte for a version 5 CONNACK reason (rumqttc decodes them to an enum).
pub(super) fn connack_reason5(c: v5::ConnectReturnCode) -> u8 {
    use v5::ConnectReturnCode as C;
    match c {
        C::Success => 0x00,
        C::RefusedProtocolVersion => 0x01,
        C::BadClientId => 0x02,
        C::ServiceUnavailable => 0x03,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::UnsupportedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8A,
        C::BadAuthenticationMethod => 0x8C,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9A,
        C::QoSNotSupported => 0x9B,
        C::UseAnotherServer => 0x9C,
        C::ServerMoved => 0x9D,
        C::ConnectionRateExceeded => 0x9F,
    }
}
