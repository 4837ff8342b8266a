//! The field groups MQTT 3.1.1 and 5 put on the wire the same way: CONNECT's flags, will and
//! credentials, CONNACK's flags, PUBLISH's flags, topic and packet id, the filter lists of
//! SUBSCRIBE and UNSUBSCRIBE. The 3.1.1 packets in [`super::packet`] are built from these, and
//! the version 5 layer in [`super::v5`] reuses them, adding only its properties and reasons.

use super::list::{SubscribeFilters, UnsubscribeFilters};
use super::packet::{Connect, Publish, QoS, Subscribe, Unsubscribe, Will};
use super::topic::{valid_topic_filter, valid_topic_name};
use super::wire::{Reader, Writer};
use super::MqttError;

/// The protocol levels this codec speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    /// 3.1.1 (level 4, name "MQTT"), and 3.1 (level 3, name "MQIsdp"), which shares its packets.
    V311,
    V5,
}

/// Reads CONNECT's protocol name and level: `Ok` when they are `level`'s.
pub(crate) fn read_protocol(r: &mut Reader<'_>, level: Level) -> Result<(), MqttError> {
    let name = r.string("protocol name")?;
    let got = r.u8("protocol level")?;
    match (name, got, level) {
        ("MQTT", 4, Level::V311) | ("MQIsdp", 3, Level::V311) | ("MQTT", 5, Level::V5) => Ok(()),
        ("MQTT", l, _) | ("MQIsdp", l, _) => Err(MqttError::UnsupportedProtocolLevel(l)),
        _ => Err(MqttError::BadProtocolName),
    }
}

/// CONNECT's flags byte, checked by the rules both versions share.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectFlags(u8);

impl ConnectFlags {
    const CLEAN: u8 = 0b10;
    const WILL: u8 = 0b100;
    const WILL_RETAIN: u8 = 0b10_0000;
    const PASSWORD: u8 = 0b100_0000;
    const USERNAME: u8 = 0b1000_0000;

    pub fn read(r: &mut Reader<'_>) -> Result<ConnectFlags, MqttError> {
        let flags = ConnectFlags(r.u8("connect flags")?);
        if flags.0 & 1 != 0 {
            return Err(MqttError::BadConnectFlags("reserved flag is set"));
        }
        if !flags.will() && (flags.will_qos_bits() != 0 || flags.0 & Self::WILL_RETAIN != 0) {
            return Err(MqttError::BadConnectFlags(
                "will QoS or retain set without a will",
            ));
        }
        Ok(flags)
    }

    /// The flags of `c` (emit).
    pub fn of(c: &Connect<'_>) -> u8 {
        let mut flags = u8::from(c.clean_session) << 1;
        if let Some(will) = &c.will {
            flags |= Self::WILL | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
        }
        flags | u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7
    }

    pub fn clean_session(self) -> bool {
        self.0 & Self::CLEAN != 0
    }

    pub fn will(self) -> bool {
        self.0 & Self::WILL != 0
    }

    fn will_qos_bits(self) -> u8 {
        (self.0 >> 3) & 0b11
    }

    /// The will's QoS (only read when there is a will; QoS 3 is malformed).
    pub fn will_qos(self) -> Result<QoS, MqttError> {
        QoS::from_bits(self.will_qos_bits()).ok_or(MqttError::BadQoS { packet: "CONNECT" })
    }

    /// 3.1.1 only: version 5 allows a password without a user name.
    pub fn password_without_username(self) -> bool {
        self.0 & Self::PASSWORD != 0 && self.0 & Self::USERNAME == 0
    }
}

/// The will topic and payload, after the will QoS (and in version 5 the will properties).
pub(crate) fn read_will<'a>(
    r: &mut Reader<'a>,
    flags: ConnectFlags,
    qos: QoS,
) -> Result<Will<'a>, MqttError> {
    let topic = r.string("will topic")?;
    if !valid_topic_name(topic) {
        return Err(MqttError::BadTopicName { packet: "CONNECT" });
    }
    Ok(Will {
        topic,
        payload: r.binary("will payload")?,
        qos,
        retain: flags.0 & ConnectFlags::WILL_RETAIN != 0,
    })
}

/// The user name and password CONNECT's flags announce.
pub(crate) fn read_credentials<'a>(
    r: &mut Reader<'a>,
    flags: ConnectFlags,
) -> Result<(Option<&'a str>, Option<&'a [u8]>), MqttError> {
    let username = if flags.0 & ConnectFlags::USERNAME != 0 {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if flags.0 & ConnectFlags::PASSWORD != 0 {
        Some(r.binary("password")?)
    } else {
        None
    };
    Ok((username, password))
}

impl Connect<'_> {
    /// What both versions refuse to send: a client id with U+0000, a will topic that is not a
    /// topic name.
    pub(crate) fn check(&self) -> Result<(), MqttError> {
        if self.client_id.bytes().any(|b| b == 0) {
            return Err(MqttError::BadString {
                packet: "CONNECT",
                field: "client id",
            });
        }
        match &self.will {
            Some(w) if !valid_topic_name(w.topic) => {
                Err(MqttError::BadTopicName { packet: "CONNECT" })
            }
            _ => Ok(()),
        }
    }

    /// Body bytes without any properties.
    pub(crate) fn body_len(&self) -> usize {
        let mut n = 2 + 4 + 1 + 1 + 2 + 2 + self.client_id.len();
        if let Some(w) = &self.will {
            n += 2 + w.topic.len() + 2 + w.payload.len();
        }
        n += self.username.map_or(0, |u| 2 + u.len());
        n + self.password.map_or(0, |p| 2 + p.len())
    }

    /// The body for protocol `level`: `properties` writes what version 5 puts after the keep
    /// alive, `will_properties` what it puts before the will topic (called only with a will).
    /// One body with the version's parts passed in keeps the device's 3.1.1 encoder (no-op
    /// closures) as small as a hand-written one.
    pub(crate) fn write_body(
        &self,
        w: &mut Writer<'_>,
        level: u8,
        properties: impl FnOnce(&mut Writer<'_>) -> Result<(), MqttError>,
        will_properties: impl FnOnce(&mut Writer<'_>) -> Result<(), MqttError>,
    ) -> Result<(), MqttError> {
        w.string("MQTT", "protocol name")?;
        w.u8(level)?;
        w.u8(ConnectFlags::of(self))?;
        w.u16(self.keep_alive)?;
        properties(w)?;
        w.string(self.client_id, "client id")?;
        if let Some(will) = &self.will {
            will_properties(w)?;
            w.string(will.topic, "will topic")?;
            w.binary(will.payload, "will payload")?;
        }
        if let Some(u) = self.username {
            w.string(u, "user name")?;
        }
        if let Some(p) = self.password {
            w.binary(p, "password")?;
        }
        Ok(())
    }
}

/// CONNACK's acknowledge flags: only "session present" may be set.
pub(crate) fn read_connack_flags(r: &mut Reader<'_>) -> Result<u8, MqttError> {
    let flags = r.u8("acknowledge flags")?;
    if flags & 0xFE != 0 {
        return Err(MqttError::BadConnAck("reserved flags are set"));
    }
    Ok(flags)
}

/// "Session present" of a CONNACK; a refusal may not claim a session.
pub(crate) fn session_present(flags: u8, accepted: bool) -> Result<bool, MqttError> {
    if !accepted && flags != 0 {
        return Err(MqttError::BadConnAck("session present on a refusal"));
    }
    Ok(flags == 1)
}

/// PUBLISH's fixed-header flags: (QoS, DUP, RETAIN). DUP on QoS 0 is malformed.
pub(crate) fn publish_flags(flags: u8) -> Result<(QoS, bool, bool), MqttError> {
    let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(MqttError::BadQoS { packet: "PUBLISH" })?;
    let dup = flags & 0b1000 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(MqttError::BadFlags {
            packet: "PUBLISH",
            flags,
        });
    }
    Ok((qos, dup, flags & 1 != 0))
}

/// PUBLISH's packet identifier: present exactly when QoS is above 0.
pub(crate) fn read_publish_id(r: &mut Reader<'_>, qos: QoS) -> Result<Option<u16>, MqttError> {
    if qos == QoS::AtMostOnce {
        Ok(None)
    } else {
        r.packet_id().map(Some)
    }
}

pub(crate) fn nonzero(id: u16, packet: &'static str) -> Result<(), MqttError> {
    if id == 0 {
        Err(MqttError::ZeroPacketId { packet })
    } else {
        Ok(())
    }
}

impl Publish<'_> {
    /// What parse would refuse: a topic that is not a topic name (an empty one is allowed
    /// when `aliased`, version 5's topic alias standing in), DUP on QoS 0, a packet id missing
    /// on QoS 1 and 2 or present on QoS 0, packet id 0.
    pub(crate) fn check(&self, aliased: bool) -> Result<(), MqttError> {
        if !(valid_topic_name(self.topic) || aliased && self.topic.is_empty()) {
            return Err(MqttError::BadTopicName { packet: "PUBLISH" });
        }
        match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, None) if !self.dup => Ok(()),
            (QoS::AtMostOnce, None) => Err(MqttError::BadFlags {
                packet: "PUBLISH",
                flags: 0b1000,
            }),
            (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => nonzero(id, "PUBLISH"),
            _ => Err(MqttError::PacketIdMismatch),
        }
    }

    pub(crate) fn first_byte(&self) -> u8 {
        0x30 | u8::from(self.dup) << 3 | (self.qos as u8) << 1 | u8::from(self.retain)
    }

    /// Body bytes without properties.
    pub(crate) fn body_len(&self) -> usize {
        2 + self.topic.len() + usize::from(self.packet_id.is_some()) * 2 + self.payload.len()
    }

    /// The body: topic, packet id, what `properties` writes (version 5), payload.
    pub(crate) fn write_body(
        &self,
        w: &mut Writer<'_>,
        properties: impl FnOnce(&mut Writer<'_>) -> Result<(), MqttError>,
    ) -> Result<(), MqttError> {
        w.string(self.topic, "topic")?;
        if let Some(id) = self.packet_id {
            w.u16(id)?;
        }
        properties(w)?;
        w.bytes(self.payload)
    }
}

/// Validates SUBSCRIBE's (filter, options) list. `options` names the options byte for errors;
/// `options_ok` says whether its bits above the QoS are allowed.
pub(crate) fn read_subscriptions<'a>(
    list: &'a [u8],
    options: &'static str,
    options_ok: fn(u8) -> bool,
) -> Result<SubscribeFilters<'a>, MqttError> {
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
        let o = items.u8(options)?;
        if !options_ok(o) {
            return Err(MqttError::BadSubscriptionOptions { index });
        }
        QoS::from_bits(o & 0b11).ok_or(MqttError::BadQoS {
            packet: "SUBSCRIBE",
        })?;
    }
    if index == 0 {
        return Err(MqttError::EmptyList {
            packet: "SUBSCRIBE",
        });
    }
    Ok(SubscribeFilters::from_wire(list))
}

/// Validates UNSUBSCRIBE's filter list.
pub(crate) fn read_unsubscriptions(list: &[u8]) -> Result<UnsubscribeFilters<'_>, MqttError> {
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
    Ok(UnsubscribeFilters::from_wire(list))
}

impl Subscribe<'_> {
    /// Packet id 0, no filter, or a filter that is not one.
    pub(crate) fn check(&self) -> Result<(), MqttError> {
        nonzero(self.packet_id, "SUBSCRIBE")?;
        if self.filters.is_empty() {
            return Err(MqttError::EmptyList {
                packet: "SUBSCRIBE",
            });
        }
        match self
            .filters
            .iter()
            .position(|(f, _)| !valid_topic_filter(f))
        {
            Some(i) => Err(MqttError::BadTopicFilter {
                packet: "SUBSCRIBE",
                index: i + 1,
            }),
            None => Ok(()),
        }
    }

    /// Bytes of the filter list.
    pub(crate) fn filters_len(&self) -> usize {
        self.filters
            .iter()
            .map(|(f, _)| 2 + f.len() + 1)
            .sum::<usize>()
    }
}

impl Unsubscribe<'_> {
    /// Packet id 0, no filter, or a filter that is not one.
    pub(crate) fn check(&self) -> Result<(), MqttError> {
        nonzero(self.packet_id, "UNSUBSCRIBE")?;
        if self.filters.is_empty() {
            return Err(MqttError::EmptyList {
                packet: "UNSUBSCRIBE",
            });
        }
        match self.filters.iter().position(|f| !valid_topic_filter(f)) {
            Some(i) => Err(MqttError::BadTopicFilter {
                packet: "UNSUBSCRIBE",
                index: i + 1,
            }),
            None => Ok(()),
        }
    }

    /// Bytes of the filter list.
    pub(crate) fn filters_len(&self) -> usize {
        self.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
    }

    pub(crate) fn write_filters(&self, w: &mut Writer<'_>) -> Result<(), MqttError> {
        self.filters
            .iter()
            .try_for_each(|f| w.string(f, "topic filter"))
    }
}
