//! The P-256 operations the device's own code runs: checking the ECDSA signatures of the
//! gateway's chain and `CertificateVerify`, signing the client `CertificateVerify` and the
//! certificate request (deterministic nonces, RFC 6979), and deriving a public key. One seam
//! for them, RustCrypto `p256` behind it.
//!
//! Cortex-M4 assembly P-256 (`p256-cm4`) was measured behind this seam on the emulated board
//! (BENCHMARKS.md): the TLS key exchange, which embedded-tls computes itself with RustCrypto,
//! would still dominate, and its mod-n multiplication uses a single-register `LDM.W`, an
//! encoding ARMv7-M leaves UNPREDICTABLE and QEMU refuses as undefined.

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::signature::Error as SignatureError;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::SecretKey;

/// An uncompressed SEC1 point: `04 || x || y`.
pub type Point = [u8; 65];

/// SHA-256 of `message`, the digest ECDSA with SHA-256 signs.
pub fn digest(message: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(message).into()
}

/// Whether `signature` over `digest` verifies with `key`, an uncompressed SEC1 point. A key
/// that is not a point on the curve verifies nothing.
pub fn verify(key: &[u8], digest: &[u8; 32], signature: &Signature) -> bool {
    VerifyingKey::from_sec1_bytes(key)
        .is_ok_and(|key| key.verify_prehash(digest, signature).is_ok())
}

/// The ECDSA signature of `digest` with `key` (nonce per RFC 6979). Fails only where ECDSA
/// itself does, for a nonce that gives r = 0 or s = 0 (probability 2^-256).
pub fn sign(key: &SecretKey, digest: &[u8; 32]) -> Result<Signature, SignatureError> {
    SigningKey::from(key).sign_prehash(digest)
}

/// `key`'s public point.
pub fn public_key(key: &SecretKey) -> Point {
    let mut point = [0u8; 65];
    point.copy_from_slice(key.public_key().to_encoded_point(false).as_bytes());
    point
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_a_changed_digest_does_not() {
        let key = SecretKey::from_slice(&[7u8; 32]).unwrap();
        let point = public_key(&key);
        let d = digest(b"TLS 1.3, client CertificateVerify");
        let signature = sign(&key, &d).unwrap();
        assert!(verify(&point, &d, &signature));
        let mut other = d;
        other[31] ^= 1;
        assert!(!verify(&point, &other, &signature));
        // Not a point on the curve, not uncompressed, not 65 bytes.
        let mut off_curve = point;
        off_curve[64] ^= 1;
        assert!(!verify(&off_curve, &d, &signature));
        assert!(!verify(&point[..33], &d, &signature));
    }

    /// RFC 6979 A.2.5, P-256 with SHA-256, message "sample": the deterministic signature.
    #[test]
    fn rfc6979_sample_vector() {
        let key = SecretKey::from_slice(&hex32(
            "C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721",
        ))
        .unwrap();
        let signature = sign(&key, &digest(b"sample")).unwrap();
        let (r, s) = signature.split_bytes();
        assert_eq!(
            r.as_slice(),
            hex32("EFD48B2AACB6A8FD1140DD9CD45E81D69D2C877B56AAF991C34D0EA84EAF3716")
        );
        assert_eq!(
            s.as_slice(),
            hex32("F7CB1C942D657C41D436C7A1B6E29F65F3E900DBB9AFF4064DC4AB2F843ACDA8")
        );
        assert_eq!(
            &public_key(&key)[1..33],
            hex32("60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6")
        );
    }

    fn hex32(text: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}
