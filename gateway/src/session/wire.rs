//! Packets to the client, encoded in its protocol version: acknowledgements, SUBACK and
//! UNSUBACK from version 5 reason codes, the broker's deliveries, DISCONNECT.

use fleet_protocol::mqtt::v5::{reason, Ack5, Packet5, Properties, Property, Reason5, ReasonList};
use fleet_protocol::mqtt::{self, Packet, QoS, SubAckCode, SubAckCodes};

use super::Version;
use crate::broker::Outgoing;

/// What became of an [`Outgoing`] packet for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoded {
    /// Appended to the output.
    Written,
    /// A PUBLISH larger than the version 5 client's Maximum Packet Size: not sent
    /// [MQTT-3.1.2-24]; the broker is told it was delivered (a QoS 1/2 flow is finished with
    /// the client's part played by the gateway: PUBACK, or a PUBREC with 0x80).
    TooLarge { qos: QoS, packet_id: Option<u16> },
    /// An acknowledgement with a failure reason that 3.1.1 cannot express: the connection is
    /// closed so that the client sends the message again.
    Refused(u8),
}

/// Encodes a packet of the broker for a client of `version` whose packets may not exceed
/// `max_packet` bytes.
pub fn encode(
    version: Version,
    max_packet: usize,
    packet: &Outgoing,
    out: &mut Vec<u8>,
) -> Encoded {
    let (ack, code) = match *packet {
        Outgoing::Publish(ref d) => return encode_publish(version, max_packet, d, out),
        Outgoing::PubAck { packet_id, reason } => (Packet::PubAck(packet_id), reason),
        Outgoing::PubRec { packet_id, reason } => (Packet::PubRec(packet_id), reason),
        Outgoing::PubRel { packet_id, reason } => (Packet::PubRel(packet_id), reason),
        Outgoing::PubComp { packet_id, reason } => (Packet::PubComp(packet_id), reason),
    };
    let negative =
        matches!(ack, Packet::PubAck(_) | Packet::PubRec(_)) && code >= reason::UNSPECIFIED_ERROR;
    if version == Version::V311 && negative {
        return Encoded::Refused(code);
    }
    put_ack(version, out, ack, code);
    Encoded::Written
}

fn encode_publish(
    version: Version,
    max_packet: usize,
    delivery: &crate::broker::Delivery,
    out: &mut Vec<u8>,
) -> Encoded {
    let publish = delivery.publish();
    let fits = match version {
        Version::V311 => {
            let packet = Packet::Publish(publish);
            let fits = packet.encoded_len() <= max_packet;
            if fits {
                append(out, &packet);
            }
            fits
        }
        Version::V5 => {
            let props = delivery.properties();
            let packet = Packet5::Publish(publish, Properties::from_slice(&props));
            let fits = packet.encoded_len() <= max_packet;
            if fits {
                append5(out, &packet);
            }
            fits
        }
    };
    if fits {
        Encoded::Written
    } else {
        Encoded::TooLarge {
            qos: delivery.qos,
            packet_id: delivery.packet_id,
        }
    }
}

/// Encodes an acknowledgement (or PINGRESP) in the client's version; `code` is the
/// version 5 reason.
pub fn put_ack(version: Version, out: &mut Vec<u8>, packet: Packet<'_>, code: u8) {
    let ack = |packet_id| Ack5 {
        packet_id,
        reason: code,
        properties: Properties::EMPTY,
    };
    match (version, packet) {
        (Version::V311, p) => append(out, &p),
        (Version::V5, Packet::PubAck(id)) => append5(out, &Packet5::PubAck(ack(id))),
        (Version::V5, Packet::PubRec(id)) => append5(out, &Packet5::PubRec(ack(id))),
        (Version::V5, Packet::PubRel(id)) => append5(out, &Packet5::PubRel(ack(id))),
        (Version::V5, Packet::PubComp(id)) => append5(out, &Packet5::PubComp(ack(id))),
        (Version::V5, _) => append5(out, &Packet5::PingResp),
    }
}

/// Encodes a SUBACK from version 5 reason codes (3.1.1 gets 0x80 for every refusal).
pub fn put_suback(version: Version, out: &mut Vec<u8>, packet_id: u16, reasons: &[u8]) {
    match version {
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

/// Encodes an UNSUBACK: 3.1.1 has no reason codes [MQTT-3.10.4-5]; version 5 gets one per
/// filter, in order [MQTT-3.11.3-1].
pub fn put_unsuback(version: Version, out: &mut Vec<u8>, packet_id: u16, reasons: &[u8]) {
    match version {
        Version::V311 => append(out, &Packet::UnsubAck(packet_id)),
        Version::V5 => append5(
            out,
            &Packet5::UnsubAck(ReasonList {
                packet_id,
                properties: Properties::EMPTY,
                reasons,
            }),
        ),
    }
}

/// Encodes a PUBLISH in the client's version; version 5 clients get its properties.
pub fn put_publish(
    version: Version,
    out: &mut Vec<u8>,
    p: mqtt::Publish<'_>,
    props: Properties<'_>,
) {
    match version {
        Version::V311 => append(out, &Packet::Publish(p)),
        Version::V5 => append5(out, &Packet5::Publish(p, props)),
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

/// Appends an encoded packet. Packets built here from validated parts always encode; a
/// failure would be a bug, so it is logged and the packet skipped rather than panicking.
pub fn append(out: &mut Vec<u8>, packet: &Packet<'_>) {
    append_with(out, packet.encoded_len(), |buf| packet.emit(buf));
}

/// Appends an encoded version 5 packet (see [`append`]).
pub fn append5(out: &mut Vec<u8>, packet: &Packet5<'_>) {
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
