//! Sessions over time: offline queueing and resume, expiry, takeover, clean start, wills.

use super::*;

fn will(topic: &str, payload: &str, q: u8, delay: u32) -> Will {
    Will {
        message: msg(topic, payload, qos(q)),
        delay,
    }
}

/// A watcher subscribed to `will/#` at QoS 2, and a v5 client "dev" with `w` as its will.
fn with_will(b: &mut Broker, w: Will, expiry: u32) -> (Handle, Handle) {
    let watcher = online(b, "watcher", 9);
    subscribe(b, watcher, "will/#", sub(2));
    let request = ConnectRequest::v5("dev", ConnId(1), true, expiry).with_will(w);
    (watcher, b.connect(request, t0()).handle)
}

#[test]
fn persistent_session_queues_offline_and_resumes_in_order() {
    // [MQTT-3.1.2-23]: a session with an expiry outlives its connection and keeps receiving.
    // [MQTT-4.4.0-1]: on resume, unacknowledged PUBLISH packets are resent in their original
    // order, with DUP=1 [MQTT-3.3.1-1], and PUBREL for the flows that reached PUBREC.
    let mut b = Broker::new(BrokerConfig::default());
    let first = kept(&mut b, "dev", 1, t0());
    assert!(!first.session_present);
    let h = first.handle;
    subscribe(&mut b, h, "c/#", sub(2));
    let p = online(&mut b, "svc", 2);
    let a = b.publish(p, Some(1), msg("c/1", "one", qos(1)), t0());
    assert_eq!(deliveries(&a, 1)[0].packet_id, Some(1));
    b.publish(p, Some(2), msg("c/2", "two", qos(2)), t0());
    b.publish(p, Some(3), msg("c/3", "three", qos(1)), t0());
    b.pubrec(h, 2, 0, t0());
    assert!(b.disconnect(h, Ending::Abnormal, None, t0()).is_empty());
    assert!(b.has_session("dev"));
    // Offline: queued, nothing sent anywhere but the publisher's PUBACK.
    let a = b.publish(p, Some(4), msg("c/4", "four", qos(1)), t0());
    assert_eq!(sent(&a, 2), [&puback(4)]);
    assert_eq!(a.len(), 1);

    let back = kept(&mut b, "dev", 3, at(1));
    assert!(back.session_present);
    let got: Vec<_> = sent(&back.actions, 3)
        .into_iter()
        .map(|p| match p {
            Outgoing::Publish(d) => (
                "PUBLISH",
                d.packet_id,
                d.dup,
                String::from_utf8_lossy(&d.message.payload).into_owned(),
            ),
            Outgoing::PubRel { packet_id, .. } => {
                ("PUBREL", Some(*packet_id), false, String::new())
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            ("PUBLISH", Some(1), true, "one".to_string()),
            ("PUBREL", Some(2), false, String::new()),
            ("PUBLISH", Some(3), true, "three".to_string()),
            ("PUBLISH", Some(4), false, "four".to_string()),
        ]
    );
}

#[test]
fn session_expiry_keeps_then_discards() {
    // [MQTT-3.1.2-23]: kept for the Session Expiry Interval after the connection ends, then
    // discarded with what it held (counted).
    let mut b = Broker::new(BrokerConfig::default());
    let h = b
        .connect(ConnectRequest::v5("dev", ConnId(1), false, 10), t0())
        .handle;
    subscribe(&mut b, h, "t", sub(1));
    b.disconnect(h, Ending::Normal, None, t0());
    assert_eq!(b.next_deadline(), Some(at(10)));
    let p = online(&mut b, "pub", 2);
    publish(&mut b, p, msg("t", "queued", qos(1)));
    assert!(b.tick(at(9)).is_empty());
    assert!(b.has_session("dev"));
    let a = b.tick(at(10));
    assert_eq!(drops(&a), [(DropReason::SessionEnded, 1)]);
    assert!(!b.has_session("dev"));
    assert_eq!((b.stats().sessions_expired, b.subscription_count()), (1, 0));
    assert_eq!(b.next_deadline(), None);
    let again = b.connect(ConnectRequest::v5("dev", ConnId(3), false, 10), at(11));
    assert!(!again.session_present && again.actions.is_empty());
}

#[test]
fn expiry_zero_and_clean_sessions_end_with_the_connection() {
    // v5 expiry 0 and 3.1.1 CleanSession=1: nothing is kept [MQTT-3.1.2-23];
    // 3.1.1 CleanSession=0 is kept.
    let mut b = Broker::new(BrokerConfig::default());
    let v5 = b
        .connect(ConnectRequest::v5("a", ConnId(1), false, 0), t0())
        .handle;
    let clean = online(&mut b, "b", 2);
    let kept311 = b
        .connect(ConnectRequest::v311("c", ConnId(3), false), t0())
        .handle;
    for h in [v5, clean, kept311] {
        subscribe(&mut b, h, "t", sub(0));
        b.disconnect(h, Ending::Normal, None, t0());
    }
    assert!(!b.has_session("a") && !b.has_session("b") && b.has_session("c"));
    assert_eq!(
        b.next_deadline(),
        None,
        "a 3.1.1 persistent session does not expire"
    );
}

#[test]
fn clean_start_discards_the_old_session() {
    // [MQTT-3.1.2-4]: Clean Start discards the existing session; session present = 0.
    let mut b = Broker::new(BrokerConfig::default());
    let h = kept(&mut b, "dev", 1, t0()).handle;
    subscribe(&mut b, h, "t", sub(1));
    b.disconnect(h, Ending::Normal, None, t0());
    let fresh = b.connect(ConnectRequest::v5("dev", ConnId(2), true, 3600), t0());
    assert!(!fresh.session_present);
    assert_eq!(b.subscription_count(), 0);
    let p = online(&mut b, "pub", 3);
    assert!(deliveries(&publish(&mut b, p, msg("t", "x", qos(1))), 2).is_empty());
}

#[test]
fn disconnect_may_change_the_expiry_but_not_from_zero() {
    // [MQTT-3.14.2-2]: setting a non-zero expiry at DISCONNECT after 0 at CONNECT is a
    // protocol error; otherwise the new interval applies.
    let mut b = Broker::new(BrokerConfig::default());
    let h = b
        .connect(ConnectRequest::v5("zero", ConnId(1), false, 0), t0())
        .handle;
    let a = b.disconnect(h, Ending::Normal, Some(60), t0());
    assert_eq!(closes(&a), [(1, 0x82)]);
    assert!(!b.has_session("zero"));
    let h = b
        .connect(ConnectRequest::v5("long", ConnId(2), false, 60), t0())
        .handle;
    b.disconnect(h, Ending::Normal, Some(0), t0());
    assert!(!b.has_session("long"));
}

#[test]
fn takeover_closes_the_old_connection_and_keeps_the_session() {
    // [MQTT-3.1.4-3]: a second connection with the same client id takes the session; the
    // old connection is closed with 0x8E (session taken over).
    let mut b = Broker::new(BrokerConfig::default());
    let old = kept(&mut b, "dev", 1, t0()).handle;
    subscribe(&mut b, old, "t", sub(1));
    let new = kept(&mut b, "dev", 2, t0());
    assert_eq!(closes(&new.actions), [(1, 0x8E)]);
    assert!(new.session_present);
    assert!(!b.is_live(old) && b.is_live(new.handle));
    assert_eq!(b.stats().sessions_taken_over, 1);
    let p = online(&mut b, "pub", 3);
    let a = publish(&mut b, p, msg("t", "here", qos(1)));
    assert_eq!(payloads(&a, 2), ["here"]);
    assert!(deliveries(&a, 1).is_empty());
    // The old connection's late packets change nothing.
    assert!(b.puback(old, 1, t0()).is_empty());
    assert!(b.disconnect(old, Ending::Abnormal, None, t0()).is_empty());
    assert!(b.is_live(new.handle));
}

#[test]
fn will_on_abnormal_end_not_on_normal_disconnect() {
    // [MQTT-3.1.2-8]: the will is published when the connection ends abnormally, at
    // min(will QoS, granted QoS); [MQTT-3.1.2-10]: a DISCONNECT 0x00 removes it.
    let mut b = Broker::new(BrokerConfig::default());
    let (_, dev) = with_will(&mut b, will("will/dev", "gone", 1, 0), 0);
    let a = b.disconnect(dev, Ending::Abnormal, None, t0());
    let d = deliveries(&a, 9);
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].qos, &d[0].message.payload[..]),
        (qos(1), &b"gone"[..])
    );
    assert_eq!(d[0].message.origin.as_deref(), Some("dev"));
    assert_eq!(b.stats().wills_published, 1);

    let mut b = Broker::new(BrokerConfig::default());
    let (_, dev) = with_will(&mut b, will("will/dev", "gone", 1, 0), 0);
    assert!(b.disconnect(dev, Ending::Normal, None, t0()).is_empty());
    assert_eq!(b.stats().wills_published, 0);
}

#[test]
fn disconnect_with_will_publishes_it() {
    // §3.14.2.1: DISCONNECT 0x04 "disconnect with will message".
    let mut b = Broker::new(BrokerConfig::default());
    let (_, dev) = with_will(&mut b, will("will/dev", "bye", 2, 0), 0);
    let a = b.disconnect(dev, Ending::WithWill, None, t0());
    assert_eq!(payloads(&a, 9), ["bye"]);
    assert_eq!(deliveries(&a, 9)[0].qos, qos(2));
}

#[test]
fn will_delay_waits_and_is_cancelled_by_resume() {
    // [MQTT-3.1.3-9]: the will is published after the Will Delay Interval, unless a new
    // connection resumes the session first.
    let mut b = Broker::new(BrokerConfig::default());
    let (_, dev) = with_will(&mut b, will("will/dev", "late", 0, 5), 60);
    assert!(b.disconnect(dev, Ending::Abnormal, None, t0()).is_empty());
    assert_eq!(b.next_deadline(), Some(at(5)));
    assert!(b.tick(at(4)).is_empty());
    assert_eq!(payloads(&b.tick(at(5)), 9), ["late"]);
    assert!(b.has_session("dev"), "the session outlives its will");

    let mut b = Broker::new(BrokerConfig::default());
    let (_, dev) = with_will(&mut b, will("will/dev", "late", 0, 5), 60);
    b.disconnect(dev, Ending::Abnormal, None, t0());
    let back = b.connect(ConnectRequest::v5("dev", ConnId(2), false, 60), at(2));
    assert!(back.session_present);
    assert!(b.tick(at(10)).is_empty());
    assert_eq!(b.stats().wills_published, 0);
}

#[test]
fn will_is_sent_when_the_session_expires_first() {
    // [MQTT-3.1.3-9]: "... or the session ends, whichever happens first".
    let mut b = Broker::new(BrokerConfig::default());
    let (_, dev) = with_will(&mut b, will("will/dev", "expired", 1, 30), 10);
    b.disconnect(dev, Ending::Abnormal, None, t0());
    assert_eq!(b.next_deadline(), Some(at(10)));
    let a = b.tick(at(10));
    assert_eq!(payloads(&a, 9), ["expired"]);
    assert!(!b.has_session("dev"));
    assert!(b.tick(at(30)).is_empty());
}

#[test]
fn takeover_with_clean_start_fires_the_old_will() {
    // A clean-start takeover ends the old session, so its connection's will fires; a
    // resuming takeover continues the session and cancels it (§3.1.3.2.2).
    let mut b = Broker::new(BrokerConfig::default());
    let (_, _dev) = with_will(&mut b, will("will/dev", "replaced", 0, 0), 60);
    let a = b
        .connect(ConnectRequest::v5("dev", ConnId(2), true, 60), t0())
        .actions;
    assert_eq!(closes(&a), [(1, 0x8E)]);
    assert_eq!(payloads(&a, 9), ["replaced"]);

    let mut b = Broker::new(BrokerConfig::default());
    let (_, _dev) = with_will(&mut b, will("will/dev", "replaced", 0, 0), 60);
    let a = b
        .connect(ConnectRequest::v5("dev", ConnId(2), false, 60), t0())
        .actions;
    assert_eq!(closes(&a), [(1, 0x8E)]);
    assert!(deliveries(&a, 9).is_empty());
}
