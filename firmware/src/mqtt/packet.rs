//! The packets and their parse/emit pairs.

use super::list::{SubAckCodes, SubscribeFilters, UnsubscribeFilters};
use super::topic::{valid_topic_filter, valid_topic_name};
use super::wire::{emit_framed, frame, varint_len, Reader, Writer, NAMES};
use super::MqttError;

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_bits(b: u8) -> Option<QoS> {
        match b {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectReturnCode {
    Accepted = 0,
    UnacceptableProtocolVersion = 1,
    IdentifierRejected = 2,
    ServerUnavailable = 3,
    BadUserNameOrPassword = 4,
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    fn from_byte(b: u8) -> Option<Self> {
        use ConnectReturnCode::*;
        Some(match b {
            0 => Accepted,
            1 => UnacceptableProtocolVersion,
            2 => IdentifierRejected,
            3 => ServerUnavailable,
            4 => BadUserNameOrPassword,
            5 => NotAuthorized,
            _ => return None,
        })
    }
}

/// One SUBACK return code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubAckCode {
    Granted(QoS),
    Failure,
}

impl SubAckCode {
    pub(crate) fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x80 => Some(SubAckCode::Failure),
            b => QoS::from_bits(b).map(SubAckCode::Granted),
        }
    }

    fn byte(self) -> u8 {
        match self {
            SubAckCode::Granted(q) => q as u8,
            SubAckCode::Failure => 0x80,
        }
    }
}

/// The will message of a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: QoS,
    pub retain: bool,
}

/// CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_id: &'a str,
    pub will: Option<Will<'a>>,
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
}

/// CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub code: ConnectReturnCode,
}

/// PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: &'a str,
    /// `Some` (non-zero) exactly when `qos` is above 0.
    pub packet_id: Option<u16>,
    pub payload: &'a [u8],
}

/// SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribe<'a> {
    pub packet_id: u16,
    pub filters: SubscribeFilters<'a>,
}

/// SUBACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubAck<'a> {
    pub packet_id: u16,
    pub return_codes: SubAckCodes<'a>,
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    pub packet_id: u16,
    pub filters: UnsubscribeFilters<'a>,
}

/// Any MQTT 3.1.1 control packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    Connect(Connect<'a>),
    ConnAck(ConnAck),
    Publish(Publish<'a>),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe(Subscribe<'a>),
    SubAck(SubAck<'a>),
    Unsubscribe(Unsubscribe<'a>),
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
}

impl<'a> Packet<'a> {
    /// Parses one packet from the front of `buf`.
    ///
    /// `Ok(None)`: `buf` does not yet hold a whole packet. `Ok(Some((packet, consumed)))`
    /// otherwise. A packet larger than `max_packet_size` is refused as soon as its fixed
    /// header is readable.
    pub fn parse(
        buf: &'a [u8],
        max_packet_size: usize,
    ) -> Result<Option<(Packet<'a>, usize)>, MqttError> {
        let Some(framed) = frame(buf, max_packet_size, false)? else {
            return Ok(None);
        };
        let (kind, flags, total) = (framed.kind, framed.flags, framed.total);
        let name = NAMES[usize::from(kind)];
        let mut r = Reader::new(framed.body, name);
        let packet = match kind {
            1 => Packet::Connect(parse_connect(&mut r)?),
            2 => Packet::ConnAck(parse_connack(&mut r)?),
            3 => Packet::Publish(parse_publish(&mut r, flags)?),
            4 => Packet::PubAck(r.packet_id()?),
            5 => Packet::PubRec(r.packet_id()?),
            6 => Packet::PubRel(r.packet_id()?),
            7 => Packet::PubComp(r.packet_id()?),
            8 => Packet::Subscribe(parse_subscribe(&mut r)?),
            9 => Packet::SubAck(parse_suback(&mut r)?),
            10 => Packet::Unsubscribe(parse_unsubscribe(&mut r)?),
            11 => Packet::UnsubAck(r.packet_id()?),
            12 => Packet::PingReq,
            13 => Packet::PingResp,
            _ => Packet::Disconnect,
        };
        r.finish()?;
        Ok(Some((packet, total)))
    }

    /// Exact number of bytes [`Packet::emit`] writes for this packet.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        1 + varint_len(body) + body
    }

    /// Writes the packet into `out` and returns the number of bytes written.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, MqttError> {
        self.check()?;
        emit_framed(out, self.first_byte(), self.body_len(), |w| {
            self.emit_body(w)
        })
    }

    fn first_byte(&self) -> u8 {
        match self {
            Packet::Connect(_) => 0x10,
            Packet::ConnAck(_) => 0x20,
            Packet::Publish(p) => {
                0x30 | u8::from(p.dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain)
            }
            Packet::PubAck(_) => 0x40,
            Packet::PubRec(_) => 0x50,
            Packet::PubRel(_) => 0x62,
            Packet::PubComp(_) => 0x70,
            Packet::Subscribe(_) => 0x82,
            Packet::SubAck(_) => 0x90,
            Packet::Unsubscribe(_) => 0xA2,
            Packet::UnsubAck(_) => 0xB0,
            Packet::PingReq => 0xC0,
            Packet::PingResp => 0xD0,
            Packet::Disconnect => 0xE0,
        }
    }

    /// Rejects values that parse would reject, so nothing malformed is ever sent.
    fn check(&self) -> Result<(), MqttError> {
        let nonzero = |id: u16, packet| {
            if id == 0 {
                Err(MqttError::ZeroPacketId { packet })
            } else {
                Ok(())
            }
        };
        match self {
            Packet::Connect(c) => {
                if c.client_id.contains('\0') {
                    return Err(MqttError::BadString {
                        packet: "CONNECT",
                        field: "client id",
                    });
                }
                if c.password.is_some() && c.username.is_none() {
                    return Err(MqttError::BadConnectFlags("password without user name"));
                }
                if let Some(w) = &c.will {
                    if !valid_topic_name(w.topic) {
                        return Err(MqttError::BadTopicName { packet: "CONNECT" });
                    }
                }
                Ok(())
            }
            Packet::Publish(p) => {
                if !valid_topic_name(p.topic) {
                    return Err(MqttError::BadTopicName { packet: "PUBLISH" });
                }
                match (p.qos, p.packet_id) {
                    (QoS::AtMostOnce, None) if !p.dup => Ok(()),
                    (QoS::AtMostOnce, None) => Err(MqttError::BadFlags {
                        packet: "PUBLISH",
                        flags: 0b1000,
                    }),
                    (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => nonzero(id, "PUBLISH"),
                    _ => Err(MqttError::PacketIdMismatch),
                }
            }
            Packet::PubAck(id)
            | Packet::PubRec(id)
            | Packet::PubRel(id)
            | Packet::PubComp(id)
            | Packet::UnsubAck(id) => nonzero(*id, "acknowledgement"),
            Packet::Subscribe(s) => {
                nonzero(s.packet_id, "SUBSCRIBE")?;
                if s.filters.is_empty() {
                    return Err(MqttError::EmptyList {
                        packet: "SUBSCRIBE",
                    });
                }
                match s.filters.iter().position(|(f, _)| !valid_topic_filter(f)) {
                    Some(i) => Err(MqttError::BadTopicFilter {
                        packet: "SUBSCRIBE",
                        index: i + 1,
                    }),
                    None => Ok(()),
                }
            }
            Packet::SubAck(a) => {
                nonzero(a.packet_id, "SUBACK")?;
                if a.return_codes.is_empty() {
                    return Err(MqttError::EmptyList { packet: "SUBACK" });
                }
                Ok(())
            }
            Packet::Unsubscribe(u) => {
                nonzero(u.packet_id, "UNSUBSCRIBE")?;
                if u.filters.is_empty() {
                    return Err(MqttError::EmptyList {
                        packet: "UNSUBSCRIBE",
                    });
                }
                match u.filters.iter().position(|f| !valid_topic_filter(f)) {
                    Some(i) => Err(MqttError::BadTopicFilter {
                        packet: "UNSUBSCRIBE",
                        index: i + 1,
                    }),
                    None => Ok(()),
                }
            }
            Packet::ConnAck(_) | Packet::PingReq | Packet::PingResp | Packet::Disconnect => Ok(()),
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Packet::Connect(c) => {
                let mut n = 2 + 4 + 1 + 1 + 2 + 2 + c.client_id.len();
                if let Some(w) = &c.will {
                    n += 2 + w.topic.len() + 2 + w.payload.len();
                }
                n += c.username.map_or(0, |u| 2 + u.len());
                n + c.password.map_or(0, |p| 2 + p.len())
            }
            Packet::ConnAck(_) => 2,
            Packet::Publish(p) => {
                2 + p.topic.len() + usize::from(p.packet_id.is_some()) * 2 + p.payload.len()
            }
            Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::UnsubAck(_) => 2,
            Packet::Subscribe(s) => {
                2 + s
                    .filters
                    .iter()
                    .map(|(f, _)| 2 + f.len() + 1)
                    .sum::<usize>()
            }
            Packet::SubAck(a) => 2 + a.return_codes.len(),
            Packet::Unsubscribe(u) => 2 + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>(),
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
        }
    }

    fn emit_body(&self, w: &mut Writer<'_>) -> Result<(), MqttError> {
        match self {
            Packet::Connect(c) => {
                w.string("MQTT", "protocol name")?;
                w.u8(4)?;
                let mut flags = u8::from(c.clean_session) << 1;
                if let Some(will) = &c.will {
                    flags |= 0b100 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
                }
                flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
                w.u8(flags)?;
                w.u16(c.keep_alive)?;
                w.string(c.client_id, "client id")?;
                if let Some(will) = &c.will {
                    w.string(will.topic, "will topic")?;
                    w.binary(will.payload, "will payload")?;
                }
                if let Some(u) = c.username {
                    w.string(u, "user name")?;
                }
                if let Some(p) = c.password {
                    w.binary(p, "password")?;
                }
                Ok(())
            }
            Packet::ConnAck(a) => {
                w.u8(u8::from(a.session_present))?;
                w.u8(a.code as u8)
            }
            Packet::Publish(p) => {
                w.string(p.topic, "topic")?;
                if let Some(id) = p.packet_id {
                    w.u16(id)?;
                }
                w.bytes(p.payload)
            }
            Packet::PubAck(id)
            | Packet::PubRec(id)
            | Packet::PubRel(id)
            | Packet::PubComp(id)
            | Packet::UnsubAck(id) => w.u16(*id),
            Packet::Subscribe(s) => {
                w.u16(s.packet_id)?;
                for (f, q) in s.filters.iter() {
                    w.string(f, "topic filter")?;
                    w.u8(q as u8)?;
                }
                Ok(())
            }
            Packet::SubAck(a) => {
                w.u16(a.packet_id)?;
                for c in a.return_codes.iter() {
                    w.u8(c.byte())?;
                }
                Ok(())
            }
            Packet::Unsubscribe(u) => {
                w.u16(u.packet_id)?;
                for f in u.filters.iter() {
                    w.string(f, "topic filter")?;
                }
                Ok(())
            }
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => Ok(()),
        }
    }
}

fn parse_connect<'a>(r: &mut Reader<'a>) -> Result<Connect<'a>, MqttError> {
    let name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    match (name, level) {
        ("MQTT", 4) | ("MQIsdp", 3) => {}
        ("MQTT", l) | ("MQIsdp", l) => return Err(MqttError::UnsupportedProtocolLevel(l)),
        _ => return Err(MqttError::BadProtocolName),
    }
    let flags = r.u8("connect flags")?;
    if flags & 1 != 0 {
        return Err(MqttError::BadConnectFlags("reserved flag is set"));
    }
    let will_flag = flags & 0b100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b10_0000 != 0;
    let has_password = flags & 0b100_0000 != 0;
    let has_username = flags & 0b1000_0000 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(MqttError::BadConnectFlags(
            "will QoS or retain set without a will",
        ));
    }
    if has_password && !has_username {
        return Err(MqttError::BadConnectFlags("password without user name"));
    }
    let keep_alive = r.u16("keep alive")?;
    let client_id = r.string("client id")?;
    let will = if will_flag {
        let qos = QoS::from_bits(will_qos).ok_or(MqttError::BadQoS { packet: "CONNECT" })?;
        let topic = r.string("will topic")?;
        if !valid_topic_name(topic) {
            return Err(MqttError::BadTopicName { packet: "CONNECT" });
        }
        Some(Will {
            topic,
            payload: r.binary("will payload")?,
            qos,
            retain: will_retain,
        })
    } else {
        None
    };
    let username = if has_username {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if has_password {
        Some(r.binary("password")?)
    } else {
        None
    };
    Ok(Connect {
        clean_session: flags & 0b10 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn parse_connack(r: &mut Reader<'_>) -> Result<ConnAck, MqttError> {
    let flags = r.u8("acknowledge flags")?;
    if flags & 0xFE != 0 {
        return Err(MqttError::BadConnAck("reserved flags are set"));
    }
    let code = ConnectReturnCode::from_byte(r.u8("return code")?)
        .ok_or(MqttError::BadConnAck("unknown return code"))?;
    if code != ConnectReturnCode::Accepted && flags != 0 {
        return Err(MqttError::BadConnAck("session present on a refusal"));
    }
    Ok(ConnAck {
        session_present: flags == 1,
        code,
    })
}

fn parse_publish<'a>(r: &mut Reader<'a>, flags: u8) -> Result<Publish<'a>, MqttError> {
    let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(MqttError::BadQoS { packet: "PUBLISH" })?;
    let dup = flags & 0b1000 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(MqttError::BadFlags {
            packet: "PUBLISH",
            flags,
        });
    }
    let topic = r.string("topic")?;
    if !valid_topic_name(topic) {
        return Err(MqttError::BadTopicName { packet: "PUBLISH" });
    }
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(r.packet_id()?)
    };
    Ok(Publish {
        dup,
        qos,
        retain: flags & 1 != 0,
        topic,
        packet_id,
        payload: r.rest(),
    })
}

fn parse_subscribe<'a>(r: &mut Reader<'a>) -> Result<Subscribe<'a>, MqttError> {
    let packet_id = r.packet_id()?;
    let list = r.rest();
    let mut items = Reader::new(list, "SUBSCRIBE");
    let mut index = 0;
    while !items.is_empty() {
        index += 1;
        let filter = items.string("topic filter")?;
        if !valid_topic_filter(filter) {
            return Err(MqttError::BadTopicFilter {
                packet: "SUBSCRIBE",
                index,
            });
        }
        let options = items.u8("requested QoS")?;
        if options & 0xFC != 0 {
            return Err(MqttError::BadSubscriptionOptions { index });
        }
        QoS::from_bits(options).ok_or(MqttError::BadQoS {
            packet: "SUBSCRIBE",
        })?;
    }
    if index == 0 {
        return Err(MqttError::EmptyList {
            packet: "SUBSCRIBE",
        });
    }
    Ok(Subscribe {
        packet_id,
        filters: SubscribeFilters::from_wire(list),
    })
}

fn parse_suback<'a>(r: &mut Reader<'a>) -> Result<SubAck<'a>, MqttError> {
    let packet_id = r.packet_id()?;
    let codes = r.rest();
    if codes.is_empty() {
        return Err(MqttError::EmptyList { packet: "SUBACK" });
    }
    if let Some(&bad) = codes.iter().find(|&&c| SubAckCode::from_byte(c).is_none()) {
        return Err(MqttError::BadSubAckCode(bad));
    }
    Ok(SubAck {
        packet_id,
        return_codes: SubAckCodes::from_wire(codes),
    })
}

fn parse_unsubscribe<'a>(r: &mut Reader<'a>) -> Result<Unsubscribe<'a>, MqttError> {
    let packet_id = r.packet_id()?;
    let list = r.rest();
    let mut items = Reader::new(list, "UNSUBSCRIBE");
    let mut index = 0;
    while !items.is_empty() {
        index += 1;
        if !valid_topic_filter(items.string("topic filter")?) {
            return Err(MqttError::BadTopicFilter {
                packet: "UNSUBSCRIBE",
                index,
            });
        }
    }
    if index == 0 {
        return Err(MqttError::EmptyList {
            packet: "UNSUBSCRIBE",
        });
    }
    Ok(Unsubscribe {
        packet_id,
        filters: UnsubscribeFilters::from_wire(list),
    })
}
