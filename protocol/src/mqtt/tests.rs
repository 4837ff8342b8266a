//! Byte vectors assembled by hand from the MQTT 3.1.1 specification's field layouts.

extern crate std;
use std::vec::Vec;

use super::wire::{read_varint, Writer};
use super::*;

const MAX: usize = 64 * 1024;

fn parse(bytes: &[u8]) -> Packet<'_> {
    let (p, n) = Packet::parse(bytes, MAX).expect("valid").expect("complete");
    assert_eq!(n, bytes.len(), "consumed");
    p
}

fn emit(p: &Packet<'_>) -> Vec<u8> {
    let mut out = std::vec![0u8; p.encoded_len()];
    let n = p.emit(&mut out).expect("emit");
    assert_eq!(n, out.len(), "encoded_len matches emit");
    out
}

fn both_ways(bytes: &[u8], packet: Packet<'_>) {
    assert_eq!(parse(bytes), packet);
    assert_eq!(emit(&packet), bytes);
}

const FILTERS: [(&str, QoS); 2] = [("a/#", QoS::AtLeastOnce), ("b/+", QoS::AtMostOnce)];
const CODES: [SubAckCode; 2] = [SubAckCode::Granted(QoS::AtLeastOnce), SubAckCode::Failure];

fn vectors() -> Vec<(Vec<u8>, Packet<'static>)> {
    std::vec![
        (
            [
                &[0x10, 36, 0, 4][..],
                b"MQTT",
                &[4, 0xEE, 0, 60, 0, 4],
                b"dev1",
                &[0, 3],
                b"w/t",
                &[0, 3],
                b"bye",
                &[0, 4],
                b"user",
                &[0, 2],
                b"pw",
            ]
            .concat(),
            Packet::Connect(Connect {
                clean_session: true,
                keep_alive: 60,
                client_id: "dev1",
                will: Some(Will {
                    topic: "w/t",
                    payload: b"bye",
                    qos: QoS::AtLeastOnce,
                    retain: true
                }),
                username: Some("user"),
                password: Some(b"pw"),
            }),
        ),
        (
            [&[0x10, 12, 0, 4][..], b"MQTT", &[4, 0x02, 0, 30, 0, 0]].concat(),
            Packet::Connect(Connect {
                clean_session: true,
                keep_alive: 30,
                client_id: "",
                will: None,
                username: None,
                password: None,
            }),
        ),
        (
            std::vec![0x20, 2, 1, 0],
            Packet::ConnAck(ConnAck {
                session_present: true,
                code: ConnectReturnCode::Accepted
            }),
        ),
        (
            std::vec![0x20, 2, 0, 5],
            Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized
            }),
        ),
        (
            [&[0x30, 7, 0, 3][..], b"a/b", b"hi"].concat(),
            Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "a/b",
                packet_id: None,
                payload: b"hi",
            }),
        ),
        (
            [&[0x3B, 9, 0, 3][..], b"a/b", &[0, 10], b"hi"].concat(),
            Packet::Publish(Publish {
                dup: true,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: "a/b",
                packet_id: Some(10),
                payload: b"hi",
            }),
        ),
        (std::vec![0x40, 2, 0, 5], Packet::PubAck(5)),
        (std::vec![0x50, 2, 0, 5], Packet::PubRec(5)),
        (std::vec![0x62, 2, 0, 5], Packet::PubRel(5)),
        (std::vec![0x70, 2, 0, 5], Packet::PubComp(5)),
        (
            [
                &[0x82, 14, 0, 1, 0, 3][..],
                b"a/#",
                &[1, 0, 3],
                b"b/+",
                &[0]
            ]
            .concat(),
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                filters: SubscribeFilters::from_slice(&FILTERS)
            }),
        ),
        (
            std::vec![0x90, 4, 0, 1, 1, 0x80],
            Packet::SubAck(SubAck {
                packet_id: 1,
                return_codes: SubAckCodes::from_slice(&CODES)
            }),
        ),
        (
            [&[0xA2, 7, 0, 2, 0, 3][..], b"a/#"].concat(),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 2,
                filters: UnsubscribeFilters::from_slice(&["a/#"]),
            }),
        ),
        (std::vec![0xB0, 2, 0, 2], Packet::UnsubAck(2)),
        (std::vec![0xC0, 0], Packet::PingReq),
        (std::vec![0xD0, 0], Packet::PingResp),
        (std::vec![0xE0, 0], Packet::Disconnect),
    ]
}

#[test]
fn every_packet_type_both_ways() {
    for (bytes, packet) in vectors() {
        both_ways(&bytes, packet);
    }
}

#[test]
fn parsed_lists_iterate_like_the_slices() {
    let bytes = [
        &[0x82, 14, 0, 1, 0, 3][..],
        b"a/#",
        &[1, 0, 3],
        b"b/+",
        &[0],
    ]
    .concat();
    let Packet::Subscribe(s) = parse(&bytes) else {
        panic!()
    };
    assert_eq!(s.filters.iter().collect::<Vec<_>>(), FILTERS);
    assert_eq!(s.filters.len(), 2);
}

#[test]
fn every_prefix_is_incomplete_and_packets_parse_in_sequence() {
    let stream: Vec<u8> = vectors().into_iter().flat_map(|(b, _)| b).collect();
    let mut pos = 0;
    for (bytes, packet) in vectors() {
        for cut in 0..bytes.len() {
            assert_eq!(
                Packet::parse(&stream[pos..pos + cut], MAX),
                Ok(None),
                "prefix {cut} of {packet:?}"
            );
        }
        let (p, n) = Packet::parse(&stream[pos..], MAX).unwrap().unwrap();
        assert_eq!((p, n), (packet, bytes.len()));
        pos += n;
    }
    assert_eq!(pos, stream.len());
}

#[test]
fn remaining_length_table() {
    for (value, bytes) in [
        (0usize, &[0x00][..]),
        (127, &[0x7F]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xFF, 0x7F]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xFF, 0xFF, 0x7F]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ] {
        assert_eq!(
            read_varint(bytes),
            Ok(Some((value, bytes.len()))),
            "{value}"
        );
        let mut out = [0u8; 4];
        let mut w = Writer::new(&mut out);
        w.varint(value).unwrap();
        let used = w.pos;
        assert_eq!(&out[..used], bytes, "{value}");
    }
    assert_eq!(
        read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        Err(MqttError::MalformedRemainingLength)
    );
    assert_eq!(read_varint(&[0x80, 0x80]), Ok(None));
}

#[test]
fn oversized_packets_are_refused_from_the_header_alone() {
    assert_eq!(
        Packet::parse(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], 1024),
        Err(MqttError::PacketTooLarge {
            size: 268_435_460,
            max: 1024
        })
    );
    assert_eq!(
        Packet::parse(&[0x30, 0x80, 0x08], 1024),
        Err(MqttError::PacketTooLarge {
            size: 1027,
            max: 1024
        })
    );
}

fn err(bytes: &[u8]) -> MqttError {
    Packet::parse(bytes, MAX).expect_err("must be refused")
}

#[test]
fn malformed_packets_are_refused() {
    use MqttError::*;
    let connect = |name: &[u8], level: u8, flags: u8, rest: &[u8]| -> Vec<u8> {
        let body = [
            &[0, name.len() as u8][..],
            name,
            &[level, flags, 0, 30],
            rest,
        ]
        .concat();
        [&[0x10, body.len() as u8][..], &body].concat()
    };
    assert_eq!(err(&[0x00, 0]), ReservedPacketType(0));
    assert_eq!(err(&[0xF0, 0]), ReservedPacketType(15));
    assert_eq!(
        err(&[0x60, 2, 0, 1]),
        BadFlags {
            packet: "PUBREL",
            flags: 0
        }
    );
    assert_eq!(
        err(&[0x80, 6, 0, 1, 0, 1, b'a', 0]),
        BadFlags {
            packet: "SUBSCRIBE",
            flags: 0
        }
    );
    assert_eq!(
        err(&[0xC1, 0]),
        BadFlags {
            packet: "PINGREQ",
            flags: 1
        }
    );
    assert_eq!(
        err(&[0x36, 5, 0, 1, b'a', 0, 1]),
        BadQoS { packet: "PUBLISH" }
    );
    assert_eq!(
        err(&[0x38, 4, 0, 1, b'a', b'x']),
        BadFlags {
            packet: "PUBLISH",
            flags: 8
        }
    );
    assert_eq!(
        err(&[0x32, 5, 0, 1, b'a', 0, 0]),
        ZeroPacketId { packet: "PUBLISH" }
    );
    assert_eq!(
        err(&[0x30, 5, 0, 3, b'a', b'/', b'+']),
        BadTopicName { packet: "PUBLISH" }
    );
    assert_eq!(
        err(&[0x30, 3, 0, 1, 0xFF]),
        BadString {
            packet: "PUBLISH",
            field: "topic"
        }
    );
    assert_eq!(
        err(&[0x30, 3, 0, 1, 0x00]),
        BadString {
            packet: "PUBLISH",
            field: "topic"
        }
    );
    assert_eq!(
        err(&[0x30, 2, 0, 5]),
        Truncated {
            packet: "PUBLISH",
            field: "topic"
        }
    );
    assert_eq!(err(&[0x40, 3, 0, 1, 9]), TrailingBytes { packet: "PUBACK" });
    assert_eq!(
        err(&[0x40, 1, 0]),
        Truncated {
            packet: "PUBACK",
            field: "packet identifier"
        }
    );
    assert_eq!(err(&[0x40, 2, 0, 0]), ZeroPacketId { packet: "PUBACK" });
    assert_eq!(
        err(&[0xE0, 1, 0]),
        TrailingBytes {
            packet: "DISCONNECT"
        }
    );
    assert_eq!(
        err(&connect(b"MQTT", 5, 2, &[0, 0])),
        UnsupportedProtocolLevel(5)
    );
    assert_eq!(err(&connect(b"HTTP", 4, 2, &[0, 0])), BadProtocolName);
    assert!(matches!(
        err(&connect(b"MQTT", 4, 3, &[0, 0])),
        BadConnectFlags(_)
    ));
    assert!(matches!(
        err(&connect(b"MQTT", 4, 0x10, &[0, 0])),
        BadConnectFlags(_)
    ));
    assert!(matches!(
        err(&connect(b"MQTT", 4, 0x20, &[0, 0])),
        BadConnectFlags(_)
    ));
    assert!(matches!(
        err(&connect(b"MQTT", 4, 0x40, &[0, 0, 0, 0])),
        BadConnectFlags(_)
    ));
    assert_eq!(
        err(&connect(b"MQTT", 4, 0x1C, &[0, 0, 0, 1, b'w', 0, 0])),
        BadQoS { packet: "CONNECT" }
    );
    assert_eq!(
        err(&connect(b"MQTT", 4, 0x04, &[0, 0, 0, 1, b'#', 0, 0])),
        BadTopicName { packet: "CONNECT" }
    );
    assert_eq!(
        err(&connect(b"MQTT", 4, 0x02, &[0, 0, 7])),
        TrailingBytes { packet: "CONNECT" }
    );
    assert!(Packet::parse(&connect(b"MQIsdp", 3, 2, &[0, 0]), MAX)
        .unwrap()
        .is_some());
    assert_eq!(err(&[0x20, 2, 2, 0]), BadConnAck("reserved flags are set"));
    assert_eq!(err(&[0x20, 2, 0, 6]), BadConnAck("unknown return code"));
    assert_eq!(
        err(&[0x20, 2, 1, 5]),
        BadConnAck("session present on a refusal")
    );
    assert_eq!(
        err(&[0x82, 2, 0, 1]),
        EmptyList {
            packet: "SUBSCRIBE"
        }
    );
    assert_eq!(
        err(&[0x82, 6, 0, 1, 0, 1, b'a', 4]),
        BadSubscriptionOptions { index: 1 }
    );
    assert_eq!(
        err(&[0x82, 6, 0, 1, 0, 1, b'a', 3]),
        BadQoS {
            packet: "SUBSCRIBE"
        }
    );
    assert_eq!(
        err(&[0x82, 12, 0, 1, 0, 1, b'a', 0, 0, 3, b'#', b'/', b'a', 0]),
        BadTopicFilter {
            packet: "SUBSCRIBE",
            index: 2
        }
    );
    assert_eq!(
        err(&[0x82, 5, 0, 1, 0, 1, b'a']),
        Truncated {
            packet: "SUBSCRIBE",
            field: "requested QoS"
        }
    );
    assert_eq!(err(&[0x90, 2, 0, 1]), EmptyList { packet: "SUBACK" });
    assert_eq!(err(&[0x90, 3, 0, 1, 3]), BadSubAckCode(3));
    assert_eq!(
        err(&[0xA2, 2, 0, 1]),
        EmptyList {
            packet: "UNSUBSCRIBE"
        }
    );
    assert_eq!(
        err(&[0xA2, 6, 0, 1, 0, 2, b'a', b'+']),
        BadTopicFilter {
            packet: "UNSUBSCRIBE",
            index: 1
        }
    );
}

#[test]
fn emit_refuses_what_parse_would_refuse() {
    let mut out = [0u8; 128];
    let publish = |topic, qos, packet_id| {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id,
            payload: b"",
        })
    };
    assert_eq!(
        publish("a/+", QoS::AtMostOnce, None).emit(&mut out),
        Err(MqttError::BadTopicName { packet: "PUBLISH" })
    );
    assert_eq!(
        publish("a", QoS::AtLeastOnce, None).emit(&mut out),
        Err(MqttError::PacketIdMismatch)
    );
    assert_eq!(
        publish("a", QoS::AtMostOnce, Some(1)).emit(&mut out),
        Err(MqttError::PacketIdMismatch)
    );
    assert_eq!(
        publish("a", QoS::AtLeastOnce, Some(0)).emit(&mut out),
        Err(MqttError::ZeroPacketId { packet: "PUBLISH" })
    );
    assert_eq!(
        Packet::PubAck(0).emit(&mut out),
        Err(MqttError::ZeroPacketId {
            packet: "acknowledgement"
        })
    );
    let bad = [("a/#/b", QoS::AtMostOnce)];
    let s = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: SubscribeFilters::from_slice(&bad),
    });
    assert_eq!(
        s.emit(&mut out),
        Err(MqttError::BadTopicFilter {
            packet: "SUBSCRIBE",
            index: 1
        })
    );
    assert!(matches!(
        publish("a", QoS::AtMostOnce, None).emit(&mut out[..3]),
        Err(MqttError::BufferTooSmall { .. })
    ));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn qos() -> impl Strategy<Value = QoS> {
        prop_oneof![
            Just(QoS::AtMostOnce),
            Just(QoS::AtLeastOnce),
            Just(QoS::ExactlyOnce)
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), max in 0usize..400) {
            let mut rest = &data[..];
            while let Ok(Some((_, n))) = Packet::parse(rest, max) {
                rest = &rest[n..];
            }
        }

        #[test]
        fn publish_round_trips(
            topic in "[a-z0-9/$ ]{1,40}",
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            qos in qos(), retain: bool, id in 1u16..,
        ) {
            let p = Packet::Publish(Publish {
                dup: false, qos, retain, topic: &topic,
                packet_id: (qos != QoS::AtMostOnce).then_some(id),
                payload: &payload,
            });
            let bytes = emit(&p);
            prop_assert_eq!(parse(&bytes), p);
        }

        #[test]
        fn subscribe_round_trips(
            levels in proptest::collection::vec(prop_oneof![Just(std::string::String::from("+")), "[a-z]{1,6}"], 1..5),
            hash: bool, q in qos(), id in 1u16..,
        ) {
            let mut filter = levels.join("/");
            if hash { filter.push_str("/#"); }
            let list = [(filter.as_str(), q), ("x/y", QoS::AtMostOnce)];
            let p = Packet::Subscribe(Subscribe { packet_id: id, filters: SubscribeFilters::from_slice(&list) });
            let bytes = emit(&p);
            prop_assert_eq!(parse(&bytes), p);
        }

        #[test]
        fn connect_round_trips(
            client_id in "[A-Za-z0-9._-]{0,64}", keep_alive: u16, clean: bool,
            will in proptest::option::of(("[a-z/]{1,20}", proptest::collection::vec(any::<u8>(), 0..50), qos(), any::<bool>())),
            user in proptest::option::of(("[a-z]{0,10}", proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)))),
        ) {
            let will = will.as_ref().map(|(t, p, q, r)| Will { topic: t, payload: p, qos: *q, retain: *r });
            let (username, password) = match &user {
                Some((u, p)) => (Some(u.as_str()), p.as_deref()),
                None => (None, None),
            };
            let p = Packet::Connect(Connect { clean_session: clean, keep_alive, client_id: &client_id, will, username, password });
            let bytes = emit(&p);
            prop_assert_eq!(parse(&bytes), p);
        }
    }
}

#[test]
fn a_client_parses_what_servers_send_and_refuses_what_only_clients_send() {
    let client_only = [
        "CONNECT",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "PINGREQ",
        "DISCONNECT",
    ];
    let mut refused = Vec::new();
    for (bytes, packet) in vectors() {
        match Packet::parse_from_server(&bytes, MAX) {
            Ok(Some((parsed, n))) => {
                assert_eq!((parsed, n), (packet, bytes.len()));
            }
            Err(MqttError::ClientOnly { packet: name }) => {
                assert!(client_only.contains(&name), "{name} refused");
                refused.push(name);
            }
            other => panic!("{packet:?}: {other:?}"),
        }
    }
    refused.sort_unstable();
    refused.dedup();
    assert_eq!(refused.len(), client_only.len(), "{refused:?}");
    // Still framed first: an incomplete packet is incomplete, whatever its type.
    assert_eq!(Packet::parse_from_server(&[0x10, 12, 0], MAX), Ok(None));
}
