use std::sync::Arc;
use std::time::Instant;

use fleet_protocol::mqtt::v5::{
    reason, Ack5, Connect5, Packet5, Properties, Property, Reason5, ReasonList,
};
use fleet_protocol::mqtt::{self, Connect, ConnectReturnCode, Packet, QoS, Will};

use super::*;
use crate::acl::Policy;
use crate::broker::{Delivery, Message, Outgoing};
use crate::config::Limits;
use crate::identity::{Identity, Kind};

fn device(id: &str) -> Identity {
    Identity {
        id: id.into(),
        tenant: "acme".into(),
        kind: Kind::Device,
        serial: vec![7],
        issuer: vec![],
        fingerprint: [0; 32],
        not_after: 0,
    }
}

fn connect<'a>(client_id: &'a str, will: Option<Will<'a>>) -> Connect<'a> {
    Connect {
        clean_session: true,
        keep_alive: 30,
        client_id,
        will,
        username: None,
        password: None,
    }
}

fn decode(bytes: &[u8]) -> Packet<'_> {
    Packet::parse(bytes, 1024).unwrap().unwrap().0
}

fn publish_from(topic: &str, qos: QoS, payload: &[u8]) -> mqtt::Publish<'static> {
    let topic: &'static str = Box::leak(topic.to_owned().into_boxed_str());
    let payload: &'static [u8] = Box::leak(payload.to_vec().into_boxed_slice());
    mqtt::Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        packet_id: (qos != QoS::AtMostOnce).then_some(9),
        payload,
    }
}

#[test]
fn the_gateway_answers_rotation_topics_itself() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut who = device("acme-000001");
    who.not_after = now + 10 * 86_400;
    let mut s = Session::new(
        Arc::new(who),
        Arc::new(Policy::default()),
        &Limits::default(),
        Instant::now(),
    )
    .with_renewal(std::time::Duration::from_secs(30 * 86_400));
    let prefix = "tenants/acme/devices/acme-000001/cert/";
    // status/get → PUBACK, then cert/status saying renew.
    let Inbound::Reply(bytes) = s.inbound(
        Packet::Publish(publish_from(
            &format!("{prefix}status/get"),
            QoS::AtLeastOnce,
            b"",
        )),
        Instant::now(),
    ) else {
        panic!("status/get is answered by the gateway")
    };
    let (first, n) = Packet::parse(&bytes, 1024).unwrap().unwrap();
    assert_eq!(first, Packet::PubAck(9));
    let Packet::Publish(status) = decode(&bytes[n..]) else {
        panic!("expected cert/status")
    };
    assert_eq!(status.topic, format!("{prefix}status"));
    let text = std::str::from_utf8(status.payload).unwrap();
    assert!(text.ends_with("\"renew\":true}"), "{text}");
    // csr → handed to the shell, never to the router.
    match s.inbound(
        Packet::Publish(publish_from(
            &format!("{prefix}csr"),
            QoS::AtMostOnce,
            b"DER",
        )),
        Instant::now(),
    ) {
        Inbound::Renew { csr, ack } => {
            assert_eq!(csr, b"DER");
            assert!(ack.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
    // Another device's rotation topics are just topics (and the ACL denies them).
    assert!(matches!(
        s.inbound(
            Packet::Publish(publish_from(
                "tenants/acme/devices/acme-000002/cert/csr",
                QoS::AtMostOnce,
                b"x"
            )),
            Instant::now()
        ),
        Inbound::Nothing
    ));
    // Without renewal configured the status never asks for one.
    let mut plain = Session::new(
        Arc::new(device("acme-000001")),
        Arc::new(Policy::default()),
        &Limits::default(),
        Instant::now(),
    );
    let Inbound::Reply(bytes) = plain.inbound(
        Packet::Publish(publish_from(
            &format!("{prefix}status/get"),
            QoS::AtMostOnce,
            b"",
        )),
        Instant::now(),
    ) else {
        panic!("answered")
    };
    let Packet::Publish(status) = decode(&bytes) else {
        panic!("expected cert/status")
    };
    assert!(std::str::from_utf8(status.payload)
        .unwrap()
        .ends_with("\"renew\":false}"));
    // A request when the certificate is not due is answered with cert/error.
    let Inbound::Reply(bytes) = plain.inbound(
        Packet::Publish(publish_from(
            &format!("{prefix}csr"),
            QoS::AtMostOnce,
            b"DER",
        )),
        Instant::now(),
    ) else {
        panic!("an early CSR is refused by the gateway itself")
    };
    let Packet::Publish(error) = decode(&bytes) else {
        panic!("expected cert/error")
    };
    assert_eq!(error.topic, format!("{prefix}error"));
}

#[test]
fn client_id_is_the_certificate_cn() {
    let id = device("d1");
    let policy = Policy::default();
    assert_eq!(
        on_connect(&id, &policy, &connect("d1", None))
            .unwrap()
            .client_id,
        "d1"
    );
    assert_eq!(
        on_connect(&id, &policy, &connect("", None))
            .unwrap()
            .client_id,
        "d1"
    );
    let refusal = on_connect(&id, &policy, &connect("d2", None)).unwrap_err();
    assert_eq!(
        refusal.connack_code(),
        Some(ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(refusal.label(), "client_id_mismatch");
    // 3.1.1: an empty client id may not keep a session: CONNACK 0x02 [MQTT-3.1.3-8].
    let mut keep = connect("", None);
    keep.clean_session = false;
    let refusal = on_connect(&id, &policy, &keep).unwrap_err();
    assert_eq!(refusal, Refusal::EmptyIdKeepsSession);
    assert_eq!(refusal.connack(Version::V311).unwrap(), [0x20, 2, 0, 2]);
    // …but the certificate's own id may (CleanSession=0 keeps the session for ever).
    keep.client_id = "d1";
    let accepted = on_connect(&id, &policy, &keep).unwrap();
    assert_eq!(
        (accepted.clean_start, accepted.session_expiry),
        (false, u32::MAX)
    );
}

#[test]
fn will_topic_goes_through_the_acl() {
    let id = device("d1");
    let policy = Policy::default();
    let will = |topic| Will {
        topic,
        payload: b"gone",
        qos: QoS::AtLeastOnce,
        retain: false,
    };
    let ok = on_connect(
        &id,
        &policy,
        &connect("d1", Some(will("tenants/acme/devices/d1/status"))),
    )
    .unwrap();
    let kept = ok.will.unwrap();
    assert_eq!(&*kept.message.topic, "tenants/acme/devices/d1/status");
    assert_eq!((kept.message.qos, kept.delay), (QoS::AtLeastOnce, 0));
    let refusal = on_connect(
        &id,
        &policy,
        &connect("d1", Some(will("tenants/acme/devices/d2/status"))),
    )
    .unwrap_err();
    assert_eq!(
        refusal,
        Refusal::WillDenied("tenants/acme/devices/d2/status".into())
    );
    assert_eq!(
        refusal.connack_code(),
        Some(ConnectReturnCode::NotAuthorized)
    );
}

fn session() -> Session {
    Session::new(
        Arc::new(device("d1")),
        Arc::new(Policy::default()),
        &Limits::default(),
        Instant::now(),
    )
}

/// One packet, at the time the session was made (well within its rate limit).
trait At {
    fn inbound_now(&mut self, p: Packet<'_>) -> Inbound;
}

impl At for Session {
    fn inbound_now(&mut self, p: Packet<'_>) -> Inbound {
        self.inbound(p, Instant::now())
    }
}

#[test]
fn publishing_above_the_rate_limit_closes_the_session() {
    let limits = Limits {
        publish_rate: 10.0,
        publish_burst: 5.0,
        ..Limits::default()
    };
    let t0 = Instant::now();
    let mut s = Session::new(
        Arc::new(device("d1")),
        Arc::new(Policy::default()),
        &limits,
        t0,
    );
    let topic = "tenants/acme/devices/d1/telemetry";
    for _ in 0..5 {
        assert!(matches!(
            s.inbound(publish(topic, QoS::AtMostOnce, None), t0),
            Inbound::Publish { .. }
        ));
    }
    assert!(matches!(
        s.inbound(publish(topic, QoS::AtMostOnce, None), t0),
        Inbound::Close(Close::RateLimited)
    ));
    let later = t0 + std::time::Duration::from_millis(100);
    assert!(matches!(
        s.inbound(publish(topic, QoS::AtMostOnce, None), later),
        Inbound::Publish { .. }
    ));
    // Other packets are not rate limited.
    assert!(matches!(s.inbound(Packet::PingReq, t0), Inbound::Reply(_)));
}

fn publish(topic: &str, qos: QoS, id: Option<u16>) -> Packet<'_> {
    Packet::Publish(mqtt::Publish {
        dup: false,
        qos,
        retain: false,
        topic,
        packet_id: id,
        payload: b"x",
    })
}

#[test]
fn denied_publishes_are_acknowledged_and_dropped() {
    let mut s = session();
    let other = "tenants/acme/devices/d2/telemetry";
    assert!(matches!(
        s.inbound_now(publish(other, QoS::AtMostOnce, None)),
        Inbound::Nothing
    ));
    match s.inbound_now(publish(other, QoS::AtLeastOnce, Some(3))) {
        Inbound::Reply(b) => assert_eq!(decode(&b), Packet::PubAck(3)),
        o => panic!("{o:?}"),
    }
    match s.inbound_now(publish(other, QoS::ExactlyOnce, Some(4))) {
        Inbound::Reply(b) => assert_eq!(decode(&b), Packet::PubRec(4)),
        o => panic!("{o:?}"),
    }
    // The PUBREL of the dropped QoS 2 message is completed here, not by the router.
    match s.inbound_now(Packet::PubRel(4)) {
        Inbound::Reply(b) => assert_eq!(decode(&b), Packet::PubComp(4)),
        o => panic!("{o:?}"),
    }
    assert!(matches!(
        s.inbound_now(Packet::PubRel(5)),
        Inbound::PubRel(5)
    ));
    assert_eq!(s.stats.acl_denials, 3);
    assert_eq!(s.stats.publishes_in, 0);
}

fn session5() -> Session {
    let connect = Connect5 {
        connect: connect("d1", None),
        properties: Properties::from_slice(&[Property::MaximumPacketSize(200)]),
        will_properties: Properties::EMPTY,
    };
    let accepted = on_connect5(&device("d1"), &Policy::default(), &connect).unwrap();
    session().for_client(&accepted)
}

fn decode5(bytes: &[u8]) -> Packet5<'_> {
    Packet5::parse(bytes, 1024).unwrap().unwrap().0
}

fn publish5<'a>(topic: &'a str, id: u16, props: &'a [Property<'a>]) -> Packet5<'a> {
    Packet5::Publish(
        mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: Some(id),
            payload: b"x",
        },
        Properties::from_slice(props),
    )
}

#[test]
fn version_5_refusals_carry_reason_codes() {
    let mut s = session5();
    let now = Instant::now();
    match s.inbound5(publish5("tenants/acme/devices/d2/telemetry", 3, &[]), now) {
        Inbound::Reply(b) => assert_eq!(
            decode5(&b),
            Packet5::PubAck(Ack5 {
                packet_id: 3,
                reason: reason::NOT_AUTHORIZED,
                properties: Properties::EMPTY
            })
        ),
        o => panic!("{o:?}"),
    }
    let filters = [("tenants/acme/devices/d2/cmd/#", QoS::AtLeastOnce)];
    let sub = Packet5::Subscribe(
        mqtt::Subscribe {
            packet_id: 4,
            filters: mqtt::SubscribeFilters::from_slice(&filters),
        },
        Properties::EMPTY,
    );
    let Inbound::Subscribe { packet_id, filters } = s.inbound5(sub, now) else {
        panic!("not a subscribe decision")
    };
    assert_eq!(filters, [Requested::Refused(reason::NOT_AUTHORIZED)]);
    let mut b = Vec::new();
    s.suback(packet_id, &[reason::NOT_AUTHORIZED], &mut b);
    assert_eq!(
        decode5(&b),
        Packet5::SubAck(ReasonList {
            packet_id: 4,
            properties: Properties::EMPTY,
            reasons: &[reason::NOT_AUTHORIZED]
        })
    );
    // Allowed publishes go to the broker with their properties.
    let props = [
        Property::ResponseTopic("tenants/acme/devices/d1/cmd/reply"),
        Property::UserProperty("unit", "C"),
    ];
    let Inbound::Publish { packet_id, message } =
        s.inbound5(publish5("tenants/acme/devices/d1/t", 5, &props), now)
    else {
        panic!("not forwarded")
    };
    assert_eq!(packet_id, Some(5));
    let rp = message.properties.expect("properties kept");
    assert_eq!(
        rp.response_topic.as_deref(),
        Some("tenants/acme/devices/d1/cmd/reply")
    );
    assert_eq!(rp.user_properties, [("unit".into(), "C".into())]);
}

#[test]
fn version_5_features_not_offered_close_the_session() {
    let now = Instant::now();
    let alias = [Property::TopicAlias(1)];
    assert!(matches!(
        session5().inbound5(publish5("tenants/acme/devices/d1/t", 1, &alias), now),
        Inbound::Close(Close::TopicAliasInvalid)
    ));
    let filters = [("tenants/acme/devices/d1/cmd/#", QoS::AtLeastOnce)];
    let sub_id = [Property::SubscriptionIdentifier(7)];
    let sub = Packet5::Subscribe(
        mqtt::Subscribe {
            packet_id: 1,
            filters: mqtt::SubscribeFilters::from_slice(&filters),
        },
        Properties::from_slice(&sub_id),
    );
    assert!(matches!(
        session5().inbound5(sub, now),
        Inbound::Close(Close::SubscriptionIdentifiers)
    ));
    assert!(matches!(
        session5().inbound5(
            Packet5::Auth(Reason5 {
                reason: 0,
                properties: Properties::EMPTY
            }),
            now
        ),
        Inbound::Close(Close::ProtocolViolation(_))
    ));
    let with_will = Reason5 {
        reason: reason::DISCONNECT_WITH_WILL,
        properties: Properties::EMPTY,
    };
    assert!(matches!(
        session5().inbound5(Packet5::Disconnect(with_will), now),
        Inbound::Close(Close::ClientDisconnectWithWill(None))
    ));
}

#[test]
fn version_5_connect_rules() {
    let id = device("d1");
    let policy = Policy::default();
    let auth = [Property::AuthenticationMethod("SCRAM-SHA-1")];
    let c = Connect5 {
        connect: connect("d1", None),
        properties: Properties::from_slice(&auth),
        will_properties: Properties::EMPTY,
    };
    let refusal = on_connect5(&id, &policy, &c).unwrap_err();
    assert_eq!(refusal.label(), "bad_auth_method");
    let connack = refusal.connack(Version::V5).unwrap();
    let Packet5::ConnAck(a) = decode5(&connack) else {
        panic!("not a CONNACK")
    };
    assert_eq!(a.reason, reason::BAD_AUTHENTICATION_METHOD);
    // Client id mismatch: 0x87 with the reason in words.
    let c = Connect5 {
        connect: connect("d2", None),
        properties: Properties::EMPTY,
        will_properties: Properties::EMPTY,
    };
    let connack = on_connect5(&id, &policy, &c)
        .unwrap_err()
        .connack(Version::V5)
        .unwrap();
    let Packet5::ConnAck(a) = decode5(&connack) else {
        panic!("not a CONNACK")
    };
    assert_eq!(a.reason, reason::NOT_AUTHORIZED);
    assert!(matches!(
        a.properties.iter().next(),
        Some(Property::ReasonString(t)) if t.contains("differs")
    ));
    // Clean Start and the Session Expiry Interval are the client's (0 when absent); an
    // empty client id with Clean Start 0 is fine in version 5 (MQTT-3.1.3-7: assigned).
    let keep = [
        Property::SessionExpiryInterval(3600),
        Property::ReceiveMaximum(7),
    ];
    let mut c = Connect5 {
        connect: connect("", None),
        properties: Properties::from_slice(&keep),
        will_properties: Properties::EMPTY,
    };
    c.connect.clean_session = false;
    let accepted = on_connect5(&id, &policy, &c).unwrap();
    assert!(!accepted.clean_start);
    assert_eq!(accepted.session_expiry, 3600);
    assert_eq!(accepted.receive_maximum, Some(7));
    c.properties = Properties::EMPTY;
    let accepted = on_connect5(&id, &policy, &c).unwrap();
    assert_eq!(accepted.session_expiry, 0);
    assert_eq!(
        accepted.receive_maximum,
        Some(u16::MAX),
        "absent means 65,535"
    );
    let zero = [Property::ReceiveMaximum(0)];
    c.properties = Properties::from_slice(&zero);
    assert_eq!(
        on_connect5(&id, &policy, &c).unwrap_err().label(),
        "bad_connect"
    );
    // An empty client id is told its identity; the limits are announced.
    let limits = ServerLimits {
        max_packet_size: 4096,
        receive_maximum: 100,
        session_expiry: 0,
    };
    let connack = accepted.connack(false, limits);
    let Packet5::ConnAck(a) = decode5(&connack) else {
        panic!("not a CONNACK")
    };
    let props: Vec<Property<'_>> = a.properties.iter().collect();
    assert!(props.contains(&Property::AssignedClientIdentifier("d1")));
    assert!(props.contains(&Property::MaximumPacketSize(4096)));
    assert!(props.contains(&Property::ReceiveMaximum(100)));
    assert!(
        !props
            .iter()
            .any(|p| matches!(p, Property::SessionExpiryInterval(_))),
        "stated only when it differs from the client's"
    );
}

#[test]
fn protocol_violations_close() {
    let mut s = session();
    assert!(matches!(
        s.inbound_now(Packet::PingResp),
        Inbound::Close(Close::ProtocolViolation(_))
    ));
    assert!(matches!(
        s.inbound_now(Packet::Connect(connect("d1", None))),
        Inbound::Close(Close::ProtocolViolation(_))
    ));
    assert!(matches!(
        s.inbound_now(Packet::Disconnect),
        Inbound::Close(Close::ClientDisconnect(None))
    ));
    match s.inbound_now(Packet::PingReq) {
        Inbound::Reply(b) => assert_eq!(b, [0xD0, 0x00]),
        o => panic!("{o:?}"),
    }
}

#[test]
fn subscribe_decides_each_filter_with_its_options() {
    let mut s = session5();
    // No Local + Retain As Published + Retain Handling 2, QoS 1; then a foreign filter.
    let wire = [
        0x82,
        0, // SUBSCRIBE header, length patched below
        0,
        4, // packet id
        0, // no properties
        0,
        27,
        b't',
        b'e',
        b'n',
        b'a',
        b'n',
        b't',
        b's',
        b'/',
        b'a',
        b'c',
        b'm',
        b'e',
        b'/',
        b'd',
        b'e',
        b'v',
        b'i',
        b'c',
        b'e',
        b's',
        b'/',
        b'd',
        b'1',
        b'/',
        b'c',
        b'm',
        b'd',
        0b0010_1101,
        0,
        1,
        b'#',
        0,
    ];
    let mut wire = wire.to_vec();
    wire[1] = (wire.len() - 2) as u8;
    let packet = Packet5::parse(&wire, 1024).unwrap().unwrap().0;
    let Inbound::Subscribe { packet_id, filters } = s.inbound5(packet, Instant::now()) else {
        panic!("not a subscribe decision")
    };
    assert_eq!(packet_id, 4);
    let Requested::Granted(filter, sub) = &filters[0] else {
        panic!("own commands refused")
    };
    assert_eq!(filter, "tenants/acme/devices/d1/cmd");
    assert_eq!(sub.qos, QoS::AtLeastOnce);
    assert!(sub.no_local && sub.retain_as_published);
    assert_eq!(sub.retain_handling, crate::broker::RetainHandling::Never);
    assert_eq!(filters[1], Requested::Refused(reason::NOT_AUTHORIZED));
    assert_eq!(s.stats.acl_denials, 1);
}

#[test]
fn deliveries_are_encoded_per_version_within_the_packet_size() {
    let mut message = Message::new(
        "tenants/acme/devices/d1/cmd/x",
        &b"small"[..],
        QoS::ExactlyOnce,
        true,
    );
    message.properties = Some(Box::new(crate::broker::MessageProperties {
        content_type: Some("text/plain".into()),
        ..Default::default()
    }));
    let delivery = |message: Message, qos| {
        Outgoing::Publish(Delivery {
            message: Arc::new(message),
            qos,
            dup: true,
            retain: false,
            packet_id: Some(8),
            subscription_ids: Box::new([]),
            message_expiry: None,
        })
    };
    // Delivered at the QoS the broker decided, DUP as it says, properties for version 5.
    let mut s = session5();
    let mut out = Vec::new();
    let d = delivery(message.clone(), QoS::AtLeastOnce);
    assert_eq!(s.encode(&d, &mut out), Encoded::Written);
    let Packet5::Publish(p, props) = decode5(&out) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(
        (p.qos, p.dup, p.retain, p.packet_id),
        (QoS::AtLeastOnce, true, false, Some(8))
    );
    assert_eq!(
        props.iter().collect::<Vec<_>>(),
        [Property::ContentType("text/plain")]
    );
    // Larger than the client's 200-byte maximum: not sent, counted, handed back.
    out.clear();
    message.payload = vec![0u8; 300].into();
    let big = delivery(message.clone(), QoS::AtLeastOnce);
    assert_eq!(
        s.encode(&big, &mut out),
        Encoded::TooLarge {
            qos: QoS::AtLeastOnce,
            packet_id: Some(8)
        }
    );
    assert!(out.is_empty());
    assert_eq!((s.stats.oversized_out, s.stats.publishes_out), (1, 1));
    // 3.1.1: no properties; a negative acknowledgement cannot be said, so it closes.
    let mut plain = session();
    plain.encode(&d, &mut out);
    assert!(matches!(decode(&out), Packet::Publish(p) if p.payload == b"small"));
    let refused = Outgoing::PubAck {
        packet_id: 3,
        reason: reason::PACKET_IDENTIFIER_IN_USE,
    };
    assert_eq!(plain.encode(&refused, &mut out), Encoded::Refused(0x91));
    let mut v5 = Vec::new();
    assert_eq!(s.encode(&refused, &mut v5), Encoded::Written);
    assert!(matches!(decode5(&v5), Packet5::PubAck(a) if a.reason == 0x91));
}

#[test]
fn unsuback_has_one_reason_per_filter_in_version_5_only() {
    let mut out = Vec::new();
    session().unsuback(9, &[0, reason::NO_SUBSCRIPTION_EXISTED], &mut out);
    assert_eq!(decode(&out), Packet::UnsubAck(9));
    out.clear();
    session5().unsuback(9, &[0, reason::NO_SUBSCRIPTION_EXISTED], &mut out);
    let Packet5::UnsubAck(list) = decode5(&out) else {
        panic!("not an UNSUBACK")
    };
    assert_eq!(list.reasons, [0, 0x11]);
}
