//! Writing version 5 packets: the checks `parse` applies, then the 3.1.1 field groups
//! (`mqtt::shared`) with properties and reason codes in between.

use super::properties::{Context, Properties};
use super::{reason, Ack5, Packet5, Reason5, ReasonList};
use crate::mqtt::shared::nonzero;
use crate::mqtt::wire::{emit_framed, varint_len, Writer, NAMES};
use crate::mqtt::MqttError;

impl Packet5<'_> {
    /// Exact number of bytes [`Packet5::emit`] writes for this packet.
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        1 + varint_len(body) + body
    }

    /// Writes the packet into `out` and returns the number of bytes written. Values that
    /// [`Packet5::parse`] would refuse are refused here too.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, MqttError> {
        self.check()?;
        emit_framed(out, self.first_byte(), self.body_len(), |w| {
            self.emit_body(w)
        })
    }

    fn first_byte(&self) -> u8 {
        match self {
            Packet5::Connect(_) => 0x10,
            Packet5::ConnAck(_) => 0x20,
            Packet5::Publish(p, _) => p.first_byte(),
            Packet5::PubAck(_) => 0x40,
            Packet5::PubRec(_) => 0x50,
            Packet5::PubRel(_) => 0x62,
            Packet5::PubComp(_) => 0x70,
            Packet5::Subscribe(..) => 0x82,
            Packet5::SubAck(_) => 0x90,
            Packet5::Unsubscribe(..) => 0xA2,
            Packet5::UnsubAck(_) => 0xB0,
            Packet5::PingReq => 0xC0,
            Packet5::PingResp => 0xD0,
            Packet5::Disconnect(_) => 0xE0,
            Packet5::Auth(_) => 0xF0,
        }
    }

    fn kind(&self) -> u8 {
        self.first_byte() >> 4
    }

    /// Everything `parse` checks that a caller could get wrong when building a packet.
    fn check(&self) -> Result<(), MqttError> {
        let kind = self.kind();
        let name = NAMES[usize::from(kind)];
        let code = |code: u8| reason::check(kind, code).map(drop);
        match self {
            Packet5::Connect(c) => {
                c.connect.check()?;
                if c.connect.will.is_some() {
                    c.will_properties.check(Context::Will)?;
                } else if !c.will_properties.is_empty() {
                    return Err(MqttError::BadConnectFlags("will properties without a will"));
                }
                c.properties.check(Context::Connect)
            }
            Packet5::ConnAck(a) => {
                code(a.reason)?;
                a.properties.check(Context::ConnAck)
            }
            // The 3.1.1 rules for the topic, QoS and packet id, except that a topic alias may
            // stand in for the topic.
            Packet5::Publish(p, properties) => {
                p.check(properties.has_topic_alias())?;
                properties.check(Context::Publish)
            }
            Packet5::PubAck(a) | Packet5::PubRec(a) | Packet5::PubRel(a) | Packet5::PubComp(a) => {
                nonzero(a.packet_id, name)?;
                code(a.reason)?;
                a.properties.check(Context::Ack)
            }
            Packet5::Subscribe(s, properties) => {
                s.check()?;
                properties.check(Context::Subscribe)
            }
            Packet5::SubAck(l) | Packet5::UnsubAck(l) => {
                nonzero(l.packet_id, name)?;
                if l.reasons.is_empty() {
                    return Err(MqttError::EmptyList { packet: name });
                }
                l.reasons.iter().try_for_each(|&r| code(r))?;
                let context = if kind == 9 {
                    Context::SubAck
                } else {
                    Context::UnsubAck
                };
                l.properties.check(context)
            }
            Packet5::Unsubscribe(u, properties) => {
                u.check()?;
                properties.check(Context::Unsubscribe)
            }
            Packet5::Disconnect(d) => {
                code(d.reason)?;
                d.properties.check(Context::Disconnect)
            }
            Packet5::Auth(d) => {
                code(d.reason)?;
                d.properties.check(Context::Auth)
            }
            Packet5::PingReq | Packet5::PingResp => Ok(()),
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Packet5::Connect(c) => {
                let will = c
                    .connect
                    .will
                    .map_or(0, |_| c.will_properties.encoded_len());
                c.connect.body_len() + c.properties.encoded_len() + will
            }
            Packet5::ConnAck(a) => 2 + a.properties.encoded_len(),
            Packet5::Publish(p, properties) => p.body_len() + properties.encoded_len(),
            Packet5::PubAck(a) | Packet5::PubRec(a) | Packet5::PubRel(a) | Packet5::PubComp(a) => {
                ack_body_len(a)
            }
            Packet5::Subscribe(s, properties) => 2 + properties.encoded_len() + s.filters_len(),
            Packet5::SubAck(l) | Packet5::UnsubAck(l) => {
                2 + l.properties.encoded_len() + l.reasons.len()
            }
            Packet5::Unsubscribe(u, properties) => 2 + properties.encoded_len() + u.filters_len(),
            Packet5::PingReq | Packet5::PingResp => 0,
            Packet5::Disconnect(d) | Packet5::Auth(d) => reason_body_len(d),
        }
    }

    fn emit_body(&self, w: &mut Writer<'_>) -> Result<(), MqttError> {
        match self {
            Packet5::Connect(c) => c.connect.write_body(
                w,
                5,
                |w| c.properties.write(w),
                |w| c.will_properties.write(w),
            ),
            Packet5::ConnAck(a) => {
                w.u8(u8::from(a.session_present))?;
                w.u8(a.reason)?;
                a.properties.write(w)
            }
            Packet5::Publish(p, properties) => p.write_body(w, |w| properties.write(w)),
            Packet5::PubAck(a) | Packet5::PubRec(a) | Packet5::PubRel(a) | Packet5::PubComp(a) => {
                w.u16(a.packet_id)?;
                let n = ack_body_len(a);
                write_reason(w, n > 2, n > 3, a.reason, &a.properties)
            }
            Packet5::Subscribe(s, properties) => {
                w.u16(s.packet_id)?;
                properties.write(w)?;
                // The whole options byte, not only the QoS the 3.1.1 view shows.
                for (f, o) in s.filters.iter_options() {
                    w.string(f, "topic filter")?;
                    w.u8(o)?;
                }
                Ok(())
            }
            Packet5::SubAck(l) | Packet5::UnsubAck(l) => write_reason_list(w, l),
            Packet5::Unsubscribe(u, properties) => {
                w.u16(u.packet_id)?;
                properties.write(w)?;
                u.write_filters(w)
            }
            Packet5::PingReq | Packet5::PingResp => Ok(()),
            Packet5::Disconnect(d) | Packet5::Auth(d) => {
                let n = reason_body_len(d);
                write_reason(w, n > 0, n > 1, d.reason, &d.properties)
            }
        }
    }
}

/// Short forms: no reason and no properties when the reason is success and nothing else is said.
fn ack_body_len(a: &Ack5<'_>) -> usize {
    2 + reason_body_len(&Reason5 {
        reason: a.reason,
        properties: a.properties,
    })
}

/// The reason and properties of DISCONNECT and AUTH (after the packet id of an acknowledgement),
/// in their short forms.
fn reason_body_len(d: &Reason5<'_>) -> usize {
    match (d.reason, d.properties.is_empty()) {
        (reason::SUCCESS, true) => 0,
        (_, true) => 1,
        _ => 1 + d.properties.encoded_len(),
    }
}

fn write_reason(
    w: &mut Writer<'_>,
    with_reason: bool,
    with_properties: bool,
    reason: u8,
    properties: &Properties<'_>,
) -> Result<(), MqttError> {
    if with_reason {
        w.u8(reason)?;
    }
    if with_properties {
        properties.write(w)?;
    }
    Ok(())
}

fn write_reason_list(w: &mut Writer<'_>, l: &ReasonList<'_>) -> Result<(), MqttError> {
    w.u16(l.packet_id)?;
    l.properties.write(w)?;
    w.bytes(l.reasons)
}
