//! A new device key and its PKCS#10 certificate request, in DER, without allocation.
//!
//! Written by hand: the RustCrypto `x509-cert` builder needs `alloc`, and a device request
//! has one fixed shape — subject CN=device id, O=tenant, a P-256 key, no attributes, signed
//! with ECDSA-SHA256. The station ignores everything but the key anyway. The same small DER
//! writer ([`crate::asn1`]) also encodes the new key as SEC1 `ECPrivateKey` for the identity
//! bundle.

use p256::SecretKey;

use crate::asn1::tag::{context, INTEGER, OCTET_STRING, OID, SEQUENCE, SET, UTF8_STRING};
use crate::asn1::{EcdsaDer, Full, Writer as Der, NESTED_MAX};
use crate::ec;

/// Largest request this module writes (two 64-byte names, key and signature fit easily).
pub const MAX_CSR: usize = NESTED_MAX;
/// Size of an `ECPrivateKey` with the curve OID and public key.
pub const SEC1_KEY_LEN: usize = 121;

/// Why a request could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrError {
    /// The output buffer is too small.
    Space,
    /// Device id or tenant longer than 64 bytes.
    NameTooLong,
    /// ECDSA refused the nonce (r or s zero; probability 2^-256).
    Signature,
}

impl core::fmt::Display for CsrError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CsrError::Space => f.write_str("CSR buffer too small"),
            CsrError::NameTooLong => f.write_str("device id or tenant longer than 64 bytes"),
            CsrError::Signature => f.write_str("signing the request failed"),
        }
    }
}

impl From<Full> for CsrError {
    fn from(_: Full) -> Self {
        CsrError::Space
    }
}

use crate::asn1::oid::{
    COMMON_NAME as OID_CN, ECDSA_SHA256 as OID_ECDSA_SHA256, EC_PUBLIC_KEY as OID_EC_PUBLIC_KEY,
    ORGANIZATION as OID_O, P256 as OID_P256,
};

fn name(der: &mut Der<'_>, device_id: &str, tenant: &str) -> Result<(), Full> {
    der.nested(SEQUENCE, |d| {
        for (oid, value) in [(OID_CN, device_id), (OID_O, tenant)] {
            d.nested(SET, |d| {
                d.nested(SEQUENCE, |d| {
                    d.tlv(OID, oid)?;
                    d.tlv(UTF8_STRING, value.as_bytes())
                })
            })?;
        }
        Ok(())
    })
}

fn public_key_info(der: &mut Der<'_>, point: &[u8]) -> Result<(), Full> {
    der.nested(SEQUENCE, |d| {
        d.nested(SEQUENCE, |d| {
            d.tlv(OID, OID_EC_PUBLIC_KEY)?;
            d.tlv(OID, OID_P256)
        })?;
        d.bit_string(point)
    })
}

/// Writes a PKCS#10 request for `key` (CN = `device_id`, O = `tenant`), signed with it, into
/// `out`; returns its length.
pub fn write_csr(
    key: &SecretKey,
    device_id: &str,
    tenant: &str,
    out: &mut [u8],
) -> Result<usize, CsrError> {
    if device_id.len() > 64 || tenant.len() > 64 {
        return Err(CsrError::NameTooLong);
    }
    let point = ec::public_key(key);
    let mut info_buf = [0u8; MAX_CSR];
    let mut info = Der::new(&mut info_buf);
    info.nested(SEQUENCE, |d| {
        d.tlv(INTEGER, &[0])?;
        name(d, device_id, tenant)?;
        public_key_info(d, &point)?;
        // attributes [0] IMPLICIT SET OF: none.
        d.tlv(context(0), &[])
    })?;
    let info_len = info.len();
    let signature =
        ec::sign(key, &ec::digest(&info_buf[..info_len])).map_err(|_| CsrError::Signature)?;
    let mut der = Der::new(out);
    der.nested(SEQUENCE, |d| {
        d.bytes(&info_buf[..info_len])?;
        d.nested(SEQUENCE, |d| d.tlv(OID, OID_ECDSA_SHA256))?;
        d.bit_string(EcdsaDer::encode(&signature).as_ref())
    })?;
    Ok(der.len())
}

/// Writes `key` as a SEC1 `ECPrivateKey` (with the P-256 OID and the public key), the form
/// the identity bundle stores; returns its length ([`SEC1_KEY_LEN`]).
pub fn write_sec1_key(key: &SecretKey, out: &mut [u8]) -> Result<usize, CsrError> {
    let point = ec::public_key(key);
    let scalar = key.to_bytes();
    let mut der = Der::new(out);
    der.nested(SEQUENCE, |d| {
        d.tlv(INTEGER, &[1])?;
        d.tlv(OCTET_STRING, &scalar)?;
        d.nested(context(0), |d| d.tlv(OID, OID_P256))?;
        d.nested(context(1), |d| d.bit_string(&point))
    })?;
    Ok(der.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asn1::tag::BIT_STRING;

    fn key() -> SecretKey {
        SecretKey::from_bytes(&[7u8; 32].into()).unwrap()
    }

    #[test]
    fn sec1_key_round_trips_and_has_the_documented_length() {
        let mut out = [0u8; 200];
        let n = write_sec1_key(&key(), &mut out).unwrap();
        assert_eq!(n, SEC1_KEY_LEN);
        let back = crate::asn1::sec1_private_key(&out[..n]).unwrap();
        assert_eq!(back.to_bytes(), key().to_bytes());
    }

    #[test]
    fn csr_has_the_expected_shape_and_a_valid_signature() {
        use p256::ecdsa::signature::Verifier;
        let mut out = [0u8; MAX_CSR];
        let n = write_csr(&key(), "acme-000001", "acme", &mut out).unwrap();
        let csr = &out[..n];
        // Outer SEQUENCE with a one-byte long-form length.
        assert_eq!(csr[0], SEQUENCE);
        assert_eq!(csr[1], 0x81);
        assert_eq!(usize::from(csr[2]) + 3, n);
        // certificationRequestInfo: its bytes are what was signed.
        assert_eq!(csr[3], SEQUENCE);
        let info_len = usize::from(csr[5]) + 3;
        assert_eq!(csr[4], 0x81);
        let info = &csr[3..3 + info_len];
        let sig_alg = &csr[3 + info_len..3 + info_len + 12];
        assert_eq!(sig_alg[..4], [SEQUENCE, 10, OID, 8]);
        assert_eq!(&sig_alg[4..], OID_ECDSA_SHA256);
        let bits = &csr[3 + info_len + 12..];
        assert_eq!(bits[0], BIT_STRING);
        assert_eq!(bits[2], 0, "no unused bits");
        let sig = EcdsaDer::decode(&bits[3..]).unwrap();
        let vk = p256::ecdsa::VerifyingKey::from(&p256::ecdsa::SigningKey::from(&key()));
        vk.verify(info, &sig).unwrap();
        // The names are in there.
        let find = |needle: &[u8]| info.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"acme-000001") && find(OID_P256));
    }

    #[test]
    fn small_buffers_and_long_names_are_errors() {
        let mut small = [0u8; 100];
        assert_eq!(
            write_csr(&key(), "acme-000001", "acme", &mut small),
            Err(CsrError::Space)
        );
        let long = "x".repeat(65);
        let mut out = [0u8; MAX_CSR];
        assert_eq!(
            write_csr(&key(), &long, "acme", &mut out),
            Err(CsrError::NameTooLong)
        );
        assert_eq!(write_sec1_key(&key(), &mut small), Err(CsrError::Space));
    }
}
