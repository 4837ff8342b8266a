//! The broker's rules, each test citing its clause (MQTT 5 numbering unless said otherwise).
//! No sockets: packets in, actions out.

mod delivery;
mod flow;
mod lifecycle;
mod matching;
mod queueing;
mod retained;
mod seam;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fleet_protocol::mqtt::QoS;

use super::*;

/// A fixed origin for test time.
pub(super) fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

pub(super) fn at(secs: u64) -> Instant {
    t0() + Duration::from_secs(secs)
}

pub(super) fn qos(n: u8) -> QoS {
    QoS::from_bits(n).unwrap()
}

pub(super) fn msg(topic: &str, payload: &str, q: QoS) -> Message {
    Message::new(topic, payload.as_bytes().to_vec(), q, false)
}

pub(super) fn retained_msg(topic: &str, payload: &str, q: QoS) -> Message {
    Message::new(topic, payload.as_bytes().to_vec(), q, true)
}

/// A 3.1.1 clean session on connection `conn`.
pub(super) fn online<B: Backend>(b: &mut Broker<B>, client: &str, conn: u64) -> Handle {
    b.connect(ConnectRequest::v311(client, ConnId(conn), true), t0())
        .handle
}

/// A version 5 session kept for an hour after its connection ends.
pub(super) fn kept<B: Backend>(
    b: &mut Broker<B>,
    client: &str,
    conn: u64,
    now: Instant,
) -> Connected {
    b.connect(ConnectRequest::v5(client, ConnId(conn), false, 3600), now)
}

pub(super) fn subscribe<B: Backend>(
    b: &mut Broker<B>,
    h: Handle,
    filter: &str,
    sub: Subscription,
) -> Subscribed {
    b.subscribe(h, &[(filter, sub)], t0()).unwrap()
}

pub(super) fn sub(q: u8) -> Subscription {
    Subscription::new(qos(q))
}

/// The packet id a publisher uses for QoS `q`.
pub(super) fn pid(q: QoS, id: u16) -> Option<u16> {
    (q != QoS::AtMostOnce).then_some(id)
}

/// A publish at t0 from `h`, with a fresh packet id when the QoS needs one (a repeated id
/// would be a QoS 2 duplicate).
pub(super) fn publish<B: Backend>(b: &mut Broker<B>, h: Handle, m: Message) -> Vec<Action> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 60_000;
    let id = pid(m.qos, u16::try_from(n + 1).unwrap());
    b.publish(h, id, m, t0())
}

/// What `actions` send to connection `conn`, in order.
pub(super) fn sent(actions: &[Action], conn: u64) -> Vec<&Outgoing> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { conn: c, packet } if *c == ConnId(conn) => Some(packet),
            _ => None,
        })
        .collect()
}

/// The PUBLISH packets `actions` send to `conn`.
pub(super) fn deliveries(actions: &[Action], conn: u64) -> Vec<&Delivery> {
    sent(actions, conn)
        .into_iter()
        .filter_map(|p| match p {
            Outgoing::Publish(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// The payloads delivered to `conn`, as text.
pub(super) fn payloads(actions: &[Action], conn: u64) -> Vec<String> {
    deliveries(actions, conn)
        .iter()
        .map(|d| String::from_utf8_lossy(&d.message.payload).into_owned())
        .collect()
}

pub(super) fn closes(actions: &[Action]) -> Vec<(u64, u8)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Close { conn, reason } => Some((conn.0, *reason)),
            _ => None,
        })
        .collect()
}

pub(super) fn drops(actions: &[Action]) -> Vec<(DropReason, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Dropped {
                reason, messages, ..
            } => Some((*reason, *messages)),
            _ => None,
        })
        .collect()
}

pub(super) fn puback(id: u16) -> Outgoing {
    Outgoing::PubAck {
        packet_id: id,
        reason: 0,
    }
}

pub(super) fn pubrec(id: u16) -> Outgoing {
    Outgoing::PubRec {
        packet_id: id,
        reason: 0,
    }
}

#[test]
fn idle_session_allocates_no_queues() {
    // The budget is <= 12 KiB per idle mTLS session, TLS included: the broker's share
    // must be a few hundred bytes, with no queue reserved up front.
    let mut b = Broker::new(BrokerConfig::default());
    let h = online(&mut b, "dev", 1);
    subscribe(&mut b, h, "tenants/t/devices/dev/cmd/#", sub(1));
    let s = &b.sessions[&h.session];
    assert_eq!(s.queue.capacity(), 0);
    assert_eq!(s.window.capacity(), 0);
    assert_eq!(s.incoming.capacity(), 0);
    assert!(std::mem::size_of::<session::Session>() <= 320);
    // Delivered straight through, a message leaves nothing queued behind.
    let p = online(&mut b, "svc", 2);
    let a = publish(&mut b, p, msg("tenants/t/devices/dev/cmd/x", "go", qos(0)));
    assert_eq!(payloads(&a, 1), ["go"]);
    assert_eq!(b.sessions[&h.session].queue.capacity(), 0);
}

#[test]
fn stale_handles_do_nothing() {
    let mut b = Broker::new(BrokerConfig::default());
    let h = online(&mut b, "a", 1);
    assert!(b.is_live(h));
    b.disconnect(h, Ending::Normal, None, t0());
    assert!(!b.is_live(h) && !b.has_session("a"));
    assert!(publish(&mut b, h, msg("t", "x", qos(1))).is_empty());
    assert!(b.subscribe(h, &[("t", sub(0))], t0()).is_none());
    assert!(b.unsubscribe(h, &["t"]).is_none());
    assert!(b.puback(h, 1, t0()).is_empty());
    assert!(b.disconnect(h, Ending::Abnormal, None, t0()).is_empty());
}
