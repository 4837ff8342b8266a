//! Two identity slots (A/B) with a generation counter, and rollback.
//!
//! The device boots from the valid slot with the higher generation. A renewed identity is
//! written to the other slot; it stays *unconfirmed* until a connection with it is accepted.
//! If it fails to connect `max_failures` times in a row, it is erased and the device falls
//! back to the previous slot. (Confirmation lives in RAM: after a reboot the newest valid
//! slot is trusted, and rollback applies only to an identity renewed since boot.)

use crate::bundle::{self, Bundle, BundleError};

/// Where the two slots live (flash on boards, memory in the simulation).
pub trait SlotStore {
    /// The bytes of slot 0 (A) or 1 (B).
    fn read(&self, slot: usize) -> &[u8];
    /// Replaces a slot's contents; false when it could not be written.
    fn write(&mut self, slot: usize, bytes: &[u8]) -> bool;
    /// Makes a slot invalid (e.g. erases its first sector); false when it could not.
    fn erase(&mut self, slot: usize) -> bool;
}

/// What happened to an identity after a connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing changed.
    Unchanged,
    /// The renewed identity connected: it is now the confirmed one.
    Confirmed { slot: usize },
    /// The renewed identity failed too often: erased, back to the other slot.
    RolledBack { from: usize, to: usize },
}

/// The device's identity slots.
pub struct Slots<S> {
    store: S,
    unconfirmed: Option<usize>,
    failures: u32,
    max_failures: u32,
}

impl<S: SlotStore> Slots<S> {
    pub fn new(store: S, max_failures: u32) -> Self {
        Slots {
            store,
            unconfirmed: None,
            failures: 0,
            max_failures: max_failures.max(1),
        }
    }

    /// The identity to use now: which slot and its bundle.
    pub fn current(&self) -> Result<(usize, Bundle<'_>), BundleError> {
        bundle::newest(self.store.read(0), self.store.read(1))
    }

    /// Stores a renewed identity in the slot not in use; it must have a higher generation.
    pub fn store_renewed(&mut self, bytes: &[u8]) -> bool {
        let Ok((current, now)) = self.current() else {
            return false;
        };
        let generation = now.generation;
        let fresh = Bundle::parse(bytes).is_ok_and(|b| b.generation > generation);
        let other = 1 - current;
        if !fresh || !self.store.write(other, bytes) {
            return false;
        }
        self.unconfirmed = Some(other);
        self.failures = 0;
        true
    }

    /// Call after the gateway accepted a connection.
    pub fn connected(&mut self) -> Outcome {
        self.failures = 0;
        match (self.unconfirmed, self.current()) {
            (Some(slot), Ok((current, _))) if slot == current => {
                self.unconfirmed = None;
                Outcome::Confirmed { slot }
            }
            _ => Outcome::Unchanged,
        }
    }

    /// Call after a connection attempt that did not reach an accepted session.
    pub fn failed(&mut self) -> Outcome {
        let Ok((current, _)) = self.current() else {
            return Outcome::Unchanged;
        };
        if self.unconfirmed != Some(current) {
            return Outcome::Unchanged;
        }
        self.failures += 1;
        if self.failures < self.max_failures || !self.store.erase(current) {
            return Outcome::Unchanged;
        }
        self.unconfirmed = None;
        self.failures = 0;
        Outcome::RolledBack {
            from: current,
            to: 1 - current,
        }
    }
}

/// Two slots in memory, erased to 0xff, of `N` bytes each: the flash of the unit tests.
#[cfg(test)]
pub(crate) mod test_mem {
    use super::{Bundle, SlotStore};

    /// Device acme-000001's bundle of this generation with this certificate, encoded into
    /// `out`; returns its length.
    pub(crate) fn bundle_into(generation: u32, cert: &'static [u8], out: &mut [u8]) -> usize {
        let b = Bundle {
            generation,
            device_id: "acme-000001",
            tenant: "acme",
            cert_der: cert,
            private_key_der: Some(b"\x30\x01k"),
            trust_anchor_der: b"\x30\x01a",
            gateway_host: "gw.test",
            gateway_port: 8883,
            seed: None,
        };
        b.emit(out).unwrap()
    }

    pub(crate) struct Mem<const N: usize>(pub [[u8; N]; 2]);

    impl<const N: usize> SlotStore for Mem<N> {
        fn read(&self, slot: usize) -> &[u8] {
            &self.0[slot]
        }
        fn write(&mut self, slot: usize, bytes: &[u8]) -> bool {
            if bytes.len() > N {
                return false;
            }
            self.0[slot] = [0xff; N];
            self.0[slot][..bytes.len()].copy_from_slice(bytes);
            true
        }
        fn erase(&mut self, slot: usize) -> bool {
            self.0[slot] = [0xff; N];
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use test_mem::Mem as Flash;

    type Mem = Flash<1024>;

    fn bundle(generation: u32, cert: &'static [u8]) -> ([u8; 1024], usize) {
        let mut out = [0u8; 1024];
        let n = test_mem::bundle_into(generation, cert, &mut out);
        (out, n)
    }

    fn slots() -> Slots<Mem> {
        let mut mem = Flash([[0xff; 1024]; 2]);
        let (a, n) = bundle(1, b"\x30\x01\x01");
        mem.write(0, &a[..n]);
        Slots::new(mem, 3)
    }

    #[test]
    fn a_renewed_identity_is_used_and_confirmed_by_a_connection() {
        let mut s = slots();
        let (b, n) = bundle(2, b"\x30\x01\x02");
        assert!(s.store_renewed(&b[..n]));
        assert_eq!(s.current().unwrap().0, 1);
        assert_eq!(s.current().unwrap().1.cert_der, b"\x30\x01\x02");
        assert_eq!(s.connected(), Outcome::Confirmed { slot: 1 });
        // Confirmed identities never roll back.
        for _ in 0..10 {
            assert_eq!(s.failed(), Outcome::Unchanged);
        }
        assert_eq!(s.current().unwrap().0, 1);
    }

    #[test]
    fn a_renewed_identity_that_keeps_failing_rolls_back() {
        let mut s = slots();
        let (b, n) = bundle(2, b"\x30\x01\x02");
        assert!(s.store_renewed(&b[..n]));
        assert_eq!(s.failed(), Outcome::Unchanged);
        assert_eq!(s.failed(), Outcome::Unchanged);
        assert_eq!(s.failed(), Outcome::RolledBack { from: 1, to: 0 });
        assert_eq!(s.current().unwrap().1.cert_der, b"\x30\x01\x01");
        assert_eq!(s.connected(), Outcome::Unchanged);
    }

    #[test]
    fn stale_or_invalid_renewals_are_refused() {
        let mut s = slots();
        let (old, n) = bundle(1, b"\x30\x01\x03");
        assert!(!s.store_renewed(&old[..n]));
        assert!(!s.store_renewed(b"garbage"));
        assert_eq!(s.current().unwrap().0, 0);
    }
}
