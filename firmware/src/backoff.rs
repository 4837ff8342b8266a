//! Reconnect delays: exponential backoff with full jitter, capped.
//!
//! With full jitter the delay is uniform in `[0, min(cap, base · 2^attempt)]`, so a fleet that
//! loses the gateway at the same instant spreads its reconnects over the whole window instead
//! of arriving in waves.

use rand_core::RngCore;

/// Backoff settings in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: u32,
    pub cap_ms: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: 500,
            cap_ms: 60_000,
        }
    }
}

impl Backoff {
    /// Upper bound of the delay before reconnect attempt `attempt` (0 = first retry).
    pub fn ceiling_ms(&self, attempt: u32) -> u32 {
        let exp = self.base_ms.saturating_mul(1u32 << attempt.min(20));
        exp.min(self.cap_ms)
    }

    /// A random delay in `[0, ceiling_ms(attempt)]`.
    pub fn delay_ms(&self, attempt: u32, rng: &mut impl RngCore) -> u32 {
        let ceiling = self.ceiling_ms(attempt);
        ((u64::from(rng.next_u32()) * (u64::from(ceiling) + 1)) >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u32);
    impl RngCore for Counter {
        fn next_u32(&mut self) -> u32 {
            self.0 = self.0.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            self.0
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.next_u32())
        }
        fn fill_bytes(&mut self, d: &mut [u8]) {
            d.iter_mut().for_each(|b| *b = self.next_u32() as u8)
        }
        fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(d);
            Ok(())
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff {
            base_ms: 500,
            cap_ms: 60_000,
        };
        let c: [u32; 9] = core::array::from_fn(|i| b.ceiling_ms(i as u32));
        assert_eq!(c, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
        assert_eq!(b.ceiling_ms(u32::MAX), 60_000);
    }

    #[test]
    fn delays_stay_in_bounds_and_spread() {
        let b = Backoff::default();
        let mut rng = Counter(7);
        for attempt in 0..12 {
            let ceiling = b.ceiling_ms(attempt);
            let delays: [u32; 200] = core::array::from_fn(|_| b.delay_ms(attempt, &mut rng));
            assert!(delays.iter().all(|&d| d <= ceiling));
            // Full jitter: both halves of the window are used.
            assert!(delays.iter().any(|&d| d < ceiling / 2));
            assert!(delays.iter().any(|&d| d > ceiling / 2));
        }
    }
}
