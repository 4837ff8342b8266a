//! What a client asked for when it subscribed: the subscription options of MQTT 5 §3.8.3.1
//! (a 3.1.1 subscription is the same record with every option at its default).

use std::num::NonZeroU32;

use fleet_protocol::mqtt::{v5::options, QoS};

/// When retained messages are sent for a subscription (Retain Handling, §3.8.3.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RetainHandling {
    /// 0: at every SUBSCRIBE, new or repeated.
    #[default]
    OnSubscribe,
    /// 1: only when the subscription did not exist before.
    OnNewSubscription,
    /// 2: never.
    Never,
}

/// One granted subscription: what the topic tree keeps per (session, filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    /// The granted (maximum) QoS: a message is delivered at the lower of this and its own.
    pub qos: QoS,
    /// Messages published by this same client id are not delivered to it.
    pub no_local: bool,
    /// Live deliveries keep the RETAIN flag the publisher set (otherwise it is cleared).
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
    /// The Subscription Identifier sent back with every message this subscription matches.
    pub id: Option<NonZeroU32>,
}

impl Subscription {
    /// A subscription with the 3.1.1 semantics: every version 5 option at its default.
    pub fn new(qos: QoS) -> Subscription {
        Subscription {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::OnSubscribe,
            id: None,
        }
    }

    /// Reads a SUBSCRIBE options byte (a 3.1.1 byte is the QoS alone, the other bits zero).
    /// `None` for what §3.8.3.1 calls malformed: QoS 3, Retain Handling 3, reserved bits.
    pub fn from_options(byte: u8, id: Option<NonZeroU32>) -> Option<Subscription> {
        if byte & 0b1100_0000 != 0 {
            return None;
        }
        let retain_handling = match (byte >> options::RETAIN_HANDLING_SHIFT) & 0b11 {
            0 => RetainHandling::OnSubscribe,
            1 => RetainHandling::OnNewSubscription,
            2 => RetainHandling::Never,
            _ => return None,
        };
        Some(Subscription {
            qos: QoS::from_bits(byte & 0b11)?,
            no_local: byte & options::NO_LOCAL != 0,
            retain_as_published: byte & options::RETAIN_AS_PUBLISHED != 0,
            retain_handling,
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_byte_round_trips_the_v5_bits() {
        // §3.8.3.1: bits 0-1 QoS, 2 No Local, 3 Retain As Published, 4-5 Retain Handling.
        let s = Subscription::from_options(0b0010_1110, NonZeroU32::new(7)).unwrap();
        assert_eq!(s.qos, QoS::ExactlyOnce);
        assert!(s.no_local && s.retain_as_published);
        assert_eq!(s.retain_handling, RetainHandling::Never);
        assert_eq!(s.id, NonZeroU32::new(7));
        assert_eq!(
            Subscription::from_options(1, None),
            Some(Subscription::new(QoS::AtLeastOnce))
        );
        let one = Subscription::from_options(0b0001_0000, None).unwrap();
        assert_eq!(one.retain_handling, RetainHandling::OnNewSubscription);
        // Malformed: QoS 3, Retain Handling 3, reserved bits 6-7.
        for bad in [0b11, 0b0011_0000, 0b0100_0000, 0b1000_0001] {
            assert_eq!(Subscription::from_options(bad, None), None, "{bad:#010b}");
        }
    }
}
