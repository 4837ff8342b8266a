//! Byte vectors assembled by hand from the MQTT 5.0 specification's field layouts.

extern crate std;
use std::vec::Vec;

use super::*;
use crate::mqtt::{MqttError, QoS, SubscribeFilters, UnsubscribeFilters, Will};

const MAX: usize = 64 * 1024;

fn parse(bytes: &[u8]) -> Packet5<'_> {
    let (p, n) = Packet5::parse(bytes, MAX)
        .expect("valid")
        .expect("complete");
    assert_eq!(n, bytes.len(), "consumed");
    p
}

fn emit(p: &Packet5<'_>) -> Vec<u8> {
    let mut out = std::vec![0u8; p.encoded_len()];
    let n = p.emit(&mut out).expect("emit");
    assert_eq!(n, out.len(), "encoded_len matches emit");
    out
}

fn both_ways(bytes: &[u8], packet: Packet5<'_>) {
    assert_eq!(parse(bytes), packet);
    assert_eq!(emit(&packet), bytes);
}

fn refused(bytes: &[u8]) -> MqttError {
    match Packet5::parse(bytes, MAX) {
        Err(e) => e,
        Ok(p) => panic!("{bytes:02x?} parsed as {p:?}"),
    }
}

const SESSION_60: [Property<'static>; 1] = [Property::SessionExpiryInterval(60)];

#[test]
fn connect_with_properties() {
    let bytes = [
        &[0x10, 20, 0, 4][..],
        b"MQTT",
        &[5, 0x02, 0, 30, 5, 0x11, 0, 0, 0, 60, 0, 2],
        b"d1",
    ]
    .concat();
    both_ways(
        &bytes,
        Packet5::Connect(Connect5 {
            connect: Connect {
                clean_session: true,
                keep_alive: 30,
                client_id: "d1",
                will: None,
                username: None,
                password: None,
            },
            properties: Properties::from_slice(&SESSION_60),
            will_properties: Properties::EMPTY,
        }),
    );
}

#[test]
fn connect_with_will_properties_and_password_only() {
    let will_props = [Property::WillDelayInterval(5)];
    let bytes = [
        &[0x10, 35, 0, 4][..],
        b"MQTT",
        // will QoS 1, will flag, password flag; no user name (allowed in 5)
        &[5, 0b0100_1100, 0, 0, 0, 0, 2],
        b"d1",
        &[5, 0x18, 0, 0, 0, 5, 0, 3],
        b"w/t",
        &[0, 3],
        b"bye",
        &[0, 2],
        b"pw",
    ]
    .concat();
    both_ways(
        &bytes,
        Packet5::Connect(Connect5 {
            connect: Connect {
                clean_session: false,
                keep_alive: 0,
                client_id: "d1",
                will: Some(Will {
                    topic: "w/t",
                    payload: b"bye",
                    qos: QoS::AtLeastOnce,
                    retain: false,
                }),
                username: None,
                password: Some(b"pw"),
            },
            properties: Properties::EMPTY,
            will_properties: Properties::from_slice(&will_props),
        }),
    );
}

#[test]
fn connack_refusal_with_reason_string() {
    let props = [Property::ReasonString("no")];
    both_ways(
        &[0x20, 8, 0, 0x87, 5, 0x1F, 0, 2, b'n', b'o'],
        Packet5::ConnAck(ConnAck5 {
            session_present: false,
            reason: reason::NOT_AUTHORIZED,
            properties: Properties::from_slice(&props),
        }),
    );
}

#[test]
fn publish_with_properties() {
    let props = [
        Property::ContentType("t"),
        Property::UserProperty("k", "v"),
        Property::UserProperty("k", "w"),
    ];
    let bytes = [
        &[0x32, 28, 0, 3][..],
        b"a/b",
        &[0, 7, 18, 0x03, 0, 1, b't'],
        &[0x26, 0, 1, b'k', 0, 1, b'v', 0x26, 0, 1, b'k', 0, 1, b'w'],
        b"hi",
    ]
    .concat();
    both_ways(
        &bytes,
        Packet5::Publish(
            Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: "a/b",
                packet_id: Some(7),
                payload: b"hi",
            },
            Properties::from_slice(&props),
        ),
    );
}

#[test]
fn acknowledgements_use_the_short_forms() {
    both_ways(&[0x40, 2, 0, 7], Packet5::PubAck(Ack5::success(7)));
    let denied = Ack5 {
        packet_id: 7,
        reason: reason::NOT_AUTHORIZED,
        properties: Properties::EMPTY,
    };
    both_ways(&[0x40, 3, 0, 7, 0x87], Packet5::PubAck(denied));
    both_ways(&[0x50, 3, 0, 7, 0x87], Packet5::PubRec(denied));
    // A reason with an empty property list is accepted and re-emitted in the short form.
    let long = [0x40, 4, 0, 7, 0x10, 0];
    let p = parse(&long);
    assert_eq!(
        p,
        Packet5::PubAck(Ack5 {
            packet_id: 7,
            reason: reason::NO_MATCHING_SUBSCRIBERS,
            properties: Properties::EMPTY
        })
    );
    assert_eq!(emit(&p), [0x40, 3, 0, 7, 0x10]);
    both_ways(&[0x62, 2, 0, 9], Packet5::PubRel(Ack5::success(9)));
    both_ways(&[0x70, 2, 0, 9], Packet5::PubComp(Ack5::success(9)));
}

#[test]
fn subscribe_keeps_every_option_bit() {
    let sub_id = [Property::SubscriptionIdentifier(200)];
    let bytes = [
        &[0x82, 12, 0, 1, 3, 0x0B, 0xC8, 0x01, 0, 3][..],
        b"a/#",
        &[0b0010_1101],
    ]
    .concat();
    let Packet5::Subscribe(s, props) = parse(&bytes) else {
        panic!("not a SUBSCRIBE")
    };
    assert_eq!(s.packet_id, 1);
    assert_eq!(props, Properties::from_slice(&sub_id));
    assert_eq!(
        s.filters.iter().collect::<Vec<_>>(),
        [("a/#", QoS::AtLeastOnce)]
    );
    assert_eq!(
        s.filters.iter_options().collect::<Vec<_>>(),
        [("a/#", 0b0010_1101)]
    );
    assert_eq!(emit(&Packet5::Subscribe(s, props)), bytes);
    let list = [("x/+", QoS::ExactlyOnce)];
    both_ways(
        &[0x82, 9, 0, 2, 0, 0, 3, b'x', b'/', b'+', 2],
        Packet5::Subscribe(
            Subscribe {
                packet_id: 2,
                filters: SubscribeFilters::from_slice(&list),
            },
            Properties::EMPTY,
        ),
    );
}

#[test]
fn suback_and_unsuback_carry_reason_lists() {
    both_ways(
        &[0x90, 5, 0, 1, 0, 0x01, 0x87],
        Packet5::SubAck(ReasonList {
            packet_id: 1,
            properties: Properties::EMPTY,
            reasons: &[reason::GRANTED_QOS_1, reason::NOT_AUTHORIZED],
        }),
    );
    both_ways(
        &[0xB0, 4, 0, 3, 0, 0x11],
        Packet5::UnsubAck(ReasonList {
            packet_id: 3,
            properties: Properties::EMPTY,
            reasons: &[reason::NO_SUBSCRIPTION_EXISTED],
        }),
    );
    let filters = ["a/#"];
    both_ways(
        &[0xA2, 8, 0, 4, 0, 0, 3, b'a', b'/', b'#'],
        Packet5::Unsubscribe(
            Unsubscribe {
                packet_id: 4,
                filters: UnsubscribeFilters::from_slice(&filters),
            },
            Properties::EMPTY,
        ),
    );
}

#[test]
fn disconnect_and_auth_short_forms() {
    let normal = Reason5 {
        reason: reason::SUCCESS,
        properties: Properties::EMPTY,
    };
    both_ways(&[0xE0, 0], Packet5::Disconnect(normal));
    both_ways(
        &[0xE0, 1, 0x96],
        Packet5::Disconnect(Reason5 {
            reason: reason::MESSAGE_RATE_TOO_HIGH,
            properties: Properties::EMPTY,
        }),
    );
    let why = [Property::ReasonString("revoked")];
    both_ways(
        &[&[0xE0, 12, 0x98, 10, 0x1F, 0, 7][..], b"revoked"].concat(),
        Packet5::Disconnect(Reason5 {
            reason: reason::ADMINISTRATIVE_ACTION,
            properties: Properties::from_slice(&why),
        }),
    );
    assert_eq!(parse(&[0xE0, 2, 0x04, 0]), {
        Packet5::Disconnect(Reason5 {
            reason: reason::DISCONNECT_WITH_WILL,
            properties: Properties::EMPTY,
        })
    });
    both_ways(&[0xF0, 0], Packet5::Auth(normal));
    both_ways(&[0xC0, 0], Packet5::PingReq);
    both_ways(&[0xD0, 0], Packet5::PingResp);
}

#[test]
fn an_alias_may_stand_in_for_the_topic() {
    let alias = [Property::TopicAlias(1)];
    both_ways(
        &[0x30, 6, 0, 0, 3, 0x23, 0, 1],
        Packet5::Publish(
            Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "",
                packet_id: None,
                payload: b"",
            },
            Properties::from_slice(&alias),
        ),
    );
    assert_eq!(
        refused(&[0x30, 3, 0, 0, 0]),
        MqttError::BadTopicName { packet: "PUBLISH" }
    );
}

#[test]
fn malformed_properties_are_refused() {
    let connect = |props: &[u8]| {
        [
            &[0x10, (13 + props.len()) as u8, 0, 4][..],
            b"MQTT",
            &[5, 2, 0, 0, props.len() as u8],
            props,
            &[0, 0],
        ]
        .concat()
    };
    assert!(matches!(parse(&connect(&[])), Packet5::Connect(_)));
    assert_eq!(
        refused(&connect(&[0x23, 0, 1])),
        MqttError::PropertyNotAllowed {
            packet: "CONNECT",
            id: 0x23
        }
    );
    assert_eq!(
        refused(&connect(&[0x21, 0, 1, 0x21, 0, 2])),
        MqttError::DuplicateProperty {
            packet: "CONNECT",
            id: 0x21
        }
    );
    assert_eq!(
        refused(&connect(&[0x21, 0, 0])),
        MqttError::BadPropertyValue {
            packet: "CONNECT",
            id: 0x21
        }
    );
    assert_eq!(
        refused(&connect(&[0x17, 2])),
        MqttError::BadPropertyValue {
            packet: "CONNECT",
            id: 0x17
        }
    );
    assert_eq!(
        refused(&connect(&[0x7F, 0])),
        MqttError::UnknownProperty(0x7F)
    );
    // The property list claims more bytes than the packet has.
    assert!(matches!(
        refused(&[0x40, 5, 0, 7, 0x00, 9, 0x1F]),
        MqttError::Truncated { .. }
    ));
    // A reason the packet does not define.
    assert_eq!(
        refused(&[0x40, 3, 0, 7, 0x05]),
        MqttError::BadReasonCode {
            packet: "PUBACK",
            code: 5
        }
    );
    assert_eq!(
        refused(&[0x90, 4, 0, 1, 0, 0x03]),
        MqttError::BadReasonCode {
            packet: "SUBACK",
            code: 3
        }
    );
    // Retain handling 3 and reserved option bits.
    for options in [0b0011_0000, 0b0100_0000] {
        assert_eq!(
            refused(&[0x82, 7, 0, 1, 0, 0, 1, b'a', options]),
            MqttError::BadSubscriptionOptions { index: 1 }
        );
    }
    // A level-4 CONNECT is not version 5.
    assert_eq!(
        refused(&[&[0x10, 12, 0, 4][..], b"MQTT", &[4, 2, 0, 0, 0, 0]].concat()),
        MqttError::UnsupportedProtocolLevel(4)
    );
}

#[test]
fn emit_refuses_what_parse_would() {
    let mut out = [0u8; 64];
    let bad = [Property::TopicAlias(0)];
    let p = Packet5::Publish(
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "a",
            packet_id: None,
            payload: b"",
        },
        Properties::from_slice(&bad),
    );
    assert!(matches!(
        p.emit(&mut out),
        Err(MqttError::BadPropertyValue { id: 0x23, .. })
    ));
    let wrong_place = [Property::AssignedClientIdentifier("x")];
    let p = Packet5::Disconnect(Reason5 {
        reason: 0,
        properties: Properties::from_slice(&wrong_place),
    });
    assert!(matches!(
        p.emit(&mut out),
        Err(MqttError::PropertyNotAllowed { id: 0x12, .. })
    ));
    let p = Packet5::PubAck(Ack5 {
        packet_id: 1,
        reason: 0x8E,
        properties: Properties::EMPTY,
    });
    assert!(matches!(
        p.emit(&mut out),
        Err(MqttError::BadReasonCode { code: 0x8E, .. })
    ));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), max in 0usize..400) {
            let mut rest = &data[..];
            while let Ok(Some((_, n))) = Packet5::parse(rest, max) {
                rest = &rest[n..];
            }
        }

        /// Whatever parses re-emits to bytes that parse to the same packet.
        #[test]
        fn parsed_packets_round_trip(kind in 1u8..16, flags in 0u8..16, body in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut bytes = std::vec![kind << 4 | flags, body.len() as u8];
            bytes.extend_from_slice(&body);
            if let Ok(Some((p, _))) = Packet5::parse(&bytes, MAX) {
                let again = emit(&p);
                prop_assert_eq!(parse(&again), p);
            }
        }

        #[test]
        fn publish_round_trips(
            topic in "[a-z0-9/$ ]{1,40}",
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            expiry: u32, id in 1u16.., ct in "[a-z/]{0,20}",
        ) {
            let props = [Property::MessageExpiryInterval(expiry), Property::ContentType(&ct)];
            let p = Packet5::Publish(Publish {
                dup: false, qos: QoS::AtLeastOnce, retain: false, topic: &topic,
                packet_id: Some(id), payload: &payload,
            }, Properties::from_slice(&props));
            let bytes = emit(&p);
            prop_assert_eq!(parse(&bytes), p);
        }
    }
}
