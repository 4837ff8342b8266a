//! The station's CRL: every revoked certificate and every aborted reservation, signed by
//! the issuing CA, with a strictly increasing number.

use std::path::PathBuf;

use super::{Reason, Station};
use crate::audit::Event;
use crate::digest::sha256_hex;
use crate::error::Error;
use crate::fs::write_file;
use crate::pki::{self, CrlEntry};

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
        let entries = self.crl_entries(now)?;
        let number = self.registry.next_crl_number()?;
        let pem = pki::sign_crl(
            &self.issuing,
            number,
            &entries,
            now,
            time::Duration::days(CRL_DAYS),
        )?;
        let path = self.crl_path();
        write_file(&path, pem.as_bytes(), false)?;
        self.audit.append(Event::Crl {
            number,
            revoked: entries.len(),
            sha256: sha256_hex(pem.as_bytes()),
        })?;
        Ok(path)
    }

    /// The number of the last CRL the station wrote (0 before the first).
    pub fn last_crl_number(&self) -> Result<u64, Error> {
        self.registry.last_crl_number()
    }

    /// Every serial the registry lists as revoked or aborted.
    fn crl_entries(&self, now: time::OffsetDateTime) -> Result<Vec<CrlEntry>, Error> {
        let mut entries = Vec::new();
        for (serial_hex, at, reason) in self.registry.revoked()? {
            let serial = hex::decode(&serial_hex).map_err(|_| Error::InvalidInput {
                field: "serial",
                message: format!("{serial_hex:?} is not hex"),
            })?;
            entries.push(CrlEntry {
                serial,
                revoked_at: time::OffsetDateTime::from_unix_timestamp(at).unwrap_or(now),
                reason: Reason::parse(&reason)
                    .unwrap_or(Reason::Unspecified)
                    .rcgen(),
            });
        }
        Ok(entries)
    }
}
