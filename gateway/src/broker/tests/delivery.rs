//! Live delivery: QoS, flags, packet ids, overlapping subscriptions, No Local, Retain As
//! Published, the delivery filter.

use std::num::NonZeroU32;

use super::*;

#[test]
fn every_qos_pair_delivers_at_the_minimum() {
    // [MQTT-3.8.4-6] (3.1.1) / §3.3.5: the QoS of a delivery is min(publish QoS, granted
    // QoS). A live delivery has DUP=0, RETAIN=0 even for a retained publish [MQTT-3.3.1-12],
    // and a packet id exactly when its QoS is above 0 [MQTT-2.2.1-2].
    for p in 0..3 {
        for s in 0..3 {
            let mut b = Broker::new(BrokerConfig::default());
            let subscriber = online(&mut b, "sub", 1);
            subscribe(&mut b, subscriber, "a/b", sub(s));
            let publisher = online(&mut b, "pub", 2);
            let a = b.publish(
                publisher,
                pid(qos(p), 9),
                retained_msg("a/b", "m", qos(p)),
                t0(),
            );
            let d = deliveries(&a, 1);
            assert_eq!(d.len(), 1, "publish {p} / granted {s}");
            let want = qos(p.min(s));
            assert_eq!(d[0].qos, want, "publish {p} / granted {s}");
            assert!(!d[0].dup && !d[0].retain);
            assert_eq!(d[0].packet_id, pid(want, 1));
            // The publisher's acknowledgement carries its own id.
            let ack: Vec<_> = sent(&a, 2).into_iter().cloned().collect();
            let want_ack = match p {
                0 => vec![],
                1 => vec![puback(9)],
                _ => vec![pubrec(9)],
            };
            assert_eq!(ack, want_ack);
        }
    }
}

#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    // [MQTT-3.3.5-1] (3.1.1), [MQTT-3.3.4-2,3]: one copy, at the maximum granted QoS,
    // carrying the identifiers of every matching subscription.
    let mut b = Broker::new(BrokerConfig::default());
    let h = online(&mut b, "sub", 1);
    let with_id = |q, id| Subscription {
        id: NonZeroU32::new(id),
        ..sub(q)
    };
    let s = b
        .subscribe(
            h,
            &[
                ("a/+", with_id(1, 11)),
                ("a/#", with_id(2, 22)),
                ("a/b", sub(0)),
            ],
            t0(),
        )
        .unwrap();
    assert_eq!(s.reasons, [1, 2, 0]);
    let p = online(&mut b, "pub", 2);
    let a = publish(&mut b, p, msg("a/b", "x", qos(2)));
    let d = deliveries(&a, 1);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].qos, qos(2));
    let mut ids = d[0].subscription_ids.to_vec();
    ids.sort_unstable();
    assert_eq!(ids, [11, 22]);
    // Capped by the message's own QoS.
    let a = publish(&mut b, p, msg("a/b", "y", qos(1)));
    assert_eq!(deliveries(&a, 1)[0].qos, qos(1));
    // Only `a/#` matches `a`: its identifier alone.
    let a = publish(&mut b, p, msg("a", "z", qos(2)));
    assert_eq!(&*deliveries(&a, 1)[0].subscription_ids, [22]);
}

#[test]
fn no_local_skips_the_publishers_own_messages() {
    // [MQTT-3.8.3-3]: with No Local, messages are not forwarded to the client id that
    // published them; other subscribers and other subscriptions are unaffected.
    let mut b = Broker::new(BrokerConfig::default());
    let me = online(&mut b, "me", 1);
    let other = online(&mut b, "other", 2);
    let no_local = Subscription {
        no_local: true,
        ..sub(1)
    };
    subscribe(&mut b, me, "t", no_local);
    subscribe(&mut b, other, "t", no_local);
    let a = publish(&mut b, me, msg("t", "mine", qos(1)));
    assert!(deliveries(&a, 1).is_empty());
    assert_eq!(payloads(&a, 2), ["mine"]);
    // An overlapping subscription without No Local still delivers, at its own QoS.
    subscribe(&mut b, me, "#", sub(0));
    let a = publish(&mut b, me, msg("t", "again", qos(1)));
    let d = deliveries(&a, 1);
    assert_eq!((d.len(), d[0].qos), (1, qos(0)));
}

#[test]
fn retain_as_published_keeps_the_flag_on_live_delivery() {
    // [MQTT-3.3.1-12]: RAP=0 clears RETAIN on live delivery; [MQTT-3.3.1-13]: RAP=1 keeps
    // it as published.
    let mut b = Broker::new(BrokerConfig::default());
    let plain = online(&mut b, "plain", 1);
    let rap = online(&mut b, "rap", 2);
    subscribe(&mut b, plain, "t", sub(1));
    let keep = Subscription {
        retain_as_published: true,
        ..sub(1)
    };
    subscribe(&mut b, rap, "t", keep);
    let p = online(&mut b, "pub", 3);
    let a = publish(&mut b, p, retained_msg("t", "r", qos(1)));
    assert!(!deliveries(&a, 1)[0].retain);
    assert!(deliveries(&a, 2)[0].retain);
    let a = publish(&mut b, p, msg("t", "n", qos(1)));
    assert!(!deliveries(&a, 2)[0].retain);
}

#[test]
fn delivery_filter_removes_denied_topics_from_wildcards() {
    // The ACL at delivery: a `#` subscription overlapping a denied topic does not carry it,
    // and the refusal is counted, for live and retained messages alike.
    let mut b = Broker::new(BrokerConfig::default());
    let p = online(&mut b, "pub", 2);
    publish(&mut b, p, retained_msg("a/secret", "old", qos(0)));
    publish(&mut b, p, retained_msg("a/open", "old", qos(0)));
    let request = ConnectRequest::v311("sub", ConnId(1), true)
        .with_filter(|m: &Message| !m.topic.contains("secret"));
    let h = b.connect(request, t0()).handle;
    let s = subscribe(&mut b, h, "a/#", sub(1));
    assert_eq!(payloads(&s.actions, 1), ["old"]);
    assert_eq!(drops(&s.actions), [(DropReason::Denied, 1)]);
    let a = publish(&mut b, p, msg("a/secret", "no", qos(1)));
    assert!(deliveries(&a, 1).is_empty());
    assert_eq!(drops(&a), [(DropReason::Denied, 1)]);
    let a = publish(&mut b, p, msg("a/open", "yes", qos(1)));
    assert_eq!(payloads(&a, 1), ["yes"]);
    assert_eq!(b.stats().denied, 2);
}

#[test]
fn dollar_topics_are_not_matched_by_leading_wildcards() {
    // [MQTT-4.7.2-1]: `#` and `+/x` do not match `$SYS/x`; `$SYS/#` does.
    let mut b = Broker::new(BrokerConfig::default());
    let all = online(&mut b, "all", 1);
    let plus = online(&mut b, "plus", 2);
    let sys = online(&mut b, "sys", 3);
    subscribe(&mut b, all, "#", sub(0));
    subscribe(&mut b, plus, "+/x", sub(0));
    subscribe(&mut b, sys, "$SYS/#", sub(0));
    let p = online(&mut b, "pub", 4);
    let a = publish(&mut b, p, retained_msg("$SYS/x", "up", qos(0)));
    assert!(deliveries(&a, 1).is_empty() && deliveries(&a, 2).is_empty());
    assert_eq!(payloads(&a, 3), ["up"]);
    // Nor are retained `$` messages sent for them on subscribe.
    let late = online(&mut b, "late", 5);
    assert!(subscribe(&mut b, late, "#", sub(0)).actions.is_empty());
    assert!(subscribe(&mut b, late, "+/x", sub(0)).actions.is_empty());
    assert_eq!(
        payloads(&subscribe(&mut b, late, "$SYS/+", sub(0)).actions, 5),
        ["up"]
    );
}

#[test]
fn message_expiry_counts_down_and_drops_what_expired() {
    // [MQTT-3.3.2-5]: a message whose expiry passed before delivery started is not sent;
    // [MQTT-3.3.2-6]: one that is sent carries what is left of its interval.
    let mut b = Broker::new(BrokerConfig::default());
    let h = kept(&mut b, "dev", 1, t0()).handle;
    subscribe(&mut b, h, "t", sub(1));
    b.disconnect(h, Ending::Abnormal, None, t0());
    let p = online(&mut b, "pub", 2);
    let mut short = msg("t", "short", qos(1));
    short.expiry_interval = Some(5);
    let mut long = msg("t", "long", qos(1));
    long.expiry_interval = Some(10);
    b.publish(p, Some(1), short, t0());
    b.publish(p, Some(2), long, t0());
    let back = kept(&mut b, "dev", 3, at(6));
    assert_eq!(payloads(&back.actions, 3), ["long"]);
    assert_eq!(deliveries(&back.actions, 3)[0].message_expiry, Some(4));
    assert_eq!(drops(&back.actions), [(DropReason::Expired, 1)]);
    assert_eq!(b.stats().expired, 1);
}

#[test]
fn paused_connections_queue_until_resumed() {
    let mut b = Broker::new(BrokerConfig::default());
    let h = online(&mut b, "sub", 1);
    subscribe(&mut b, h, "t", sub(0));
    let p = online(&mut b, "pub", 2);
    b.pause(h);
    assert!(deliveries(&publish(&mut b, p, msg("t", "1", qos(0))), 1).is_empty());
    assert!(deliveries(&publish(&mut b, p, msg("t", "2", qos(0))), 1).is_empty());
    assert_eq!(payloads(&b.resume(h, t0()), 1), ["1", "2"]);
    assert_eq!(
        payloads(&publish(&mut b, p, msg("t", "3", qos(0))), 1),
        ["3"]
    );
}
