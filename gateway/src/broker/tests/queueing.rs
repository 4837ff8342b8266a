//! The bounded queue through the broker: each overflow policy, in messages and in bytes, and
//! its counters.

use super::*;

fn config(max_messages: usize, max_bytes: usize, overflow: Overflow) -> BrokerConfig {
    BrokerConfig {
        queue: QueueLimits {
            max_messages,
            max_bytes,
            overflow,
            drop_qos0_first: false,
        },
        ..BrokerConfig::default()
    }
}

/// An offline persistent session "dev" subscribed to `t` at QoS 1, and a publisher.
fn offline(b: &mut Broker) -> Handle {
    let h = kept(b, "dev", 1, t0()).handle;
    subscribe(b, h, "t", sub(1));
    b.disconnect(h, Ending::Abnormal, None, t0());
    online(b, "pub", 2)
}

/// Publishes `payloads` at QoS 1 and returns every action.
fn flood(b: &mut Broker, p: Handle, payloads: &[&str]) -> Vec<Action> {
    let mut all = Vec::new();
    for (i, text) in payloads.iter().enumerate() {
        let id = u16::try_from(i + 1).unwrap();
        all.extend(b.publish(p, Some(id), msg("t", text, qos(1)), t0()));
    }
    all
}

fn resumed(b: &mut Broker) -> Vec<String> {
    payloads(&kept(b, "dev", 3, t0()).actions, 3)
}

#[test]
fn drop_newest_keeps_the_first_messages() {
    let mut b = Broker::new(config(2, 1 << 20, Overflow::DropNewest));
    let p = offline(&mut b);
    let a = flood(&mut b, p, &["1", "2", "3"]);
    assert_eq!(drops(&a), [(DropReason::QueueFull, 1)]);
    assert_eq!(b.stats().queue_full, 1);
    assert_eq!(resumed(&mut b), ["1", "2"]);
}

#[test]
fn drop_oldest_keeps_the_last_messages() {
    let mut b = Broker::new(config(2, 1 << 20, Overflow::DropOldest));
    let p = offline(&mut b);
    let a = flood(&mut b, p, &["1", "2", "3", "4"]);
    assert_eq!(
        drops(&a),
        [(DropReason::QueueFull, 1), (DropReason::QueueFull, 1)]
    );
    assert_eq!(b.stats().queue_full, 2);
    assert_eq!(resumed(&mut b), ["3", "4"]);
}

#[test]
fn byte_bound_applies_like_the_message_bound() {
    // Topic `t` + a 4-byte payload = 5 bytes: 12 bytes hold two messages.
    let mut b = Broker::new(config(100, 12, Overflow::DropOldest));
    let p = offline(&mut b);
    let a = flood(&mut b, p, &["aaaa", "bbbb", "cccc"]);
    assert_eq!(drops(&a), [(DropReason::QueueFull, 1)]);
    assert_eq!(resumed(&mut b), ["bbbb", "cccc"]);

    let mut b = Broker::new(config(100, 12, Overflow::DropNewest));
    let p = offline(&mut b);
    flood(&mut b, p, &["aaaa", "bbbb", "cccc"]);
    assert_eq!(resumed(&mut b), ["aaaa", "bbbb"]);
}

#[test]
fn qos0_is_dropped_first() {
    let mut b = Broker::new(BrokerConfig {
        queue: QueueLimits {
            drop_qos0_first: true,
            ..config(2, 1 << 20, Overflow::DropNewest).queue
        },
        ..BrokerConfig::default()
    });
    let p = offline(&mut b);
    b.publish(p, None, msg("t", "zero", qos(0)), t0());
    flood(&mut b, p, &["1", "2"]);
    assert_eq!(b.stats().queue_full, 1);
    assert_eq!(resumed(&mut b), ["1", "2"]);
}

#[test]
fn disconnect_policy_closes_a_connected_client() {
    // The window (Receive Maximum 1) holds one message, the queue one more; the third
    // overflows: the client is disconnected with 0x97 (quota exceeded).
    let mut b = Broker::new(config(1, 1 << 20, Overflow::Disconnect));
    let request = ConnectRequest::v5("dev", ConnId(1), false, 3600).with_receive_maximum(1);
    let h = b.connect(request, t0()).handle;
    subscribe(&mut b, h, "t", sub(1));
    let p = online(&mut b, "pub", 2);
    let a = flood(&mut b, p, &["1", "2", "3"]);
    assert_eq!(payloads(&a, 1), ["1"]);
    assert_eq!(closes(&a), [(1, 0x97)]);
    assert_eq!(drops(&a), [(DropReason::QueueFull, 1)]);
    assert_eq!(
        (b.stats().overflow_disconnects, b.stats().queue_full),
        (1, 1)
    );
    assert!(!b.is_live(h) && b.has_session("dev"));
    // On resume: the unacknowledged one again (DUP), then the queued one.
    let back = kept(&mut b, "dev", 3, t0());
    assert_eq!(payloads(&back.actions, 3), ["1", "2"]);
}

#[test]
fn disconnect_policy_ends_an_offline_session() {
    // Offline, there is no connection to close: the session ends, so the client learns of
    // the loss from "session present = 0".
    let mut b = Broker::new(config(2, 1 << 20, Overflow::Disconnect));
    let p = offline(&mut b);
    let a = flood(&mut b, p, &["1", "2", "3"]);
    assert_eq!(
        drops(&a),
        [(DropReason::QueueFull, 1), (DropReason::SessionEnded, 2)]
    );
    assert!(!b.has_session("dev"));
    assert_eq!(b.stats().overflow_disconnects, 1);
    assert!(!kept(&mut b, "dev", 3, t0()).session_present);
}

#[test]
fn an_overflow_disconnect_fires_the_will() {
    // The broker ends the connection abnormally, so its will is published [MQTT-3.1.2-8]
    // (routed after the message that overflowed, in the same call).
    let mut b = Broker::new(config(1, 1 << 20, Overflow::Disconnect));
    let watcher = online(&mut b, "watcher", 9);
    subscribe(&mut b, watcher, "will/#", sub(1));
    let will = Will {
        message: msg("will/dev", "gone", qos(1)),
        delay: 0,
    };
    let request = ConnectRequest::v5("dev", ConnId(1), true, 0)
        .with_receive_maximum(1)
        .with_will(will);
    let h = b.connect(request, t0()).handle;
    subscribe(&mut b, h, "t", sub(1));
    let p = online(&mut b, "pub", 2);
    let a = flood(&mut b, p, &["1", "2", "3"]);
    assert_eq!(closes(&a), [(1, 0x97)]);
    assert_eq!(
        drops(&a),
        [(DropReason::QueueFull, 1), (DropReason::SessionEnded, 2)]
    );
    assert_eq!(payloads(&a, 9), ["gone"]);
    assert!(!b.has_session("dev"));
}
