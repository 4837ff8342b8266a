//! The broker core's [`Backend`] for a cluster: it does no I/O (the broker calls it with
//! its lock held), it queues work for the link tasks ([`super::link`]):
//!
//! - [`Backend::admit`] queues every publish (and will) for NATS and answers
//!   [`Admission::Pending`]: the PUBACK / PUBREC waits until JetStream stored it
//!   ([`crate::hub::Hub::persisted`]), and local fan-out waits until it comes back from
//!   NATS ([`crate::hub::Hub::deliver`]), as it comes to every other gateway;
//! - [`Backend::subscribed`] / [`Backend::unsubscribed`] queue the filters the link
//!   subscribes to on core NATS, once per gateway (counted over its sessions);
//! - retained messages: a local copy (a [`RetainedStore`] shared with the link task that
//!   watches the KV bucket), which answers SUBSCRIBE.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use fleet_protocol::mqtt::QoS;

use crate::broker::{Admission, Backend, Message, RetainOutcome, RetainedStore, Ticket};

/// A publish on its way to NATS.
#[derive(Debug)]
pub struct Outbound {
    pub ticket: Ticket,
    pub message: Arc<Message>,
}

/// A change in the filters the gateway's sessions hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    Add(Box<str>),
    Remove(Box<str>),
}

/// QoS 0 messages waiting for the link beyond which further ones are dropped (counted):
/// a slow NATS does not grow memory without bound. QoS 1/2 are bounded by the clients'
/// in-flight windows and always queued.
pub const MAX_QUEUED_VOLATILE: usize = 65_536;

/// Counters the backend and the link share.
#[derive(Debug, Default)]
pub struct Queue {
    /// Publishes queued and not yet taken by the link.
    pub waiting: AtomicUsize,
    /// QoS 0 publishes dropped because [`MAX_QUEUED_VOLATILE`] were waiting, not yet in the
    /// metrics.
    pub dropped: AtomicU64,
}

/// The retained messages as this gateway knows them, shared with the KV watch.
pub type SharedRetained = Arc<Mutex<RetainedStore>>;

pub(crate) fn lock(store: &SharedRetained) -> MutexGuard<'_, RetainedStore> {
    // Every update is one `set` or purge: a poisoned lock holds a consistent store.
    store.lock().unwrap_or_else(|p| p.into_inner())
}

/// The cluster's backend (see the module docs).
#[derive(Debug)]
pub struct JetStreamBackend {
    outbound: UnboundedSender<Outbound>,
    interest: UnboundedSender<Interest>,
    /// Interest changes queued so far (the link counts those it has made effective).
    queued: Arc<AtomicU64>,
    queue: Arc<Queue>,
    retained: SharedRetained,
}

impl JetStreamBackend {
    pub fn new(
        outbound: UnboundedSender<Outbound>,
        interest: UnboundedSender<Interest>,
        retained: SharedRetained,
    ) -> JetStreamBackend {
        JetStreamBackend {
            outbound,
            interest,
            queued: Arc::new(AtomicU64::new(0)),
            queue: Arc::new(Queue::default()),
            retained,
        }
    }

    /// The publish queue's counters, shared with the link.
    pub fn queue(&self) -> Arc<Queue> {
        self.queue.clone()
    }

    /// The count of interest changes queued, shared with whoever waits for them to take
    /// effect ([`super::Cluster::settled`]).
    pub fn queued(&self) -> Arc<AtomicU64> {
        self.queued.clone()
    }

    fn send_interest(&self, change: Interest) {
        if self.interest.send(change).is_ok() {
            self.queued.fetch_add(1, Ordering::Release);
        }
    }
}

impl Backend for JetStreamBackend {
    fn admit(&mut self, ticket: Ticket, message: &Arc<Message>, _now: Instant) -> Admission {
        let waiting = self.queue.waiting.load(Ordering::Relaxed);
        if message.qos == QoS::AtMostOnce && waiting >= MAX_QUEUED_VOLATILE {
            self.queue.dropped.fetch_add(1, Ordering::Relaxed);
            return Admission::Pending;
        }
        self.queue.waiting.fetch_add(1, Ordering::Relaxed);
        let queued = self.outbound.send(Outbound {
            ticket,
            message: message.clone(),
        });
        if queued.is_err() {
            // The link is gone (the gateway is stopping): nothing will store the message,
            // and the acknowledgement never comes; the client resends after reconnecting.
            tracing::warn!(topic = %message.topic, "cluster link stopped: publish not stored");
        }
        Admission::Pending
    }

    fn retain(&mut self, message: &Arc<Message>) -> RetainOutcome {
        lock(&self.retained).set(message)
    }

    fn retained(&self, filter: &str, now: Instant, visit: &mut dyn FnMut(&Arc<Message>)) {
        lock(&self.retained).for_each_match(filter, now, visit);
    }

    fn tick(&mut self, now: Instant) {
        lock(&self.retained).purge_expired(now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        lock(&self.retained).next_expiry()
    }

    fn subscribed(&mut self, filter: &str) {
        self.send_interest(Interest::Add(filter.into()));
    }

    fn unsubscribed(&mut self, filter: &str) {
        self.send_interest(Interest::Remove(filter.into()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{Broker, BrokerConfig, ConnId, ConnectRequest, Ending, Subscription};
    use fleet_protocol::mqtt::QoS;
    use tokio::sync::mpsc::unbounded_channel;

    #[test]
    fn publishes_wait_for_the_store_and_filters_are_reported_per_session() {
        let (out_tx, mut out_rx) = unbounded_channel();
        let (int_tx, mut int_rx) = unbounded_channel();
        let store = Arc::new(Mutex::new(RetainedStore::new(10)));
        let backend = JetStreamBackend::new(out_tx, int_tx, store);
        let mut broker = Broker::with_backend(BrokerConfig::default(), backend);
        let now = Instant::now();
        let c = broker.connect(ConnectRequest::v311("dev", ConnId(1), true), now);
        let sub = Subscription::new(QoS::AtLeastOnce);
        broker.subscribe(c.handle, &[("a/#", sub), ("a/#", sub), ("b", sub)], now);
        assert_eq!(int_rx.try_recv(), Ok(Interest::Add("a/#".into())));
        assert_eq!(int_rx.try_recv(), Ok(Interest::Add("b".into())));
        assert!(
            int_rx.try_recv().is_err(),
            "a replacement is not a new filter"
        );

        let actions = broker.publish(
            c.handle,
            Some(7),
            Message::new("a/x", &b"p"[..], QoS::AtLeastOnce, false),
            now,
        );
        assert!(
            actions.is_empty(),
            "no PUBACK and no local delivery yet: {actions:?}"
        );
        let queued = out_rx.try_recv().expect("queued for NATS");
        assert_eq!(&*queued.message.topic, "a/x");
        assert_eq!(queued.message.origin.as_deref(), Some("dev"));

        broker.disconnect(c.handle, Ending::Normal, None, now);
        let mut removed = vec![int_rx.try_recv(), int_rx.try_recv()];
        removed.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            removed,
            [
                Ok(Interest::Remove("a/#".into())),
                Ok(Interest::Remove("b".into()))
            ]
        );
    }

    #[test]
    fn qos0_beyond_the_queue_limit_is_dropped_and_counted_qos1_is_not() {
        let (out_tx, mut out_rx) = unbounded_channel();
        let (int_tx, _int_rx) = unbounded_channel();
        let store = Arc::new(Mutex::new(RetainedStore::new(10)));
        let backend = JetStreamBackend::new(out_tx, int_tx, store);
        let queue = backend.queue();
        let mut broker = Broker::with_backend(BrokerConfig::default(), backend);
        let now = Instant::now();
        let c = broker.connect(ConnectRequest::v311("dev", ConnId(1), true), now);
        let q0 = Message::new("t", &b"0"[..], QoS::AtMostOnce, false);
        for _ in 0..MAX_QUEUED_VOLATILE + 3 {
            broker.publish(c.handle, None, q0.clone(), now);
        }
        let q1 = Message::new("t", &b"1"[..], QoS::AtLeastOnce, false);
        broker.publish(c.handle, Some(1), q1, now);
        assert_eq!(queue.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(
            queue.waiting.load(Ordering::Relaxed),
            MAX_QUEUED_VOLATILE + 1
        );
        let mut last = None;
        while let Ok(o) = out_rx.try_recv() {
            last = Some(o);
        }
        assert_eq!(last.map(|o| o.message.qos), Some(QoS::AtLeastOnce));
    }

    #[test]
    fn retained_messages_answer_from_the_shared_copy() {
        let (out_tx, _out_rx) = unbounded_channel();
        let (int_tx, _int_rx) = unbounded_channel();
        let store = Arc::new(Mutex::new(RetainedStore::new(10)));
        let mut backend = JetStreamBackend::new(out_tx, int_tx, store.clone());
        // The KV watch sets one, the broker another.
        lock(&store).set(&Arc::new(Message::new(
            "r/1",
            &b"1"[..],
            QoS::AtMostOnce,
            true,
        )));
        backend.retain(&Arc::new(Message::new(
            "r/2",
            &b"2"[..],
            QoS::AtMostOnce,
            true,
        )));
        let mut seen = Vec::new();
        backend.retained("r/+", Instant::now(), &mut |m| {
            seen.push(m.topic.to_string())
        });
        seen.sort();
        assert_eq!(seen, ["r/1", "r/2"]);
    }
}
