//! The station's CRL: every revoked certificate and every aborted reservation, signed by
//! the issuing CA, with a strictly increasing number.

use std::path::PathBuf;

use super::{Reason, Station};
use crate::audit::Event;
use crate::digest::sha256_hex;
use crate::error::Error;
use crate::fs::write_file;
use crate::pki::{self, CrlEntry};
use crate::publish::{issuer_key, PublishError, Publisher};

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
        self.publish_crl(number, pem.as_bytes());
        Ok(path)
    }

    /// Publishes every CRL written from now on to `publisher` too (see [`crate::publish`]).
    pub fn publish_crls_to(&mut self, publisher: Option<Publisher>) {
        self.publisher = publisher;
    }

    /// Why the last CRL written was not published (taken: asked once). The CRL is in the
    /// file and its revocations in the registry all the same.
    pub fn take_publish_failure(&mut self) -> Option<PublishError> {
        self.unpublished.take()
    }

    /// Puts the CRL just written into the cluster's CRL bucket, if the station publishes;
    /// a failure is logged and kept for [`Station::take_publish_failure`].
    fn publish_crl(&mut self, number: u64, pem_bytes: &[u8]) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        let key = issuer_key(&self.issuing.cert_der);
        let result = match pem::parse(pem_bytes) {
            Ok(p) => publisher.publish(&key, p.contents()),
            Err(e) => Err(PublishError {
                server: publisher.server.clone(),
                bucket: publisher.bucket.clone(),
                detail: format!("the CRL just written is not PEM: {e}"),
            }),
        };
        match result {
            Ok(()) => {
                tracing::info!(number, key, bucket = publisher.bucket, "CRL published");
                self.unpublished = None;
            }
            Err(e) => {
                tracing::error!(number, "{e}; the CRL file and the registry have it");
                self.unpublished = Some(e);
            }
        }
    }

    /// Where to hear of revocations other stations make of this station's certificates
    /// (a shared registry only).
    pub fn revocation_watch(&self) -> Option<crate::registry::RevocationWatch> {
        self.registry.revocation_watch()
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
