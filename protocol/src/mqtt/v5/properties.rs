//! Version 5 properties (§2.2.2): what each is, where it may appear, how it is read and written.

use crate::mqtt::list::Source;
use crate::mqtt::wire::{varint_len, Reader, Writer};
use crate::mqtt::MqttError;

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
    pub(crate) fn encoded_len(&self) -> usize {
        let n = self.body_len();
        varint_len(n) + n
    }

    /// Reads a length-prefixed property list and validates it for `context`.
    pub(crate) fn read(r: &mut Reader<'a>, context: Context) -> Result<Properties<'a>, MqttError> {
        let len = r.varint("property length")?;
        let wire = r.bytes(len, "properties")?;
        let mut items = Reader::new(wire, context.name());
        let mut seen = 0u64;
        while !items.is_empty() {
            Property::read(&mut items)?.validate(context, &mut seen)?;
        }
        Ok(Properties(Source::Wire(wire)))
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), MqttError> {
        w.varint(self.body_len())?;
        self.iter().try_for_each(|p| p.write(w))
    }
}

impl Properties<'_> {
    /// Everything `read` checks, for properties a caller built: each may appear in
    /// `context`, none is a forbidden repeat, every value is in range.
    pub(crate) fn check(&self, context: Context) -> Result<(), MqttError> {
        let mut seen = 0u64;
        self.iter()
            .try_for_each(|prop| prop.validate(context, &mut seen))
    }

    /// Whether a topic alias stands in for the PUBLISH topic.
    pub(crate) fn has_topic_alias(&self) -> bool {
        self.iter().any(|p| matches!(p, Property::TopicAlias(_)))
    }
}

impl PartialEq for Properties<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Properties<'_> {}
