//! QoS 1 messages waiting for the gateway's PUBACK, kept across reconnects.
//!
//! A bounded queue of `N` messages of up to `M` bytes: when it is full the oldest message is
//! dropped (and counted) to make room. Each message gets its packet id when queued; after a
//! reconnect every unacknowledged message is sent again with the DUP flag.

use heapless::{Deque, Vec};

struct Entry<const M: usize> {
    id: u16,
    /// Sent on the current connection.
    sent: bool,
    /// Sent on some connection before (a resend carries DUP).
    sent_before: bool,
    payload: Vec<u8, M>,
}

/// The outbox: `N` messages of at most `M` bytes.
pub struct Outbox<const N: usize, const M: usize> {
    entries: Deque<Entry<M>, N>,
    next_id: u16,
    dropped: u32,
}

/// A message that does not fit in an outbox slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// One message to send now.
pub struct Due<'a> {
    pub packet_id: u16,
    pub dup: bool,
    pub payload: &'a [u8],
}

impl<const N: usize, const M: usize> Outbox<N, M> {
    pub const fn new() -> Self {
        Outbox {
            entries: Deque::new(),
            next_id: 1,
            dropped: 0,
        }
    }

    /// Queues a message; when full, the oldest one is dropped first.
    pub fn push(&mut self, payload: &[u8]) -> Result<(), TooLarge> {
        let payload = Vec::from_slice(payload).map_err(|_| TooLarge)?;
        if self.entries.is_full() {
            self.entries.pop_front();
            self.dropped = self.dropped.saturating_add(1);
        }
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        // Cannot fail: a slot was freed above when full.
        let _ = self.entries.push_back(Entry {
            id,
            sent: false,
            sent_before: false,
            payload,
        });
        Ok(())
    }

    /// The next message not yet sent on this connection, now marked sent.
    pub fn next_due(&mut self) -> Option<Due<'_>> {
        let e = self.entries.iter_mut().find(|e| !e.sent)?;
        e.sent = true;
        let dup = core::mem::replace(&mut e.sent_before, true);
        Some(Due {
            packet_id: e.id,
            dup,
            payload: &e.payload,
        })
    }

    /// The gateway acknowledged `packet_id`: forget it. False if it was not waiting.
    pub fn acked(&mut self, packet_id: u16) -> bool {
        let mut found = false;
        for _ in 0..self.entries.len() {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            if e.id == packet_id && !found {
                found = true;
            } else {
                // Cannot fail: one entry was just taken out.
                let _ = self.entries.push_back(e);
            }
        }
        found
    }

    /// A new connection: everything unacknowledged is due again.
    pub fn reconnected(&mut self) {
        for e in self.entries.iter_mut() {
            e.sent = false;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Messages dropped because the outbox was full.
    pub fn dropped(&self) -> u32 {
        self.dropped
    }
}

impl<const N: usize, const M: usize> Default for Outbox<N, M> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_outbox_drops_the_oldest_and_counts() {
        let mut o: Outbox<3, 8> = Outbox::new();
        for p in [b"a", b"b", b"c", b"d", b"e"] {
            o.push(p).unwrap();
        }
        assert_eq!((o.len(), o.dropped()), (3, 2));
        let first = o.next_due().unwrap();
        assert_eq!(
            (first.payload, first.packet_id, first.dup),
            (&b"c"[..], 3, false)
        );
        assert_eq!(o.push(&[0; 9]), Err(TooLarge));
    }

    #[test]
    fn unacknowledged_messages_are_resent_with_dup_after_a_reconnect() {
        let mut o: Outbox<4, 8> = Outbox::new();
        o.push(b"one").unwrap();
        o.push(b"two").unwrap();
        assert_eq!(o.next_due().unwrap().packet_id, 1);
        assert_eq!(o.next_due().unwrap().packet_id, 2);
        assert!(o.next_due().is_none());
        assert!(o.acked(1));
        assert!(!o.acked(1), "an unknown id is ignored");
        o.reconnected();
        let again = o.next_due().unwrap();
        assert_eq!(
            (again.packet_id, again.dup, again.payload),
            (2, true, &b"two"[..])
        );
        assert!(o.next_due().is_none());
        assert!(o.acked(2));
        assert!(o.is_empty());
    }

    #[test]
    fn packet_ids_skip_zero_when_they_wrap() {
        let mut o: Outbox<2, 1> = Outbox::new();
        o.next_id = u16::MAX;
        o.push(b"x").unwrap();
        o.push(b"y").unwrap();
        assert_eq!(o.next_due().unwrap().packet_id, u16::MAX);
        assert_eq!(o.next_due().unwrap().packet_id, 1);
    }
}
