//! UNSUBSCRIBE and the version 5 subscription options (No Local, Retain As Published,
//! Retain Handling).

use fleet_tests::conformance::{Conn, Msg, Sub, Version};

use crate::Ctx;

/// UNSUBSCRIBE of a filter never subscribed is answered with UNSUBACK and the same packet
/// id [MQTT-3.10.4-4, 3.10.4-5]; in 5 its reason code is 0x11 "no subscription existed"
/// [MQTT-3.11.3-2].
pub async fn unsubscribe_unknown(ctx: Ctx, v: Version) {
    let mut c = Conn::clean(&ctx.broker, &ctx.client("c"), v).await;
    let codes = c.unsubscribe(3, &[&ctx.topic("never")]).await;
    let want: &[u8] = match v {
        Version::V4 => &[],
        Version::V5 => &[0x11],
    };
    assert_eq!(codes, want, "UNSUBACK reason codes");
}

/// One UNSUBACK for an UNSUBSCRIBE of three filters [MQTT-3.10.4-6], with one reason code per
/// filter in the UNSUBSCRIBE's order [MQTT-3.11.3-1, 3.11.3-2]; the removed subscriptions no
/// longer deliver [MQTT-3.10.4-2].
pub async fn unsubscribe_three(ctx: Ctx) {
    let b = &ctx.broker;
    let v = Version::V5;
    let (a, never, c) = (ctx.topic("a"), ctx.topic("never"), ctx.topic("c"));
    let marker = ctx.topic("marker");
    let mut s = Conn::clean(b, &ctx.client("s"), v).await;
    s.subscribe_ok(1, &[Sub::new(&a, 1), Sub::new(&c, 0), Sub::new(&marker, 1)])
        .await;
    let codes = s.unsubscribe(2, &[&a, &never, &c]).await;
    assert_eq!(codes, [0x00, 0x11, 0x00], "UNSUBACK for three filters");
    let mut p = Conn::clean(b, &ctx.client("p"), v).await;
    p.publish(&Msg::new(&a, "gone", 1, 1)).await;
    p.publish(&Msg::new(&marker, "marker", 1, 2)).await;
    let m = s.receive("the marker").await;
    m.check(
        &Msg::new(&marker, "marker", 1, 0),
        "the next message (none through the removed subscription)",
    );
}

/// No Local (5): a client's own publications are not sent to its No Local subscription
/// [MQTT-3.8.3-3]; other subscribers get them.
pub async fn no_local(ctx: Ctx) {
    let b = &ctx.broker;
    let v = Version::V5;
    let topic = ctx.topic("nl");
    let mut me = Conn::clean(b, &ctx.client("me"), v).await;
    let mine = Sub {
        no_local: true,
        ..Sub::new(&topic, 1)
    };
    me.subscribe_ok(1, &[mine]).await;
    let mut other = Conn::clean(b, &ctx.client("other"), v).await;
    other.subscribe_ok(1, &[Sub::new(&topic, 1)]).await;
    me.publish(&Msg::new(&topic, "own", 1, 2)).await;
    let m = other
        .receive("the publication, at the other subscriber")
        .await;
    m.check(
        &Msg::new(&topic, "own", 1, 0),
        "another client's subscription",
    );
    other.publish(&Msg::new(&topic, "other", 1, 3)).await;
    let m = me.receive("the other client's publication").await;
    m.check(
        &Msg::new(&topic, "other", 1, 0),
        "the first message to the No Local subscription (not its own)",
    );
}

/// Retain Handling (5): 0 sends the retained message on every SUBSCRIBE [MQTT-3.3.1-9],
/// 1 only when the subscription is new [MQTT-3.3.1-10], 2 never [MQTT-3.3.1-11]. Each
/// client subscribes twice with the same option.
pub async fn retain_handling(ctx: Ctx, rh: u8) {
    let b = &ctx.broker;
    let v = Version::V5;
    let topic = ctx.topic("rh");
    let kept = Msg::new(&topic, "kept", 1, 1).retained();
    let mut p = Conn::clean(b, &ctx.client("p"), v).await;
    p.publish(&kept).await;
    let sub = Sub {
        retain_handling: rh,
        ..Sub::new(&topic, 1)
    };
    let mut c = Conn::clean(b, &ctx.client("s"), v).await;
    for (pkid, first) in [(1, true), (2, false)] {
        c.subscribe_ok(pkid, std::slice::from_ref(&sub)).await;
        let what = if first { "new" } else { "existing" };
        if rh == 0 || (rh == 1 && first) {
            let m = c
                .receive(&format!("the retained message on the {what} subscription"))
                .await;
            m.check(&kept, &format!("Retain Handling {rh}, {what} subscription"));
        } else {
            let marker = Msg::new(&topic, &format!("marker{pkid}"), 1, 1 + pkid);
            p.publish(&marker).await;
            let m = c
                .receive(&format!("the marker after the {what} subscription"))
                .await;
            m.check(
                &marker,
                &format!(
                    "Retain Handling {rh}, {what} subscription: the next message (no retained one)"
                ),
            );
        }
    }
}

/// Retain As Published (5): 1 keeps the RETAIN flag of the publication [MQTT-3.3.1-13],
/// 0 sends RETAIN=0 [MQTT-3.3.1-12] (to established subscriptions).
pub async fn retain_as_published(ctx: Ctx) {
    let b = &ctx.broker;
    let v = Version::V5;
    let topic = ctx.topic("rap");
    let mut kept = Conn::clean(b, &ctx.client("rap1"), v).await;
    let rap = Sub {
        retain_as_published: true,
        ..Sub::new(&topic, 1)
    };
    kept.subscribe_ok(1, &[rap]).await;
    let mut cleared = Conn::clean(b, &ctx.client("rap0"), v).await;
    cleared.subscribe_ok(1, &[Sub::new(&topic, 1)]).await;
    let mut p = Conn::clean(b, &ctx.client("p"), v).await;
    p.publish(&Msg::new(&topic, "retained", 1, 1).retained())
        .await;
    p.publish(&Msg::new(&topic, "plain", 1, 2)).await;
    for (c, rap) in [(&mut kept, true), (&mut cleared, false)] {
        let m = c.receive("the retained publication").await;
        let mut want = Msg::new(&topic, "retained", 1, 0);
        want.retain = rap;
        m.check(&want, &format!("Retain As Published {}", u8::from(rap)));
        let m = c.receive("the plain publication").await;
        m.check(
            &Msg::new(&topic, "plain", 1, 0),
            &format!("Retain As Published {}, RETAIN=0 published", u8::from(rap)),
        );
    }
}
