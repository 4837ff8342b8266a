//! The packets and their parse/emit pairs.

use super::list::{SubAckCodes, SubscribeFilters, UnsubscribeFilters};
use super::shared::{
    nonzero, publish_flags, read_connack_flags, read_credentials, read_protocol, read_publish_id,
    read_subscriptions, read_unsubscriptions, read_will, session_present, ConnectFlags, Level,
};
use super::topic::valid_topic_name;
use super::wire::{emit_framed, frame, varint_len, Reader, NAMES};
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
        let mut r = Reader::new(framed.body, NAMES[usize::from(kind)]);
        let packet = match from_server(kind, flags, &mut r)? {
            Some(packet) => packet,
            None => match kind {
                1 => Packet::Connect(parse_connect(&mut r)?),
                8 => Packet::Subscribe(parse_subscribe(&mut r)?),
                10 => Packet::Unsubscribe(parse_unsubscribe(&mut r)?),
                12 => Packet::PingReq,
                _ => Packet::Disconnect,
            },
        };
        r.finish()?;
        Ok(Some((packet, total)))
    }

    /// Parses one packet as a client receives it: like [`Packet::parse`], but the packets
    /// only clients send (CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT) are refused
    /// with [`MqttError::ClientOnly`]. The device parses with this, so its image carries no
    /// decoder for them.
    pub fn parse_from_server(
        buf: &'a [u8],
        max_packet_size: usize,
    ) -> Result<Option<(Packet<'a>, usize)>, MqttError> {
        let Some(framed) = frame(buf, max_packet_size, false)? else {
            return Ok(None);
        };
        let packet = NAMES[usize::from(framed.kind)];
        let mut r = Reader::new(framed.body, packet);
        let parsed = from_server(framed.kind, framed.flags, &mut r)?;
        let parsed = parsed.ok_or(MqttError::ClientOnly { packet })?;
        r.finish()?;
        Ok(Some((parsed, framed.total)))
    }

    /// Exact number of bytes [`Packet::emit`] writes for this packet.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        1 + varint_len(body) + body
    }

    /// Writes the packet into `out` and returns the number of bytes written. Values that
    /// [`Packet::parse`] would refuse are refused here, so nothing malformed is ever sent.
    ///
    /// Each packet type also writes itself ([`Emit`]): code that knows what it sends (the
    /// device) then carries only those types' encoders.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, MqttError> {
        match self {
            Packet::Connect(c) => c.emit(out),
            Packet::ConnAck(a) => a.emit(out),
            Packet::Publish(p) => p.emit(out),
            Packet::PubAck(id) => Control::PubAck(*id).emit(out),
            Packet::PubRec(id) => Control::PubRec(*id).emit(out),
            Packet::PubRel(id) => Control::PubRel(*id).emit(out),
            Packet::PubComp(id) => Control::PubComp(*id).emit(out),
            Packet::Subscribe(s) => s.emit(out),
            Packet::SubAck(a) => a.emit(out),
            Packet::Unsubscribe(u) => u.emit(out),
            Packet::UnsubAck(id) => Control::UnsubAck(*id).emit(out),
            Packet::PingReq => Control::PingReq.emit(out),
            Packet::PingResp => Control::PingResp.emit(out),
            Packet::Disconnect => Control::Disconnect.emit(out),
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Packet::Connect(c) => c.body_len(),
            Packet::ConnAck(_) => 2,
            Packet::Publish(p) => p.body_len(),
            Packet::Subscribe(s) => 2 + s.filters_len(),
            Packet::SubAck(a) => a.body_len(),
            Packet::Unsubscribe(u) => 2 + u.filters_len(),
            Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::UnsubAck(_) => 2,
            Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
        }
    }
}

/// A packet that writes itself into a buffer and returns the number of bytes written.
pub trait Emit {
    fn emit(&self, out: &mut [u8]) -> Result<usize, MqttError>;
}

impl Emit for Packet<'_> {
    fn emit(&self, out: &mut [u8]) -> Result<usize, MqttError> {
        Packet::emit(self, out)
    }
}

/// The packets that are a type and at most a packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    UnsubAck(u16),
    PingReq,
    PingResp,
    Disconnect,
}

impl Emit for Control {
    fn emit(&self, out: &mut [u8]) -> Result<usize, MqttError> {
        let (first_byte, id) = match *self {
            Control::PubAck(id) => (0x40, Some(id)),
            Control::PubRec(id) => (0x50, Some(id)),
            Control::PubRel(id) => (0x62, Some(id)),
            Control::PubComp(id) => (0x70, Some(id)),
            Control::UnsubAck(id) => (0xB0, Some(id)),
            Control::PingReq => (0xC0, None),
            Control::PingResp => (0xD0, None),
            Control::Disconnect => (0xE0, None),
        };
        match id {
            Some(id) => {
                nonzero(id, "acknowledgement")?;
                emit_framed(out, first_byte, 2, |w| w.u16(id))
            }
            None => emit_framed(out, first_byte, 0, |_| Ok(())),
        }
    }
}

impl Emit for Connect<'_> {
    fn emit(&self, out: &mut [u8]) -> Result<usize, MqttError> {
        self.check()?;
        if self.password.is_some() && self.username.is_none() {
            return Err(MqttError::BadConnectFlags("password without user name"));
        }
        emit_framed(out, 0x10, self.body_len(), |w| {
            self.write_body(w, 4, |_| Ok(()), |_| Ok(()))
        })
    }
}

impl Emit for ConnAck {
    fn emit(&self, out: &mut [u8]) -> Result<usize, MqttError> {
        emit_framed(out, 0x20, 2, |w| {
            w.u8(u8::from(self.session_present))?;
            w.u8(self.code as u8)
        })
    }
}

impl Emit for Publish<'_> {
    fn emit(&self, out: &mut [u8]) -> Result<usize, MqttError> {
        self.check(false)?;
        emit_framed(out, self.first_byte(), self.body_len(), |w| {
            self.write_body(w, |_| Ok(()))
        })
    }
}

impl Emit for Subscribe<'_> {
    fn emit(&self, out: &mut [u8]) -> Result<usize, MqttError> {
        self.check()?;
        emit_framed(out, 0x82, 2 + self.filters_len(), |w| {
            w.u16(self.packet_id)?;
            for (f, q) in self.filters.iter() {
                w.string(f, "topic filter")?;
                w.u8(q as u8)?;
            }
            Ok(())
        })
    }
}

impl SubAck<'_> {
    fn body_len(&self) -> usize {
        2 + self.return_codes.len()
    }
}

impl Emit for SubAck<'_> {
    fn emit(&self, out: &mut [u8]) -> Result<usize, MqttError> {
        nonzero(self.packet_id, "SUBACK")?;
        if self.return_codes.is_empty() {
            return Err(MqttError::EmptyList { packet: "SUBACK" });
        }
        emit_framed(out, 0x90, self.body_len(), |w| {
            w.u16(self.packet_id)?;
            for c in self.return_codes.iter() {
                w.u8(c.byte())?;
            }
            Ok(())
        })
    }
}

impl Emit for Unsubscribe<'_> {
    fn emit(&self, out: &mut [u8]) -> Result<usize, MqttError> {
        self.check()?;
        emit_framed(out, 0xA2, 2 + self.filters_len(), |w| {
            w.u16(self.packet_id)?;
            self.write_filters(w)
        })
    }
}

/// The body of a packet type a server sends (`None` for the types only clients send).
fn from_server<'a>(
    kind: u8,
    flags: u8,
    r: &mut Reader<'a>,
) -> Result<Option<Packet<'a>>, MqttError> {
    Ok(Some(match kind {
        2 => Packet::ConnAck(parse_connack(r)?),
        3 => Packet::Publish(parse_publish(r, flags)?),
        4 => Packet::PubAck(r.packet_id()?),
        5 => Packet::PubRec(r.packet_id()?),
        6 => Packet::PubRel(r.packet_id()?),
        7 => Packet::PubComp(r.packet_id()?),
        9 => Packet::SubAck(parse_suback(r)?),
        11 => Packet::UnsubAck(r.packet_id()?),
        13 => Packet::PingResp,
        _ => return Ok(None),
    }))
}

fn parse_connect<'a>(r: &mut Reader<'a>) -> Result<Connect<'a>, MqttError> {
    read_protocol(r, Level::V311)?;
    let flags = ConnectFlags::read(r)?;
    if flags.password_without_username() {
        return Err(MqttError::BadConnectFlags("password without user name"));
    }
    let keep_alive = r.u16("keep alive")?;
    let client_id = r.string("client id")?;
    let will = if flags.will() {
        let qos = flags.will_qos()?;
        Some(read_will(r, flags, qos)?)
    } else {
        None
    };
    let (username, password) = read_credentials(r, flags)?;
    Ok(Connect {
        clean_session: flags.clean_session(),
        keep_alive,
        client_id,
        will,
        username,
        password,
    })
}

fn parse_connack(r: &mut Reader<'_>) -> Result<ConnAck, MqttError> {
    let flags = read_connack_flags(r)?;
    let code = ConnectReturnCode::from_byte(r.u8("return code")?)
        .ok_or(MqttError::BadConnAck("unknown return code"))?;
    Ok(ConnAck {
        session_present: session_present(flags, code == ConnectReturnCode::Accepted)?,
        code,
    })
}

fn parse_publish<'a>(r: &mut Reader<'a>, flags: u8) -> Result<Publish<'a>, MqttError> {
    let (qos, dup, retain) = publish_flags(flags)?;
    let topic = r.string("topic")?;
    if !valid_topic_name(topic) {
        return Err(MqttError::BadTopicName { packet: "PUBLISH" });
    }
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id: read_publish_id(r, qos)?,
        payload: r.rest(),
    })
}

fn parse_subscribe<'a>(r: &mut Reader<'a>) -> Result<Subscribe<'a>, MqttError> {
    let packet_id = r.packet_id()?;
    // 3.1.1: the options byte is the requested QoS and nothing else.
    let filters = read_subscriptions(r.rest(), "requested QoS", |o| o & 0xFC == 0)?;
    Ok(Subscribe { packet_id, filters })
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
    let filters = read_unsubscriptions(r.rest())?;
    Ok(Unsubscribe { packet_id, filters })
}
