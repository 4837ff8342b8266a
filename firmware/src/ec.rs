//! All of the device's P-256: the TLS key exchange (ECDHE), checking the ECDSA signatures of
//! the gateway's chain and `CertificateVerify`, signing the client `CertificateVerify` and the
//! certificate request (deterministic nonces, RFC 6979), and deriving a public key.
//!
//! With the `p256-cm4` feature on Cortex-M (`target_arch = "arm"`), the point
//! multiplications — nearly all of the cost — run on `p256-cm4`, the Rust port of Emil
//! Lundberg's P256-Cortex-M4 (UMAAL field arithmetic), and the few scalar operations mod n
//! and the last step of verification (`x_of_sum_is`) on RustCrypto `p256`: a sixth of the
//! instructions per handshake for ~2 KiB of flash. Not
//! `p256-cm4`'s own `sign`/`verify`: their mod-n multiplication uses a single-register
//! `LDM.W`, an encoding ARMv7-M leaves UNPREDICTABLE and QEMU refuses as undefined.
//! Otherwise (the host simulation, RISC-V boards, the portable emulated image) all of it is
//! RustCrypto `p256`. Both produce the same signatures; [`self_test`] checks the path a board
//! runs on against RFC 6979's vector.

use p256::ecdsa::signature::Error as SignatureError;
use p256::ecdsa::Signature;
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
    imp::verify(key, digest, signature)
}

/// The ECDSA signature of `digest` with `key` (nonce per RFC 6979). Fails only where ECDSA
/// itself does, for a nonce that gives r = 0 or s = 0 (probability 2^-256).
pub fn sign(key: &SecretKey, digest: &[u8; 32]) -> Result<Signature, SignatureError> {
    imp::sign(key, digest)
}

/// `key`'s public point.
pub fn public_key(key: &SecretKey) -> Point {
    imp::public_key(key)
}

/// The ECDH shared secret (the x coordinate of `key`·`peer`) with `peer`, an uncompressed
/// SEC1 point as TLS 1.3 carries it; `None` when `peer` is not a point on the curve.
pub fn ecdh(key: &SecretKey, peer: &[u8]) -> Option<[u8; 32]> {
    if peer.len() != 65 || peer[0] != 4 {
        return None;
    }
    imp::ecdh(key, peer)
}

/// RFC 6979 A.2.5 (P-256, SHA-256, message "sample"): the key and the signature.
const VECTOR_KEY: [u8; 32] = [
    0xC9, 0xAF, 0xA9, 0xD8, 0x45, 0xBA, 0x75, 0x16, 0x6B, 0x5C, 0x21, 0x57, 0x67, 0xB1, 0xD6, 0x93,
    0x4E, 0x50, 0xC3, 0xDB, 0x36, 0xE8, 0x9B, 0x12, 0x7B, 0x8A, 0x62, 0x2B, 0x12, 0x0F, 0x67, 0x21,
];
const VECTOR_SIGNATURE: [u8; 64] = [
    0xEF, 0xD4, 0x8B, 0x2A, 0xAC, 0xB6, 0xA8, 0xFD, 0x11, 0x40, 0xDD, 0x9C, 0xD4, 0x5E, 0x81, 0xD6,
    0x9D, 0x2C, 0x87, 0x7B, 0x56, 0xAA, 0xF9, 0x91, 0xC3, 0x4D, 0x0E, 0xA8, 0x4E, 0xAF, 0x37, 0x16,
    0xF7, 0xCB, 0x1C, 0x94, 0x2D, 0x65, 0x7C, 0x41, 0xD4, 0x36, 0xC7, 0xA1, 0xB6, 0xE2, 0x9F, 0x65,
    0xF3, 0xE9, 0x00, 0xDB, 0xB9, 0xAF, 0xF4, 0x06, 0x4D, 0xC4, 0xAB, 0x2F, 0x84, 0x3A, 0xCD, 0xA8,
];

/// A known-answer test of this module on the machine it runs on, for boards to run at boot:
/// signing RFC 6979's "sample" gives the published signature, it verifies with the derived
/// public key, and no longer verifies once the digest changes.
pub fn self_test() -> bool {
    let Ok(key) = SecretKey::from_slice(&VECTOR_KEY) else {
        return false;
    };
    let Ok(expected) = Signature::from_slice(&VECTOR_SIGNATURE) else {
        return false;
    };
    let point = public_key(&key);
    let mut d = digest(b"sample");
    let signed = sign(&key, &d).is_ok_and(|s| s == expected);
    let verifies = verify(&point, &d, &expected);
    d[0] ^= 1;
    signed && verifies && !verify(&point, &d, &expected)
}

/// An affine point as two big-endian coordinates.
type Affine = (p256::FieldBytes, p256::FieldBytes);

/// The last step of ECDSA verification once u1·G (`None` for u1 = 0) and u2·Q are known as
/// affine points on the curve: whether x(u1·G + u2·Q) mod n is `r`. Without a field
/// inversion: the sum's x is λ² − x1 − x2 with λ = dy/dx, so it is c exactly when
/// c·dx² = dy² − (x1 + x2)·dx²; for equal points (doubling) λ = (3x1² − 3)/(2y1) and the same
/// holds with 2y1 for dx and 3x1² − 3 for dy. The candidates are c = r and, when below p,
/// r + n. Opposite points sum to the identity, which verifies nothing.
#[cfg_attr(not(all(feature = "p256-cm4", target_arch = "arm")), allow(dead_code))]
fn x_of_sum_is(p1: Option<&Affine>, p2: &Affine, r: &p256::Scalar) -> bool {
    use p256::elliptic_curve::bigint::{Encoding, Limb};
    use p256::elliptic_curve::ops::Reduce;
    use p256::elliptic_curve::{Curve, PrimeField};
    use p256::{FieldElement, NistP256, Scalar, U256};

    let Some(p1) = p1 else {
        return <Scalar as Reduce<U256>>::reduce_bytes(&p2.0) == *r;
    };
    let fe = |b: &p256::FieldBytes| Option::<FieldElement>::from(FieldElement::from_bytes(b));
    let (Some(x1), Some(y1), Some(x2), Some(y2)) = (fe(&p1.0), fe(&p1.1), fe(&p2.0), fe(&p2.1))
    else {
        return false;
    };
    let (num, den) = if x1 != x2 {
        (y2 - y1, x2 - x1)
    } else if y1 == y2 && !bool::from(y1.is_zero()) {
        let x1_squared = x1.square();
        (
            x1_squared + x1_squared + x1_squared - FieldElement::from_u64(3),
            y1 + y1,
        )
    } else {
        // P + (−P), or the doubling of a point of order 2 (P-256 has none).
        return false;
    };
    let den2 = den.square();
    let rhs = num.square() - (x1 + x2) * den2;
    let r_uint = U256::from_be_slice(&r.to_repr());
    let (r_plus_n, carry) = r_uint.adc(&NistP256::ORDER, Limb::ZERO);
    let candidates = [Some(r_uint), (carry == Limb::ZERO).then_some(r_plus_n)];
    candidates
        .into_iter()
        .flatten()
        .any(|c| fe(&c.to_be_bytes().into()).is_some_and(|c| c * den2 == rhs))
}

#[cfg(not(all(feature = "p256-cm4", target_arch = "arm")))]
mod imp {
    use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
    use p256::ecdsa::signature::Error as SignatureError;
    use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::SecretKey;

    use super::Point;

    pub fn verify(key: &[u8], digest: &[u8; 32], signature: &Signature) -> bool {
        VerifyingKey::from_sec1_bytes(key)
            .is_ok_and(|key| key.verify_prehash(digest, signature).is_ok())
    }

    pub fn sign(key: &SecretKey, digest: &[u8; 32]) -> Result<Signature, SignatureError> {
        SigningKey::from(key).sign_prehash(digest)
    }

    pub fn public_key(key: &SecretKey) -> Point {
        let mut point = [0u8; 65];
        point.copy_from_slice(key.public_key().to_encoded_point(false).as_bytes());
        point
    }

    pub fn ecdh(key: &SecretKey, peer: &[u8]) -> Option<[u8; 32]> {
        let peer = p256::PublicKey::from_sec1_bytes(peer).ok()?;
        let shared = p256::ecdh::diffie_hellman(key.to_nonzero_scalar(), peer.as_affine());
        Some((*shared.raw_secret_bytes()).into())
    }
}

#[cfg(all(feature = "p256-cm4", target_arch = "arm"))]
mod imp {
    use p256::ecdsa::signature::Error as SignatureError;
    use p256::ecdsa::Signature;
    use p256::elliptic_curve::ops::{Invert, Reduce};
    use p256::elliptic_curve::PrimeField;
    use p256::{FieldBytes, NonZeroScalar, Scalar, SecretKey, U256};

    use super::Point;

    /// The group order n, big-endian (RFC 6979 draws the nonce below it).
    const ORDER: [u8; 32] = [
        0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63,
        0x25, 0x51,
    ];

    /// Big-endian bytes to the little-endian words p256-cm4 works on.
    fn words(bytes: &[u8]) -> [u32; 8] {
        let mut out = [0u32; 8];
        for (word, chunk) in out.iter_mut().rev().zip(bytes.chunks_exact(4)) {
            *word = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        out
    }

    /// The reverse of [`words`].
    fn bytes(words: &[u32; 8]) -> FieldBytes {
        let mut out = FieldBytes::default();
        for (chunk, word) in out.chunks_exact_mut(4).zip(words.iter().rev()) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// The x coordinate of `k`·G; `None` for k = 0 (p256-cm4 takes scalars in [1, n-1]).
    fn mul_base_x(k: &Scalar) -> Option<FieldBytes> {
        let (mut x, mut y) = ([0u32; 8], [0u32; 8]);
        p256_cm4::scalarmult_base(&mut x, &mut y, &words(&k.to_repr())).then(|| bytes(&x))
    }

    /// `x` mod n.
    fn reduce(x: &FieldBytes) -> Scalar {
        <Scalar as Reduce<U256>>::reduce_bytes(x)
    }

    pub fn verify(key: &[u8], digest: &[u8; 32], signature: &Signature) -> bool {
        let (mut qx, mut qy) = ([0u32; 8], [0u32; 8]);
        // Uncompressed only, on the curve (octet_string_to_point checks).
        if key.len() != 65 || key[0] != 4 || !p256_cm4::octet_string_to_point(&mut qx, &mut qy, key)
        {
            return false;
        }
        let (r, s) = signature.split_scalars();
        // s is public: Stein's variable-time inversion (a fifth of the constant-time one's
        // instructions) leaks nothing.
        let Some(w) = Option::<Scalar>::from(Invert::invert_vartime(&*s)) else {
            return false;
        };
        let u1 = reduce(FieldBytes::from_slice(digest)) * w;
        let u2 = *r * w;
        // R = u1·G + u2·Q; u1 = 0 (a digest ≡ 0 mod n) leaves u2·Q; u2 is never 0.
        let (mut x, mut y) = ([0u32; 8], [0u32; 8]);
        if !p256_cm4::scalarmult_generic(&mut x, &mut y, &words(&u2.to_repr()), &qx, &qy) {
            return false;
        }
        let p2 = (bytes(&x), bytes(&y));
        let p1 = p256_cm4::scalarmult_base(&mut x, &mut y, &words(&u1.to_repr()))
            .then(|| (bytes(&x), bytes(&y)));
        super::x_of_sum_is(p1.as_ref(), &p2, &r)
    }

    pub fn sign(key: &SecretKey, digest: &[u8; 32]) -> Result<Signature, SignatureError> {
        let d = key.to_nonzero_scalar();
        // As RustCrypto's ecdsa: the nonce from (d, n, digest), no added data.
        let k = rfc6979::generate_k::<sha2::Sha256, _>(
            &d.to_repr(),
            FieldBytes::from_slice(&ORDER),
            FieldBytes::from_slice(digest),
            &[],
        );
        let k = Option::<NonZeroScalar>::from(NonZeroScalar::from_repr(k))
            .ok_or_else(SignatureError::new)?;
        let r = reduce(&mul_base_x(&k).ok_or_else(SignatureError::new)?);
        let s = *Invert::invert(&k) * (reduce(FieldBytes::from_slice(digest)) + r * *d);
        // Refuses r = 0 or s = 0.
        Signature::from_scalars(r, s)
    }

    pub fn public_key(key: &SecretKey) -> Point {
        let (mut x, mut y) = ([0u32; 8], [0u32; 8]);
        let mut point = [0u8; 65];
        // A SecretKey is in [1, n-1], all keygen accepts; the zero point is never returned.
        if p256_cm4::keygen(&mut x, &mut y, &words(&key.to_bytes())) {
            p256_cm4::point_to_octet_string_uncompressed(&mut point, &x, &y);
        }
        point
    }

    pub fn ecdh(key: &SecretKey, peer: &[u8]) -> Option<[u8; 32]> {
        let (mut x, mut y) = ([0u32; 8], [0u32; 8]);
        let mut shared = [0u8; 32];
        let ok = p256_cm4::octet_string_to_point(&mut x, &mut y, peer)
            && p256_cm4::ecdh_calc_shared_secret(&mut shared, &words(&key.to_bytes()), &x, &y);
        ok.then_some(shared)
    }
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

    #[test]
    fn both_sides_of_ecdh_agree_and_a_bad_point_gives_none() {
        let (a, b) = (
            SecretKey::from_slice(&[3u8; 32]).unwrap(),
            SecretKey::from_slice(&[4u8; 32]).unwrap(),
        );
        let ab = ecdh(&a, &public_key(&b)).unwrap();
        assert_eq!(Some(ab), ecdh(&b, &public_key(&a)));
        // RustCrypto's ECDH is the reference.
        let reference =
            p256::ecdh::diffie_hellman(a.to_nonzero_scalar(), b.public_key().as_affine());
        assert_eq!(&ab[..], &reference.raw_secret_bytes()[..]);
        let mut off = public_key(&b);
        off[64] ^= 1;
        assert_eq!(ecdh(&a, &off), None);
        assert_eq!(ecdh(&a, &public_key(&b)[..33]), None);
    }

    /// The inversion-free last step of verification agrees with RustCrypto's points,
    /// including the equal, opposite and u1 = 0 cases.
    #[test]
    fn x_of_sum_matches_complete_addition() {
        use p256::elliptic_curve::ops::Reduce;
        use p256::elliptic_curve::point::AffineCoordinates;
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::{ProjectivePoint, Scalar, U256};

        let affine = |p: ProjectivePoint| {
            let e = p.to_affine().to_encoded_point(false);
            (*e.x().unwrap(), *e.y().unwrap())
        };
        let x_mod_n =
            |p: ProjectivePoint| <Scalar as Reduce<U256>>::reduce_bytes(&p.to_affine().x());
        let g = ProjectivePoint::GENERATOR;
        for (a, b) in [(3u64, 5u64), (7, 7), (11, 1 << 40), (0x1234_5678, 99)] {
            let (pa, pb) = (g * Scalar::from(a), g * Scalar::from(b));
            let r = x_mod_n(pa + pb);
            assert!(x_of_sum_is(Some(&affine(pa)), &affine(pb), &r), "{a} {b}");
            assert!(!x_of_sum_is(
                Some(&affine(pa)),
                &affine(pb),
                &(r + Scalar::ONE)
            ));
            // u1 = 0: just the second point.
            assert!(x_of_sum_is(None, &affine(pb), &x_mod_n(pb)));
        }
        // Opposite points sum to the identity, which verifies nothing.
        let p = g * Scalar::from(17u64);
        for r in [Scalar::ZERO, Scalar::ONE, x_mod_n(p)] {
            assert!(!x_of_sum_is(Some(&affine(p)), &affine(-p), &r));
        }
    }

    #[test]
    fn the_self_test_passes() {
        assert!(self_test());
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
