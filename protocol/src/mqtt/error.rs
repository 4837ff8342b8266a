use core::fmt;

/// Why bytes are not a valid MQTT 3.1.1 packet, or why a packet cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MqttError {
    /// The announced packet is larger than the receiver accepts.
    PacketTooLarge { size: usize, max: usize },
    /// The remaining-length field uses more than four bytes.
    MalformedRemainingLength,
    /// Packet type 0 or 15.
    ReservedPacketType(u8),
    /// A packet only clients send (CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT),
    /// received from a server.
    ClientOnly { packet: &'static str },
    /// Fixed-header flag bits that this packet type does not allow.
    BadFlags { packet: &'static str, flags: u8 },
    /// QoS 3 in a PUBLISH, a will, or a subscription.
    BadQoS { packet: &'static str },
    /// A field runs past the end of the packet.
    Truncated {
        packet: &'static str,
        field: &'static str,
    },
    /// Bytes left over after the last field of a packet.
    TrailingBytes { packet: &'static str },
    /// A string is not valid UTF-8 or contains U+0000.
    BadString {
        packet: &'static str,
        field: &'static str,
    },
    /// A PUBLISH or will topic is empty or contains a wildcard.
    BadTopicName { packet: &'static str },
    /// A subscription filter is not a valid topic filter (index counts from 1).
    BadTopicFilter { packet: &'static str, index: usize },
    /// Packet identifier 0.
    ZeroPacketId { packet: &'static str },
    /// Protocol name is neither "MQTT" nor "MQIsdp".
    BadProtocolName,
    /// CONNECT for a protocol level other than 4 (3.1.1) or 3 (3.1).
    UnsupportedProtocolLevel(u8),
    /// Inconsistent CONNECT flags; the text says which rule.
    BadConnectFlags(&'static str),
    /// CONNACK with reserved bits set or an unknown return code.
    BadConnAck(&'static str),
    /// SUBSCRIBE or UNSUBSCRIBE without any filter, or SUBACK without any code.
    EmptyList { packet: &'static str },
    /// Subscription options with reserved bits set (index counts from 1).
    BadSubscriptionOptions { index: usize },
    /// A SUBACK return code other than 0, 1, 2 or 0x80.
    BadSubAckCode(u8),
    /// `emit` was given a buffer that is too small.
    BufferTooSmall { needed: usize, available: usize },
    /// A string or binary field is longer than 65,535 bytes, or the packet longer than MQTT allows.
    TooLong { field: &'static str },
    /// PUBLISH with QoS > 0 lacks a packet identifier, or QoS 0 has one (emit only).
    PacketIdMismatch,
    /// Version 5: a property identifier the specification does not define.
    UnknownProperty(u8),
    /// Version 5: a property this packet may not carry.
    PropertyNotAllowed { packet: &'static str, id: u8 },
    /// Version 5: a property given twice that may appear only once.
    DuplicateProperty { packet: &'static str, id: u8 },
    /// Version 5: a property value the specification forbids (e.g. receive maximum 0).
    BadPropertyValue { packet: &'static str, id: u8 },
    /// Version 5: a reason code this packet does not define.
    BadReasonCode { packet: &'static str, code: u8 },
}

impl fmt::Display for MqttError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use MqttError::*;
        match self {
            PacketTooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the {max}-byte limit")
            }
            MalformedRemainingLength => write!(f, "remaining length uses more than 4 bytes"),
            ReservedPacketType(t) => write!(f, "reserved packet type {t}"),
            ClientOnly { packet } => write!(f, "{packet} from a server (only clients send it)"),
            BadFlags { packet, flags } => {
                write!(
                    f,
                    "{packet}: fixed-header flags {flags:#06b} are not allowed"
                )
            }
            BadQoS { packet } => write!(f, "{packet}: QoS 3 is not a valid QoS"),
            Truncated { packet, field } => write!(f, "{packet}: {field} runs past the packet end"),
            TrailingBytes { packet } => {
                write!(f, "{packet}: unexpected bytes after the last field")
            }
            BadString { packet, field } => {
                write!(f, "{packet}: {field} is not valid UTF-8 or contains U+0000")
            }
            BadTopicName { packet } => {
                write!(f, "{packet}: topic name is empty or contains a wildcard")
            }
            BadTopicFilter { packet, index } => {
                write!(f, "{packet}: topic filter {index} is not a valid filter")
            }
            ZeroPacketId { packet } => write!(f, "{packet}: packet identifier 0 is not allowed"),
            BadProtocolName => write!(f, "CONNECT: protocol name is not \"MQTT\""),
            UnsupportedProtocolLevel(l) => {
                write!(
                    f,
                    "CONNECT: protocol level {l} is not supported (3.1.1 is level 4)"
                )
            }
            BadConnectFlags(rule) => write!(f, "CONNECT: {rule}"),
            BadConnAck(rule) => write!(f, "CONNACK: {rule}"),
            EmptyList { packet } => write!(f, "{packet}: the list is empty"),
            BadSubscriptionOptions { index } => {
                write!(
                    f,
                    "SUBSCRIBE: options of filter {index} have reserved bits set"
                )
            }
            BadSubAckCode(c) => write!(f, "SUBACK: return code {c:#04x} is not defined"),
            BufferTooSmall { needed, available } => {
                write!(f, "buffer of {available} bytes is too small for {needed}")
            }
            TooLong { field } => write!(f, "{field} is too long to encode"),
            UnknownProperty(id) => write!(f, "property identifier {id:#04x} is not defined"),
            PropertyNotAllowed { packet, id } => {
                write!(f, "{packet}: property {id:#04x} is not allowed here")
            }
            DuplicateProperty { packet, id } => {
                write!(f, "{packet}: property {id:#04x} appears more than once")
            }
            BadPropertyValue { packet, id } => {
                write!(
                    f,
                    "{packet}: property {id:#04x} has a value outside its range"
                )
            }
            BadReasonCode { packet, code } => {
                write!(
                    f,
                    "{packet}: reason code {code:#04x} is not defined for this packet"
                )
            }
            PacketIdMismatch => {
                write!(
                    f,
                    "PUBLISH: a packet identifier is required exactly when QoS > 0"
                )
            }
        }
    }
}

impl core::error::Error for MqttError {}
