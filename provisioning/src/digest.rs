//! Fingerprints: SHA-256 as lowercase hex, the form the registry, the audit log and the
//! manifests use.

use sha2::{Digest, Sha256};

/// SHA-256 of `bytes` as lowercase hex (a certificate's fingerprint, an audit line's hash).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc_is_the_fips_180_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
