//! Sessions: resending after a reconnect, Receive Maximum, Session Expiry Interval, the
//! client identifier rules, takeover.

use std::time::Duration;

use fleet_tests::conformance::packet::{disconnect_reason, is_ack, Ack};
use fleet_tests::conformance::{Conn, ConnAck, Msg, Options, Sub, Version};

use crate::Ctx;

/// A persistent session: CleanSession=0 (3.1.1), Clean Start=0 with a Session Expiry
/// Interval of 60 s (5).
fn persistent(v: Version) -> Options {
    Options {
        clean: false,
        session_expiry: (v == Version::V5).then_some(60),
        ..Options::default()
    }
}

/// Connects `name` with a persistent session; asserts what Session Present says.
async fn resume(ctx: &Ctx, name: &str, v: Version, present: bool) -> Conn {
    let (c, ack) = Conn::start(&ctx.broker, name, v, &persistent(v)).await;
    assert_eq!(
        ack.session_present, present,
        "{name}: Session Present [MQTT-3.2.2-2, 3.2.2-3]"
    );
    c
}

/// A QoS 1 PUBLISH left unacknowledged when the connection drops is resent after the
/// reconnect with DUP=1 and the same packet id [MQTT-3.3.1-1, 4.4.0-1], in a session that
/// is present [MQTT-3.2.2-2].
pub async fn resend_qos1(ctx: Ctx, v: Version) {
    let b = &ctx.broker;
    let topic = ctx.topic("q1");
    let name = ctx.client("s");
    let mut s = resume(&ctx, &name, v, false).await;
    s.subscribe_ok(1, &[Sub::new(&topic, 1)]).await;
    let mut p = Conn::clean(b, &ctx.client("p"), v).await;
    p.publish(&Msg::new(&topic, "unacked", 1, 5)).await;
    let first = s.expect_publish("the QoS 1 message").await;
    first.check(&Msg::new(&topic, "unacked", 1, 0), "the first attempt");
    s.drop_connection();
    let mut s = resume(&ctx, &name, v, true).await;
    let again = s.expect_publish("the unacknowledged message, resent").await;
    again.check(
        &Msg::new(&topic, "unacked", 1, 0).dup(),
        "the message resent after the reconnect",
    );
    assert_eq!(again.pkid, first.pkid, "the resent message's packet id");
    s.ack(&again).await;
    p.publish(&Msg::new(&topic, "marker", 1, 6)).await;
    let next = s.receive("the marker").await;
    next.check(
        &Msg::new(&topic, "marker", 1, 0),
        "the next message (the acknowledged one is not sent again)",
    );
}

/// A QoS 2 delivery that reached PUBREC/PUBREL (PUBCOMP withheld) is resumed after the
/// reconnect with PUBREL, same packet id, not with the PUBLISH [MQTT-4.4.0-1].
pub async fn resend_pubrel(ctx: Ctx, v: Version) {
    let b = &ctx.broker;
    let topic = ctx.topic("q2");
    let name = ctx.client("s");
    let mut s = resume(&ctx, &name, v, false).await;
    s.subscribe_ok(1, &[Sub::new(&topic, 2)]).await;
    let mut p = Conn::clean(b, &ctx.client("p"), v).await;
    p.publish(&Msg::new(&topic, "exactly-once", 2, 5)).await;
    let m = s.expect_publish("the QoS 2 message").await;
    m.check(&Msg::new(&topic, "exactly-once", 2, 0), "the QoS 2 message");
    s.pubrec(m.pkid).await;
    let rel = s.next("PUBREL").await;
    s.check_ack(&rel, m.pkid, "PUBREL");
    s.drop_connection();
    let mut s = resume(&ctx, &name, v, true).await;
    let rel = s.next("the PUBREL, resent").await;
    assert!(
        is_ack(Ack::PubRel)(&rel),
        "after the reconnect: expected PUBREL {}, got {rel:?}",
        m.pkid
    );
    s.check_ack(&rel, m.pkid, "the resent PUBREL");
    s.pubcomp(m.pkid).await;
    p.publish(&Msg::new(&topic, "marker", 1, 6)).await;
    let next = s.receive("the marker").await;
    next.check(
        &Msg::new(&topic, "marker", 1, 0),
        "the next message (the completed one is not sent again)",
    );
}

/// Receive Maximum 1 (5): no second QoS 1 PUBLISH until the first is acknowledged
/// [MQTT-3.3.4-9]; the messages keep their order.
pub async fn receive_maximum(ctx: Ctx) {
    let b = &ctx.broker;
    let v = Version::V5;
    let topic = ctx.topic("rm");
    let o = Options {
        receive_maximum: Some(1),
        ..Options::default()
    };
    let (mut s, _) = Conn::start(b, &ctx.client("s"), v, &o).await;
    s.subscribe_ok(1, &[Sub::new(&topic, 1)]).await;
    let mut p = Conn::clean(b, &ctx.client("p"), v).await;
    for i in 1..=3u16 {
        p.publish(&Msg::new(&topic, &format!("m{i}"), 1, i)).await;
    }
    for i in 1..=3 {
        let m = s.expect_publish(&format!("message {i} of 3")).await;
        m.check(&Msg::new(&topic, &format!("m{i}"), 1, 0), "in order");
        if let Err(extra) = s.silent(Duration::from_millis(600)).await {
            panic!("with Receive Maximum 1 and m{i} unacknowledged, the broker sent {extra:?}");
        }
        s.puback(m.pkid).await;
    }
}

/// Session Expiry Interval 3 s (5): the session is kept after the connection closes — still
/// present 1 s later, with its subscription [MQTT-3.1.2-23] — and gone 4 s later (3.1.2.11.2).
pub async fn session_expiry(ctx: Ctx) {
    let b = &ctx.broker;
    let v = Version::V5;
    let topic = ctx.topic("se");
    let name = ctx.client("s");
    let first = Options {
        session_expiry: Some(3),
        ..Options::default()
    };
    let (mut s, _) = Conn::start(b, &name, v, &first).await;
    s.subscribe_ok(1, &[Sub::new(&topic, 1)]).await;
    s.disconnect(0x00).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = Options {
        clean: false,
        session_expiry: Some(3),
        ..Options::default()
    };
    let (mut s, ack) = Conn::start(b, &name, v, &again).await;
    assert!(
        ack.session_present,
        "1 s into a 3 s session expiry: {ack:?}"
    );
    let mut p = Conn::clean(b, &ctx.client("p"), v).await;
    p.publish(&Msg::new(&topic, "kept", 1, 1)).await;
    let m = s.receive("a message through the kept subscription").await;
    m.check(&Msg::new(&topic, "kept", 1, 0), "the kept subscription");
    s.disconnect(0x00).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_s, ack) = Conn::start(b, &name, v, &again).await;
    assert!(
        !ack.session_present,
        "4 s after the close, a session with a 3 s expiry must be gone: {ack:?}"
    );
}

/// 3.1.1: an empty client id with CleanSession=0 is refused with CONNACK 0x02 (identifier
/// rejected), Session Present 0, and the connection closed [MQTT-3.1.3-8, 3.2.2-4, 3.2.2-5].
pub async fn empty_id_persistent(ctx: Ctx) {
    let mut c = Conn::open(&ctx.broker, &ctx.client("c"), Version::V4).await;
    let ack = c
        .connect(&Options {
            client_id: Some(String::new()),
            clean: false,
            ..Options::default()
        })
        .await;
    assert_eq!(
        ack,
        ConnAck {
            session_present: false,
            code: 0x02
        },
        "an empty client id with CleanSession=0"
    );
    let after = c.expect_close("the close after CONNACK 0x02").await;
    assert!(
        after.is_empty(),
        "packets after a refusing CONNACK: {after:?}"
    );
}

/// A second connection with the same client id takes the session over: the first is closed
/// (3.1.1 [MQTT-3.1.4-2]); in 5 it is first sent DISCONNECT 0x8E [MQTT-3.1.4-3].
pub async fn takeover(ctx: Ctx, v: Version) {
    let b = &ctx.broker;
    let name = ctx.client("c");
    let mut first = Conn::clean(b, &name, v).await;
    let mut second = Conn::clean(b, &name, v).await;
    let before = first
        .expect_close("the close of the taken-over connection")
        .await;
    match v {
        Version::V4 => assert!(
            before.is_empty(),
            "3.1.1 has no DISCONNECT from the server: {before:?}"
        ),
        Version::V5 => {
            let reasons: Vec<Option<u8>> = before.iter().map(disconnect_reason).collect();
            assert_eq!(
                reasons,
                [Some(0x8E)],
                "the taken-over connection gets DISCONNECT 0x8E, then the close: {before:?}"
            );
        }
    }
    second.ping().await;
}
