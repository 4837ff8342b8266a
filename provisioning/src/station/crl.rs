//! The station's CRL: every revoked certificate and every aborted reservation, signed by
//! the issuing CA, with a strictly increasing number.

use std::path::PathBuf;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};

use super::{Reason, Station};
use crate::audit::Event;
use crate::digest::sha256_hex;
use crate::error::Error;
use crate::fs::write_file;
use crate::registry::Registry;

/// How long a CRL is current (its nextUpdate); `serve` and `fleet-provision crl` renew it.
const CRL_DAYS: i64 = 7;

impl Station {
    /// Where the station writes its CRL (PEM); point the gateway's `tls.crl` at it.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl/issuing.crl.pem")
    }

    /// Writes a fresh CRL (signed by the issuing CA, nextUpdate in 7 days) listing every
    /// revoked certificate and every aborted reservation, atomically, and returns its path.
    pub fn write_crl(&mut self) -> Result<PathBuf, Error> {
        let now = time::OffsetDateTime::now_utc();
        let revoked_certs = self.revoked_certs(now)?;
        let number = self.registry.next_crl_number()?;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(CRL_DAYS),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let revoked = params.revoked_certs.len();
        let crl = params.signed_by(self.issuing.issuer())?;
        let path = self.crl_path();
        let pem = crl.pem()?;
        write_file(&path, pem.as_bytes(), false)?;
        self.audit.append(Event::Crl {
            number,
            revoked,
            sha256: sha256_hex(pem.as_bytes()),
        })?;
        Ok(path)
    }

    /// The CRL entries: every serial the registry lists as revoked or aborted.
    fn revoked_certs(&self, now: time::OffsetDateTime) -> Result<Vec<RevokedCertParams>, Error> {
        let mut entries = Vec::new();
        for (serial_hex, at, reason) in self.registry.revoked()? {
            let serial = hex::decode(&serial_hex).map_err(|_| Error::InvalidInput {
                field: "serial",
                message: format!("{serial_hex:?} is not hex"),
            })?;
            entries.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: time::OffsetDateTime::from_unix_timestamp(at).unwrap_or(now),
                reason_code: Some(
                    Reason::parse(&reason)
                        .unwrap_or(Reason::Unspecified)
                        .rcgen(),
                ),
                invalidity_date: None,
            });
        }
        Ok(entries)
    }
}
