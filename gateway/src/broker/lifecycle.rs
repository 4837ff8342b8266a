//! Session lifecycle: connect (new, resumed, taken over), disconnect, session expiry, wills
//! and their delays.
//!
//! A session is kept after its connection ends for its Session Expiry Interval (3.1.1:
//! CleanSession=0 means "kept", CleanSession=1 means 0), receiving messages into its bounded
//! queue meanwhile, and is discarded when the interval passes [MQTT-3.1.2-23].
//!
//! A will fires when its connection ends without a normal DISCONNECT (v5 DISCONNECT 0x04
//! asks for it explicitly), after its Will Delay Interval, or when the session ends if that
//! comes first; a connection that resumes the session in the meantime cancels it
//! [MQTT-3.1.3-9]. A takeover that resumes the session is such a resumption; one that
//! starts clean ends the old session, so the old will fires.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_protocol::mqtt::v5::reason;

use super::action::{Action, ConnId, DropReason};
use super::backend::{Admission, Backend};
use super::message::Will;
use super::session::{DeliveryFilter, Session};
use super::{Broker, Handle, SessionId, Timer};

/// What a CONNECT asks of the broker (after the session rules accepted it).
pub struct ConnectRequest {
    pub client_id: Arc<str>,
    pub conn: ConnId,
    /// Clean Start (3.1.1: CleanSession): discard any existing session.
    pub clean_start: bool,
    /// Seconds the session is kept after the connection ends (`u32::MAX`: never ends).
    pub session_expiry: u32,
    pub will: Option<Will>,
    /// The client's Receive Maximum (`None`: the configured default, for 3.1.1).
    pub receive_maximum: Option<u16>,
    pub delivery_filter: Option<Box<dyn DeliveryFilter>>,
}

impl ConnectRequest {
    /// A 3.1.1 CONNECT: CleanSession=1 is a fresh session that ends with the connection;
    /// CleanSession=0 resumes any session and keeps it (up to the configured cap).
    pub fn v311(client_id: &str, conn: ConnId, clean_session: bool) -> ConnectRequest {
        ConnectRequest {
            client_id: client_id.into(),
            conn,
            clean_start: clean_session,
            session_expiry: if clean_session { 0 } else { u32::MAX },
            will: None,
            receive_maximum: None,
            delivery_filter: None,
        }
    }

    /// A version 5 CONNECT: Clean Start and the Session Expiry Interval (0 when absent). Its
    /// Receive Maximum is 65,535 unless [`ConnectRequest::with_receive_maximum`] says
    /// otherwise (§3.1.2.11.3).
    pub fn v5(
        client_id: &str,
        conn: ConnId,
        clean_start: bool,
        session_expiry: u32,
    ) -> ConnectRequest {
        ConnectRequest {
            receive_maximum: Some(u16::MAX),
            session_expiry,
            ..ConnectRequest::v311(client_id, conn, clean_start)
        }
    }

    pub fn with_will(mut self, will: Will) -> Self {
        self.will = Some(will);
        self
    }

    pub fn with_receive_maximum(mut self, receive_maximum: u16) -> Self {
        self.receive_maximum = Some(receive_maximum);
        self
    }

    pub fn with_filter(mut self, filter: impl DeliveryFilter + 'static) -> Self {
        self.delivery_filter = Some(Box::new(filter));
        self
    }
}

/// The answer to a CONNECT.
#[derive(Debug)]
pub struct Connected {
    pub handle: Handle,
    /// For CONNACK.
    pub session_present: bool,
    /// The Session Expiry Interval applied (a v5 CONNACK states it when it differs from the
    /// request).
    pub session_expiry: u32,
    /// To carry out after sending CONNACK: closing a taken-over connection, then the resent
    /// and queued messages for the new one.
    pub actions: Vec<Action>,
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// DISCONNECT (v5 reason 0x00): the will is discarded [MQTT-3.1.2-10].
    Normal,
    /// Version 5 DISCONNECT 0x04, "disconnect with will message".
    WithWill,
    /// No DISCONNECT: connection lost, keep-alive timeout, protocol error, kicked.
    Abnormal,
}

fn after(now: Instant, secs: u32) -> Option<Instant> {
    now.checked_add(Duration::from_secs(u64::from(secs)))
}

impl<B: Backend> Broker<B> {
    /// Opens (or resumes) the session of `request.client_id` for a new connection. A live
    /// connection of the same client id is closed with 0x8E [MQTT-3.1.4-3]. A resumed session
    /// resends its in-flight messages and starts its queue.
    pub fn connect(&mut self, request: ConnectRequest, now: Instant) -> Connected {
        let mut actions = Vec::new();
        let expiry = request.session_expiry.min(self.config.max_session_expiry);
        let receive_maximum = request
            .receive_maximum
            .unwrap_or(self.config.default_receive_maximum.get())
            .clamp(1, self.config.max_inflight.get());
        let mut resumed = None;
        if let Some(sid) = self.by_client.get(&request.client_id).copied() {
            if let Some(old) = self.sessions.get_mut(&sid).and_then(|s| s.conn.take()) {
                actions.push(Action::Close {
                    conn: old,
                    reason: reason::SESSION_TAKEN_OVER,
                });
                self.stats.sessions_taken_over += 1;
            }
            let kept = self.sessions.get(&sid).is_some_and(|s| s.expiry > 0);
            if kept && !request.clean_start {
                resumed = Some(sid);
            } else {
                self.end_session(sid, now, &mut actions);
            }
        }
        let sid = match resumed {
            Some(sid) => sid,
            None => self.new_session(&request.client_id),
        };
        self.clear_timers(sid);
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.conn = Some(request.conn);
            s.paused = false;
            s.expiry = expiry;
            // Replacing an armed will cancels it: the session resumed in time.
            s.will = request.will.map(Box::new);
            s.receive_maximum = receive_maximum;
            s.delivery_filter = request.delivery_filter;
            s.resend(now, &mut actions);
            s.pump(now, &mut actions, &mut self.stats);
        }
        self.settle(now, &mut actions);
        Connected {
            handle: Handle {
                session: sid,
                conn: request.conn,
            },
            session_present: resumed.is_some(),
            session_expiry: expiry,
            actions,
        }
    }

    /// The connection of `handle` ended. A version 5 DISCONNECT may change the Session Expiry
    /// Interval (`session_expiry`); from 0 to anything else is a protocol error answered with
    /// 0x82 [MQTT-3.14.2-2], and the session still ends.
    pub fn disconnect(
        &mut self,
        handle: Handle,
        ending: Ending,
        session_expiry: Option<u32>,
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let cap = self.config.max_session_expiry;
        let Some(s) = self
            .sessions
            .get_mut(&handle.session)
            .filter(|s| s.conn == Some(handle.conn))
        else {
            return actions;
        };
        match session_expiry {
            Some(e) if s.expiry == 0 && e != 0 => actions.push(Action::Close {
                conn: handle.conn,
                reason: reason::PROTOCOL_ERROR,
            }),
            Some(e) => s.expiry = e.min(cap),
            None => {}
        }
        self.end_connection(handle.session, ending, now, &mut actions);
        self.settle(now, &mut actions);
        actions
    }

    /// Publishes the wills whose delay passed and ends the sessions whose expiry passed.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        self.backend.tick(now);
        while let Some(&(at, sid, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(s) = self.sessions.get_mut(&sid) else {
                continue;
            };
            match timer {
                Timer::Will => {
                    s.will_at = None;
                    let (will, client_id) = (s.will.take(), s.client_id.clone());
                    if let Some(will) = will {
                        self.publish_will(*will, &client_id, now);
                    }
                }
                Timer::Expiry => {
                    s.expires_at = None;
                    self.stats.sessions_expired += 1;
                    self.end_session(sid, now, &mut actions);
                }
            }
        }
        self.settle(now, &mut actions);
        actions
    }

    /// The session's connection is gone (the broker already told the caller, or the caller
    /// told the broker): end the session, or keep it with its expiry and will timers.
    pub(super) fn end_connection(
        &mut self,
        sid: SessionId,
        ending: Ending,
        now: Instant,
        actions: &mut Vec<Action>,
    ) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        s.conn = None;
        s.paused = false;
        if ending == Ending::Normal {
            s.will = None;
        }
        if s.expiry == 0 {
            self.end_session(sid, now, actions);
            return;
        }
        let expires_at = (s.expiry != u32::MAX)
            .then(|| after(now, s.expiry))
            .flatten();
        if let Some(at) = expires_at {
            s.expires_at = Some(at);
            self.timers.insert((at, sid, Timer::Expiry));
        }
        match s.will.as_ref().map(|w| w.delay) {
            Some(0) => {
                let (will, client_id) = (s.will.take(), s.client_id.clone());
                if let Some(will) = will {
                    self.publish_will(*will, &client_id, now);
                }
            }
            Some(delay) => {
                // A delay past the expiry is cut short by it: the session's end publishes.
                let at = after(now, delay).filter(|&at| expires_at.is_none_or(|e| at < e));
                if let Some(at) = at {
                    s.will_at = Some(at);
                    self.timers.insert((at, sid, Timer::Will));
                }
            }
            None => {}
        }
    }

    /// Discards a session: subscriptions, queue, in-flight and pending state go (counted),
    /// and its will, if one is armed, is published.
    pub(super) fn end_session(&mut self, sid: SessionId, now: Instant, actions: &mut Vec<Action>) {
        self.clear_timers(sid);
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        if self.by_client.get(&s.client_id) == Some(&sid) {
            self.by_client.remove(&s.client_id);
        }
        for filter in &s.filters {
            if self.tree.remove(filter, sid).is_some() {
                self.backend.unsubscribed(filter);
            }
        }
        for state in s.incoming.values() {
            if let super::inflight::Incoming::Storing(ticket) = state {
                self.pending.remove(ticket);
            }
        }
        let lost = s.discard();
        self.stats
            .count_drop(actions, Some(&s.client_id), DropReason::SessionEnded, lost);
        if let Some(will) = s.will.take() {
            self.publish_will(*will, &s.client_id, now);
        }
    }

    /// Publishes a will as if its client had: through the backend, then (at the end of the
    /// current call, see [`Broker::settle`]) to the matching sessions at min(will QoS,
    /// granted QoS).
    fn publish_will(&mut self, will: Will, client_id: &Arc<str>, now: Instant) {
        let mut message = will.message;
        message.stamp(client_id, now);
        let message = Arc::new(message);
        self.stats.wills_published += 1;
        let ticket = self.ticket();
        if self.backend.admit(ticket, &message, now) == Admission::Now {
            self.due_wills.push_back(message);
        }
    }

    fn new_session(&mut self, client_id: &Arc<str>) -> SessionId {
        let sid = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(sid, Session::new(client_id.clone()));
        self.by_client.insert(client_id.clone(), sid);
        sid
    }

    fn clear_timers(&mut self, sid: SessionId) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        if let Some(at) = s.will_at.take() {
            self.timers.remove(&(at, sid, Timer::Will));
        }
        if let Some(at) = s.expires_at.take() {
            self.timers.remove(&(at, sid, Timer::Expiry));
        }
    }
}
