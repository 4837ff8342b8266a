//! One session's state: who it is, where it is connected, what it subscribed, what waits for
//! it and what is in flight. An idle session holds no allocation besides its client id and
//! filters: queue, window and QoS 2 map stay empty until used.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use fleet_protocol::mqtt::{v5::reason, QoS};

use super::action::{Action, ConnId, Delivery, DropReason, Outgoing, Stats};
use super::inflight::{Incoming, Stage, Window};
use super::message::{Message, Will};
use super::queue::{Queue, Queued};

/// Decides, per session, whether a message may be delivered to it: the ACL at delivery time,
/// so that a wildcard subscription overlapping a denied topic does not carry it.
pub trait DeliveryFilter: Send {
    fn allows(&self, message: &Message) -> bool;
}

impl<F: Fn(&Message) -> bool + Send> DeliveryFilter for F {
    fn allows(&self, message: &Message) -> bool {
        self(message)
    }
}

pub(super) struct Session {
    pub client_id: Arc<str>,
    /// The live connection, if any.
    pub conn: Option<ConnId>,
    /// The caller asked to hold deliveries (its write buffer is full).
    pub paused: bool,
    /// Session Expiry Interval in seconds (`u32::MAX`: never).
    pub expiry: u32,
    /// Invariant: `Some` means it is published when the session ends. While connected it is
    /// the connection's will; offline, a will whose delay is running.
    pub will: Option<Box<Will>>,
    pub filters: Vec<Box<str>>,
    pub queue: Queue,
    pub window: Window,
    /// The client's Receive Maximum, capped by the configuration.
    pub receive_maximum: u16,
    pub incoming: HashMap<u16, Incoming>,
    pub delivery_filter: Option<Box<dyn DeliveryFilter>>,
    /// Deadlines this session has in the broker's timer set.
    pub will_at: Option<Instant>,
    pub expires_at: Option<Instant>,
}

impl Session {
    pub fn new(client_id: Arc<str>) -> Session {
        Session {
            client_id,
            conn: None,
            paused: false,
            expiry: 0,
            will: None,
            filters: Vec::new(),
            queue: Queue::default(),
            window: Window::default(),
            receive_maximum: 1,
            incoming: HashMap::new(),
            delivery_filter: None,
            will_at: None,
            expires_at: None,
        }
    }

    /// Whether the delivery filter lets `message` through.
    pub fn admits(&self, message: &Message) -> bool {
        self.delivery_filter
            .as_ref()
            .is_none_or(|f| f.allows(message))
    }

    fn window_open(&self) -> bool {
        self.window.len() < usize::from(self.receive_maximum)
    }

    /// Whether `item` may go out right now, ahead of nothing.
    pub fn can_send_now(&self, item: &Queued) -> bool {
        self.conn.is_some()
            && !self.paused
            && self.queue.is_empty()
            && (item.qos == QoS::AtMostOnce || self.window_open())
    }

    /// Sends `item` now (the caller checked [`Session::can_send_now`] or the window).
    pub fn send(&mut self, item: Queued, now: Instant, actions: &mut Vec<Action>) {
        let Some(conn) = self.conn else {
            self.queue.unpop(item);
            return;
        };
        let packet_id = if item.qos == QoS::AtMostOnce {
            None
        } else {
            match self.window.allocate() {
                Some(id) => Some(id),
                None => {
                    self.queue.unpop(item);
                    return;
                }
            }
        };
        let delivery = delivery(&item, packet_id, false, now);
        if let Some(id) = packet_id {
            self.window.push(id, item);
        }
        actions.push(Action::Send {
            conn,
            packet: Outgoing::Publish(delivery),
        });
    }

    /// Sends queued messages while the connection and the window allow, dropping (and
    /// counting) those that expired while queued [MQTT-3.3.2-5]. The queue is FIFO: a QoS 0
    /// message does not overtake QoS 1/2 ones waiting for the window.
    pub fn pump(&mut self, now: Instant, actions: &mut Vec<Action>, stats: &mut Stats) {
        if self.conn.is_none() || self.paused {
            return;
        }
        let mut expired = 0;
        while let Some(front) = self.queue.front() {
            if front.qos != QoS::AtMostOnce && !self.window_open() {
                break;
            }
            let Some(item) = self.queue.pop() else { break };
            if item.message.expired(now) {
                expired += 1;
                continue;
            }
            self.send(item, now, actions);
        }
        stats.count_drop(actions, Some(&self.client_id), DropReason::Expired, expired);
    }

    /// On resuming a session: everything in flight again, in the original order, PUBLISH with
    /// DUP=1 [MQTT-3.3.1-1] or PUBREL for flows past PUBREC [MQTT-4.4.0-1].
    pub fn resend(&self, now: Instant, actions: &mut Vec<Action>) {
        let Some(conn) = self.conn else { return };
        for flight in self.window.iter() {
            let packet = match &flight.stage {
                Stage::Sent(item) => Outgoing::Publish(delivery(item, Some(flight.id), true, now)),
                Stage::Released => Outgoing::PubRel {
                    packet_id: flight.id,
                    reason: reason::SUCCESS,
                },
            };
            actions.push(Action::Send { conn, packet });
        }
    }

    /// Discards what waits and what is in flight; returns how many messages that was.
    pub fn discard(&mut self) -> u32 {
        let n = self.queue.clear() + self.window.clear();
        self.incoming = HashMap::new();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

fn delivery(item: &Queued, packet_id: Option<u16>, dup: bool, now: Instant) -> Delivery {
    Delivery {
        message: item.message.clone(),
        qos: item.qos,
        dup,
        retain: item.retain,
        packet_id,
        subscription_ids: item.subscription_ids.clone(),
        message_expiry: item.message.remaining_expiry(now),
    }
}
