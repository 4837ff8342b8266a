//! QoS 1 and 2 flows in both directions: windows, packet ids, duplicates, unknown ids.

use super::*;

#[test]
fn incoming_qos2_duplicate_is_not_delivered_twice() {
    // §4.3.3 ([MQTT-4.3.3-10]): until PUBREL, a PUBLISH repeating the packet id is answered
    // with PUBREC and not delivered onward again; after PUBCOMP the id starts a new flow.
    let mut b = Broker::new(BrokerConfig::default());
    let s = online(&mut b, "sub", 1);
    subscribe(&mut b, s, "t", sub(2));
    let p = online(&mut b, "pub", 2);
    let a = b.publish(p, Some(7), msg("t", "once", qos(2)), t0());
    assert_eq!(payloads(&a, 1), ["once"]);
    assert_eq!(sent(&a, 2), [&pubrec(7)]);
    let a = b.publish(p, Some(7), msg("t", "once", qos(2)), t0());
    assert!(deliveries(&a, 1).is_empty());
    assert_eq!(sent(&a, 2), [&pubrec(7)]);
    let a = b.pubrel(p, 7);
    assert_eq!(
        sent(&a, 2),
        [&Outgoing::PubComp {
            packet_id: 7,
            reason: 0
        }]
    );
    let a = b.publish(p, Some(7), msg("t", "new flow", qos(2)), t0());
    assert_eq!(payloads(&a, 1), ["new flow"]);
}

#[test]
fn receive_maximum_bounds_the_window() {
    // [MQTT-3.3.4-9]: no more unacknowledged QoS 1/2 PUBLISH than the client's Receive
    // Maximum: with a window of 1, the second message waits for the first PUBACK.
    let mut b = Broker::new(BrokerConfig::default());
    let request = ConnectRequest::v5("sub", ConnId(1), true, 0).with_receive_maximum(1);
    let s = b.connect(request, t0()).handle;
    subscribe(&mut b, s, "t", sub(1));
    let p = online(&mut b, "pub", 2);
    let first = publish(&mut b, p, msg("t", "1", qos(1)));
    let second = publish(&mut b, p, msg("t", "2", qos(1)));
    // A QoS 0 message keeps its place in line behind them.
    let third = publish(&mut b, p, msg("t", "3", qos(0)));
    assert_eq!(payloads(&first, 1), ["1"]);
    assert!(deliveries(&second, 1).is_empty() && deliveries(&third, 1).is_empty());
    assert!(
        b.puback(s, 99, t0()).is_empty(),
        "unknown id: nothing moves"
    );
    let a = b.puback(s, 1, t0());
    assert_eq!(payloads(&a, 1), ["2", "3"]);
    assert_eq!(deliveries(&a, 1)[0].packet_id, Some(2));
}

#[test]
fn outgoing_qos2_runs_pubrec_pubrel_pubcomp() {
    // §4.3.3: PUBLISH → PUBREC → PUBREL → PUBCOMP; the slot is held until PUBCOMP.
    let mut b = Broker::new(BrokerConfig::default());
    let s = b
        .connect(
            ConnectRequest::v5("sub", ConnId(1), true, 0).with_receive_maximum(1),
            t0(),
        )
        .handle;
    subscribe(&mut b, s, "t", sub(2));
    let p = online(&mut b, "pub", 2);
    publish(&mut b, p, msg("t", "1", qos(2)));
    assert!(deliveries(&publish(&mut b, p, msg("t", "2", qos(2))), 1).is_empty());
    let rel = Outgoing::PubRel {
        packet_id: 1,
        reason: 0,
    };
    assert_eq!(sent(&b.pubrec(s, 1, 0, t0()), 1), [&rel]);
    // A repeated PUBREC gets the PUBREL again; the window has not moved.
    assert_eq!(sent(&b.pubrec(s, 1, 0, t0()), 1), [&rel]);
    assert_eq!(payloads(&b.pubcomp(s, 1, t0()), 1), ["2"]);
    // A PUBREC with a failure reason (0x80 or above) ends the flow without PUBREL (§4.3.3).
    let a = b.pubrec(s, 2, 0x80, t0());
    assert!(sent(&a, 1).is_empty());
    // Unknown ids: PUBREL / PUBCOMP with 0x92 (packet identifier not found).
    assert_eq!(
        sent(&b.pubrec(s, 42, 0, t0()), 1),
        [&Outgoing::PubRel {
            packet_id: 42,
            reason: 0x92
        }]
    );
    assert_eq!(
        sent(&b.pubrel(s, 42), 1),
        [&Outgoing::PubComp {
            packet_id: 42,
            reason: 0x92
        }]
    );
}

#[test]
fn packet_ids_wrap_and_skip_ids_in_use() {
    // §2.2.1 [MQTT-2.2.1-3]: a new flow uses a non-zero id not in use. Id 1 stays
    // unacknowledged while 65,534 others go round; after 65,535 comes 2, not 0 or 1.
    let mut b = Broker::new(BrokerConfig::default());
    let s = b
        .connect(
            ConnectRequest::v5("sub", ConnId(1), true, 0).with_receive_maximum(2),
            t0(),
        )
        .handle;
    subscribe(&mut b, s, "t", sub(1));
    let p = online(&mut b, "pub", 2);
    let id_of = |a: &[Action]| deliveries(a, 1)[0].packet_id;
    assert_eq!(
        id_of(&publish(&mut b, p, msg("t", "held", qos(1)))),
        Some(1)
    );
    for expect in 2..=u16::MAX {
        let a = publish(&mut b, p, msg("t", "x", qos(1)));
        assert_eq!(id_of(&a), Some(expect));
        b.puback(s, expect, t0());
    }
    assert_eq!(
        id_of(&publish(&mut b, p, msg("t", "wrapped", qos(1)))),
        Some(2)
    );
}

#[test]
fn protocol_errors_close_the_connection() {
    let mut b = Broker::new(BrokerConfig::default());
    let p = online(&mut b, "pub", 2);
    // QoS 1 without a packet id: 0x82 protocol error.
    let a = b.publish(p, None, msg("t", "x", qos(1)), t0());
    assert_eq!(closes(&a), [(2, 0x82)]);
    assert!(!b.is_live(p));
    let p = online(&mut b, "pub", 3);
    let a = b.publish(p, None, msg("a/+", "x", qos(0)), t0());
    assert_eq!(closes(&a), [(3, 0x90)]);
}
