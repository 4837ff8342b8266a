//! What a device does between connections, without I/O: which identity to connect with
//! (slots A/B), confirming a renewed identity once the gateway accepts it, rolling it back
//! when it keeps failing, storing a renewed identity, and how long to wait before the next
//! attempt (exponential backoff with full jitter).
//!
//! The tokio simulation ([`crate::sim`]) and the embassy boards (`crate::board`) both run
//! this one supervisor: they connect with [`Supervisor::identity`], pass their app through
//! [`Supervised`] so an accepted session confirms the identity, and after each connection
//! act on [`Supervisor::ended`]'s [`Decision`].

use rand_core::RngCore;

use crate::backoff::Backoff;
use crate::bundle::{Bundle, BundleError};
use crate::device::{App, RotationEvent};
use crate::session::Outcome;
use crate::slots::{self, SlotStore, Slots};
use crate::Error;

/// Failed connections of a renewed identity before the device rolls back to the previous one.
pub const ROLLBACK_AFTER: u32 = 3;

/// How a connection ended, as the supervisor needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending<'a> {
    /// The gateway never accepted a session (no TCP, TLS refused, CONNACK refused, …).
    Failed,
    /// The gateway accepted a session, which then ended.
    Closed,
    /// A session handed over this renewed identity bundle.
    Renewed(&'a [u8]),
}

impl<'a> Ending<'a> {
    /// From a connection's result: `accepted` when the gateway accepted its CONNECT;
    /// `bundle_out` holds a renewed bundle (see [`Outcome::Renewed`]).
    pub fn of(accepted: bool, ended: &Result<Outcome, Error>, bundle_out: &'a [u8]) -> Self {
        match ended {
            Ok(Outcome::Renewed { len, .. }) => {
                Ending::Renewed(&bundle_out[..(*len).min(bundle_out.len())])
            }
            _ if accepted => Ending::Closed,
            _ => Ending::Failed,
        }
    }
}

/// When to connect again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// At once (with a renewed identity).
    Now,
    /// After `delay_ms`; this is retry `attempt` (0: the first after a session).
    After { delay_ms: u32, attempt: u32 },
}

/// What the supervisor decided after a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What happened to the identities: rolled back, renewed identity stored or not.
    pub event: Option<RotationEvent<'static>>,
    pub next: Next,
}

/// The reconnect policy and the identity slots.
pub struct Supervisor<S> {
    slots: Slots<S>,
    backoff: Backoff,
    attempt: u32,
}

impl<S: SlotStore> Supervisor<S> {
    /// Identities in `store`; a renewed identity is rolled back after [`ROLLBACK_AFTER`]
    /// failed connections.
    pub fn new(store: S, backoff: Backoff) -> Self {
        Supervisor {
            slots: Slots::new(store, ROLLBACK_AFTER),
            backoff,
            attempt: 0,
        }
    }

    /// The identity to connect with: its slot and bundle.
    pub fn identity(&self) -> Result<(usize, Bundle<'_>), BundleError> {
        self.slots.current()
    }

    /// The gateway accepted a session: a renewed identity is confirmed by it.
    pub fn accepted(&mut self) -> Option<RotationEvent<'static>> {
        match self.slots.connected() {
            slots::Outcome::Confirmed { slot } => Some(RotationEvent::Confirmed { slot }),
            _ => None,
        }
    }

    /// A connection ended: what became of the identities, and when to connect again.
    pub fn ended<R: RngCore>(&mut self, ending: Ending<'_>, rng: &mut R) -> Decision {
        let event = match ending {
            Ending::Failed => match self.slots.failed() {
                slots::Outcome::RolledBack { from, to } => {
                    Some(RotationEvent::RolledBack { from, to })
                }
                _ => None,
            },
            Ending::Closed => None,
            Ending::Renewed(bundle) => {
                if self.slots.store_renewed(bundle) {
                    self.attempt = 0;
                    let stored = self.slots.current().ok().map(|(slot, _)| slot);
                    return Decision {
                        event: stored.map(|slot| RotationEvent::Stored { slot }),
                        next: Next::Now,
                    };
                }
                Some(RotationEvent::NotStored)
            }
        };
        self.attempt = match ending {
            Ending::Failed => self.attempt.saturating_add(1),
            Ending::Closed | Ending::Renewed(_) => 0,
        };
        Decision {
            event,
            next: Next::After {
                delay_ms: self.backoff.delay_ms(self.attempt, rng),
                attempt: self.attempt,
            },
        }
    }
}

/// The device's app with the supervisor told when the gateway accepts a session, so a
/// renewed identity is confirmed the moment it works.
pub struct Supervised<'a, A, S> {
    pub app: &'a mut A,
    pub supervisor: &'a mut Supervisor<S>,
}

impl<A: App, S: SlotStore> App for Supervised<'_, A, S> {
    fn telemetry(&mut self, seq: u32, out: &mut [u8]) -> usize {
        self.app.telemetry(seq, out)
    }

    fn on_command(&mut self, topic: &str, payload: &[u8], reply: &mut [u8]) -> Option<usize> {
        self.app.on_command(topic, payload, reply)
    }

    fn on_connected(&mut self) {
        self.app.on_connected();
        if let Some(event) = self.supervisor.accepted() {
            self.app.on_rotation(event);
        }
    }

    fn on_rotation(&mut self, event: RotationEvent<'_>) {
        self.app.on_rotation(event);
    }
}

#[cfg(test)]
mod tests;
