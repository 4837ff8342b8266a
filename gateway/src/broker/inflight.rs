//! Packet-id state: the outgoing in-flight window (QoS 1 and 2 publishes sent and not yet
//! acknowledged, in send order) and the incoming QoS 1/2 flows not yet finished.

use std::collections::VecDeque;

use fleet_protocol::mqtt::QoS;

use super::backend::Ticket;
use super::queue::Queued;

/// Where an outgoing QoS 1 or 2 flow stands.
#[derive(Debug)]
pub(super) enum Stage {
    /// PUBLISH sent; awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent(Queued),
    /// PUBREC received and PUBREL sent; awaiting PUBCOMP. The message is no longer needed.
    Released,
}

#[derive(Debug)]
pub(super) struct Flight {
    pub id: u16,
    pub stage: Stage,
}

/// What a PUBREC did to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PubRecOutcome {
    /// The QoS 2 flow moved on: send PUBREL.
    Release,
    /// A repeated PUBREC for a flow already released: send PUBREL again.
    Repeat,
    /// A failure reason ended the flow.
    Abandoned,
    /// No QoS 2 PUBLISH with this id is in flight.
    Unknown,
}

/// Outgoing flows in send order; empty, it holds no allocation.
#[derive(Debug, Default)]
pub(super) struct Window {
    flights: VecDeque<Flight>,
    last_id: u16,
}

impl Window {
    pub fn len(&self) -> usize {
        self.flights.len()
    }

    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.flights.capacity()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Flight> {
        self.flights.iter()
    }

    /// The next packet id after the last one given, wrapping from 65,535 to 1 and skipping
    /// ids still in flight; `None` only when all 65,535 are.
    pub fn allocate(&mut self) -> Option<u16> {
        let mut id = self.last_id;
        for _ in 0..u16::MAX {
            id = id.checked_add(1).unwrap_or(1);
            if !self.flights.iter().any(|f| f.id == id) {
                self.last_id = id;
                return Some(id);
            }
        }
        None
    }

    pub fn push(&mut self, id: u16, item: Queued) {
        self.flights.push_back(Flight {
            id,
            stage: Stage::Sent(item),
        });
    }

    /// PUBACK: ends the QoS 1 flow `id`; false if there is none.
    pub fn puback(&mut self, id: u16) -> bool {
        self.remove_where(
            id,
            |s| matches!(s, Stage::Sent(q) if q.qos == QoS::AtLeastOnce),
        )
    }

    /// PUBREC with `failed` when its reason is 0x80 or above.
    pub fn pubrec(&mut self, id: u16, failed: bool) -> PubRecOutcome {
        let Some(at) = self.flights.iter().position(|f| f.id == id) else {
            return PubRecOutcome::Unknown;
        };
        match &self.flights[at].stage {
            Stage::Released => PubRecOutcome::Repeat,
            Stage::Sent(q) if q.qos != QoS::ExactlyOnce => PubRecOutcome::Unknown,
            Stage::Sent(_) if failed => {
                self.remove_at(at);
                PubRecOutcome::Abandoned
            }
            Stage::Sent(_) => {
                self.flights[at].stage = Stage::Released;
                PubRecOutcome::Release
            }
        }
    }

    /// PUBCOMP: ends the released QoS 2 flow `id`; false if there is none.
    pub fn pubcomp(&mut self, id: u16) -> bool {
        self.remove_where(id, |s| matches!(s, Stage::Released))
    }

    /// Empties the window and frees its memory; returns how many messages were unacknowledged
    /// (flows past PUBREC were delivered).
    pub fn clear(&mut self) -> usize {
        let n = self
            .flights
            .iter()
            .filter(|f| matches!(f.stage, Stage::Sent(_)))
            .count();
        *self = Window {
            last_id: self.last_id,
            ..Window::default()
        };
        n
    }

    fn remove_where(&mut self, id: u16, stage: impl Fn(&Stage) -> bool) -> bool {
        match self
            .flights
            .iter()
            .position(|f| f.id == id && stage(&f.stage))
        {
            Some(at) => {
                self.remove_at(at);
                true
            }
            None => false,
        }
    }

    fn remove_at(&mut self, at: usize) {
        self.flights.remove(at);
        if self.flights.is_empty() && self.flights.capacity() > 8 {
            self.flights = VecDeque::new();
        }
    }
}

/// An incoming QoS 1 or 2 flow the broker has not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Incoming {
    /// Handed to the backend; the acknowledgement waits for [`super::Broker::persisted`].
    Storing(Ticket),
    /// QoS 2: PUBREC sent, awaiting PUBREL. A repeated PUBLISH with this id is not delivered
    /// again (§4.3.3, [MQTT-4.3.3-10] in version 5).
    Received,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::message::Message;
    use std::sync::Arc;

    fn item(qos: QoS) -> Queued {
        Queued {
            message: Arc::new(Message::new("t", &b"p"[..], qos, false)),
            qos,
            retain: false,
            subscription_ids: Box::new([]),
        }
    }

    #[test]
    fn ids_wrap_and_skip_those_in_flight() {
        // §2.2.1: a packet id is non-zero and not in use by another flow of this side.
        let mut w = Window {
            last_id: 65_533,
            ..Window::default()
        };
        w.push(65_535, item(QoS::AtLeastOnce));
        w.push(1, item(QoS::AtLeastOnce));
        assert_eq!(w.allocate(), Some(65_534));
        assert_eq!(
            w.allocate(),
            Some(2),
            "65535 and 1 are in flight, 0 is never used"
        );
        assert!(w.puback(65_535));
        assert_eq!(w.allocate(), Some(3));
    }

    #[test]
    fn qos2_stages() {
        let mut w = Window::default();
        w.push(4, item(QoS::ExactlyOnce));
        w.push(5, item(QoS::AtLeastOnce));
        assert!(!w.puback(4), "a QoS 2 flow is not ended by PUBACK");
        assert_eq!(w.pubrec(5, false), PubRecOutcome::Unknown);
        assert_eq!(w.pubrec(4, false), PubRecOutcome::Release);
        assert_eq!(w.pubrec(4, false), PubRecOutcome::Repeat);
        assert_eq!(w.len(), 2, "released flows hold their slot until PUBCOMP");
        assert!(w.pubcomp(4) && !w.pubcomp(4));
        w.push(6, item(QoS::ExactlyOnce));
        assert_eq!(w.pubrec(6, true), PubRecOutcome::Abandoned);
        assert_eq!(
            w.clear(),
            1,
            "only the QoS 1 message was never acknowledged"
        );
        assert_eq!(w.capacity(), 0);
    }
}
