//! Retained messages through the broker: set and clear, sent on subscribe, Retain Handling.

use super::*;

#[test]
fn retained_on_subscribe_at_min_qos_with_retain_set() {
    // [MQTT-3.3.1-8]: a retained message sent because of a new subscription has RETAIN=1;
    // its QoS is min(message QoS, granted QoS) [MQTT-3.8.4-6] (3.1.1).
    for (m, s) in [(0, 2), (1, 1), (2, 1), (2, 0)] {
        let mut b = Broker::new(BrokerConfig::default());
        let p = online(&mut b, "pub", 2);
        publish(&mut b, p, retained_msg("r/x", "kept", qos(m)));
        let h = online(&mut b, "sub", 1);
        let answer = subscribe(&mut b, h, "r/+", sub(s));
        assert_eq!(answer.reasons, [s]);
        let d = deliveries(&answer.actions, 1);
        assert_eq!(d.len(), 1);
        assert!(d[0].retain && !d[0].dup);
        assert_eq!(d[0].qos, qos(m.min(s)));
        assert_eq!(d[0].packet_id.is_some(), m.min(s) > 0);
    }
}

#[test]
fn empty_retained_payload_clears_but_is_delivered() {
    // [MQTT-3.3.1-5]: a retained message replaces the topic's previous one;
    // [MQTT-3.3.1-6,7]: a zero-byte one removes it, is not stored, and still reaches the
    // current subscribers like any message.
    let mut b = Broker::new(BrokerConfig::default());
    let p = online(&mut b, "pub", 2);
    publish(&mut b, p, retained_msg("r", "first", qos(1)));
    publish(&mut b, p, retained_msg("r", "second", qos(1)));
    let h = online(&mut b, "sub", 1);
    assert_eq!(
        payloads(&subscribe(&mut b, h, "r", sub(1)).actions, 1),
        ["second"]
    );
    let a = publish(&mut b, p, retained_msg("r", "", qos(1)));
    assert_eq!(payloads(&a, 1), [""]);
    assert!(b.backend().retained_store().is_empty());
    let late = online(&mut b, "late", 3);
    assert!(subscribe(&mut b, late, "r", sub(1)).actions.is_empty());
}

#[test]
fn retain_handling_0_1_2() {
    // [MQTT-3.3.1-9]: 0 sends retained messages at every SUBSCRIBE; [MQTT-3.3.1-10]: 1 only
    // when the subscription is new; [MQTT-3.3.1-11]: 2 never.
    let mut b = Broker::new(BrokerConfig::default());
    let p = online(&mut b, "pub", 2);
    publish(&mut b, p, retained_msg("r", "kept", qos(0)));
    let h = online(&mut b, "sub", 1);
    let with = |rh| Subscription {
        retain_handling: rh,
        ..sub(0)
    };
    let count = |s: Subscribed| deliveries(&s.actions, 1).len();

    let on_every = with(RetainHandling::OnSubscribe);
    assert_eq!(count(subscribe(&mut b, h, "r", on_every)), 1);
    assert_eq!(count(subscribe(&mut b, h, "r", on_every)), 1);

    let on_new = with(RetainHandling::OnNewSubscription);
    assert_eq!(count(subscribe(&mut b, h, "+", on_new)), 1);
    assert_eq!(count(subscribe(&mut b, h, "+", on_new)), 0);

    let never = with(RetainHandling::Never);
    assert_eq!(count(subscribe(&mut b, h, "#", never)), 0);
}

#[test]
fn unsubscribe_answers_one_reason_per_filter() {
    // [MQTT-3.11.3]: one reason code per filter, 0x11 where no subscription existed;
    // [MQTT-3.10.4-5] (3.1.1): UNSUBACK is sent even when nothing was subscribed.
    let mut b = Broker::new(BrokerConfig::default());
    let h = online(&mut b, "sub", 1);
    subscribe(&mut b, h, "a", sub(0));
    let reasons = b.unsubscribe(h, &["a", "never", "a", "a/#/b"]).unwrap();
    assert_eq!(reasons, [0x00, 0x11, 0x11, 0x8F]);
    assert_eq!(b.subscription_count(), 0);
    let p = online(&mut b, "pub", 2);
    assert!(deliveries(&publish(&mut b, p, msg("a", "x", qos(0))), 1).is_empty());
}

#[test]
fn subscribe_refuses_invalid_and_shared_filters() {
    let mut b = Broker::new(BrokerConfig::default());
    let h = online(&mut b, "sub", 1);
    let answer = b
        .subscribe(
            h,
            &[("a/#/b", sub(0)), ("$share/g/t", sub(0)), ("ok", sub(2))],
            t0(),
        )
        .unwrap();
    assert_eq!(answer.reasons, [0x8F, 0x9E, 2]);
    assert_eq!(b.subscription_count(), 1);
}
