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
//! The device client speaks 3.1.1 only (smaller); nothing here is linked into a firmware image
//! that does not call it.

use super::list::{Source, SubscribeFilters, UnsubscribeFilters};
use super::packet::{Connect, Publish, QoS, Subscribe, Unsubscribe, Will};
use super::topic::{valid_topic_filter, valid_topic_name};
use super::wire::{emit_framed, frame, varint_len, Reader, Writer, NAMES};
use super::MqttError;

/// Largest value of a variable byte integer (subscription identifiers, lengths).
const MAX_VARINT: u32 = 268_435_455;

/// One MQTT 5 property (§2.2.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Property<'a> {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(&'a str),
    ResponseTopic(&'a str),
    CorrelationData(&'a [u8]),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(&'a str),
    ServerKeepAlive(u16),
    AuthenticationMethod(&'a str),
    AuthenticationData(&'a [u8]),
    RequestProblemInformation(u8),
    WillDelayInterval(u32),
    RequestResponseInformation(u8),
    ResponseInformation(&'a str),
    ServerReference(&'a str),
    ReasonString(&'a str),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQoS(u8),
    RetainAvailable(u8),
    UserProperty(&'a str, &'a str),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(u8),
    SubscriptionIdentifierAvailable(u8),
    SharedSubscriptionAvailable(u8),
}

/// Where a property may appear: one bit per packet kind (acknowledgements share one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Connect = 1 << 0,
    ConnAck = 1 << 1,
    Publish = 1 << 2,
    Will = 1 << 3,
    /// PUBACK, PUBREC, PUBREL and PUBCOMP.
    Ack = 1 << 4,
    Subscribe = 1 << 5,
    SubAck = 1 << 6,
    Unsubscribe = 1 << 7,
    UnsubAck = 1 << 8,
    Disconnect = 1 << 9,
    Auth = 1 << 10,
}

impl Context {
    fn name(self) -> &'static str {
        match self {
            Context::Connect => "CONNECT",
            Context::ConnAck => "CONNACK",
            Context::Publish => "PUBLISH",
            Context::Will => "will properties",
            Context::Ack => "acknowledgement",
            Context::Subscribe => "SUBSCRIBE",
            Context::SubAck => "SUBACK",
            Context::Unsubscribe => "UNSUBSCRIBE",
            Context::UnsubAck => "UNSUBACK",
            Context::Disconnect => "DISCONNECT",
            Context::Auth => "AUTH",
        }
    }
}

const ALL: u16 = 0x7FF;
const MESSAGE: u16 = Context::Publish as u16 | Context::Will as u16;
const REASON_STRING: u16 = Context::ConnAck as u16
    | Context::Ack as u16
    | Context::SubAck as u16
    | Context::UnsubAck as u16
    | Context::Disconnect as u16
    | Context::Auth as u16;

impl<'a> Property<'a> {
    /// The property identifier.
    pub fn id(&self) -> u8 {
        use Property::*;
        match self {
            PayloadFormatIndicator(_) => 0x01,
            MessageExpiryInterval(_) => 0x02,
            ContentType(_) => 0x03,
            ResponseTopic(_) => 0x08,
            CorrelationData(_) => 0x09,
            SubscriptionIdentifier(_) => 0x0B,
            SessionExpiryInterval(_) => 0x11,
            AssignedClientIdentifier(_) => 0x12,
            ServerKeepAlive(_) => 0x13,
            AuthenticationMethod(_) => 0x15,
            AuthenticationData(_) => 0x16,
            RequestProblemInformation(_) => 0x17,
            WillDelayInterval(_) => 0x18,
            RequestResponseInformation(_) => 0x19,
            ResponseInformation(_) => 0x1A,
            ServerReference(_) => 0x1C,
            ReasonString(_) => 0x1F,
            ReceiveMaximum(_) => 0x21,
            TopicAliasMaximum(_) => 0x22,
            TopicAlias(_) => 0x23,
            MaximumQoS(_) => 0x24,
            RetainAvailable(_) => 0x25,
            UserProperty(..) => 0x26,
            MaximumPacketSize(_) => 0x27,
            WildcardSubscriptionAvailable(_) => 0x28,
            SubscriptionIdentifierAvailable(_) => 0x29,
            SharedSubscriptionAvailable(_) => 0x2A,
        }
    }

    /// The packets this property may appear in.
    fn contexts(&self) -> u16 {
        use Context as C;
        use Property::*;
        match self {
            PayloadFormatIndicator(_)
            | MessageExpiryInterval(_)
            | ContentType(_)
            | ResponseTopic(_)
            | CorrelationData(_) => MESSAGE,
            SubscriptionIdentifier(_) => C::Publish as u16 | C::Subscribe as u16,
            SessionExpiryInterval(_) => {
                C::Connect as u16 | C::ConnAck as u16 | C::Disconnect as u16
            }
            AssignedClientIdentifier(_)
            | ServerKeepAlive(_)
            | ResponseInformation(_)
            | MaximumQoS(_)
            | RetainAvailable(_)
            | WildcardSubscriptionAvailable(_)
            | SubscriptionIdentifierAvailable(_)
            | SharedSubscriptionAvailable(_) => C::ConnAck as u16,
            AuthenticationMethod(_) | AuthenticationData(_) => {
                C::Connect as u16 | C::ConnAck as u16 | C::Auth as u16
            }
            RequestProblemInformation(_) | RequestResponseInformation(_) => C::Connect as u16,
            WillDelayInterval(_) => C::Will as u16,
            ServerReference(_) => C::ConnAck as u16 | C::Disconnect as u16,
            ReasonString(_) => REASON_STRING,
            ReceiveMaximum(_) | TopicAliasMaximum(_) | MaximumPacketSize(_) => {
                C::Connect as u16 | C::ConnAck as u16
            }
            TopicAlias(_) => C::Publish as u16,
            UserProperty(..) => ALL,
        }
    }

    /// Checks the property may appear in `context`, is not a forbidden repeat (`seen` holds
    /// one bit per identifier already met) and has an allowed value.
    fn validate(&self, context: Context, seen: &mut u64) -> Result<(), MqttError> {
        let (packet, id) = (context.name(), self.id());
        if self.contexts() & context as u16 == 0 {
            return Err(MqttError::PropertyNotAllowed { packet, id });
        }
        let repeatable = matches!(self, Property::UserProperty(..))
            || (matches!(self, Property::SubscriptionIdentifier(_)) && context == Context::Publish);
        if *seen & (1 << id) != 0 && !repeatable {
            return Err(MqttError::DuplicateProperty { packet, id });
        }
        *seen |= 1 << id;
        if !self.value_ok() {
            return Err(MqttError::BadPropertyValue { packet, id });
        }
        Ok(())
    }

    /// Values the specification forbids (a zero receive maximum, a boolean of 2, …).
    fn value_ok(&self) -> bool {
        use Property::*;
        match *self {
            PayloadFormatIndicator(b)
            | RequestProblemInformation(b)
            | RequestResponseInformation(b)
            | MaximumQoS(b)
            | RetainAvailable(b)
            | WildcardSubscriptionAvailable(b)
            | SubscriptionIdentifierAvailable(b)
            | SharedSubscriptionAvailable(b) => b <= 1,
            ReceiveMaximum(v) | TopicAlias(v) => v != 0,
            MaximumPacketSize(v) => v != 0,
            SubscriptionIdentifier(v) => (1..=MAX_VARINT).contains(&v),
            _ => true,
        }
    }

    fn value_len(&self) -> usize {
        use Property::*;
        match *self {
            PayloadFormatIndicator(_)
            | RequestProblemInformation(_)
            | RequestResponseInformation(_)
            | MaximumQoS(_)
            | RetainAvailable(_)
            | WildcardSubscriptionAvailable(_)
            | SubscriptionIdentifierAvailable(_)
            | SharedSubscriptionAvailable(_) => 1,
            ServerKeepAlive(_) | ReceiveMaximum(_) | TopicAliasMaximum(_) | TopicAlias(_) => 2,
            MessageExpiryInterval(_)
            | SessionExpiryInterval(_)
            | WillDelayInterval(_)
            | MaximumPacketSize(_) => 4,
            SubscriptionIdentifier(v) => varint_len(v as usize),
            ContentType(s)
            | ResponseTopic(s)
            | AssignedClientIdentifier(s)
            | AuthenticationMethod(s)
            | ResponseInformation(s)
            | ServerReference(s)
            | ReasonString(s) => 2 + s.len(),
            CorrelationData(b) | AuthenticationData(b) => 2 + b.len(),
            UserProperty(k, v) => 4 + k.len() + v.len(),
        }
    }

    fn read(r: &mut Reader<'a>) -> Result<Property<'a>, MqttError> {
        use Property::*;
        let id = r.u8("property identifier")?;
        let f = "property value";
        Ok(match id {
            0x01 => PayloadFormatIndicator(r.u8(f)?),
            0x02 => MessageExpiryInterval(r.u32(f)?),
            0x03 => ContentType(r.string(f)?),
            0x08 => ResponseTopic(r.string(f)?),
            0x09 => CorrelationData(r.binary(f)?),
            0x0B => SubscriptionIdentifier(r.varint(f)? as u32),
            0x11 => SessionExpiryInterval(r.u32(f)?),
            0x12 => AssignedClientIdentifier(r.string(f)?),
            0x13 => ServerKeepAlive(r.u16(f)?),
            0x15 => AuthenticationMethod(r.string(f)?),
            0x16 => AuthenticationData(r.binary(f)?),
            0x17 => RequestProblemInformation(r.u8(f)?),
            0x18 => WillDelayInterval(r.u32(f)?),
            0x19 => RequestResponseInformation(r.u8(f)?),
            0x1A => ResponseInformation(r.string(f)?),
            0x1C => ServerReference(r.string(f)?),
            0x1F => ReasonString(r.string(f)?),
            0x21 => ReceiveMaximum(r.u16(f)?),
            0x22 => TopicAliasMaximum(r.u16(f)?),
            0x23 => TopicAlias(r.u16(f)?),
            0x24 => MaximumQoS(r.u8(f)?),
            0x25 => RetainAvailable(r.u8(f)?),
            0x26 => UserProperty(r.string(f)?, r.string(f)?),
            0x27 => MaximumPacketSize(r.u32(f)?),
            0x28 => WildcardSubscriptionAvailable(r.u8(f)?),
            0x29 => SubscriptionIdentifierAvailable(r.u8(f)?),
            0x2A => SharedSubscriptionAvailable(r.u8(f)?),
            id => return Err(MqttError::UnknownProperty(id)),
        })
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), MqttError> {
        use Property::*;
        w.u8(self.id())?;
        let f = "property value";
        match *self {
            PayloadFormatIndicator(b)
            | RequestProblemInformation(b)
            | RequestResponseInformation(b)
            | MaximumQoS(b)
            | RetainAvailable(b)
            | WildcardSubscriptionAvailable(b)
            | SubscriptionIdentifierAvailable(b)
            | SharedSubscriptionAvailable(b) => w.u8(b),
            ServerKeepAlive(v) | ReceiveMaximum(v) | TopicAliasMaximum(v) | TopicAlias(v) => {
                w.u16(v)
            }
            MessageExpiryInterval(v)
            | SessionExpiryInterval(v)
            | WillDelayInterval(v)
            | MaximumPacketSize(v) => w.bytes(&v.to_be_bytes()),
            SubscriptionIdentifier(v) => w.varint(v as usize),
            ContentType(s)
            | ResponseTopic(s)
            | AssignedClientIdentifier(s)
            | AuthenticationMethod(s)
            | ResponseInformation(s)
            | ServerReference(s)
            | ReasonString(s) => w.string(s, f),
            CorrelationData(b) | AuthenticationData(b) => w.binary(b, f),
            UserProperty(k, v) => {
                w.string(k, f)?;
                w.string(v, f)
            }
        }
    }
}

/// The properties of one packet: validated wire bytes after parsing, or a caller slice to emit.
#[derive(Debug, Clone, Copy)]
pub struct Properties<'a>(Source<'a, Property<'a>>);

impl<'a> Properties<'a> {
    pub const EMPTY: Properties<'static> = Properties(Source::Slice(&[]));

    pub fn from_slice(s: &'a [Property<'a>]) -> Self {
        Properties(Source::Slice(s))
    }

    /// The properties in wire order.
    pub fn iter(&self) -> impl Iterator<Item = Property<'a>> + 'a {
        let (wire, slice): (&'a [u8], &'a [Property<'a>]) = match self.0 {
            Source::Wire(b) => (b, &[]),
            Source::Slice(s) => (&[], s),
        };
        let mut r = Reader::new(wire, "properties");
        let from_wire = core::iter::from_fn(move || {
            if r.is_empty() {
                return None;
            }
            Property::read(&mut r).ok()
        });
        from_wire.chain(slice.iter().copied())
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// Bytes of the property list, without its length prefix.
    fn body_len(&self) -> usize {
        self.iter().map(|p| 1 + p.value_len()).sum()
    }

    /// Bytes on the wire, length prefix included.
    fn encoded_len(&self) -> usize {
        let n = self.body_len();
        varint_len(n) + n
    }

    /// Reads a length-prefixed property list and validates it for `context`.
    fn read(r: &mut Reader<'a>, context: Context) -> Result<Properties<'a>, MqttError> {
        let len = r.varint("property length")?;
        let wire = r.bytes(len, "properties")?;
        let mut items = Reader::new(wire, context.name());
        let mut seen = 0u64;
        while !items.is_empty() {
            Property::read(&mut items)?.validate(context, &mut seen)?;
        }
        Ok(Properties(Source::Wire(wire)))
    }

    fn write(&self, w: &mut Writer<'_>) -> Result<(), MqttError> {
        w.varint(self.body_len())?;
        self.iter().try_for_each(|p| p.write(w))
    }
}

impl PartialEq for Properties<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Properties<'_> {}

/// Well-known reason codes (§2.4). Each packet accepts only its own subset.
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const GRANTED_QOS_1: u8 = 0x01;
    pub const GRANTED_QOS_2: u8 = 0x02;
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
    pub const REAUTHENTICATE: u8 = 0x19;
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const BANNED: u8 = 0x8A;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    pub const USE_ANOTHER_SERVER: u8 = 0x9C;
    pub const SERVER_MOVED: u8 = 0x9D;
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    pub const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;
}

/// Whether `code` is defined for the packet `kind` (the fixed-header type, 1–15).
fn reason_allowed(kind: u8, code: u8) -> bool {
    match kind {
        // CONNACK
        2 => matches!(code, 0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F),
        // PUBACK, PUBREC
        4 | 5 => matches!(
            code,
            0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
        ),
        // PUBREL, PUBCOMP
        6 | 7 => matches!(code, 0x00 | 0x92),
        // SUBACK
        9 => matches!(
            code,
            0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
        ),
        // UNSUBACK
        11 => matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91),
        // DISCONNECT
        14 => matches!(
            code,
            0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2
        ),
        // AUTH
        15 => matches!(code, 0x00 | 0x18 | 0x19),
        _ => false,
    }
}

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
    /// [`SubscribeFilters::iter_options`].
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

impl<'a> Packet5<'a> {
    /// Parses one packet from the front of `buf`, with the same contract as
    /// [`Packet::parse`](super::Packet::parse).
    pub fn parse(
        buf: &'a [u8],
        max_packet_size: usize,
    ) -> Result<Option<(Packet5<'a>, usize)>, MqttError> {
        let Some(framed) = frame(buf, max_packet_size, true)? else {
            return Ok(None);
        };
        let (kind, flags, total) = (framed.kind, framed.flags, framed.total);
        let name = NAMES[usize::from(kind)];
        let mut r = Reader::new(framed.body, name);
        let packet = match kind {
            1 => Packet5::Connect(parse_connect(&mut r)?),
            2 => {
                let flags = r.u8("acknowledge flags")?;
                if flags & 0xFE != 0 {
                    return Err(MqttError::BadConnAck("reserved flags are set"));
                }
                let reason = parse_reason(&mut r, kind)?;
                if reason != reason::SUCCESS && flags != 0 {
                    return Err(MqttError::BadConnAck("session present on a refusal"));
                }
                Packet5::ConnAck(ConnAck5 {
                    session_present: flags == 1,
                    reason,
                    properties: Properties::read(&mut r, Context::ConnAck)?,
                })
            }
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
                let (subscribe, properties) = parse_subscribe(&mut r)?;
                Packet5::Subscribe(subscribe, properties)
            }
            9 => Packet5::SubAck(parse_reason_list(&mut r, kind, Context::SubAck)?),
            10 => {
                let packet_id = r.packet_id()?;
                let properties = Properties::read(&mut r, Context::Unsubscribe)?;
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
                Packet5::Unsubscribe(
                    Unsubscribe {
                        packet_id,
                        filters: UnsubscribeFilters::from_wire(list),
                    },
                    properties,
                )
            }
            11 => Packet5::UnsubAck(parse_reason_list(&mut r, kind, Context::UnsubAck)?),
            12 => Packet5::PingReq,
            13 => Packet5::PingResp,
            14 => Packet5::Disconnect(parse_reason5(&mut r, kind, Context::Disconnect)?),
            _ => Packet5::Auth(parse_reason5(&mut r, kind, Context::Auth)?),
        };
        r.finish()?;
        Ok(Some((packet, total)))
    }

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
            Packet5::Publish(p, _) => {
                0x30 | u8::from(p.dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain)
            }
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
        let name = NAMES[usize::from(self.kind())];
        let props = |p: &Properties<'_>, context: Context| -> Result<(), MqttError> {
            let mut seen = 0u64;
            p.iter()
                .try_for_each(|prop| prop.validate(context, &mut seen))
        };
        let code = |reason: u8| {
            if reason_allowed(self.kind(), reason) {
                Ok(())
            } else {
                Err(MqttError::BadReasonCode {
                    packet: name,
                    code: reason,
                })
            }
        };
        let nonzero = |id: u16| {
            if id == 0 {
                Err(MqttError::ZeroPacketId { packet: name })
            } else {
                Ok(())
            }
        };
        match self {
            Packet5::Connect(c) => {
                if let Some(w) = &c.connect.will {
                    if !valid_topic_name(w.topic) {
                        return Err(MqttError::BadTopicName { packet: "CONNECT" });
                    }
                    props(&c.will_properties, Context::Will)?;
                } else if !c.will_properties.is_empty() {
                    return Err(MqttError::BadConnectFlags("will properties without a will"));
                }
                props(&c.properties, Context::Connect)
            }
            Packet5::ConnAck(a) => {
                code(a.reason)?;
                props(&a.properties, Context::ConnAck)
            }
            Packet5::Publish(p, properties) => {
                // The 3.1.1 rules for the topic, QoS and packet id are the same in 5, except
                // that a topic alias may stand in for the topic.
                let aliased = properties
                    .iter()
                    .any(|p| matches!(p, Property::TopicAlias(_)));
                if !(valid_topic_name(p.topic) || aliased && p.topic.is_empty()) {
                    return Err(MqttError::BadTopicName { packet: "PUBLISH" });
                }
                match (p.qos, p.packet_id) {
                    (QoS::AtMostOnce, None) if !p.dup => {}
                    (QoS::AtMostOnce, None) => {
                        return Err(MqttError::BadFlags {
                            packet: "PUBLISH",
                            flags: 0b1000,
                        })
                    }
                    (QoS::AtLeastOnce | QoS::ExactlyOnce, Some(id)) => nonzero(id)?,
                    _ => return Err(MqttError::PacketIdMismatch),
                }
                props(properties, Context::Publish)
            }
            Packet5::PubAck(a) | Packet5::PubRec(a) | Packet5::PubRel(a) | Packet5::PubComp(a) => {
                nonzero(a.packet_id)?;
                code(a.reason)?;
                props(&a.properties, Context::Ack)
            }
            Packet5::Subscribe(s, properties) => {
                nonzero(s.packet_id)?;
                if s.filters.is_empty() {
                    return Err(MqttError::EmptyList {
                        packet: "SUBSCRIBE",
                    });
                }
                if let Some(i) = s.filters.iter().position(|(f, _)| !valid_topic_filter(f)) {
                    return Err(MqttError::BadTopicFilter {
                        packet: "SUBSCRIBE",
                        index: i + 1,
                    });
                }
                props(properties, Context::Subscribe)
            }
            Packet5::SubAck(l) | Packet5::UnsubAck(l) => {
                nonzero(l.packet_id)?;
                if l.reasons.is_empty() {
                    return Err(MqttError::EmptyList { packet: name });
                }
                l.reasons.iter().try_for_each(|&r| code(r))?;
                let context = if self.kind() == 9 {
                    Context::SubAck
                } else {
                    Context::UnsubAck
                };
                props(&l.properties, context)
            }
            Packet5::Unsubscribe(u, properties) => {
                nonzero(u.packet_id)?;
                if u.filters.is_empty() {
                    return Err(MqttError::EmptyList {
                        packet: "UNSUBSCRIBE",
                    });
                }
                if let Some(i) = u.filters.iter().position(|f| !valid_topic_filter(f)) {
                    return Err(MqttError::BadTopicFilter {
                        packet: "UNSUBSCRIBE",
                        index: i + 1,
                    });
                }
                props(properties, Context::Unsubscribe)
            }
            Packet5::Disconnect(d) => {
                code(d.reason)?;
                props(&d.properties, Context::Disconnect)
            }
            Packet5::Auth(d) => {
                code(d.reason)?;
                props(&d.properties, Context::Auth)
            }
            Packet5::PingReq | Packet5::PingResp => Ok(()),
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Packet5::Connect(c) => {
                let connect = &c.connect;
                let mut n = 2 + 4 + 1 + 1 + 2 + c.properties.encoded_len();
                n += 2 + connect.client_id.len();
                if let Some(w) = &connect.will {
                    n += c.will_properties.encoded_len() + 2 + w.topic.len() + 2 + w.payload.len();
                }
                n += connect.username.map_or(0, |u| 2 + u.len());
                n + connect.password.map_or(0, |p| 2 + p.len())
            }
            Packet5::ConnAck(a) => 2 + a.properties.encoded_len(),
            Packet5::Publish(p, properties) => {
                2 + p.topic.len()
                    + usize::from(p.packet_id.is_some()) * 2
                    + properties.encoded_len()
                    + p.payload.len()
            }
            Packet5::PubAck(a) | Packet5::PubRec(a) | Packet5::PubRel(a) | Packet5::PubComp(a) => {
                ack_body_len(a)
            }
            Packet5::Subscribe(s, properties) => {
                2 + properties.encoded_len()
                    + s.filters
                        .iter()
                        .map(|(f, _)| 2 + f.len() + 1)
                        .sum::<usize>()
            }
            Packet5::SubAck(l) | Packet5::UnsubAck(l) => {
                2 + l.properties.encoded_len() + l.reasons.len()
            }
            Packet5::Unsubscribe(u, properties) => {
                2 + properties.encoded_len() + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>()
            }
            Packet5::PingReq | Packet5::PingResp => 0,
            Packet5::Disconnect(d) | Packet5::Auth(d) => {
                match (d.reason, d.properties.is_empty()) {
                    (reason::SUCCESS, true) => 0,
                    (_, true) => 1,
                    _ => 1 + d.properties.encoded_len(),
                }
            }
        }
    }

    fn emit_body(&self, w: &mut Writer<'_>) -> Result<(), MqttError> {
        match self {
            Packet5::Connect(c) => {
                let connect = &c.connect;
                w.string("MQTT", "protocol name")?;
                w.u8(5)?;
                let mut flags = u8::from(connect.clean_session) << 1;
                if let Some(will) = &connect.will {
                    flags |= 0b100 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
                }
                flags |= u8::from(connect.password.is_some()) << 6
                    | u8::from(connect.username.is_some()) << 7;
                w.u8(flags)?;
                w.u16(connect.keep_alive)?;
                c.properties.write(w)?;
                w.string(connect.client_id, "client id")?;
                if let Some(will) = &connect.will {
                    c.will_properties.write(w)?;
                    w.string(will.topic, "will topic")?;
                    w.binary(will.payload, "will payload")?;
                }
                if let Some(u) = connect.username {
                    w.string(u, "user name")?;
                }
                if let Some(p) = connect.password {
                    w.binary(p, "password")?;
                }
                Ok(())
            }
            Packet5::ConnAck(a) => {
                w.u8(u8::from(a.session_present))?;
                w.u8(a.reason)?;
                a.properties.write(w)
            }
            Packet5::Publish(p, properties) => {
                w.string(p.topic, "topic")?;
                if let Some(id) = p.packet_id {
                    w.u16(id)?;
                }
                properties.write(w)?;
                w.bytes(p.payload)
            }
            Packet5::PubAck(a) | Packet5::PubRec(a) | Packet5::PubRel(a) | Packet5::PubComp(a) => {
                w.u16(a.packet_id)?;
                let n = ack_body_len(a);
                if n > 2 {
                    w.u8(a.reason)?;
                }
                if n > 3 {
                    a.properties.write(w)?;
                }
                Ok(())
            }
            Packet5::Subscribe(s, properties) => {
                w.u16(s.packet_id)?;
                properties.write(w)?;
                for (f, o) in s.filters.iter_options() {
                    w.string(f, "topic filter")?;
                    w.u8(o)?;
                }
                Ok(())
            }
            Packet5::SubAck(l) | Packet5::UnsubAck(l) => {
                w.u16(l.packet_id)?;
                l.properties.write(w)?;
                w.bytes(l.reasons)
            }
            Packet5::Unsubscribe(u, properties) => {
                w.u16(u.packet_id)?;
                properties.write(w)?;
                for f in u.filters.iter() {
                    w.string(f, "topic filter")?;
                }
                Ok(())
            }
            Packet5::PingReq | Packet5::PingResp => Ok(()),
            Packet5::Disconnect(d) | Packet5::Auth(d) => {
                if self.body_len() > 0 {
                    w.u8(d.reason)?;
                }
                if self.body_len() > 1 {
                    d.properties.write(w)?;
                }
                Ok(())
            }
        }
    }
}

/// Short forms: no reason and no properties when the reason is success and nothing else is said.
fn ack_body_len(a: &Ack5<'_>) -> usize {
    match (a.reason, a.properties.is_empty()) {
        (reason::SUCCESS, true) => 2,
        (_, true) => 3,
        _ => 3 + a.properties.encoded_len(),
    }
}

fn parse_reason(r: &mut Reader<'_>, kind: u8) -> Result<u8, MqttError> {
    let code = r.u8("reason code")?;
    if reason_allowed(kind, code) {
        Ok(code)
    } else {
        Err(MqttError::BadReasonCode {
            packet: NAMES[usize::from(kind)],
            code,
        })
    }
}

fn parse_connect<'a>(r: &mut Reader<'a>) -> Result<Connect5<'a>, MqttError> {
    let name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    match (name, level) {
        ("MQTT", 5) => {}
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
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(MqttError::BadConnectFlags(
            "will QoS or retain set without a will",
        ));
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = Properties::read(r, Context::Connect)?;
    let client_id = r.string("client id")?;
    let (will, will_properties) = if will_flag {
        let qos = QoS::from_bits(will_qos).ok_or(MqttError::BadQoS { packet: "CONNECT" })?;
        let will_properties = Properties::read(r, Context::Will)?;
        let topic = r.string("will topic")?;
        if !valid_topic_name(topic) {
            return Err(MqttError::BadTopicName { packet: "CONNECT" });
        }
        let will = Will {
            topic,
            payload: r.binary("will payload")?,
            qos,
            retain: will_retain,
        };
        (Some(will), will_properties)
    } else {
        (None, Properties::EMPTY)
    };
    // Version 5 allows a password without a user name.
    let username = if flags & 0b1000_0000 != 0 {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if flags & 0b100_0000 != 0 {
        Some(r.binary("password")?)
    } else {
        None
    };
    Ok(Connect5 {
        connect: Connect {
            clean_session: flags & 0b10 != 0,
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

fn parse_publish<'a>(
    r: &mut Reader<'a>,
    flags: u8,
) -> Result<(Publish<'a>, Properties<'a>), MqttError> {
    let qos = QoS::from_bits((flags >> 1) & 0b11).ok_or(MqttError::BadQoS { packet: "PUBLISH" })?;
    let dup = flags & 0b1000 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(MqttError::BadFlags {
            packet: "PUBLISH",
            flags,
        });
    }
    let topic = r.string("topic")?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(r.packet_id()?)
    };
    let properties = Properties::read(r, Context::Publish)?;
    // An empty topic is allowed only when a topic alias stands in for it.
    let aliased = properties
        .iter()
        .any(|p| matches!(p, Property::TopicAlias(_)));
    if !(valid_topic_name(topic) || aliased && topic.is_empty()) {
        return Err(MqttError::BadTopicName { packet: "PUBLISH" });
    }
    let publish = Publish {
        dup,
        qos,
        retain: flags & 1 != 0,
        topic,
        packet_id,
        payload: r.rest(),
    };
    Ok((publish, properties))
}

fn parse_ack<'a>(r: &mut Reader<'a>, kind: u8) -> Result<Ack5<'a>, MqttError> {
    let packet_id = r.packet_id()?;
    let reason = if r.is_empty() {
        reason::SUCCESS
    } else {
        parse_reason(r, kind)?
    };
    let properties = if r.is_empty() {
        Properties::EMPTY
    } else {
        Properties::read(r, Context::Ack)?
    };
    Ok(Ack5 {
        packet_id,
        reason,
        properties,
    })
}

fn parse_reason5<'a>(
    r: &mut Reader<'a>,
    kind: u8,
    context: Context,
) -> Result<Reason5<'a>, MqttError> {
    let reason = if r.is_empty() {
        reason::SUCCESS
    } else {
        parse_reason(r, kind)?
    };
    let properties = if r.is_empty() {
        Properties::EMPTY
    } else {
        Properties::read(r, context)?
    };
    Ok(Reason5 { reason, properties })
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
    if let Some(&code) = reasons.iter().find(|&&c| !reason_allowed(kind, c)) {
        return Err(MqttError::BadReasonCode {
            packet: NAMES[usize::from(kind)],
            code,
        });
    }
    Ok(ReasonList {
        packet_id,
        properties,
        reasons,
    })
}

fn parse_subscribe<'a>(r: &mut Reader<'a>) -> Result<(Subscribe<'a>, Properties<'a>), MqttError> {
    let packet_id = r.packet_id()?;
    let properties = Properties::read(r, Context::Subscribe)?;
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
        let o = items.u8("subscription options")?;
        // Reserved bits 6 and 7; retain handling 3 is not defined.
        if o & 0xC0 != 0 || (o >> options::RETAIN_HANDLING_SHIFT) & 0b11 == 3 {
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
    let subscribe = Subscribe {
        packet_id,
        filters: SubscribeFilters::from_wire(list),
    };
    Ok((subscribe, properties))
}

#[cfg(test)]
mod tests;
