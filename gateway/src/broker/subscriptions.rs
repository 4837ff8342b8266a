//! SUBSCRIBE and UNSUBSCRIBE: the topic tree, the session's filter list, and retained
//! messages on subscribe.

use std::num::NonZeroU32;
use std::time::Instant;

use fleet_protocol::mqtt::{v5::reason, valid_topic_filter};

use super::action::Action;
use super::backend::Backend;
use super::options::{RetainHandling, Subscription};
use super::queue::Queued;
use super::{Broker, Handle, SessionId};

/// The answer to a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// One per filter, in order: the granted QoS (0, 1, 2) or a version 5 failure reason
    /// (a 3.1.1 SUBACK says 0x80 for each failure).
    pub reasons: Vec<u8>,
    /// Retained messages for the new subscriptions: to carry out after sending SUBACK.
    pub actions: Vec<Action>,
}

/// The prefix of shared subscriptions, which this broker does not offer (the v5 CONNACK
/// says so).
const SHARED: &str = "$share/";

impl<B: Backend> Broker<B> {
    /// Adds or replaces `handle`'s subscriptions [MQTT-3.8.4-3] and queues the retained
    /// messages each one asks for: sent with RETAIN=1 [MQTT-3.3.1-8] at min(message QoS,
    /// granted QoS), per Retain Handling 0/1/2 [MQTT-3.3.1-9..11]. `None` if the handle is
    /// no longer live.
    pub fn subscribe(
        &mut self,
        handle: Handle,
        filters: &[(&str, Subscription)],
        now: Instant,
    ) -> Option<Subscribed> {
        if !self.is_live(handle) {
            return None;
        }
        let mut out = Subscribed {
            reasons: Vec::with_capacity(filters.len()),
            actions: Vec::new(),
        };
        for &(filter, sub) in filters {
            // A retained burst may have closed the connection (overflow policy).
            let code = if self.is_live(handle) {
                self.subscribe_one(handle.session, filter, sub, now, &mut out.actions)
            } else {
                reason::UNSPECIFIED_ERROR
            };
            out.reasons.push(code);
        }
        self.settle(now, &mut out.actions);
        Some(out)
    }

    /// Removes `handle`'s subscriptions: one reason per filter, 0x11 for a filter it did not
    /// hold [MQTT-3.11.3] (a 3.1.1 client still gets its UNSUBACK [MQTT-3.10.4-5]). `None` if
    /// the handle is no longer live.
    pub fn unsubscribe(&mut self, handle: Handle, filters: &[&str]) -> Option<Vec<u8>> {
        if !self.is_live(handle) {
            return None;
        }
        Some(
            filters
                .iter()
                .map(|f| self.unsubscribe_one(handle.session, f))
                .collect(),
        )
    }

    fn subscribe_one(
        &mut self,
        sid: SessionId,
        filter: &str,
        sub: Subscription,
        now: Instant,
        actions: &mut Vec<Action>,
    ) -> u8 {
        if !valid_topic_filter(filter) {
            return reason::TOPIC_FILTER_INVALID;
        }
        if filter.starts_with(SHARED) {
            return reason::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED;
        }
        let existed = self.tree.insert(filter, sid, sub).is_some();
        if !existed {
            if let Some(s) = self.sessions.get_mut(&sid) {
                s.filters.push(filter.into());
            }
            self.backend.subscribed(filter);
        }
        let send_retained = match sub.retain_handling {
            RetainHandling::OnSubscribe => true,
            RetainHandling::OnNewSubscription => !existed,
            RetainHandling::Never => false,
        };
        if send_retained {
            self.send_retained(sid, filter, sub, now, actions);
        }
        sub.qos as u8
    }

    fn send_retained(
        &mut self,
        sid: SessionId,
        filter: &str,
        sub: Subscription,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let mut found = Vec::new();
        self.backend
            .retained(filter, now, &mut |m| found.push(m.clone()));
        let ids: Box<[u32]> = sub.id.map(NonZeroU32::get).into_iter().collect();
        for message in found {
            let item = Queued {
                qos: message.qos.min(sub.qos),
                retain: true,
                subscription_ids: ids.clone(),
                message,
            };
            self.offer(sid, item, now, actions);
        }
    }

    fn unsubscribe_one(&mut self, sid: SessionId, filter: &str) -> u8 {
        if !valid_topic_filter(filter) {
            return reason::TOPIC_FILTER_INVALID;
        }
        if self.tree.remove(filter, sid).is_none() {
            return reason::NO_SUBSCRIPTION_EXISTED;
        }
        self.backend.unsubscribed(filter);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.filters.retain(|f| &**f != filter);
            if s.filters.is_empty() {
                s.filters = Vec::new();
            }
        }
        reason::SUCCESS
    }
}
