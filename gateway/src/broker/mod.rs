//! The gateway's own MQTT broker core: decoded packets in, decisions out.
//!
//! ```text
//! connection shell ─► session rules (ACL, limits, codec) ─► Broker ─► Backend
//!        ▲                                                    │    (in-process | JetStream)
//!        └──────────── Action: Send / Close / Dropped ◄───────┘
//! ```
//!
//! The [`Broker`] holds the subscription index ([`TopicTree`]), every session (connected or
//! kept offline) with its granted subscriptions, bounded outgoing queue, in-flight window
//! and QoS 2 state, the wills and the expiry timers. Retained messages and the point where a
//! publish becomes durable belong to the [`Backend`] (its docs say how the in-process one
//! and a NATS JetStream one fit).
//!
//! Like the session and rustls, it does no I/O: no sockets, no async, no clock (every method
//! that needs the time takes `now`), no locks (the caller owns synchronisation, e.g. one
//! `Mutex<Broker>` or one task owning it). Each method returns the [`Action`]s to carry out,
//! in order. Messages are shared (`Arc<Message>`, `Bytes` payload), never copied per
//! subscriber; an idle session allocates nothing but its client id and filters.
//!
//! The rules it implements, with their clauses (MQTT 5 numbering unless said otherwise):
//! delivery at min(publish QoS, granted QoS) [MQTT-3.8.4-6 (3.1.1)], also for retained
//! messages and wills; overlapping subscriptions of one session deliver once at the highest
//! granted QoS with every subscription identifier [MQTT-3.3.4-2,3]; No Local
//! [MQTT-3.8.3-3]; Retain As Published [MQTT-3.3.1-12,13]; Retain Handling
//! [MQTT-3.3.1-9..11]; DUP=1 on every resend [MQTT-3.3.1-1]; resume with PUBLISH and PUBREL
//! in the original order [MQTT-4.4.0-1]; the client's Receive Maximum [MQTT-3.3.4-9]; Session
//! Expiry [MQTT-3.1.2-23]; Will Delay [MQTT-3.1.3-9]; takeover with 0x8E [MQTT-3.1.4-3];
//! `$` topics and wildcards [MQTT-4.7.2-1]; one UNSUBACK reason per filter [MQTT-3.11.3].

mod action;
mod backend;
mod config;
mod flow;
mod inflight;
mod lifecycle;
mod message;
mod options;
mod queue;
mod retained;
mod session;
mod subscriptions;
mod topic;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use fleet_protocol::mqtt::QoS;

pub use action::{Action, ConnId, Delivery, DropReason, Outgoing, Stats};
pub use backend::{Admission, Backend, InProcess, StoreOutcome, Ticket};
pub use config::{BrokerConfig, Overflow, QueueLimits};
pub use lifecycle::{ConnectRequest, Connected, Ending};
pub use message::{Message, MessageProperties, Will};
pub use options::{RetainHandling, Subscription};
pub use retained::{RetainOutcome, RetainedStore};
pub use session::DeliveryFilter;
pub use subscriptions::Subscribed;
pub use topic::TopicTree;

use session::Session;

/// A session, named by the broker: never reused, so a stale id finds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(u64);

/// One connection's hold on its session, returned by [`Broker::connect`]. Once the broker
/// closed that connection (takeover, overflow, protocol error) or it disconnected, calls
/// with the handle do nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle {
    session: SessionId,
    conn: ConnId,
}

impl Handle {
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    pub fn session(&self) -> SessionId {
        self.session
    }
}

/// What a deadline in the timer set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// Publish the session's will (its Will Delay Interval passed).
    Will,
    /// End the session (its Session Expiry Interval passed).
    Expiry,
}

/// An incoming QoS 1/2 publish whose acknowledgement waits for the backend.
#[derive(Debug, Clone, Copy)]
struct PendingAck {
    session: SessionId,
    packet_id: u16,
    qos: QoS,
}

/// The broker core (see the module docs).
pub struct Broker<B: Backend = InProcess> {
    config: BrokerConfig,
    backend: B,
    tree: TopicTree,
    sessions: HashMap<SessionId, Session>,
    by_client: HashMap<Arc<str>, SessionId>,
    timers: BTreeSet<(Instant, SessionId, Timer)>,
    pending: HashMap<Ticket, PendingAck>,
    /// Wills admitted and waiting to be routed: a will that fires while a message is being
    /// fanned out (an overflow ends a connection) is routed after it, not inside it, so a
    /// chain of such wills cannot grow the stack.
    due_wills: VecDeque<Arc<Message>>,
    next_session: u64,
    next_ticket: u64,
    stats: Stats,
    /// The longest queue of a connected session that the last call queued a message into
    /// (see [`Broker::take_backlog`]).
    backlog: usize,
}

impl Broker<InProcess> {
    /// A broker with everything in this process.
    pub fn new(config: BrokerConfig) -> Self {
        Broker::with_backend(config, InProcess::default())
    }
}

impl<B: Backend> Broker<B> {
    pub fn with_backend(config: BrokerConfig, backend: B) -> Self {
        Broker {
            config,
            backend,
            tree: TopicTree::default(),
            sessions: HashMap::new(),
            by_client: HashMap::new(),
            timers: BTreeSet::new(),
            pending: HashMap::new(),
            due_wills: VecDeque::new(),
            next_session: 1,
            next_ticket: 1,
            stats: Stats::default(),
            backlog: 0,
        }
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Running totals since the broker started.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Sessions held, connected or not.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// (session, filter) subscriptions held.
    pub fn subscription_count(&self) -> usize {
        self.tree.len()
    }

    /// The longest queue of a connected session that a message was queued into since the
    /// last call: how far the publisher just served is ahead of its slowest online
    /// subscriber. (Offline sessions are left out: their queues are meant to fill.) The
    /// shell holds a publisher back while this is long, so a publisher cannot outrun its
    /// subscribers without bound.
    pub fn take_backlog(&mut self) -> usize {
        std::mem::take(&mut self.backlog)
    }

    /// Messages waiting in the queue of `handle`'s session (0 once the broker let go of it).
    pub fn queued(&self, handle: Handle) -> usize {
        self.sessions
            .get(&handle.session)
            .filter(|s| s.conn == Some(handle.conn))
            .map_or(0, |s| s.queue.len())
    }

    /// Whether a session (connected or kept offline) exists for `client_id`.
    pub fn has_session(&self, client_id: &str) -> bool {
        self.by_client.contains_key(client_id)
    }

    /// The filters `handle`'s session holds, in the order first subscribed; `None` if the
    /// handle is not live.
    pub fn filters(&self, handle: Handle) -> Option<&[Box<str>]> {
        self.sessions
            .get(&handle.session)
            .filter(|s| s.conn == Some(handle.conn))
            .map(|s| &s.filters[..])
    }

    /// Whether `handle`'s connection is still its session's live connection.
    pub fn is_live(&self, handle: Handle) -> bool {
        self.sessions
            .get(&handle.session)
            .is_some_and(|s| s.conn == Some(handle.conn))
    }

    /// The earliest instant [`Broker::tick`] has something to do (a will delay, a session
    /// expiry, a retained message's expiry).
    pub fn next_deadline(&self) -> Option<Instant> {
        let own = self.timers.first().map(|(at, ..)| *at);
        match (own, self.backend.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs `f` on `handle`'s session if the handle is live, collecting its actions.
    fn with_live(
        &mut self,
        handle: Handle,
        f: impl FnOnce(&mut Session, &mut Stats, &mut Vec<Action>),
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if let Some(s) = self
            .sessions
            .get_mut(&handle.session)
            .filter(|s| s.conn == Some(handle.conn))
        {
            f(s, &mut self.stats, &mut actions);
        }
        actions
    }

    /// Routes the wills that fired during this call, and those they cause in turn.
    fn settle(&mut self, now: Instant, actions: &mut Vec<Action>) {
        while let Some(will) = self.due_wills.pop_front() {
            self.route(will, now, actions);
        }
    }

    fn ticket(&mut self) -> Ticket {
        let t = Ticket(self.next_ticket);
        self.next_ticket += 1;
        t
    }
}
