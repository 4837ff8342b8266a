//! A session's outgoing queue: messages waiting for the client (offline, paused, or behind a
//! full in-flight window), bounded in messages and bytes. Empty, it holds no allocation.

use std::collections::VecDeque;
use std::sync::Arc;

use fleet_protocol::mqtt::QoS;

use super::config::{Overflow, QueueLimits};
use super::message::Message;

/// A message on its way to one session, with what its subscriptions decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Queued {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Box<[u32]>,
}

/// What a push did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pushed {
    /// The new message is in the queue.
    pub queued: bool,
    /// Messages dropped: older ones evicted, plus the new one if it was not queued.
    pub dropped: u32,
    /// [`Overflow::Disconnect`] applies: the caller ends the connection or session.
    pub overflow: bool,
}

#[derive(Debug, Default)]
pub(super) struct Queue {
    items: VecDeque<Queued>,
    bytes: usize,
    /// How many queued messages are QoS 0 (so the search for one is skipped when none are).
    qos0: usize,
}

/// Above this capacity an emptied queue gives its memory back.
const KEEP_CAPACITY: usize = 8;

impl Queue {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }

    pub fn front(&self) -> Option<&Queued> {
        self.items.front()
    }

    /// Appends `item` within `limits`, dropping per the overflow policy.
    pub fn push(&mut self, item: Queued, limits: &QueueLimits) -> Pushed {
        let size = item.message.size();
        let refused = |dropped| Pushed {
            queued: false,
            dropped: dropped + 1,
            overflow: false,
        };
        if limits.max_messages == 0 || size > limits.max_bytes {
            return refused(0);
        }
        let mut dropped = 0;
        while self.items.len() >= limits.max_messages || self.bytes + size > limits.max_bytes {
            if limits.drop_qos0_first {
                if let Some(at) = self.oldest_qos0() {
                    self.remove(at);
                    dropped += 1;
                    continue;
                }
                if item.qos == QoS::AtMostOnce {
                    return refused(dropped);
                }
            }
            match limits.overflow {
                Overflow::DropNewest => return refused(dropped),
                Overflow::DropOldest => {
                    self.remove(0);
                    dropped += 1;
                }
                Overflow::Disconnect => {
                    return Pushed {
                        overflow: true,
                        ..refused(dropped)
                    }
                }
            }
        }
        self.account(&item, true);
        self.items.push_back(item);
        Pushed {
            queued: true,
            dropped,
            overflow: false,
        }
    }

    pub fn pop(&mut self) -> Option<Queued> {
        let item = self.items.pop_front()?;
        self.account(&item, false);
        self.shrink();
        Some(item)
    }

    /// Puts back a message just popped, at the front.
    pub fn unpop(&mut self, item: Queued) {
        self.account(&item, true);
        self.items.push_front(item);
    }

    /// Empties the queue and frees its memory; returns how many messages it held.
    pub fn clear(&mut self) -> usize {
        let n = self.items.len();
        *self = Queue::default();
        n
    }

    fn oldest_qos0(&self) -> Option<usize> {
        if self.qos0 == 0 {
            return None;
        }
        self.items.iter().position(|q| q.qos == QoS::AtMostOnce)
    }

    fn remove(&mut self, at: usize) {
        if let Some(item) = self.items.remove(at) {
            self.account(&item, false);
        }
    }

    fn account(&mut self, item: &Queued, added: bool) {
        let size = item.message.size();
        let qos0 = usize::from(item.qos == QoS::AtMostOnce);
        if added {
            self.bytes += size;
            self.qos0 += qos0;
        } else {
            self.bytes -= size;
            self.qos0 -= qos0;
        }
    }

    fn shrink(&mut self) {
        if self.items.is_empty() && self.items.capacity() > KEEP_CAPACITY {
            self.items = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(payload: &'static [u8], qos: QoS) -> Queued {
        Queued {
            message: Arc::new(Message::new("t", payload, qos, false)),
            qos,
            retain: false,
            subscription_ids: Box::new([]),
        }
    }

    fn payloads(q: &Queue) -> Vec<&[u8]> {
        q.items.iter().map(|i| &i.message.payload[..]).collect()
    }

    fn limits(
        max_messages: usize,
        max_bytes: usize,
        overflow: Overflow,
        qos0: bool,
    ) -> QueueLimits {
        QueueLimits {
            max_messages,
            max_bytes,
            overflow,
            drop_qos0_first: qos0,
        }
    }

    #[test]
    fn byte_bound_counts_topic_and_payload() {
        // Each message is 1 byte of topic + 3 of payload = 4 bytes.
        let l = limits(100, 8, Overflow::DropNewest, false);
        let mut q = Queue::default();
        assert!(q.push(item(b"one", QoS::AtLeastOnce), &l).queued);
        assert!(q.push(item(b"two", QoS::AtLeastOnce), &l).queued);
        assert_eq!(q.bytes(), 8);
        let p = q.push(item(b"333", QoS::AtLeastOnce), &l);
        assert_eq!((p.queued, p.dropped), (false, 1));
        // Larger than the whole bound: never queued, whatever the policy.
        let p = q.push(
            item(b"123456789", QoS::AtLeastOnce),
            &limits(100, 8, Overflow::DropOldest, false),
        );
        assert_eq!((p.queued, p.dropped), (false, 1));
        assert_eq!(payloads(&q), [b"one", b"two"]);
    }

    #[test]
    fn qos0_goes_first_then_the_policy() {
        let l = limits(2, 1000, Overflow::DropNewest, true);
        let mut q = Queue::default();
        q.push(item(b"a0", QoS::AtMostOnce), &l);
        q.push(item(b"b1", QoS::AtLeastOnce), &l);
        // Full: the oldest QoS 0 message makes room for a QoS 1 one.
        let p = q.push(item(b"c1", QoS::AtLeastOnce), &l);
        assert_eq!((p.queued, p.dropped), (true, 1));
        assert_eq!(payloads(&q), [b"b1", b"c1"]);
        // No QoS 0 left: a new QoS 0 message is the one dropped.
        let p = q.push(item(b"d0", QoS::AtMostOnce), &l);
        assert_eq!((p.queued, p.dropped), (false, 1));
        // And a new QoS 1 one meets the policy.
        let p = q.push(item(b"e1", QoS::AtLeastOnce), &l);
        assert_eq!((p.queued, p.dropped, p.overflow), (false, 1, false));
        assert_eq!(payloads(&q), [b"b1", b"c1"]);
    }

    #[test]
    fn emptied_queue_frees_its_memory() {
        let l = QueueLimits::default();
        let mut q = Queue::default();
        assert_eq!(q.capacity(), 0);
        for _ in 0..100 {
            q.push(item(b"x", QoS::AtLeastOnce), &l);
        }
        while q.pop().is_some() {}
        assert_eq!((q.capacity(), q.bytes()), (0, 0));
    }
}
