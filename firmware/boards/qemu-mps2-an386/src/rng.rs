//! The emulated board's random generator. EMULATION ONLY: QEMU's mps2-an386 has no TRNG, so
//! this is seeded from the identity bundle's per-device seed (see `emulation_rng`); real
//! boards use their hardware TRNG.
//!
//! An AES-128 counter-mode keystream (as NIST's CTR_DRBG, without reseeding): the TLS stack
//! already carries AES, so the generator adds almost no code where ChaCha20 added 2.5 KiB.

use aes::cipher::{KeyIvInit, StreamCipher};
use rand_core::{CryptoRng, Error, RngCore};

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

pub struct EmulationRng(Aes128Ctr);

impl EmulationRng {
    /// Key from the seed's first half, initial counter from its second.
    pub fn new(seed: [u8; 32]) -> Self {
        let (key, iv) = seed.split_at(16);
        EmulationRng(Aes128Ctr::new(key.into(), iv.into()))
    }
}

impl RngCore for EmulationRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0);
        // 2^128 blocks before the counter wraps: never, for one boot.
        self.0.apply_keystream(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for EmulationRng {}
