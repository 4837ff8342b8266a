//! The broker core shared by every connection, and the way its decisions reach them.
//!
//! One `Mutex<Core>` holds the [`Broker`] and, per connection, its [`Outbox`]. A connection
//! task calls the broker with the lock held, the broker returns its [`Action`]s and they are
//! carried out before the lock is released: a packet for a connection is pushed onto that
//! connection's outbox (its own, or a subscriber's), a close is flagged there, and the
//! connection's task, woken, encodes and writes them. Nothing awaits with the lock held, and
//! every critical section is one broker call plus pushes: no channel hop and no task switch
//! between a publisher and the broker, which is what a single core moving 50k messages per
//! second needs (a broker task fed by a channel would add two wake-ups per message), and
//! 10,000+ connections contend only for these short sections.
//!
//! Backpressure: the broker's bounded queue and the client's in-flight window are the
//! buffers of a session. An outbox holds only what the broker already sent: when one reaches
//! [`HIGH_WATER`] packets (its client reads slower than messages arrive), the broker is told
//! to pause that session, so further messages wait in the session's bounded queue (where the
//! overflow policy applies and drops are counted) until the task has written the outbox and
//! resumes it. Pauses are counted in `fleet_gateway_broker_events_total{event="paused"}`.
//!
//! A timer task ([`Hub::run_timer`]) calls [`Broker::tick`] at [`Broker::next_deadline`]
//! (will delays, session expiry, retained message expiry); a broker call that brings the
//! deadline forward wakes it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fleet_protocol::mqtt::v5::reason;
use tokio::sync::Notify;

use crate::broker::{
    Action, Backend, Broker, BrokerConfig, ConnId, ConnectRequest, Ending, Handle, InProcess,
    Message, Outgoing, Stats, StoreOutcome, Subscription, Ticket,
};
use crate::metrics::Metrics;
use crate::session::Requested;

/// Packets an outbox holds before its session is paused.
pub const HIGH_WATER: usize = 256;

/// A publisher whose message went into an online session's queue this long (or half the
/// queue limit, if that is less) is held back (its connection stops reading) until that
/// queue is half as long, or for at most [`HOLD`]: the gateway acknowledges a publish as soon
/// as the broker has it, so without this many fast publishers outrun a subscriber's
/// in-flight window and the queue only grows.
pub const BACKLOG_HIGH: usize = 1024;
/// The longest a publisher is held back at once (a subscriber that stopped acknowledging
/// must not stop its publishers: its queue limit and overflow policy apply instead).
pub const HOLD: Duration = Duration::from_millis(50);

/// What the broker has for one connection.
#[derive(Debug, Default)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct OutboxState {
    packets: VecDeque<Outgoing>,
    /// The broker closed the connection with this reason.
    close: Option<u8>,
    /// The session is paused because of this outbox.
    paused: bool,
}

/// What a connection task takes from its outbox at once.
#[derive(Debug, Default)]
pub struct Taken {
    pub packets: VecDeque<Outgoing>,
    pub close: Option<u8>,
    /// The session was paused: resume it once these are written.
    pub paused: bool,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        // Every update is a push, a flag or a swap: a poisoned lock holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a packet; true when the outbox just reached [`HIGH_WATER`] (pause the
    /// session).
    fn push(&self, packet: Outgoing) -> bool {
        let mut s = self.lock();
        s.packets.push_back(packet);
        let pause = !s.paused && s.packets.len() >= HIGH_WATER;
        s.paused |= pause;
        drop(s);
        self.ready.notify_one();
        pause
    }

    fn close(&self, reason: u8) {
        self.lock().close.get_or_insert(reason);
        self.ready.notify_one();
    }

    /// Everything waiting, and whether the broker closed the connection. The outbox is left
    /// empty, holding no memory.
    pub fn take(&self) -> Taken {
        let mut s = self.lock();
        Taken {
            packets: std::mem::take(&mut s.packets),
            close: s.close,
            paused: std::mem::take(&mut s.paused),
        }
    }

    /// Resolves when something was pushed since the last call (or before the first).
    pub async fn ready(&self) {
        self.ready.notified().await
    }
}

struct Link {
    outbox: Arc<Outbox>,
    handle: Option<Handle>,
}

struct Core {
    /// The in-process backend, or a cluster's ([`crate::cluster`]).
    broker: Broker<Box<dyn Backend>>,
    links: HashMap<ConnId, Link>,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
    /// Broker totals already added to the metrics.
    reported: Stats,
    pauses: u64,
    reported_pauses: u64,
}

impl Core {
    fn carry_out(&mut self, actions: Vec<Action>) {
        let mut pause = Vec::new();
        for action in actions {
            match action {
                Action::Send { conn, packet } => {
                    if let Some(link) = self.links.get(&conn) {
                        if link.outbox.push(packet) {
                            pause.extend(link.handle);
                        }
                    }
                }
                Action::Close { conn, reason } => {
                    if let Some(link) = self.links.get(&conn) {
                        link.outbox.close(reason);
                    }
                }
                Action::Dropped {
                    client_id,
                    reason,
                    messages,
                } => tracing::debug!(
                    client = client_id.as_deref().unwrap_or("-"),
                    reason = reason.label(),
                    messages,
                    "messages dropped"
                ),
            }
        }
        for handle in pause {
            self.broker.pause(handle);
            self.pauses += 1;
        }
    }
}

/// The answer to a CONNECT, for the CONNACK.
#[derive(Debug, Clone, Copy)]
pub struct Joined {
    pub handle: Handle,
    pub session_present: bool,
    pub session_expiry: u32,
}

/// The shared broker core (see the module docs).
pub struct Hub {
    core: Mutex<Core>,
    timer: Notify,
    /// Wakes held-back publishers: a backlogged queue drained to half.
    relief: Notify,
}

impl Hub {
    pub fn new(config: BrokerConfig) -> Hub {
        Hub::with_backend(config, Box::new(InProcess::default()))
    }

    /// A hub whose broker distributes messages through `backend`.
    pub fn with_backend(config: BrokerConfig, backend: Box<dyn Backend>) -> Hub {
        Hub {
            core: Mutex::new(Core {
                broker: Broker::with_backend(config, backend),
                links: HashMap::new(),
                armed: None,
                reported: Stats::default(),
                pauses: 0,
                reported_pauses: 0,
            }),
            timer: Notify::new(),
            relief: Notify::new(),
        }
    }

    pub fn config(&self) -> BrokerConfig {
        *self.lock().broker.config()
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // The broker's methods do not panic on any input; should one, the process is in a
        // state the tests never reach, and serving on beats stopping every connection.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs one broker call with the lock held and carries out its actions before releasing
    /// it; wakes the timer when the call brought the next deadline forward.
    fn with<T>(&self, f: impl FnOnce(&mut Broker<Box<dyn Backend>>) -> (T, Vec<Action>)) -> T {
        let mut core = self.lock();
        let (value, actions) = f(&mut core.broker);
        core.carry_out(actions);
        self.rearm(&mut core);
        value
    }

    /// Wakes the timer task when the broker's next deadline is before the one it sleeps to.
    fn rearm(&self, core: &mut Core) {
        let next = core.broker.next_deadline();
        if next.is_some_and(|n| core.armed.is_none_or(|a| n < a)) {
            core.armed = next;
            self.timer.notify_one();
        }
    }

    /// Opens a session for a new connection: `conn`'s outbox receives what the broker sends
    /// it from now on (resent and queued messages first, after the CONNACK the caller
    /// writes), and a live connection of the same client is closed (0x8E).
    pub fn connect(&self, request: ConnectRequest, outbox: Arc<Outbox>, now: Instant) -> Joined {
        let conn = request.conn;
        let mut core = self.lock();
        core.links.insert(
            conn,
            Link {
                outbox,
                handle: None,
            },
        );
        let connected = core.broker.connect(request, now);
        if let Some(link) = core.links.get_mut(&conn) {
            link.handle = Some(connected.handle);
        }
        core.carry_out(connected.actions);
        self.rearm(&mut core);
        Joined {
            handle: connected.handle,
            session_present: connected.session_present,
            session_expiry: connected.session_expiry,
        }
    }

    /// A client's publish; true when it went into an online session's queue that is
    /// [`BACKLOG_HIGH`] long: hold the publisher back ([`Hub::held_back`]).
    pub fn publish(
        &self,
        handle: Handle,
        packet_id: Option<u16>,
        message: Message,
        now: Instant,
    ) -> bool {
        self.with(|b| {
            let actions = b.publish(handle, packet_id, message, now);
            (b.take_backlog() >= backlog_high(b), actions)
        })
    }

    /// Waits until a backlogged queue drained to half, at most [`HOLD`].
    pub async fn held_back(&self) {
        let _ = tokio::time::timeout(HOLD, self.relief.notified()).await;
    }

    /// Wakes the held-back publishers when `handle`'s queue is short again.
    fn relieve(&self, b: &Broker<Box<dyn Backend>>, handle: Handle) {
        if b.queued(handle) < backlog_high(b) / 2 {
            self.relief.notify_waiters();
        }
    }

    pub fn puback(&self, handle: Handle, packet_id: u16, now: Instant) {
        self.with(|b| {
            let actions = b.puback(handle, packet_id, now);
            self.relieve(b, handle);
            ((), actions)
        });
    }

    pub fn pubrec(&self, handle: Handle, packet_id: u16, code: u8, now: Instant) {
        self.with(|b| ((), b.pubrec(handle, packet_id, code, now)));
    }

    pub fn pubrel(&self, handle: Handle, packet_id: u16) {
        self.with(|b| ((), b.pubrel(handle, packet_id)));
    }

    pub fn pubcomp(&self, handle: Handle, packet_id: u16, now: Instant) {
        self.with(|b| {
            let actions = b.pubcomp(handle, packet_id, now);
            self.relieve(b, handle);
            ((), actions)
        });
    }

    /// The backend stored (or failed to store) a publish it admitted as pending: its
    /// PUBACK / PUBREC goes out.
    pub fn persisted(&self, ticket: Ticket, outcome: StoreOutcome) {
        self.with(|b| ((), b.persisted(ticket, outcome)));
    }

    /// A message the backend brings in (from another gateway, or back from the store) for
    /// the local sessions.
    pub fn deliver(&self, message: Arc<Message>, now: Instant) {
        self.with(|b| ((), b.deliver(message, now)));
    }

    /// Lets a paused session's deliveries flow again.
    pub fn resume(&self, handle: Handle, now: Instant) {
        self.with(|b| {
            let actions = b.resume(handle, now);
            self.relieve(b, handle);
            ((), actions)
        });
    }

    /// Subscribes the granted filters, at most `max_subscriptions` per session (a filter
    /// beyond that is refused with 0x97, quota exceeded; one already held is a replacement).
    /// Returns one version 5 reason per filter, in order; `None` if the broker already closed
    /// the connection. Retained messages follow in the outbox.
    pub fn subscribe(
        &self,
        handle: Handle,
        requested: &[Requested],
        max_subscriptions: usize,
        now: Instant,
    ) -> Option<Vec<u8>> {
        self.with(|b| {
            let Some(held) = b.filters(handle) else {
                return (None, Vec::new());
            };
            let (slots, wanted) = within_quota(held, requested, max_subscriptions);
            let Some(subscribed) = b.subscribe(handle, &wanted, now) else {
                return (None, Vec::new());
            };
            let mut granted = subscribed.reasons.into_iter();
            let reasons = slots
                .into_iter()
                .map(|slot| {
                    slot.unwrap_or_else(|| granted.next().unwrap_or(reason::UNSPECIFIED_ERROR))
                })
                .collect();
            (Some(reasons), subscribed.actions)
        })
    }

    /// Unsubscribes: one reason per filter (0x11 for one not held); `None` if the broker
    /// already closed the connection.
    pub fn unsubscribe(&self, handle: Handle, filters: &[String]) -> Option<Vec<u8>> {
        let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
        self.with(|b| (b.unsubscribe(handle, &filters), Vec::new()))
    }

    /// The connection ended: the broker keeps or ends the session (will, expiry) and the
    /// outbox is dropped. `handle` is `None` when the session never opened.
    pub fn disconnect(
        &self,
        conn: ConnId,
        handle: Option<Handle>,
        ending: Ending,
        session_expiry: Option<u32>,
        now: Instant,
    ) {
        self.with(|b| {
            let actions = match handle {
                Some(h) => b.disconnect(h, ending, session_expiry, now),
                None => Vec::new(),
            };
            ((), actions)
        });
        self.lock().links.remove(&conn);
    }

    /// Publishes due wills and ends expired sessions.
    pub fn tick(&self, now: Instant) {
        self.with(|b| ((), b.tick(now)));
    }

    /// Calls [`Hub::tick`] at every deadline the broker has, for as long as the gateway
    /// runs (abort the task to stop it).
    pub async fn run_timer(self: Arc<Self>) {
        // Far enough to mean "nothing to do", near enough to stay inside `Instant`'s range.
        const IDLE: Duration = Duration::from_secs(3600);
        loop {
            let deadline = {
                let mut core = self.lock();
                let next = core.broker.next_deadline();
                core.armed = next;
                next.unwrap_or_else(|| Instant::now() + IDLE)
            };
            tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => self.tick(Instant::now()),
                () = self.timer.notified() => {}
            }
        }
    }

    /// Adds what the broker counted since the last report to the metrics, and sets the
    /// session and subscription gauges.
    pub fn report(&self, metrics: &Metrics) {
        let mut core = self.lock();
        let now = core.broker.stats();
        let was = core.reported;
        let dropped = [
            ("queue_full", now.queue_full - was.queue_full),
            ("expired", now.expired - was.expired),
            ("denied", now.denied - was.denied),
            ("session_ended", now.session_ended - was.session_ended),
            (
                "retained_store_full",
                now.retained_refused - was.retained_refused,
            ),
        ];
        let events = [
            (
                "overflow_disconnect",
                now.overflow_disconnects - was.overflow_disconnects,
            ),
            (
                "session_expired",
                now.sessions_expired - was.sessions_expired,
            ),
            (
                "session_taken_over",
                now.sessions_taken_over - was.sessions_taken_over,
            ),
            ("will_published", now.wills_published - was.wills_published),
            ("paused", core.pauses - core.reported_pauses),
        ];
        for (reason, n) in dropped {
            metrics.dropped(reason, n);
        }
        for (event, n) in events {
            metrics.broker_event(event, n);
        }
        metrics
            .broker_sessions
            .set(i64::try_from(core.broker.session_count()).unwrap_or(i64::MAX));
        metrics
            .subscriptions
            .set(i64::try_from(core.broker.subscription_count()).unwrap_or(i64::MAX));
        core.reported = now;
        core.reported_pauses = core.pauses;
    }
}

/// Splits a SUBSCRIBE's filters into the reasons already decided (`Some`: refused by the
/// ACL or over the quota) and the filters for the broker (`None` slots, in order).
fn within_quota<'a>(
    held: &[Box<str>],
    requested: &'a [Requested],
    max: usize,
) -> (Vec<Option<u8>>, Vec<(&'a str, Subscription)>) {
    let mut count = held.len();
    let mut new: HashSet<&str> = HashSet::new();
    let mut slots = Vec::with_capacity(requested.len());
    let mut wanted = Vec::new();
    for r in requested {
        match r {
            Requested::Refused(code) => slots.push(Some(*code)),
            Requested::Granted(filter, sub) => {
                let known = held.iter().any(|h| **h == **filter) || new.contains(filter.as_str());
                if !known && count >= max {
                    tracing::warn!(
                        target: "audit",
                        filter = %filter,
                        reason = "subscription_quota",
                        "subscribe refused: {count} filters held"
                    );
                    slots.push(Some(reason::QUOTA_EXCEEDED));
                    continue;
                }
                if !known {
                    count += 1;
                    new.insert(filter);
                }
                slots.push(None);
                wanted.push((filter.as_str(), *sub));
            }
        }
    }
    (slots, wanted)
}

/// The queue length that holds a publisher back (see [`BACKLOG_HIGH`]).
fn backlog_high(b: &Broker<Box<dyn Backend>>) -> usize {
    BACKLOG_HIGH.min(b.config().queue.max_messages / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::mqtt::QoS;

    fn granted(filter: &str) -> Requested {
        Requested::Granted(filter.into(), Subscription::new(QoS::AtLeastOnce))
    }

    fn join(hub: &Hub, client: &str, conn: u64) -> (Handle, Arc<Outbox>) {
        let outbox = Arc::new(Outbox::default());
        let request = ConnectRequest::v311(client, ConnId(conn), true);
        let joined = hub.connect(request, outbox.clone(), Instant::now());
        (joined.handle, outbox)
    }

    fn publish(hub: &Hub, from: Handle, n: usize) {
        for i in 0..n {
            let m = Message::new("t/x", format!("{i}").into_bytes(), QoS::AtMostOnce, false);
            hub.publish(from, None, m, Instant::now());
        }
    }

    #[test]
    fn a_full_outbox_pauses_its_session_until_written() {
        let mut config = BrokerConfig::default();
        config.queue.max_messages = 10;
        let hub = Hub::new(config);
        let (publisher, _) = join(&hub, "p", 1);
        let (subscriber, outbox) = join(&hub, "s", 2);
        let filters = [granted("t/#")];
        assert_eq!(
            hub.subscribe(subscriber, &filters, 10, Instant::now()),
            Some(vec![1])
        );
        // HIGH_WATER packets reach the outbox; the next 10 wait in the session's queue and
        // the rest overflow it (counted), instead of piling up in the outbox.
        publish(&hub, publisher, HIGH_WATER + 15);
        let taken = outbox.take();
        assert_eq!(taken.packets.len(), HIGH_WATER);
        assert!(taken.paused && taken.close.is_none());
        let metrics = Metrics::default();
        hub.report(&metrics);
        let text = metrics.render(&[]);
        assert!(
            text.contains("fleet_gateway_dropped_messages_total{reason=\"queue_full\"} 5"),
            "{text}"
        );
        assert!(text.contains("fleet_gateway_broker_events_total{event=\"paused\"} 1"));
        // Written: resuming sends what waited, in order (QoS 0 overflow dropped the oldest).
        hub.resume(subscriber, Instant::now());
        let taken = outbox.take();
        let first = match taken.packets.front() {
            Some(Outgoing::Publish(d)) => d.message.payload.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (taken.packets.len(), &first[..]),
            (10, format!("{}", HIGH_WATER + 5).as_bytes())
        );
        assert!(!taken.paused);
        assert_eq!(
            outbox.take().packets.capacity(),
            0,
            "an emptied outbox holds no memory"
        );
    }

    /// Packet ids of the publishes taken from `outbox`.
    fn sent_ids(outbox: &Outbox) -> Vec<u16> {
        outbox
            .take()
            .packets
            .iter()
            .filter_map(|p| match p {
                Outgoing::Publish(d) => d.packet_id,
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_publisher_ahead_of_an_online_subscribers_backlog_is_held_back_until_it_drains() {
        let mut config = BrokerConfig::default();
        config.queue.max_messages = 10_000;
        let hub = Hub::new(config);
        let (publisher, _) = join(&hub, "p", 1);
        let (subscriber, outbox) = join(&hub, "s", 2);
        let filters = [granted("t/#")];
        assert!(hub
            .subscribe(subscriber, &filters, 10, Instant::now())
            .is_some());
        let window = usize::from(BrokerConfig::default().default_receive_maximum.get());
        let mut backlogged = Vec::new();
        for i in 0..window + BACKLOG_HIGH {
            let m = Message::new("t/x", format!("{i}").into_bytes(), QoS::AtLeastOnce, false);
            let id = u16::try_from(i % 60_000 + 1).unwrap();
            backlogged.push(hub.publish(publisher, Some(id), m, Instant::now()));
        }
        // The window's worth goes out, the queue grows, and only the publish that makes it
        // BACKLOG_HIGH long holds the publisher back.
        assert_eq!(backlogged.iter().filter(|b| **b).count(), 1);
        assert_eq!(backlogged.last(), Some(&true));
        let relief = hub.relief.notified();
        tokio::pin!(relief);
        relief.as_mut().enable();
        // Acknowledging lets one more out each time; relief comes once the queue is below
        // half of BACKLOG_HIGH, not before.
        let mut in_flight = sent_ids(&outbox);
        assert_eq!(in_flight.len(), window);
        let mut acked = 0;
        while acked < BACKLOG_HIGH - BACKLOG_HIGH / 2 {
            let id = in_flight.remove(0);
            hub.puback(subscriber, id, Instant::now());
            acked += 1;
            in_flight.extend(sent_ids(&outbox));
            let woken = tokio::time::timeout(Duration::ZERO, relief.as_mut()).await;
            assert!(woken.is_err(), "woken after {acked} acknowledgements");
        }
        let id = in_flight.remove(0);
        hub.puback(subscriber, id, Instant::now());
        let woken = tokio::time::timeout(Duration::ZERO, relief.as_mut()).await;
        assert!(woken.is_ok(), "not woken with the queue drained to half");
        // An offline session's queue holds nobody back: it is meant to fill.
        let (kept, _) = {
            let outbox = Arc::new(Outbox::default());
            let request = ConnectRequest::v311("k", ConnId(3), false);
            let joined = hub.connect(request, outbox.clone(), Instant::now());
            (joined.handle, outbox)
        };
        assert!(hub
            .subscribe(kept, &[granted("k/#")], 10, Instant::now())
            .is_some());
        hub.disconnect(ConnId(3), Some(kept), Ending::Normal, None, Instant::now());
        for i in 0..BACKLOG_HIGH + 10 {
            let m = Message::new("k/x", format!("{i}").into_bytes(), QoS::AtLeastOnce, false);
            let id = u16::try_from(i % 60_000 + 1).unwrap();
            assert!(!hub.publish(publisher, Some(id), m, Instant::now()));
        }
    }

    #[test]
    fn takeover_closes_the_old_outbox_and_deadlines_wake_the_timer() {
        let hub = Hub::new(BrokerConfig::default());
        let (_, old) = join(&hub, "c", 1);
        let (handle, new) = join(&hub, "c", 2);
        assert_eq!(old.take().close, Some(reason::SESSION_TAKEN_OVER));
        assert_eq!(new.take().close, None);
        // A kept session's expiry is a deadline: the timer is re-armed for it.
        let mut request = ConnectRequest::v5("k", ConnId(3), true, 60);
        request.will = None;
        let kept = hub.connect(request, Arc::new(Outbox::default()), Instant::now());
        assert!(hub.lock().armed.is_none());
        let now = Instant::now();
        hub.disconnect(ConnId(3), Some(kept.handle), Ending::Abnormal, None, now);
        let armed = hub.lock().armed.expect("armed");
        assert!(armed > now + Duration::from_secs(59));
        // The old connection's end changes nothing for the new one.
        hub.disconnect(ConnId(1), None, Ending::Abnormal, None, now);
        assert!(hub.lock().broker.is_live(handle));
        assert!(!hub.lock().links.contains_key(&ConnId(1)));
    }

    #[test]
    fn quota_counts_new_filters_only() {
        let held: Vec<Box<str>> = vec!["a".into()];
        let requested = [
            granted("a"),
            Requested::Refused(0x87),
            granted("b"),
            granted("b"),
            granted("c"),
        ];
        let (slots, wanted) = within_quota(&held, &requested, 2);
        assert_eq!(slots, [None, Some(0x87), None, None, Some(0x97)]);
        let names: Vec<&str> = wanted.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            names,
            ["a", "b", "b"],
            "replacements do not count against the quota"
        );
    }
}
