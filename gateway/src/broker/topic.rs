//! The subscription index: a tree of topic-filter levels.
//!
//! A filter is a path from the root, one node per level; `+` has its own child slot and a
//! trailing `#` is a map on the node it follows (it matches that node's level and everything
//! below). Subscribing, unsubscribing and matching cost the number of levels times the
//! branches a topic can take (literal, `+`, `#` at each level), not the number of sessions:
//! 100k devices each on their own `tenants/t/devices/{id}/cmd/#` share the first three nodes
//! and are one hash lookup apart at the fourth. Nothing is recursive, so a filter of 30,000
//! levels cannot exhaust a stack. Empty nodes are pruned on unsubscribe.

use std::collections::HashMap;

use super::options::Subscription;
use super::SessionId;

/// Filters → the sessions subscribed with them, and their options.
#[derive(Debug, Default)]
pub struct TopicTree {
    root: Node,
    len: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    /// Subscribers of the filter that ends at this node.
    exact: HashMap<SessionId, Subscription>,
    /// Subscribers of this node's filter followed by `/#` (at the root: `#`).
    multi: HashMap<SessionId, Subscription>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.multi.is_empty()
    }

    /// Whether the node holds anything besides the one child a path goes through.
    fn holds_more_than_a_path(&self) -> bool {
        !self.exact.is_empty()
            || !self.multi.is_empty()
            || self.children.len() + usize::from(self.plus.is_some()) > 1
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node> {
        match level {
            "+" => self.plus.as_deref_mut(),
            l => self.children.get_mut(l),
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Node {
        match level {
            "+" => self.plus.get_or_insert_with(Box::default),
            l => self.children.entry(l.into()).or_default(),
        }
    }

    fn remove_child(&mut self, level: &str) {
        match level {
            "+" => self.plus = None,
            l => {
                self.children.remove(l);
            }
        }
    }
}

/// Dropping a deep branch one node at a time: the derived drop would recurse once per level.
impl Drop for Node {
    fn drop(&mut self) {
        let mut stack: Vec<Node> = self.children.drain().map(|(_, n)| n).collect();
        stack.extend(self.plus.take().map(|p| *p));
        while let Some(mut node) = stack.pop() {
            stack.extend(node.children.drain().map(|(_, n)| n));
            stack.extend(node.plus.take().map(|p| *p));
        }
    }
}

/// A filter as the levels of its node path, and whether it ends in `#`.
fn split(filter: &str) -> (Vec<&str>, bool) {
    let mut levels: Vec<&str> = filter.split('/').collect();
    let multi = levels.last() == Some(&"#");
    if multi {
        levels.pop();
    }
    (levels, multi)
}

impl TopicTree {
    /// Number of (session, filter) subscriptions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces `session`'s subscription to `filter` (a valid filter) and returns the
    /// one it replaced [MQTT-3.8.4-3].
    pub fn insert(
        &mut self,
        filter: &str,
        session: SessionId,
        sub: Subscription,
    ) -> Option<Subscription> {
        let (path, multi) = split(filter);
        let mut node = &mut self.root;
        for level in path {
            node = node.child_or_insert(level);
        }
        let map = if multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        let previous = map.insert(session, sub);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// The subscription `session` holds for exactly `filter`.
    pub fn get(&self, filter: &str, session: SessionId) -> Option<&Subscription> {
        let (path, multi) = split(filter);
        let mut node = &self.root;
        for level in path {
            node = match level {
                "+" => node.plus.as_deref()?,
                l => node.children.get(l)?,
            };
        }
        if multi {
            node.multi.get(&session)
        } else {
            node.exact.get(&session)
        }
    }

    /// Removes `session`'s subscription to `filter`, if it had one, and prunes the branch
    /// that held nothing else.
    pub fn remove(&mut self, filter: &str, session: SessionId) -> Option<Subscription> {
        let (path, multi) = split(filter);
        // `keep`: the deepest node on the path that holds something else and stays.
        let mut keep = 0;
        let mut node = &mut self.root;
        for (depth, level) in path.iter().enumerate() {
            if node.holds_more_than_a_path() {
                keep = depth;
            }
            node = node.child_mut(level)?;
        }
        let map = if multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        let removed = map.remove(&session)?;
        self.len -= 1;
        if node.is_empty() && !path.is_empty() {
            let mut stay = &mut self.root;
            for level in &path[..keep] {
                stay = stay.child_mut(level)?;
            }
            stay.remove_child(path[keep]);
        }
        Some(removed)
    }

    /// Calls `visit` once for every (session, subscription) whose filter matches the topic
    /// name `topic`. A topic starting with `$` is not matched by a filter starting with a
    /// wildcard [MQTT-4.7.2-1].
    pub fn for_each_match(&self, topic: &str, mut visit: impl FnMut(SessionId, &Subscription)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        let mut stack = vec![(&self.root, 0usize)];
        while let Some((node, depth)) = stack.pop() {
            let wildcards = !(depth == 0 && dollar);
            if wildcards {
                node.multi.iter().for_each(|(s, sub)| visit(*s, sub));
            }
            let Some(level) = levels.get(depth) else {
                node.exact.iter().for_each(|(s, sub)| visit(*s, sub));
                continue;
            };
            if let (true, Some(plus)) = (wildcards, &node.plus) {
                stack.push((plus, depth + 1));
            }
            if let Some(child) = node.children.get(*level) {
                stack.push((child, depth + 1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_protocol::mqtt::QoS;

    fn sub() -> Subscription {
        Subscription::new(QoS::AtMostOnce)
    }

    fn matching(tree: &TopicTree, topic: &str) -> Vec<u64> {
        let mut out = Vec::new();
        tree.for_each_match(topic, |s, _| out.push(s.0));
        out.sort_unstable();
        out
    }

    #[test]
    fn dollar_topics_escape_leading_wildcards() {
        // [MQTT-4.7.2-1]: `#` and `+/x` do not match `$SYS/x`; `$SYS/#` does.
        let mut tree = TopicTree::default();
        tree.insert("#", SessionId(1), sub());
        tree.insert("+/x", SessionId(2), sub());
        tree.insert("$SYS/#", SessionId(3), sub());
        tree.insert("$SYS/+", SessionId(4), sub());
        assert_eq!(matching(&tree, "$SYS/x"), [3, 4]);
        assert_eq!(matching(&tree, "SYS/x"), [1, 2]);
        assert_eq!(matching(&tree, "$SYS"), [3]);
    }

    #[test]
    fn remove_prunes_only_what_nothing_else_uses() {
        let mut tree = TopicTree::default();
        tree.insert("a/b/c", SessionId(1), sub());
        tree.insert("a/+/#", SessionId(2), sub());
        tree.insert("a", SessionId(3), sub());
        assert_eq!(tree.len(), 3);
        assert!(tree.remove("a/b/c", SessionId(2)).is_none());
        assert!(tree.remove("a/b/c", SessionId(1)).is_some());
        assert!(tree.remove("a/b/c", SessionId(1)).is_none());
        assert_eq!(matching(&tree, "a/b/c"), [2]);
        // `a` keeps its own subscriber and the `+` branch; `b` is gone.
        assert!(tree.root.children["a"].children.is_empty());
        assert!(tree.remove("a/+/#", SessionId(2)).is_some());
        assert!(tree.root.children["a"].plus.is_none());
        assert!(tree.remove("a", SessionId(3)).is_some());
        assert!(tree.root.is_empty() && tree.is_empty());
    }

    #[test]
    fn replacing_keeps_one_entry() {
        // [MQTT-3.8.4-3]: a SUBSCRIBE for an existing filter replaces the subscription.
        let mut tree = TopicTree::default();
        assert!(tree.insert("a/#", SessionId(1), sub()).is_none());
        let again = Subscription::new(QoS::ExactlyOnce);
        assert_eq!(tree.insert("a/#", SessionId(1), again), Some(sub()));
        assert_eq!(tree.len(), 1);
        assert_eq!(tree.get("a/#", SessionId(1)), Some(&again));
        assert_eq!(tree.get("a", SessionId(1)), None);
    }

    #[test]
    fn deep_filters_do_not_recurse() {
        let deep = vec!["x"; 30_000].join("/");
        let mut tree = TopicTree::default();
        tree.insert(&deep, SessionId(1), sub());
        assert_eq!(matching(&tree, &deep), [1]);
        assert!(tree.remove(&deep, SessionId(1)).is_some());
        assert!(tree.root.is_empty());
        // Dropping a whole deep tree does not recurse either.
        tree.insert(&deep, SessionId(1), sub());
        drop(tree);
    }
}
