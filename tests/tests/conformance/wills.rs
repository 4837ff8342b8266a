//! Wills: their QoS, Will Delay Interval, and suppression by DISCONNECT.

use std::time::{Duration, Instant};

use fleet_tests::conformance::{Conn, Msg, Options, Sub, Version, Will};

use crate::Ctx;

fn will(topic: String, payload: &str, qos: u8, delay: Option<u32>) -> Option<Will> {
    Some(Will {
        topic,
        payload: payload.to_owned(),
        qos,
        retain: false,
        delay,
    })
}

/// A will is published when the network connection closes without DISCONNECT (3.1.1
/// [MQTT-3.1.2-8], 5 3.1.2.5) and delivered like any message: at min(will QoS, subscription
/// QoS) [MQTT-3.8.4-6 (3.1.1), 3.8.4-8 (5)], RETAIN=0 to an established subscription.
pub async fn will_qos(ctx: Ctx, v: Version) {
    let b = &ctx.broker;
    let mut subs = Vec::new();
    for s in 0..=2u8 {
        let mut c = Conn::clean(b, &ctx.client(&format!("s{s}")), v).await;
        c.subscribe_ok(1, &[Sub::new(&ctx.topic("w/+"), s)]).await;
        subs.push((s, c));
    }
    for w in 0..=2u8 {
        let o = Options {
            will: will(ctx.topic(&format!("w/{w}")), &format!("will{w}"), w, None),
            ..Options::default()
        };
        let (c, _) = Conn::start(b, &ctx.client(&format!("w{w}")), v, &o).await;
        c.drop_connection();
    }
    for (s, c) in &mut subs {
        let mut got = Vec::new();
        for i in 0..3 {
            got.push(c.receive(&format!("will {i} of 3 (sub QoS {s})")).await);
        }
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        for (w, m) in (0..=2u8).zip(&got) {
            let want = Msg::new(
                &ctx.topic(&format!("w/{w}")),
                &format!("will{w}"),
                w.min(*s),
                0,
            );
            m.check(&want, &format!("a QoS {w} will to a QoS {s} subscription"));
        }
    }
}

/// The Will Delay Interval of the delay cases, in seconds.
const DELAY: u32 = 2;

fn delayed_will(ctx: &Ctx, part: &str) -> Options {
    Options {
        session_expiry: Some(30),
        will: will(ctx.topic(&format!("{part}/will")), part, 1, Some(DELAY)),
        ..Options::default()
    }
}

/// Will Delay Interval (5): the will is not published before the delay has passed
/// (3.1.3.2.2: "until the Will Delay Interval has passed or the Session ends").
pub async fn will_delay(ctx: Ctx) {
    let part = "late";
    let b = &ctx.broker;
    let mut sub = Conn::clean(b, &ctx.client(&format!("{part}-s")), Version::V5).await;
    sub.subscribe_ok(1, &[Sub::new(&ctx.topic(&format!("{part}/#")), 1)])
        .await;
    let o = delayed_will(&ctx, part);
    let (w, _) = Conn::start(b, &ctx.client(&format!("{part}-w")), Version::V5, &o).await;
    let dropped = Instant::now();
    w.drop_connection();
    if let Err(p) = sub.silent(Duration::from_millis(1500)).await {
        panic!(
            "a will with a {DELAY} s delay, sent after {:?}: {p:?}",
            dropped.elapsed()
        );
    }
    let m = sub.receive("the will after its delay").await;
    m.check(
        &Msg::new(&ctx.topic(&format!("{part}/will")), part, 1, 0),
        "the delayed will",
    );
}

/// Will Delay Interval (5): no will when the session is resumed before the delay has
/// passed [MQTT-3.1.3-9].
pub async fn will_delay_cancelled(ctx: Ctx) {
    let part = "back";
    let b = &ctx.broker;
    let mut sub = Conn::clean(b, &ctx.client(&format!("{part}-s")), Version::V5).await;
    sub.subscribe_ok(1, &[Sub::new(&ctx.topic(&format!("{part}/#")), 1)])
        .await;
    let name = ctx.client(&format!("{part}-w"));
    let (w, _) = Conn::start(b, &name, Version::V5, &delayed_will(&ctx, part)).await;
    w.drop_connection();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = Options {
        clean: false,
        session_expiry: Some(30),
        ..Options::default()
    };
    let (mut w, ack) = Conn::start(b, &name, Version::V5, &again).await;
    assert!(ack.session_present, "the session with the delayed will");
    tokio::time::sleep(Duration::from_secs(u64::from(DELAY) + 1)).await;
    let marker = Msg::new(&ctx.topic(&format!("{part}/marker")), "marker", 1, 1);
    w.publish(&marker).await;
    let m = sub.receive("the marker").await;
    m.check(
        &marker,
        "the first message after reconnecting within the will delay (no will)",
    );
}

/// DISCONNECT discards the will: 3.1.1 [MQTT-3.1.2-10, 3.14.4-3]; in 5 a DISCONNECT 0x00
/// discards it [MQTT-3.14.4-3] and DISCONNECT 0x04 publishes it (3.14.2.1).
pub async fn will_on_disconnect(ctx: Ctx, v: Version) {
    let b = &ctx.broker;
    let mut sub = Conn::clean(b, &ctx.client("s"), v).await;
    sub.subscribe_ok(1, &[Sub::new(&ctx.topic("w/+"), 1)]).await;
    let normal = Options {
        will: will(ctx.topic("w/normal"), "normal", 1, None),
        ..Options::default()
    };
    let (w, _) = Conn::start(b, &ctx.client("n"), v, &normal).await;
    w.disconnect(0x00).await;
    let want = match v {
        Version::V4 => {
            let mut p = Conn::clean(b, &ctx.client("p"), v).await;
            let marker = Msg::new(&ctx.topic("w/marker"), "marker", 1, 1);
            p.publish(&marker).await;
            marker
        }
        Version::V5 => {
            let with = Options {
                will: will(ctx.topic("w/with"), "with", 1, None),
                ..Options::default()
            };
            let (w, _) = Conn::start(b, &ctx.client("w"), v, &with).await;
            w.disconnect(0x04).await;
            Msg::new(&ctx.topic("w/with"), "with", 1, 0)
        }
    };
    let m = sub.receive("the next message").await;
    m.check(
        &want,
        "the first message after a DISCONNECT that discards the will",
    );
}
