//! The seam between the session rules (the broker core) and message distribution.

use std::sync::Arc;
use std::time::Instant;

use super::message::Message;
use super::retained::{RetainOutcome, RetainedStore};

/// Names one admission, so its durability can be reported later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub(super) u64);

impl Ticket {
    /// The number, for a backend's own bookkeeping.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// When a published message may be acknowledged and fanned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Durable as far as this backend goes: the broker fans it out to local sessions and
    /// acknowledges it now.
    Now,
    /// The backend stores it: the acknowledgement waits for
    /// [`Broker::persisted`](super::Broker::persisted), and local fan-out happens when the
    /// message comes back through [`Broker::deliver`](super::Broker::deliver).
    Pending,
}

/// Whether the store kept a pending message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    Stored,
    Failed,
}

/// Message distribution behind the broker core: the seam between the session rules and
/// where messages go.
///
/// The broker core keeps what is about one gateway's own connections: the subscription index
/// of the sessions connected here, their queues, in-flight windows, QoS 2 state, wills and
/// expiry. A [`Backend`] keeps what is about the message stream: where a publish becomes
/// durable, and the retained messages. Two backends plug in here:
///
/// - [`InProcess`] (the default, a single gateway): memory is the store. A publish is
///   admitted at once ([`Admission::Now`]): the broker fans it out to the local sessions and
///   acknowledges it in the same call. Retained messages live in a [`RetainedStore`].
///
/// - A NATS JetStream backend (a cluster of gateways behind a TCP load balancer; gateways
///   hold no durable state). How it maps onto this trait:
///   - [`Backend::admit`] puts the message on an outbox channel (non-blocking) and answers
///     [`Admission::Pending`]. An I/O task publishes QoS ≥ 1 messages to a JetStream stream
///     (subject from the topic, message expiry as the NATS message TTL, the origin client id
///     in a header) and QoS 0 on a core NATS subject. When JetStream acknowledges, the task
///     calls [`Broker::persisted`](super::Broker::persisted)`(ticket, Stored)`, which releases
///     the PUBACK / PUBREC; a failure releases them with 0x80 (a 3.1.1 shell closes instead).
///     Nothing is acknowledged to a device before the store has it.
///   - Every gateway (the origin too) consumes the stream's and core subjects' messages for
///     the topics its sessions subscribe to, and hands each one to
///     [`Broker::deliver`](super::Broker::deliver): local fan-out, queues and QoS are the
///     broker's, exactly as for [`InProcess`]. Retained messages are written to a KV bucket
///     (key = topic) by the origin; [`Backend::retain`] updates the gateway's local
///     [`RetainedStore`] copy, which a KV watch also keeps current, and
///     [`Backend::retained`] answers SUBSCRIBE from that copy.
///   - Per-session stream positions (the last sequence each persistent session acknowledged)
///     are kept in a KV bucket, and session ownership by compare-and-set on a KV key plus a
///     kick to the previous owner (which closes its connection with 0x8E, like a takeover
///     here). These happen around [`Broker::connect`](super::Broker::connect) and
///     [`Broker::disconnect`](super::Broker::disconnect) in the shell, not in this trait.
///
/// The trait is called from inside the broker's synchronous methods, so an implementation
/// never blocks and never does I/O itself: it queues work for tasks that do.
pub trait Backend: Send {
    /// A message published by a client (or a will) enters distribution: QoS 0, 1 or 2, with
    /// its origin and expiry set.
    fn admit(&mut self, ticket: Ticket, message: &Arc<Message>, now: Instant) -> Admission;

    /// A retained message is being delivered here: keep it as its topic's retained message,
    /// or clear the topic when its payload is empty.
    fn retain(&mut self, message: &Arc<Message>) -> RetainOutcome;

    /// Calls `visit` for each unexpired retained message `filter` matches.
    fn retained(&self, filter: &str, now: Instant, visit: &mut dyn FnMut(&Arc<Message>));

    /// Time passes: drop what expired by `now`.
    fn tick(&mut self, now: Instant);

    /// When [`Backend::tick`] next has something to do.
    fn next_deadline(&self) -> Option<Instant>;

    /// A session here took up `filter` (once per session and filter; a replacement is not
    /// reported again): a clustered backend counts the sessions per filter and receives the
    /// filter's messages from elsewhere while any holds it.
    fn subscribed(&mut self, _filter: &str) {}

    /// A session here let go of `filter` (unsubscribed, or the session ended).
    fn unsubscribed(&mut self, _filter: &str) {}
}

/// A backend chosen at start (in-process or clustered) behind one type.
impl Backend for Box<dyn Backend> {
    fn admit(&mut self, ticket: Ticket, message: &Arc<Message>, now: Instant) -> Admission {
        (**self).admit(ticket, message, now)
    }

    fn retain(&mut self, message: &Arc<Message>) -> RetainOutcome {
        (**self).retain(message)
    }

    fn retained(&self, filter: &str, now: Instant, visit: &mut dyn FnMut(&Arc<Message>)) {
        (**self).retained(filter, now, visit)
    }

    fn tick(&mut self, now: Instant) {
        (**self).tick(now)
    }

    fn next_deadline(&self) -> Option<Instant> {
        (**self).next_deadline()
    }

    fn subscribed(&mut self, filter: &str) {
        (**self).subscribed(filter)
    }

    fn unsubscribed(&mut self, filter: &str) {
        (**self).unsubscribed(filter)
    }
}

/// Everything in this process: the default backend.
#[derive(Debug)]
pub struct InProcess {
    retained: RetainedStore,
}

impl InProcess {
    /// Retained messages by default: a limit on memory, far above a fleet's needs.
    pub const DEFAULT_RETAINED_LIMIT: usize = 100_000;

    /// Keeps at most `limit` retained messages.
    pub fn with_retained_limit(limit: usize) -> InProcess {
        InProcess {
            retained: RetainedStore::new(limit),
        }
    }

    pub fn retained_store(&self) -> &RetainedStore {
        &self.retained
    }
}

impl Default for InProcess {
    fn default() -> Self {
        InProcess::with_retained_limit(InProcess::DEFAULT_RETAINED_LIMIT)
    }
}

impl Backend for InProcess {
    fn admit(&mut self, _ticket: Ticket, _message: &Arc<Message>, _now: Instant) -> Admission {
        Admission::Now
    }

    fn retain(&mut self, message: &Arc<Message>) -> RetainOutcome {
        self.retained.set(message)
    }

    fn retained(&self, filter: &str, now: Instant, visit: &mut dyn FnMut(&Arc<Message>)) {
        self.retained.for_each_match(filter, now, visit);
    }

    fn tick(&mut self, now: Instant) {
        self.retained.purge_expired(now);
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.retained.next_expiry()
    }
}
