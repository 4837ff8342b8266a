//! The supervisor between connections: slots, rollback, backoff; no network.

extern crate std;

use std::format;
use std::string::String;
use std::vec::Vec;

use super::*;

use crate::slots::test_mem::Mem as Flash;

type Mem = Flash<512>;

fn bundle(generation: u32, cert: &'static [u8]) -> Vec<u8> {
    let mut out = std::vec![0u8; 512];
    let n = crate::slots::test_mem::bundle_into(generation, cert, &mut out);
    out.truncate(n);
    out
}

fn supervisor() -> Supervisor<Mem> {
    let mut mem = Flash([[0xff; 512]; 2]);
    mem.write(0, &bundle(1, b"\x30\x01\x01"));
    Supervisor::new(
        mem,
        Backoff {
            base_ms: 100,
            cap_ms: 1000,
        },
    )
}

/// Always the same value: every delay is a known fraction of its ceiling.
struct Fixed(u32);

impl RngCore for Fixed {
    fn next_u32(&mut self) -> u32 {
        self.0
    }
    fn next_u64(&mut self) -> u64 {
        u64::from(self.0)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        dest.fill(0);
        Ok(())
    }
}

/// The largest random value: the delay is the ceiling itself.
fn top() -> Fixed {
    Fixed(u32::MAX)
}

fn waits(delay_ms: u32, attempt: u32) -> Next {
    Next::After { delay_ms, attempt }
}

#[test]
fn failed_attempts_back_off_and_a_session_resets_the_count() {
    let mut s = supervisor();
    let mut rng = top();
    let delays: Vec<Next> = (0..5)
        .map(|_| s.ended(Ending::Failed, &mut rng).next)
        .collect();
    assert_eq!(
        delays,
        [
            waits(200, 1),
            waits(400, 2),
            waits(800, 3),
            waits(1000, 4),
            waits(1000, 5)
        ]
    );
    let after_session = s.ended(Ending::Closed, &mut rng);
    assert_eq!(
        after_session,
        Decision {
            event: None,
            next: waits(100, 0),
        }
    );
    assert_eq!(s.ended(Ending::Failed, &mut rng).next, waits(200, 1));
    // Full jitter: the delay is anywhere in [0, ceiling].
    assert_eq!(s.ended(Ending::Failed, &mut Fixed(0)).next, waits(0, 2));
}

#[test]
fn a_renewed_identity_is_stored_used_at_once_and_confirmed_by_a_session() {
    let mut s = supervisor();
    let renewed = bundle(2, b"\x30\x01\x02");
    let decision = s.ended(Ending::Renewed(&renewed), &mut top());
    assert_eq!(
        decision,
        Decision {
            event: Some(RotationEvent::Stored { slot: 1 }),
            next: Next::Now,
        }
    );
    let (slot, current) = s.identity().unwrap();
    assert_eq!((slot, current.generation), (1, 2));
    assert_eq!(s.accepted(), Some(RotationEvent::Confirmed { slot: 1 }));
    assert_eq!(s.accepted(), None, "confirmed once");
    // A confirmed identity is never rolled back.
    for _ in 0..2 * ROLLBACK_AFTER {
        assert_eq!(s.ended(Ending::Failed, &mut top()).event, None);
    }
    assert_eq!(s.identity().unwrap().0, 1);
}

#[test]
fn a_renewed_identity_that_never_connects_is_rolled_back() {
    let mut s = supervisor();
    let renewed = bundle(2, b"\x30\x01\x02");
    s.ended(Ending::Renewed(&renewed), &mut top());
    for attempt in 1..ROLLBACK_AFTER {
        let decision = s.ended(Ending::Failed, &mut top());
        assert_eq!(decision.event, None, "attempt {attempt}");
        assert_eq!(s.identity().unwrap().0, 1);
    }
    let decision = s.ended(Ending::Failed, &mut top());
    assert_eq!(
        decision.event,
        Some(RotationEvent::RolledBack { from: 1, to: 0 })
    );
    assert_eq!(decision.next, waits(800, ROLLBACK_AFTER));
    let (slot, current) = s.identity().unwrap();
    assert_eq!(
        (slot, current.generation, current.cert_der),
        (0, 1, &b"\x30\x01\x01"[..])
    );
    // The old identity connecting again confirms nothing.
    assert_eq!(s.accepted(), None);
}

#[test]
fn a_renewal_that_cannot_be_stored_keeps_the_current_identity() {
    let mut s = supervisor();
    // Not newer than the identity in use.
    let stale = bundle(1, b"\x30\x01\x03");
    let decision = s.ended(Ending::Renewed(&stale), &mut top());
    assert_eq!(
        decision,
        Decision {
            event: Some(RotationEvent::NotStored),
            next: waits(100, 0),
        }
    );
    assert_eq!(s.identity().unwrap().1.cert_der, b"\x30\x01\x01");
}

#[test]
fn how_a_connection_ended_is_read_from_its_result() {
    let out = [7u8; 16];
    let renewed: Result<Outcome, Error> = Ok(Outcome::Renewed {
        generation: 2,
        len: 4,
    });
    assert_eq!(Ending::of(true, &renewed, &out), Ending::Renewed(&out[..4]));
    let closed: Result<Outcome, Error> = Err(Error::Closed);
    assert_eq!(Ending::of(true, &closed, &out), Ending::Closed);
    assert_eq!(Ending::of(false, &closed, &out), Ending::Failed);
    // A length beyond the buffer is cut to it.
    let long: Result<Outcome, Error> = Ok(Outcome::Renewed {
        generation: 2,
        len: 99,
    });
    assert_eq!(Ending::of(true, &long, &out), Ending::Renewed(&out[..]));
}

#[derive(Default)]
struct Log(Vec<String>);

impl App for Log {
    fn telemetry(&mut self, _seq: u32, _out: &mut [u8]) -> usize {
        0
    }
    fn on_command(&mut self, _topic: &str, _payload: &[u8], _reply: &mut [u8]) -> Option<usize> {
        None
    }
    fn on_connected(&mut self) {
        self.0.push("connected".into());
    }
    fn on_rotation(&mut self, event: RotationEvent<'_>) {
        self.0.push(format!("{event:?}"));
    }
}

#[test]
fn an_accepted_session_confirms_the_renewed_identity_through_the_app() {
    let mut s = supervisor();
    let renewed = bundle(2, b"\x30\x01\x02");
    s.ended(Ending::Renewed(&renewed), &mut top());
    let mut log = Log::default();
    let mut app = Supervised {
        app: &mut log,
        supervisor: &mut s,
    };
    app.on_connected();
    app.on_connected();
    assert_eq!(log.0, ["connected", "Confirmed { slot: 1 }", "connected"]);
}
