//! Application messages as the broker holds them: built once at publish, then shared by every
//! queue, window and retained slot that holds them (`Arc<Message>`, payload in `Bytes`), never
//! copied per subscriber.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleet_protocol::mqtt::{
    v5::{Properties, Property},
    Publish, QoS, Will as WillPacket,
};

/// The version 5 properties that travel unchanged from a publisher to its subscribers
/// (§3.3.2.3). The Message Expiry Interval is kept apart: the broker counts it down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<Box<str>>,
    pub response_topic: Option<Box<str>>,
    pub correlation_data: Option<Bytes>,
    /// In the order the publisher sent them [MQTT-3.3.2-17].
    pub user_properties: Vec<(Box<str>, Box<str>)>,
}

impl MessageProperties {
    fn is_empty(&self) -> bool {
        *self == MessageProperties::default()
    }

    /// Bytes held, for queue accounting.
    fn size(&self) -> usize {
        let text = |s: &Option<Box<str>>| s.as_ref().map_or(0, |s| s.len());
        text(&self.content_type)
            + text(&self.response_topic)
            + self.correlation_data.as_ref().map_or(0, Bytes::len)
            + self
                .user_properties
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// Appends these properties, as the codec writes them.
    pub(super) fn push_to<'a>(&'a self, out: &mut Vec<Property<'a>>) {
        if let Some(v) = self.payload_format_indicator {
            out.push(Property::PayloadFormatIndicator(v));
        }
        if let Some(s) = &self.content_type {
            out.push(Property::ContentType(s));
        }
        if let Some(s) = &self.response_topic {
            out.push(Property::ResponseTopic(s));
        }
        if let Some(b) = &self.correlation_data {
            out.push(Property::CorrelationData(b));
        }
        out.extend(
            self.user_properties
                .iter()
                .map(|(k, v)| Property::UserProperty(k, v)),
        );
    }
}

/// One application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Box<str>,
    pub payload: Bytes,
    /// The QoS it was published with: the ceiling of every delivery.
    pub qos: QoS,
    pub retain: bool,
    /// Version 5 properties; `None` when there are none (every 3.1.1 message).
    pub properties: Option<Box<MessageProperties>>,
    /// The Message Expiry Interval the publisher set, in seconds.
    pub expiry_interval: Option<u32>,
    /// The client id that published it (No Local compares against it). Set by
    /// [`Broker::publish`](super::Broker::publish); a backend handing a message back through
    /// [`Broker::deliver`](super::Broker::deliver) carries it over from its store.
    pub origin: Option<Arc<str>>,
    /// When it expires: `expiry_interval` after it was published. Set like `origin`.
    pub expires_at: Option<Instant>,
}

impl Message {
    pub fn new(topic: &str, payload: impl Into<Bytes>, qos: QoS, retain: bool) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            properties: None,
            expiry_interval: None,
            origin: None,
            expires_at: None,
        }
    }

    /// The message of a decoded PUBLISH (topic and payload copied out of the read buffer).
    pub fn from_publish(p: &Publish<'_>) -> Message {
        Message::new(p.topic, Bytes::copy_from_slice(p.payload), p.qos, p.retain)
    }

    /// Takes the properties of a version 5 PUBLISH (or will) that travel with the message.
    /// Topic aliases and subscription identifiers are the session's business and ignored here.
    pub fn with_v5_properties(mut self, props: &Properties<'_>) -> Message {
        let mut travelling = MessageProperties::default();
        for p in props.iter() {
            match p {
                Property::PayloadFormatIndicator(v) => {
                    travelling.payload_format_indicator = Some(v)
                }
                Property::MessageExpiryInterval(v) => self.expiry_interval = Some(v),
                Property::ContentType(s) => travelling.content_type = Some(s.into()),
                Property::ResponseTopic(s) => travelling.response_topic = Some(s.into()),
                Property::CorrelationData(b) => {
                    travelling.correlation_data = Some(Bytes::copy_from_slice(b))
                }
                Property::UserProperty(k, v) => {
                    travelling.user_properties.push((k.into(), v.into()))
                }
                _ => {}
            }
        }
        self.properties = (!travelling.is_empty()).then(|| Box::new(travelling));
        self
    }

    /// Bytes the message holds, for queue accounting.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len() + self.properties.as_ref().map_or(0, |p| p.size())
    }

    /// Marks the message as published by `client_id` at `now`.
    pub(super) fn stamp(&mut self, client_id: &Arc<str>, now: Instant) {
        self.origin = Some(client_id.clone());
        self.expires_at = self
            .expiry_interval
            .and_then(|s| now.checked_add(Duration::from_secs(u64::from(s))));
    }

    pub(super) fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// The Message Expiry Interval a subscriber is sent: what is left of it, in whole seconds
    /// rounded up, and at least 1 [MQTT-3.3.2-6].
    pub(super) fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        let left = self.expires_at?.saturating_duration_since(now);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Some(u32::try_from(secs).unwrap_or(u32::MAX).max(1))
    }
}

/// A will: the message published for a client whose connection ends without a normal
/// DISCONNECT, `delay` seconds later (Will Delay Interval, §3.1.3.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub message: Message,
    pub delay: u32,
}

impl Will {
    /// The will of a CONNECT, with its version 5 properties (empty for 3.1.1).
    pub fn from_connect(will: &WillPacket<'_>, properties: &Properties<'_>) -> Will {
        let message = Message::new(
            will.topic,
            Bytes::copy_from_slice(will.payload),
            will.qos,
            will.retain,
        )
        .with_v5_properties(properties);
        let delay = properties
            .iter()
            .find_map(|p| match p {
                Property::WillDelayInterval(d) => Some(d),
                _ => None,
            })
            .unwrap_or(0);
        Will { message, delay }
    }
}
