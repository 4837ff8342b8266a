//! One connection's MQTT conversation as the device has it, without I/O: bytes from the
//! gateway in, packets to send and deadlines out.
//!
//! A [`DeviceSession`] writes CONNECT and waits for CONNACK, writes SUBSCRIBE for the
//! device's commands and certificate messages and waits for SUBACK; then it hands commands to
//! the [`App`] and queues their replies and acknowledgements, publishes telemetry (QoS 1
//! through the [`Outbox`], which outlives the session), pings within the keep-alive and runs a
//! certificate rotation when the gateway asks for one ([`rotation`]). Time comes in as
//! `now_ms` arguments: [`DeviceSession::poll`] says when it next wants to be asked
//! ([`Step::Wait`]) and turns a missing CONNACK, SUBACK or PINGRESP into [`Error::Timeout`].
//! A renewed identity ends the session as an ordinary [`Outcome`].
//!
//! The pump that moves these bytes over TLS is [`crate::device::run_connection`].

use heapless::{Deque, String, Vec};
use rand_core::CryptoRngCore;

use crate::bundle::Bundle;
use crate::device::{App, Options, Stats, MAX_PACKET, MAX_PAYLOAD, MAX_TOPIC};
use crate::mqtt::{
    Connect, ConnectReturnCode, Control, Emit, Packet, Publish, QoS, SubAckCode, Subscribe,
    SubscribeFilters,
};
use crate::outbox::Outbox;
use crate::Error;

mod rotation;
#[cfg(test)]
mod tests;

use rotation::Rotation;

/// How a session ends when nothing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A renewed identity bundle of `len` bytes (the next `generation`) is in the bundle
    /// buffer the session was given: store it and connect with it.
    Renewed { generation: u32, len: usize },
}

impl core::fmt::Display for Outcome {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Outcome::Renewed { len, .. } => {
                write!(f, "certificate renewed ({len}-byte bundle to store)")
            }
        }
    }
}

/// What the pump does after [`DeviceSession::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Write the first this many bytes of the output buffer to the gateway, then poll again.
    Send(usize),
    /// Nothing to send before `until_ms`: poll again then, or when bytes arrive.
    Wait { until_ms: u64 },
    /// The session is over.
    Done(Outcome),
}

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// CONNECT not written yet.
    Connect,
    /// CONNECT written; CONNACK due by `deadline`.
    ConnAck {
        deadline: u64,
    },
    /// Session accepted; SUBSCRIBE written (`sent`) or not yet, SUBACK due by `deadline`.
    SubAck {
        sent: bool,
        deadline: u64,
    },
    /// Subscribed: telemetry, commands, pings, rotation.
    Running,
    Done(Outcome),
}

/// Packet id of the one SUBSCRIBE.
const SUBSCRIBE_ID: u16 = 1;
/// The longest topic suffix the device uses (see [`Topics`]).
const LONGEST_SUFFIX: &str = "cert/status/get";

/// The device's MQTT session over one connection.
pub struct DeviceSession<'a, const Q: usize> {
    bundle: &'a Bundle<'a>,
    options: Options,
    topics: Topics,
    outbox: &'a mut Outbox<Q, MAX_PAYLOAD>,
    stats: &'a mut Stats,
    phase: Phase,
    next_telemetry: u64,
    next_ping: u64,
    ping_outstanding: bool,
    seq: u32,
    /// PUBACKs owed to the gateway, oldest first.
    pubacks: Deque<u16, 8>,
    /// Command replies not yet published, oldest first.
    replies: Deque<Vec<u8, MAX_PAYLOAD>, 4>,
    rotation: Rotation<'a>,
}

impl<'a, const Q: usize> DeviceSession<'a, Q> {
    /// A session for `bundle`'s identity. QoS 1 telemetry goes through `outbox`, which the
    /// caller keeps across connections (what the gateway has not acknowledged is sent again
    /// with DUP); a renewed identity bundle is written into `bundle_out`.
    pub fn new(
        bundle: &'a Bundle<'a>,
        options: Options,
        outbox: &'a mut Outbox<Q, MAX_PAYLOAD>,
        stats: &'a mut Stats,
        bundle_out: &'a mut [u8],
    ) -> Result<Self, Error> {
        Ok(DeviceSession {
            bundle,
            options,
            topics: Topics::new(bundle)?,
            outbox,
            stats,
            phase: Phase::Connect,
            next_telemetry: 0,
            next_ping: 0,
            ping_outstanding: false,
            seq: 0,
            pubacks: Deque::new(),
            replies: Deque::new(),
            rotation: Rotation::new(bundle_out),
        })
    }

    /// Takes bytes from the gateway: handles every whole packet at the front of `bytes` and
    /// returns how many bytes those were (the rest begins a packet not yet whole).
    pub fn received<A: App>(
        &mut self,
        bytes: &[u8],
        now_ms: u64,
        app: &mut A,
    ) -> Result<usize, Error> {
        let mut used = 0;
        while let Some((packet, n)) =
            Packet::parse_from_server(&bytes[used..], MAX_PACKET).map_err(Error::Mqtt)?
        {
            used += n;
            self.handle(packet, now_ms, app)?;
        }
        Ok(used)
    }

    /// Handles one packet from the gateway.
    pub fn handle<A: App>(
        &mut self,
        packet: Packet<'_>,
        now_ms: u64,
        app: &mut A,
    ) -> Result<(), Error> {
        match self.phase {
            Phase::Connect => Err(Error::Protocol("expected CONNACK")),
            Phase::ConnAck { deadline } => self.on_connack(packet, deadline),
            Phase::SubAck { .. } => self.on_suback(packet, now_ms, app),
            Phase::Running => self.on_packet(packet, app),
            Phase::Done(_) => Ok(()),
        }
    }

    /// The next thing to do at `now_ms`: a packet written into `out` to send, or how long
    /// to wait. `rng` makes the key of a certificate rotation.
    pub fn poll<A: App, G: CryptoRngCore>(
        &mut self,
        now_ms: u64,
        out: &mut [u8],
        app: &mut A,
        rng: &mut G,
    ) -> Result<Step, Error> {
        match self.phase {
            Phase::Connect => {
                let n = self.connect().emit(out).map_err(Error::Mqtt)?;
                let deadline = now_ms.saturating_add(self.options.ack_timeout_ms);
                self.phase = Phase::ConnAck { deadline };
                Ok(Step::Send(n))
            }
            Phase::SubAck {
                sent: false,
                deadline,
            } => {
                let (commands, cert) = (self.topics.name("cmd/#"), self.topics.name("cert/#"));
                let filters = [
                    (commands.as_str(), QoS::AtLeastOnce),
                    (cert.as_str(), QoS::AtMostOnce),
                ];
                let subscribe = Subscribe {
                    packet_id: SUBSCRIBE_ID,
                    filters: SubscribeFilters::from_slice(&filters),
                };
                let n = subscribe.emit(out).map_err(Error::Mqtt)?;
                self.phase = Phase::SubAck {
                    sent: true,
                    deadline,
                };
                Ok(Step::Send(n))
            }
            Phase::ConnAck { deadline } | Phase::SubAck { deadline, .. } => {
                if now_ms >= deadline {
                    return Err(Error::Timeout("no acknowledgement from the gateway"));
                }
                Ok(Step::Wait { until_ms: deadline })
            }
            Phase::Running => self.poll_running(now_ms, out, app, rng),
            Phase::Done(outcome) => Ok(Step::Done(outcome)),
        }
    }

    fn connect(&self) -> Connect<'a> {
        Connect {
            clean_session: true,
            keep_alive: self.options.keep_alive_secs,
            client_id: self.bundle.device_id,
            will: None,
            username: None,
            password: None,
        }
    }

    fn on_connack(&mut self, packet: Packet<'_>, deadline: u64) -> Result<(), Error> {
        let Packet::ConnAck(ack) = packet else {
            return Err(Error::Protocol("expected CONNACK"));
        };
        if ack.code != ConnectReturnCode::Accepted {
            return Err(Error::Refused(ack.code));
        }
        self.stats.connects += 1;
        self.phase = Phase::SubAck {
            sent: false,
            deadline,
        };
        Ok(())
    }

    fn on_suback<A: App>(
        &mut self,
        packet: Packet<'_>,
        now_ms: u64,
        app: &mut A,
    ) -> Result<(), Error> {
        let Packet::SubAck(ack) = packet else {
            return Err(Error::Protocol("expected SUBACK"));
        };
        if ack.return_codes.iter().any(|c| c == SubAckCode::Failure) {
            return Err(Error::Protocol("gateway refused the command subscription"));
        }
        self.phase = Phase::Running;
        self.next_telemetry = now_ms;
        self.next_ping = now_ms.saturating_add(self.keep_alive_ms());
        self.rotation.ask = self.options.rotation;
        app.on_connected();
        self.outbox.reconnected();
        Ok(())
    }

    /// A packet once subscribed.
    fn on_packet<A: App>(&mut self, packet: Packet<'_>, app: &mut A) -> Result<(), Error> {
        match packet {
            Packet::Publish(p) => {
                let full = match self.topics.cert_leaf(p.topic) {
                    Some(leaf) => {
                        if let Some(done) =
                            self.rotation.on_message(leaf, p.payload, self.bundle, app)
                        {
                            self.phase = Phase::Done(done);
                        }
                        "too many unacknowledged messages"
                    }
                    None => {
                        self.command(p.topic, p.payload, app);
                        "too many unacknowledged commands"
                    }
                };
                if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                    self.pubacks
                        .push_back(id)
                        .map_err(|_| Error::Protocol(full))?;
                }
                Ok(())
            }
            Packet::PubAck(id) => {
                if self.outbox.acked(id) {
                    self.stats.acked += 1;
                }
                Ok(())
            }
            Packet::PingResp => {
                self.ping_outstanding = false;
                Ok(())
            }
            Packet::SubAck(_) | Packet::UnsubAck(_) => Ok(()),
            _ => Err(Error::Protocol("unexpected packet from the gateway")),
        }
    }

    /// A command: the app's reply, if any, is published on `…/ack` (dropped when four are
    /// already waiting).
    fn command<A: App>(&mut self, topic: &str, payload: &[u8], app: &mut A) {
        self.stats.commands += 1;
        let mut reply = [0u8; MAX_PAYLOAD];
        if let Some(n) = app.on_command(topic, payload, &mut reply) {
            let reply = Vec::from_slice(&reply[..n.min(MAX_PAYLOAD)]).unwrap_or_default();
            let _ = self.replies.push_back(reply);
        }
    }

    /// Subscribed: rotation messages, acknowledgements, replies, telemetry, the outbox, then
    /// the keep-alive ping, in that order.
    fn poll_running<A: App, G: CryptoRngCore>(
        &mut self,
        now_ms: u64,
        out: &mut [u8],
        app: &mut A,
        rng: &mut G,
    ) -> Result<Step, Error> {
        let sent = self
            .rotation
            .poll(&self.topics, self.bundle, out, app, rng)?;
        if let Some(n) = sent {
            return Ok(Step::Send(n));
        }
        if let Some(id) = self.pubacks.pop_front() {
            return send(&Control::PubAck(id), out);
        }
        if let Some(reply) = self.replies.pop_front() {
            return Ok(Step::Send(self.topics.publish("ack", &reply, out)?));
        }
        if self.options.telemetry_period_ms > 0 && now_ms >= self.next_telemetry {
            self.next_telemetry = now_ms.saturating_add(self.options.telemetry_period_ms);
            if let Some(n) = self.telemetry(app, out)? {
                return Ok(Step::Send(n));
            }
        }
        if let Some(due) = self.outbox.next_due() {
            let topic = self.topics.name("telemetry");
            let publish = Publish {
                dup: due.dup,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: &topic,
                packet_id: Some(due.packet_id),
                payload: due.payload,
            };
            self.stats.published += 1;
            return send(&publish, out);
        }
        let keep_alive_ms = self.keep_alive_ms();
        if keep_alive_ms > 0 && now_ms >= self.next_ping {
            if self.ping_outstanding {
                return Err(Error::Timeout("no PINGRESP within the keep-alive"));
            }
            self.ping_outstanding = true;
            self.next_ping = now_ms.saturating_add(keep_alive_ms);
            return send(&Control::PingReq, out);
        }
        Ok(Step::Wait {
            until_ms: self.wake_at(),
        })
    }

    /// The app's next reading: written into `out` at QoS 0 (its length), or queued in the
    /// outbox at QoS 1 (`None`).
    fn telemetry<A: App>(&mut self, app: &mut A, out: &mut [u8]) -> Result<Option<usize>, Error> {
        let mut payload = [0u8; MAX_PAYLOAD];
        let len = app.telemetry(self.seq, &mut payload).min(MAX_PAYLOAD);
        self.seq = self.seq.wrapping_add(1);
        if self.options.telemetry_qos == QoS::AtMostOnce {
            let n = self.topics.publish("telemetry", &payload[..len], out)?;
            self.stats.published += 1;
            return Ok(Some(n));
        }
        // Fits by construction (len <= MAX_PAYLOAD): the error cannot happen.
        let _ = self.outbox.push(&payload[..len]);
        Ok(None)
    }

    fn keep_alive_ms(&self) -> u64 {
        u64::from(self.options.keep_alive_secs) * 1000
    }

    /// When the next telemetry reading or ping is due (`u64::MAX`: never).
    fn wake_at(&self) -> u64 {
        let telemetry = if self.options.telemetry_period_ms > 0 {
            self.next_telemetry
        } else {
            u64::MAX
        };
        if self.keep_alive_ms() > 0 {
            telemetry.min(self.next_ping)
        } else {
            telemetry
        }
    }
}

/// Writes `packet` into `out`: send it.
fn send(packet: &impl Emit, out: &mut [u8]) -> Result<Step, Error> {
    packet.emit(out).map(Step::Send).map_err(Error::Mqtt)
}

/// The device's topics, `tenants/{tenant}/devices/{id}/…`, built when used.
struct Topics {
    prefix: String<MAX_TOPIC>,
}

impl Topics {
    fn new(b: &Bundle<'_>) -> Result<Topics, Error> {
        let mut prefix = String::new();
        crate::topic::device_prefix(&mut prefix, b.tenant, b.device_id)
            .map_err(|_| Error::Protocol("topic longer than MAX_TOPIC"))?;
        if prefix.len() + LONGEST_SUFFIX.len() > MAX_TOPIC {
            return Err(Error::Protocol("topic longer than MAX_TOPIC"));
        }
        Ok(Topics { prefix })
    }

    /// The device's topic `suffix` (fits: [`Topics::new`] checked the longest).
    fn name(&self, suffix: &str) -> String<MAX_TOPIC> {
        let mut topic = self.prefix.clone();
        let _ = topic.push_str(suffix);
        topic
    }

    /// `leaf` for the device's `…/cert/{leaf}` topics.
    fn cert_leaf<'t>(&self, topic: &'t str) -> Option<&'t str> {
        topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix("cert/")
    }

    /// Writes a QoS 0 PUBLISH of `payload` to topic `suffix` into `out`; returns its length.
    fn publish(&self, suffix: &str, payload: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        let topic = self.name(suffix);
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: &topic,
            packet_id: None,
            payload,
        };
        publish.emit(out).map_err(Error::Mqtt)
    }
}
