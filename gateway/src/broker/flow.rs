//! Messages through the broker: a client's PUBLISH in (QoS 2 duplicates refused, the backend
//! deciding when it is acknowledged), fan-out to the matching sessions, and the outgoing
//! QoS 1/2 flows' acknowledgements.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use fleet_protocol::mqtt::{v5::reason, valid_topic_name, QoS};

use super::action::{Action, DropReason, Outgoing};
use super::backend::{Admission, Backend, StoreOutcome, Ticket};
use super::inflight::{Incoming, PubRecOutcome};
use super::lifecycle::Ending;
use super::message::Message;
use super::options::Subscription;
use super::queue::Queued;
use super::retained::RetainOutcome;
use super::{Broker, Handle, PendingAck, SessionId};

fn send(conn: super::ConnId, packet: Outgoing) -> Action {
    Action::Send { conn, packet }
}

impl<B: Backend> Broker<B> {
    /// A client's PUBLISH (`packet_id` as decoded: `Some` for QoS 1 and 2). The message is
    /// admitted by the backend; with [`Admission::Now`] it is fanned out and acknowledged
    /// here, otherwise the PUBACK / PUBREC waits for [`Broker::persisted`]. A QoS 2 PUBLISH
    /// repeating an id that awaits PUBREL is answered with PUBREC and not delivered again
    /// (§4.3.3). More unacknowledged QoS 1/2 publishes than the server's Receive Maximum
    /// close the connection with 0x93 [MQTT-3.3.4-9 (receiver side)].
    pub fn publish(
        &mut self,
        handle: Handle,
        packet_id: Option<u16>,
        mut message: Message,
        now: Instant,
    ) -> Vec<Action> {
        let limit = usize::from(self.config.server_receive_maximum.get());
        let conn = handle.conn;
        let (qos, id) = match (message.qos, packet_id) {
            (QoS::AtMostOnce, None) => (QoS::AtMostOnce, None),
            (q @ (QoS::AtLeastOnce | QoS::ExactlyOnce), Some(id)) if id != 0 => (q, Some(id)),
            _ => return self.violation(handle, reason::PROTOCOL_ERROR, now),
        };
        if !valid_topic_name(&message.topic) {
            return self.violation(handle, reason::TOPIC_NAME_INVALID, now);
        }
        let Some(s) = self
            .sessions
            .get_mut(&handle.session)
            .filter(|s| s.conn == Some(conn))
        else {
            return Vec::new();
        };
        if let Some(id) = id {
            let answer = |packet| vec![send(conn, packet)];
            match s.incoming.get(&id).copied() {
                Some(Incoming::Received) if qos == QoS::ExactlyOnce => {
                    return answer(Outgoing::PubRec {
                        packet_id: id,
                        reason: reason::SUCCESS,
                    })
                }
                Some(Incoming::Received) => {
                    return answer(Outgoing::PubAck {
                        packet_id: id,
                        reason: reason::PACKET_IDENTIFIER_IN_USE,
                    })
                }
                // Its acknowledgement follows when the backend has it.
                Some(Incoming::Storing(_)) => return Vec::new(),
                None if s.incoming.len() >= limit => {
                    return self.violation(handle, reason::RECEIVE_MAXIMUM_EXCEEDED, now)
                }
                None => {}
            }
        }
        message.stamp(&s.client_id, now);
        let message = Arc::new(message);
        let ticket = self.ticket();
        let mut actions = Vec::new();
        match (self.backend.admit(ticket, &message, now), id) {
            (Admission::Now, id) => {
                self.route(message, now, &mut actions);
                if let Some(id) = id {
                    self.acknowledge(handle.session, id, qos, reason::SUCCESS, &mut actions);
                }
            }
            (Admission::Pending, Some(id)) => {
                if let Some(s) = self.sessions.get_mut(&handle.session) {
                    s.incoming.insert(id, Incoming::Storing(ticket));
                }
                let pending = PendingAck {
                    session: handle.session,
                    packet_id: id,
                    qos,
                };
                self.pending.insert(ticket, pending);
            }
            (Admission::Pending, None) => {}
        }
        self.settle(now, &mut actions);
        actions
    }

    /// The backend reports on a message it answered [`Admission::Pending`] for: the PUBACK or
    /// PUBREC goes out now (0x80 if the store failed), to the session's current connection.
    pub fn persisted(&mut self, ticket: Ticket, outcome: StoreOutcome) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(p) = self.pending.remove(&ticket) else {
            return actions;
        };
        let waiting = self
            .sessions
            .get(&p.session)
            .is_some_and(|s| s.incoming.get(&p.packet_id) == Some(&Incoming::Storing(ticket)));
        if waiting {
            let code = match outcome {
                StoreOutcome::Stored => reason::SUCCESS,
                StoreOutcome::Failed => reason::UNSPECIFIED_ERROR,
            };
            self.acknowledge(p.session, p.packet_id, p.qos, code, &mut actions);
        }
        actions
    }

    /// A message the backend hands back for local delivery (a clustered backend's stream;
    /// the in-process backend routes at admission and never needs this).
    pub fn deliver(&mut self, message: Arc<Message>, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.route(message, now, &mut actions);
        self.settle(now, &mut actions);
        actions
    }

    /// PUBACK from the client: ends that QoS 1 flow and lets the window move.
    pub fn puback(&mut self, handle: Handle, packet_id: u16, now: Instant) -> Vec<Action> {
        self.with_live(handle, |s, stats, actions| {
            if s.window.puback(packet_id) {
                s.pump(now, actions, stats);
            }
        })
    }

    /// PUBREC from the client (`code`: its reason, 0 in 3.1.1): PUBREL goes out, or a failure
    /// reason ends the flow; an unknown id is answered with PUBREL 0x92.
    pub fn pubrec(
        &mut self,
        handle: Handle,
        packet_id: u16,
        code: u8,
        now: Instant,
    ) -> Vec<Action> {
        self.with_live(handle, |s, stats, actions| {
            let rel = |reason| send(handle.conn, Outgoing::PubRel { packet_id, reason });
            match s
                .window
                .pubrec(packet_id, code >= reason::UNSPECIFIED_ERROR)
            {
                PubRecOutcome::Release | PubRecOutcome::Repeat => {
                    actions.push(rel(reason::SUCCESS))
                }
                PubRecOutcome::Abandoned => s.pump(now, actions, stats),
                PubRecOutcome::Unknown => actions.push(rel(reason::PACKET_IDENTIFIER_NOT_FOUND)),
            }
        })
    }

    /// PUBREL from the client: ends the incoming QoS 2 flow with PUBCOMP (0x92 if unknown).
    pub fn pubrel(&mut self, handle: Handle, packet_id: u16) -> Vec<Action> {
        self.with_live(handle, |s, _, actions| {
            let reason = if s.incoming.get(&packet_id) == Some(&Incoming::Received) {
                s.incoming.remove(&packet_id);
                reason::SUCCESS
            } else {
                reason::PACKET_IDENTIFIER_NOT_FOUND
            };
            actions.push(send(handle.conn, Outgoing::PubComp { packet_id, reason }));
        })
    }

    /// PUBCOMP from the client: ends that QoS 2 flow and lets the window move.
    pub fn pubcomp(&mut self, handle: Handle, packet_id: u16, now: Instant) -> Vec<Action> {
        self.with_live(handle, |s, stats, actions| {
            if s.window.pubcomp(packet_id) {
                s.pump(now, actions, stats);
            }
        })
    }

    /// Holds deliveries for `handle` (its writer is backed up): they wait in the session's
    /// bounded queue instead of piling up in the caller.
    pub fn pause(&mut self, handle: Handle) {
        self.with_live(handle, |s, _, _| s.paused = true);
    }

    /// Lets deliveries for `handle` flow again, starting with what waited.
    pub fn resume(&mut self, handle: Handle, now: Instant) -> Vec<Action> {
        self.with_live(handle, |s, stats, actions| {
            s.paused = false;
            s.pump(now, actions, stats);
        })
    }

    /// Ends `handle`'s connection for breaking the protocol: close with `code`, and the will
    /// fires as for any abnormal end.
    fn violation(&mut self, handle: Handle, code: u8, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.is_live(handle) {
            actions.push(Action::Close {
                conn: handle.conn,
                reason: code,
            });
            self.end_connection(handle.session, Ending::Abnormal, now, &mut actions);
            self.settle(now, &mut actions);
        }
        actions
    }

    /// Sends the PUBACK / PUBREC for an incoming flow and records its new state.
    fn acknowledge(
        &mut self,
        sid: SessionId,
        packet_id: u16,
        qos: QoS,
        code: u8,
        actions: &mut Vec<Action>,
    ) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let packet = if qos == QoS::ExactlyOnce && code < reason::UNSPECIFIED_ERROR {
            s.incoming.insert(packet_id, Incoming::Received);
            Outgoing::PubRec {
                packet_id,
                reason: code,
            }
        } else {
            s.incoming.remove(&packet_id);
            match qos {
                QoS::ExactlyOnce => Outgoing::PubRec {
                    packet_id,
                    reason: code,
                },
                _ => Outgoing::PubAck {
                    packet_id,
                    reason: code,
                },
            }
        };
        if let Some(conn) = s.conn {
            actions.push(send(conn, packet));
        }
    }

    /// Fans `message` out: the retained store first, then every session with a matching
    /// subscription, once per session.
    pub(super) fn route(&mut self, message: Arc<Message>, now: Instant, actions: &mut Vec<Action>) {
        if message.retain && self.backend.retain(&message) == RetainOutcome::Refused {
            let origin = message.origin.as_ref();
            self.stats
                .count_drop(actions, origin, DropReason::RetainedStoreFull, 1);
        }
        let mut hits = Vec::new();
        self.tree
            .for_each_match(&message.topic, |sid, sub| hits.push((sid, *sub)));
        hits.sort_unstable_by_key(|(sid, _)| *sid);
        for group in hits.chunk_by(|a, b| a.0 == b.0) {
            let Some(&(sid, _)) = group.first() else {
                continue;
            };
            if let Some(item) = self.merge(sid, group, &message) {
                self.offer(sid, item, now, actions);
            }
        }
    }

    /// One session's matching subscriptions make one delivery: at the highest granted QoS
    /// (capped by the message's) with every subscription identifier [MQTT-3.3.4-2,3]; No
    /// Local ones skip the session's own messages [MQTT-3.8.3-3]; the RETAIN flag is kept
    /// only for Retain As Published [MQTT-3.3.1-12,13].
    fn merge(
        &self,
        sid: SessionId,
        group: &[(SessionId, Subscription)],
        message: &Arc<Message>,
    ) -> Option<Queued> {
        let session = self.sessions.get(&sid)?;
        let own = message.origin.as_deref() == Some(&*session.client_id);
        let mut granted: Option<QoS> = None;
        let mut retain_as_published = false;
        let mut ids = Vec::new();
        for (_, sub) in group.iter().filter(|(_, sub)| !(sub.no_local && own)) {
            granted = granted.max(Some(sub.qos));
            retain_as_published |= sub.retain_as_published;
            ids.extend(sub.id.map(NonZeroU32::get));
        }
        Some(Queued {
            qos: message.qos.min(granted?),
            retain: message.retain && retain_as_published,
            subscription_ids: ids.into_boxed_slice(),
            message: message.clone(),
        })
    }

    /// Hands one delivery to a session: the delivery filter, then straight out if nothing
    /// waits ahead of it, else into the bounded queue (overflow policy applied and counted).
    pub(super) fn offer(
        &mut self,
        sid: SessionId,
        item: Queued,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let limits = self.config.queue;
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if !s.admits(&item.message) {
            self.stats
                .count_drop(actions, Some(&s.client_id), DropReason::Denied, 1);
            return;
        }
        if s.can_send_now(&item) {
            s.send(item, now, actions);
            return;
        }
        let pushed = s.queue.push(item, &limits);
        if s.conn.is_some() {
            self.backlog = self.backlog.max(s.queue.len());
        }
        self.stats.count_drop(
            actions,
            Some(&s.client_id),
            DropReason::QueueFull,
            pushed.dropped,
        );
        if !pushed.overflow {
            return;
        }
        self.stats.overflow_disconnects += 1;
        match s.conn {
            Some(conn) => {
                actions.push(Action::Close {
                    conn,
                    reason: reason::QUOTA_EXCEEDED,
                });
                self.end_connection(sid, Ending::Abnormal, now, actions);
            }
            None => self.end_session(sid, now, actions),
        }
    }
}
