//! Certificate revocation lists signed by a CA.

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::Ca;
use crate::error::Error;

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    pub serial: Vec<u8>,
    pub revoked_at: OffsetDateTime,
    pub reason: RevocationReason,
}

/// A CRL (PEM) signed by `ca`, numbered `number` (callers keep numbers strictly
/// increasing), issued `now` and current for `valid_for`.
pub fn sign_crl(
    ca: &Ca,
    number: u64,
    entries: &[CrlEntry],
    now: OffsetDateTime,
    valid_for: Duration,
) -> Result<String, Error> {
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + valid_for,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: entries
            .iter()
            .map(|e| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&e.serial),
                revocation_time: e.revoked_at,
                reason_code: Some(e.reason),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(ca.issuer())?.pem()?)
}
