//! Delivery: the QoS a subscriber gets, retained messages, QoS 2 duplicates, `$` topics,
//! overlapping subscriptions.

use fleet_tests::conformance::{Conn, Msg, Sub, Version};

use crate::Ctx;

/// A packet id for a message published at `qos`: none (0) at QoS 0.
pub fn pkid(qos: u8, id: u16) -> u16 {
    if qos == 0 {
        0
    } else {
        id
    }
}

/// Every (publish QoS, subscription QoS) pair is delivered at the minimum of the two, with a
/// packet id exactly when that is above 0, DUP=0 and RETAIN=0.
/// 3.1.1 [MQTT-3.8.4-6] (and 3.3.5: "the QoS of the message and the granted QoS, whichever
/// is lower"), 5 [MQTT-3.8.4-8]; DUP=0 on a first attempt (3.3.1.1, [MQTT-3.3.1-2] at QoS 0,
/// [MQTT-3.3.1-3]); RETAIN=0 to
/// an established subscription [MQTT-3.3.1-9 (3.1.1), 3.3.1-12 (5)].
pub async fn qos_matrix(ctx: Ctx, v: Version) {
    let b = &ctx.broker;
    let topic = ctx.topic("m");
    let mut subs = Vec::new();
    for s in 0..=2u8 {
        let mut c = Conn::clean(b, &ctx.client(&format!("s{s}")), v).await;
        c.subscribe_ok(1, &[Sub::new(&topic, s)]).await;
        subs.push((s, c));
    }
    let mut p = Conn::clean(b, &ctx.client("p"), v).await;
    for q in 0..=2u8 {
        let m = Msg::new(&topic, &format!("q{q}"), q, pkid(q, 10 + u16::from(q)));
        p.publish(&m).await;
    }
    for (s, c) in &mut subs {
        let mut got = Vec::new();
        for q in 0..=2u8 {
            got.push(
                c.receive(&format!("message {q} of 3 at subscription QoS {s}"))
                    .await,
            );
        }
        got.sort_by(|a, b| a.payload.cmp(&b.payload));
        for (q, m) in (0..=2u8).zip(&got) {
            let want = Msg::new(&topic, &format!("q{q}"), q.min(*s), 0);
            m.check(
                &want,
                &format!("published at QoS {q} to a QoS {s} subscription"),
            );
        }
    }
}

/// A retained message is sent on subscribe with RETAIN=1 at min(its QoS, the subscription's)
/// [MQTT-3.3.1-8 (3.1.1), 3.3.1-9 (5)]; a retained publication to an established subscription
/// arrives with RETAIN=0 [MQTT-3.3.1-9 (3.1.1), 3.3.1-12 (5, Retain As Published 0)].
pub async fn retained(ctx: Ctx, v: Version) {
    let b = &ctx.broker;
    let mut p = Conn::clean(b, &ctx.client("p"), v).await;
    for q in 0..=2u8 {
        let topic = ctx.topic(&format!("r{q}"));
        let m = Msg::new(&topic, &format!("kept{q}"), q, pkid(q, 20 + u16::from(q)));
        p.publish(&m.retained()).await;
    }
    let mut subs = Vec::new();
    for s in 0..=2u8 {
        let mut c = Conn::clean(b, &ctx.client(&format!("s{s}")), v).await;
        c.subscribe_ok(1, &[Sub::new(&ctx.topic("+"), s)]).await;
        let mut got = Vec::new();
        for i in 0..3 {
            got.push(
                c.receive(&format!("retained message {i} of 3 (sub QoS {s})"))
                    .await,
            );
        }
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        for (q, m) in (0..=2u8).zip(&got) {
            let want = Msg::new(
                &ctx.topic(&format!("r{q}")),
                &format!("kept{q}"),
                q.min(s),
                0,
            );
            m.check(
                &want.retained(),
                &format!("retained at QoS {q}, sent on a QoS {s} subscribe"),
            );
        }
        subs.push((s, c));
    }
    let live = Msg::new(&ctx.topic("r1"), "live", 1, 30).retained();
    p.publish(&live).await;
    for (s, c) in &mut subs {
        let m = c.receive("a retained publication").await;
        let want = Msg::new(&ctx.topic("r1"), "live", (*s).min(1), 0);
        m.check(
            &want,
            &format!("a RETAIN=1 publication to an established QoS {s} subscription"),
        );
    }
}

/// A QoS 2 PUBLISH sent again (DUP=1, same packet id) before PUBREL is acknowledged with
/// PUBREC again and not delivered twice: 3.1.1 [MQTT-4.3.3-2], 5 [MQTT-4.3.3-10].
pub async fn qos2_inbound_duplicate(ctx: Ctx, v: Version) {
    let b = &ctx.broker;
    let topic = ctx.topic("d");
    let mut sub = Conn::clean(b, &ctx.client("s"), v).await;
    sub.subscribe_ok(1, &[Sub::new(&topic, 2)]).await;
    let mut p = Conn::clean(b, &ctx.client("p"), v).await;
    let once = Msg::new(&topic, "once", 2, 7);
    p.send_publish(&once).await;
    let rec = p.next("PUBREC").await;
    p.check_ack(&rec, 7, "PUBREC");
    p.send_publish(&once.clone().dup()).await;
    let rec = p.next("PUBREC for the duplicate PUBLISH").await;
    p.check_ack(&rec, 7, "PUBREC for the duplicate PUBLISH");
    p.pubrel(7).await;
    let comp = p.next("PUBCOMP").await;
    p.check_ack(&comp, 7, "PUBCOMP");
    p.publish(&Msg::new(&topic, "after", 2, 8)).await;
    let first = sub.receive("the QoS 2 message").await;
    first.check(&Msg::new(&topic, "once", 2, 0), "the QoS 2 message");
    let next = sub.receive("the next message").await;
    next.check(
        &Msg::new(&topic, "after", 2, 0),
        "the message after the duplicate (the duplicate must not be delivered)",
    );
}

/// Topic filters starting with `#` or `+` do not match topic names starting with `$`
/// [MQTT-4.7.2-1]; a filter naming the `$` topic does.
pub async fn dollar_topics(ctx: Ctx, v: Version) {
    let b = &ctx.broker;
    let dollar = format!("$conf/{}/x", ctx.case);
    let plus = format!("+/{}/x", ctx.case);
    let mut wild = Conn::clean(b, &ctx.client("w"), v).await;
    wild.subscribe_ok(1, &[Sub::new("#", 0), Sub::new(&plus, 0)])
        .await;
    let mut exact = Conn::clean(b, &ctx.client("e"), v).await;
    exact.subscribe_ok(1, &[Sub::new(&dollar, 1)]).await;
    let mut p = Conn::clean(b, &ctx.client("p"), v).await;
    p.publish(&Msg::new(&dollar, "dollar", 1, 1)).await;
    let got = exact.receive("the $ topic message").await;
    got.check(
        &Msg::new(&dollar, "dollar", 1, 0),
        "through the filter naming it",
    );
    let marker = ctx.topic("marker");
    p.publish(&Msg::new(&marker, "marker", 1, 2)).await;
    // `#` also gets the other cases' traffic: read up to the marker.
    loop {
        let m = wild.receive("the marker through `#`").await;
        assert!(
            !m.topic.starts_with('$'),
            "`#` or `{plus}` matched the $ topic {}",
            m.topic
        );
        if m.topic == marker {
            break;
        }
    }
}

/// Overlapping subscriptions of one client: the message is delivered respecting the
/// maximum QoS of the matching subscriptions, 3.1.1 [MQTT-3.3.5-1], 5 [MQTT-3.3.4-2]. The
/// spec lets a server add one copy per other matching subscription at that subscription's
/// QoS; in 3.1.1 the gateway promises one copy (as mosquitto sends), in 5 it may add copies
/// (mosquitto does), each at the QoS of a distinct other subscription.
pub async fn overlapping(ctx: Ctx, v: Version) {
    let b = &ctx.broker;
    let x = ctx.topic("o/x");
    let marker = ctx.topic("marker");
    let mut sub = Conn::clean(b, &ctx.client("s"), v).await;
    let filters = [
        Sub::new(&ctx.topic("o/#"), 0),
        Sub::new(&x, 2),
        Sub::new(&ctx.topic("o/+"), 1),
        Sub::new(&marker, 1),
    ];
    sub.subscribe_ok(1, &filters).await;
    let mut p = Conn::clean(b, &ctx.client("p"), v).await;
    p.publish(&Msg::new(&x, "overlap", 2, 3)).await;
    p.publish(&Msg::new(&marker, "marker", 1, 4)).await;
    let mut copies = Vec::new();
    loop {
        let m = sub.receive("the message, then the marker").await;
        if m.topic == marker {
            break;
        }
        copies.push(m);
    }
    copies.sort_by_key(|m| std::cmp::Reverse(m.qos));
    let Some(first) = copies.first() else {
        panic!("the message was not delivered to three overlapping subscriptions");
    };
    first.check(
        &Msg::new(&x, "overlap", 2, 0),
        "the copy at the maximum QoS of the matching subscriptions",
    );
    let extra: Vec<u8> = copies[1..].iter().map(|m| m.qos).collect();
    match v {
        Version::V4 => assert!(
            extra.is_empty(),
            "3.1.1: one copy for overlapping subscriptions, got {copies:?}"
        ),
        Version::V5 => assert!(
            extra.iter().all(|q| *q < 2) && extra.windows(2).all(|w| w[0] != w[1]),
            "5: extra copies only one per other subscription, at its QoS: {copies:?}"
        ),
    }
    for m in &copies[1..] {
        m.check(
            &Msg::new(&x, "overlap", m.qos, 0),
            "an extra copy for another subscription",
        );
    }
}
