//! Parsing version 5 packets: the 3.1.1 field groups (`mqtt::shared`) with properties and
//! reason codes in between.

use super::properties::{Context, Properties};
use super::{options, reason, Ack5, ConnAck5, Connect5, Packet5, Reason5, ReasonList};
use crate::mqtt::packet::{Connect, Publish, Subscribe, Unsubscribe};
use crate::mqtt::shared::{
    publish_flags, read_connack_flags, read_credentials, read_protocol, read_publish_id,
    read_subscriptions, read_unsubscriptions, read_will, session_present, ConnectFlags, Level,
};
use crate::mqtt::topic::valid_topic_name;
use crate::mqtt::wire::{frame, Reader, NAMES};
use crate::mqtt::MqttError;

impl<'a> Packet5<'a> {
    /// Parses one packet from the front of `buf`, with the same contract as
    /// [`Packet::parse`](crate::mqtt::Packet::parse).
    pub fn parse(
        buf: &'a [u8],
        max_packet_size: usize,
    ) -> Result<Option<(Packet5<'a>, usize)>, MqttError> {
        let Some(framed) = frame(buf, max_packet_size, true)? else {
            return Ok(None);
        };
        let (kind, flags, total) = (framed.kind, framed.flags, framed.total);
        let mut r = Reader::new(framed.body, NAMES[usize::from(kind)]);
        let packet = match kind {
            1 => Packet5::Connect(parse_connect(&mut r)?),
            2 => Packet5::ConnAck(parse_connack(&mut r)?),
            3 => {
                let (publish, properties) = parse_publish(&mut r, flags)?;
                Packet5::Publish(publish, properties)
            }
            4..=7 => {
                let ack = parse_ack(&mut r, kind)?;
                match kind {
                    4 => Packet5::PubAck(ack),
                    5 => Packet5::PubRec(ack),
                    6 => Packet5::PubRel(ack),
                    _ => Packet5::PubComp(ack),
                }
            }
            8 => {
                let packet_id = r.packet_id()?;
                let properties = Properties::read(&mut r, Context::Subscribe)?;
                let filters = read_subscriptions(r.rest(), "subscription options", options_ok)?;
                Packet5::Subscribe(Subscribe { packet_id, filters }, properties)
            }
            9 => Packet5::SubAck(parse_reason_list(&mut r, kind, Context::SubAck)?),
            10 => {
                let packet_id = r.packet_id()?;
                let properties = Properties::read(&mut r, Context::Unsubscribe)?;
                let filters = read_unsubscriptions(r.rest())?;
                Packet5::Unsubscribe(Unsubscribe { packet_id, filters }, properties)
            }
            11 => Packet5::UnsubAck(parse_reason_list(&mut r, kind, Context::UnsubAck)?),
            12 => Packet5::PingReq,
            13 => Packet5::PingResp,
            14 => Packet5::Disconnect(reason_and_properties(&mut r, kind, Context::Disconnect)?),
            _ => Packet5::Auth(reason_and_properties(&mut r, kind, Context::Auth)?),
        };
        r.finish()?;
        Ok(Some((packet, total)))
    }
}

/// Version 5 subscription options: reserved bits 6 and 7 clear, retain handling 3 undefined.
fn options_ok(o: u8) -> bool {
    o & 0xC0 == 0 && (o >> options::RETAIN_HANDLING_SHIFT) & 0b11 != 3
}

/// CONNECT: the 3.1.1 fields with the connection's properties after the keep alive and the
/// will's before the will topic.
fn parse_connect<'a>(r: &mut Reader<'a>) -> Result<Connect5<'a>, MqttError> {
    read_protocol(r, Level::V5)?;
    // Version 5 allows a password without a user name.
    let flags = ConnectFlags::read(r)?;
    let keep_alive = r.u16("keep alive")?;
    let properties = Properties::read(r, Context::Connect)?;
    let client_id = r.string("client id")?;
    let (will, will_properties) = if flags.will() {
        let qos = flags.will_qos()?;
        let will_properties = Properties::read(r, Context::Will)?;
        (Some(read_will(r, flags, qos)?), will_properties)
    } else {
        (None, Properties::EMPTY)
    };
    let (username, password) = read_credentials(r, flags)?;
    Ok(Connect5 {
        connect: Connect {
            clean_session: flags.clean_session(),
            keep_alive,
            client_id,
            will,
            username,
            password,
        },
        properties,
        will_properties,
    })
}

fn parse_connack<'a>(r: &mut Reader<'a>) -> Result<ConnAck5<'a>, MqttError> {
    let flags = read_connack_flags(r)?;
    let reason = reason::read(r, 2)?;
    Ok(ConnAck5 {
        session_present: session_present(flags, reason == reason::SUCCESS)?,
        reason,
        properties: Properties::read(r, Context::ConnAck)?,
    })
}

/// PUBLISH: the 3.1.1 fields with properties before the payload. An empty topic is allowed
/// only when a topic alias stands in for it.
fn parse_publish<'a>(
    r: &mut Reader<'a>,
    flags: u8,
) -> Result<(Publish<'a>, Properties<'a>), MqttError> {
    let (qos, dup, retain) = publish_flags(flags)?;
    let topic = r.string("topic")?;
    let packet_id = read_publish_id(r, qos)?;
    let properties = Properties::read(r, Context::Publish)?;
    if !(valid_topic_name(topic) || properties.has_topic_alias() && topic.is_empty()) {
        return Err(MqttError::BadTopicName { packet: "PUBLISH" });
    }
    let publish = Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload: r.rest(),
    };
    Ok((publish, properties))
}

/// The reason and properties after a packet id or alone: both may be left out (success, no
/// properties), the properties alone too.
fn reason_and_properties<'a>(
    r: &mut Reader<'a>,
    kind: u8,
    context: Context,
) -> Result<Reason5<'a>, MqttError> {
    let reason = if r.is_empty() {
        reason::SUCCESS
    } else {
        reason::read(r, kind)?
    };
    let properties = if r.is_empty() {
        Properties::EMPTY
    } else {
        Properties::read(r, context)?
    };
    Ok(Reason5 { reason, properties })
}

fn parse_ack<'a>(r: &mut Reader<'a>, kind: u8) -> Result<Ack5<'a>, MqttError> {
    let packet_id = r.packet_id()?;
    let Reason5 { reason, properties } = reason_and_properties(r, kind, Context::Ack)?;
    Ok(Ack5 {
        packet_id,
        reason,
        properties,
    })
}

fn parse_reason_list<'a>(
    r: &mut Reader<'a>,
    kind: u8,
    context: Context,
) -> Result<ReasonList<'a>, MqttError> {
    let packet_id = r.packet_id()?;
    let properties = Properties::read(r, context)?;
    let reasons = r.rest();
    if reasons.is_empty() {
        return Err(MqttError::EmptyList {
            packet: NAMES[usize::from(kind)],
        });
    }
    reasons
        .iter()
        .try_for_each(|&c| reason::check(kind, c).map(drop))?;
    Ok(ReasonList {
        packet_id,
        properties,
        reasons,
    })
}
