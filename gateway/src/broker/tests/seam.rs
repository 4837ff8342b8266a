//! The backend seam: a QoS 1/2 publish is acknowledged only once the backend has stored it,
//! and local fan-out happens when the message comes back from the backend.

use super::*;

/// A backend that stores nothing itself: every message waits for the test to persist it,
/// the way a JetStream backend waits for the stream's acknowledgement.
#[derive(Default)]
struct Deferred {
    retained: InProcess,
    admitted: Vec<(Ticket, Arc<Message>)>,
}

impl Backend for Deferred {
    fn admit(&mut self, ticket: Ticket, message: &Arc<Message>, _now: Instant) -> Admission {
        self.admitted.push((ticket, message.clone()));
        Admission::Pending
    }

    fn retain(&mut self, message: &Arc<Message>) -> RetainOutcome {
        self.retained.retain(message)
    }

    fn retained(&self, filter: &str, now: Instant, visit: &mut dyn FnMut(&Arc<Message>)) {
        self.retained.retained(filter, now, visit);
    }

    fn tick(&mut self, now: Instant) {
        self.retained.tick(now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.retained.next_deadline()
    }
}

fn deferred() -> Broker<Deferred> {
    Broker::with_backend(BrokerConfig::default(), Deferred::default())
}

#[test]
fn puback_waits_for_persisted() {
    // The seam sits where a QoS 1 publish becomes durable: no PUBACK before the store has it.
    let mut b = deferred();
    let s = online(&mut b, "sub", 1);
    subscribe(&mut b, s, "t", sub(1));
    let p = online(&mut b, "pub", 2);
    assert!(b
        .publish(p, Some(5), msg("t", "m", qos(1)), t0())
        .is_empty());
    // A resend while it is being stored is not stored twice.
    assert!(b
        .publish(p, Some(5), msg("t", "m", qos(1)), t0())
        .is_empty());
    assert_eq!(b.backend().admitted.len(), 1);
    let (ticket, message) = b.backend().admitted[0].clone();
    assert_eq!(message.origin.as_deref(), Some("pub"));
    assert_eq!(
        sent(&b.persisted(ticket, StoreOutcome::Stored), 2),
        [&puback(5)]
    );
    assert!(
        b.persisted(ticket, StoreOutcome::Stored).is_empty(),
        "once only"
    );
    // Fan-out happens when the stream hands the message back.
    let a = b.deliver(message, t0());
    assert_eq!(payloads(&a, 1), ["m"]);
}

#[test]
fn pubrec_waits_for_persisted_and_failures_say_so() {
    let mut b = deferred();
    let p = online(&mut b, "pub", 2);
    b.publish(p, Some(1), msg("t", "two", qos(2)), t0());
    b.publish(p, Some(2), msg("t", "lost", qos(1)), t0());
    let tickets: Vec<Ticket> = b.backend().admitted.iter().map(|(t, _)| *t).collect();
    assert_eq!(
        sent(&b.persisted(tickets[0], StoreOutcome::Stored), 2),
        [&pubrec(1)]
    );
    // Now a repeat of id 1 is a QoS 2 duplicate: PUBREC again, not stored again.
    assert_eq!(
        sent(&b.publish(p, Some(1), msg("t", "two", qos(2)), t0()), 2),
        [&pubrec(1)]
    );
    assert_eq!(b.backend().admitted.len(), 2);
    // A store failure: 0x80, and the id is free for the client's retry.
    let a = b.persisted(tickets[1], StoreOutcome::Failed);
    assert_eq!(
        sent(&a, 2),
        [&Outgoing::PubAck {
            packet_id: 2,
            reason: 0x80
        }]
    );
    b.publish(p, Some(2), msg("t", "retry", qos(1)), t0());
    assert_eq!(b.backend().admitted.len(), 3);
}

#[test]
fn server_receive_maximum_bounds_unacknowledged_incoming() {
    // [MQTT-3.3.4-9] from the receiving side: a client with more unacknowledged QoS 1/2
    // publishes than the server's Receive Maximum is disconnected with 0x93.
    let mut b = Broker::with_backend(
        BrokerConfig {
            server_receive_maximum: std::num::NonZeroU16::new(2).unwrap(),
            ..BrokerConfig::default()
        },
        Deferred::default(),
    );
    let p = online(&mut b, "pub", 2);
    for id in 1..=2 {
        assert!(b
            .publish(p, Some(id), msg("t", "m", qos(1)), t0())
            .is_empty());
    }
    let a = b.publish(p, Some(3), msg("t", "m", qos(1)), t0());
    assert_eq!(closes(&a), [(2, 0x93)]);
}

#[test]
fn acknowledgement_follows_the_session_to_its_new_connection() {
    // The client reconnects while its publish is being stored: the PUBACK goes to the
    // connection that holds the session when the store answers.
    let mut b = deferred();
    let p = kept(&mut b, "pub", 2, t0()).handle;
    b.publish(p, Some(9), msg("t", "m", qos(1)), t0());
    let back = kept(&mut b, "pub", 3, t0());
    assert!(back.session_present);
    // The resend of id 9 is recognised as in storage.
    assert!(b
        .publish(back.handle, Some(9), msg("t", "m", qos(1)), t0())
        .is_empty());
    let ticket = b.backend().admitted[0].0;
    assert_eq!(
        sent(&b.persisted(ticket, StoreOutcome::Stored), 3),
        [&puback(9)]
    );
}
