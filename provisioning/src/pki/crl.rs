//! Certificate revocation lists signed by a CA.

use rcgen::{
    CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::Ca;
use crate::error::{CrlError, Error};

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

/// What decides whether a CRL may replace another from the same issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlInfo {
    pub number: u64,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
}

impl CrlInfo {
    /// Whether this CRL may replace `in_force`: neither a lower number nor an older
    /// thisUpdate (a restored backup, a stale copy).
    pub fn may_replace(&self, in_force: &CrlInfo) -> Result<(), CrlError> {
        if self.number < in_force.number {
            return Err(CrlError::LowerNumber {
                number: self.number,
                in_force: in_force.number,
            });
        }
        if self.this_update < in_force.this_update {
            return Err(CrlError::OlderThisUpdate {
                this_update: self.this_update,
                in_force: in_force.this_update,
            });
        }
        Ok(())
    }
}

/// Reads a CRL (DER) that `issuer_der` (a CA certificate, DER) issued and signed: its number
/// and thisUpdate.
pub fn crl_info(crl_der: &[u8], issuer_der: &[u8]) -> Result<CrlInfo, CrlError> {
    use x509_parser::prelude::FromDer;
    use x509_parser::revocation_list::CertificateRevocationList;
    let (_, issuer) = x509_parser::parse_x509_certificate(issuer_der)
        .map_err(|e| CrlError::Unreadable(format!("issuing CA: {e}")))?;
    let (rest, crl) = CertificateRevocationList::from_der(crl_der)
        .map_err(|e| CrlError::Unreadable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CrlError::Unreadable(format!(
            "{} bytes after the CRL",
            rest.len()
        )));
    }
    if crl.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(CrlError::ForeignIssuer {
            issuer: crl.issuer().to_string(),
        });
    }
    crl.verify_signature(issuer.public_key())
        .map_err(|_| CrlError::BadSignature)?;
    let bytes = crl.crl_number().ok_or(CrlError::NoNumber)?.to_bytes_be();
    if bytes.len() > 8 {
        return Err(CrlError::NoNumber);
    }
    let number = bytes.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b));
    Ok(CrlInfo {
        number,
        this_update: crl.last_update().timestamp(),
    })
}
