//! The retained store: the last retained message of each topic, in a tree of topic levels so
//! that a SUBSCRIBE finds what its filter matches by walking the filter, not every message.
//!
//! A retained PUBLISH with a payload replaces the topic's message; one with an empty payload
//! clears it and is never stored [MQTT-3.3.1-5..7]. Messages whose Message Expiry Interval
//! passed are never returned, and [`RetainedStore::purge_expired`] frees them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::message::Message;

/// What became of a retained message handed to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainOutcome {
    Stored,
    /// An empty payload removed the topic's message (or there was none).
    Cleared,
    /// The store is full and the topic had no message to replace.
    Refused,
}

/// Retained messages by topic.
#[derive(Debug)]
pub struct RetainedStore {
    root: Node,
    len: usize,
    limit: usize,
    /// (expiry, topic) of every stored message that expires.
    expiring: BTreeSet<(Instant, Box<str>)>,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    message: Option<Arc<Message>>,
}

/// Dropping a deep branch one node at a time: the derived drop would recurse once per level.
impl Drop for Node {
    fn drop(&mut self) {
        let mut stack: Vec<Node> = self.children.drain().map(|(_, n)| n).collect();
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, n)| n));
        }
    }
}

impl Node {
    fn holds_more_than_a_path(&self) -> bool {
        self.message.is_some() || self.children.len() > 1
    }
}

impl RetainedStore {
    /// A store of at most `limit` messages.
    pub fn new(limit: usize) -> RetainedStore {
        RetainedStore {
            root: Node::default(),
            len: 0,
            limit,
            expiring: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `message` as its topic's retained message, or clears the topic when the payload
    /// is empty.
    pub fn set(&mut self, message: &Arc<Message>) -> RetainOutcome {
        if message.payload.is_empty() {
            self.clear(&message.topic);
            return RetainOutcome::Cleared;
        }
        if self.len >= self.limit && self.get(&message.topic).is_none() {
            return RetainOutcome::Refused;
        }
        let mut node = &mut self.root;
        for level in message.topic.split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        match node.message.replace(message.clone()) {
            Some(old) => unindex(&mut self.expiring, &old),
            None => self.len += 1,
        }
        if let Some(at) = message.expires_at {
            self.expiring.insert((at, message.topic.clone()));
        }
        RetainOutcome::Stored
    }

    /// The message retained for exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&Arc<Message>> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.message.as_ref()
    }

    /// Removes the message retained for `topic` and prunes the branch that held nothing else.
    fn clear(&mut self, topic: &str) -> Option<Arc<Message>> {
        let path: Vec<&str> = topic.split('/').collect();
        let mut keep = 0;
        let mut node = &mut self.root;
        for (depth, level) in path.iter().enumerate() {
            if node.holds_more_than_a_path() {
                keep = depth;
            }
            node = node.children.get_mut(*level)?;
        }
        let old = node.message.take()?;
        self.len -= 1;
        unindex(&mut self.expiring, &old);
        if node.children.is_empty() {
            let mut stay = &mut self.root;
            for level in &path[..keep] {
                stay = stay.children.get_mut(*level)?;
            }
            stay.children.remove(path[keep]);
        }
        Some(old)
    }

    /// Calls `visit` for every unexpired retained message whose topic `filter` matches. A
    /// leading wildcard does not match topics starting with `$` [MQTT-4.7.2-1].
    pub fn for_each_match(&self, filter: &str, now: Instant, visit: &mut dyn FnMut(&Arc<Message>)) {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut emit = |node: &Node| {
            if let Some(m) = node.message.as_ref().filter(|m| !m.expired(now)) {
                visit(m);
            }
        };
        let mut stack = vec![(&self.root, 0usize)];
        while let Some((node, depth)) = stack.pop() {
            let Some(level) = levels.get(depth) else {
                emit(node);
                continue;
            };
            // Children a wildcard at this level may enter.
            let wild = node
                .children
                .iter()
                .filter(|(k, _)| depth > 0 || !k.starts_with('$'))
                .map(|(_, n)| n);
            match *level {
                "#" => {
                    // `#` also matches the parent level: `a/#` matches `a`.
                    emit(node);
                    let mut below: Vec<&Node> = wild.collect();
                    while let Some(n) = below.pop() {
                        emit(n);
                        below.extend(n.children.values());
                    }
                }
                "+" => stack.extend(wild.map(|n| (n, depth + 1))),
                l => stack.extend(node.children.get(l).map(|n| (n, depth + 1))),
            }
        }
    }

    /// Drops the messages that expired by `now`.
    pub fn purge_expired(&mut self, now: Instant) {
        while let Some((at, topic)) = self.expiring.first().cloned() {
            if at > now {
                break;
            }
            self.expiring.pop_first();
            if self.get(&topic).is_some_and(|m| m.expires_at == Some(at)) {
                self.clear(&topic);
            }
        }
    }

    /// When the next stored message expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.expiring.first().map(|(at, _)| *at)
    }
}

fn unindex(expiring: &mut BTreeSet<(Instant, Box<str>)>, message: &Message) {
    if let Some(at) = message.expires_at {
        expiring.remove(&(at, message.topic.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::mqtt::QoS;
    use std::time::Duration;

    fn retained(topic: &str, payload: &'static [u8]) -> Arc<Message> {
        Arc::new(Message::new(topic, payload, QoS::AtLeastOnce, true))
    }

    fn topics(store: &RetainedStore, filter: &str, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        store.for_each_match(filter, now, &mut |m| out.push(m.topic.to_string()));
        out.sort();
        out
    }

    #[test]
    fn set_replace_and_clear() {
        // [MQTT-3.3.1-5]: stored, replacing the topic's previous message. [MQTT-3.3.1-6,7]:
        // an empty payload removes it and is not stored itself.
        let now = Instant::now();
        let mut store = RetainedStore::new(10);
        assert_eq!(store.set(&retained("a/b", b"1")), RetainOutcome::Stored);
        assert_eq!(store.set(&retained("a/b", b"2")), RetainOutcome::Stored);
        assert_eq!(store.len(), 1);
        assert_eq!(&store.get("a/b").unwrap().payload[..], b"2");
        assert_eq!(store.set(&retained("a/b", b"")), RetainOutcome::Cleared);
        assert!(store.is_empty() && store.get("a/b").is_none());
        assert!(store.root.children.is_empty(), "empty branch pruned");
        assert!(topics(&store, "#", now).is_empty());
    }

    #[test]
    fn filters_walk_the_tree() {
        let now = Instant::now();
        let mut store = RetainedStore::new(10);
        for t in ["a", "a/b", "a/b/c", "a/x", "b/b", "$SYS/up", "/lead"] {
            store.set(&retained(t, b"p"));
        }
        assert_eq!(topics(&store, "a/#", now), ["a", "a/b", "a/b/c", "a/x"]);
        assert_eq!(topics(&store, "+/b", now), ["a/b", "b/b"]);
        assert_eq!(topics(&store, "a/+/c", now), ["a/b/c"]);
        assert_eq!(topics(&store, "+/lead", now), ["/lead"]);
        // [MQTT-4.7.2-1]
        assert_eq!(
            topics(&store, "#", now),
            ["/lead", "a", "a/b", "a/b/c", "a/x", "b/b"]
        );
        assert_eq!(topics(&store, "+/up", now), Vec::<String>::new());
        assert_eq!(topics(&store, "$SYS/#", now), ["$SYS/up"]);
    }

    #[test]
    fn full_store_refuses_new_topics_but_replaces() {
        let mut store = RetainedStore::new(1);
        assert_eq!(store.set(&retained("a", b"1")), RetainOutcome::Stored);
        assert_eq!(store.set(&retained("b", b"1")), RetainOutcome::Refused);
        assert_eq!(store.set(&retained("a", b"2")), RetainOutcome::Stored);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn expired_messages_are_hidden_then_purged() {
        // [MQTT-3.3.2-5]: an expired message is not delivered.
        let now = Instant::now();
        let mut store = RetainedStore::new(10);
        let mut m = Message::new("a", &b"p"[..], QoS::AtMostOnce, true);
        m.expires_at = Some(now + Duration::from_secs(5));
        store.set(&Arc::new(m));
        store.set(&retained("b", b"p"));
        assert_eq!(store.next_expiry(), Some(now + Duration::from_secs(5)));
        assert_eq!(topics(&store, "+", now), ["a", "b"]);
        let later = now + Duration::from_secs(5);
        assert_eq!(topics(&store, "+", later), ["b"]);
        store.purge_expired(later);
        assert_eq!(store.len(), 1);
        assert_eq!(store.next_expiry(), None);
    }
}
