//! Revocation: a device's certificates (by an operator), and superseded certificates whose
//! renewal grace period ended. Each writes a new CRL.

use std::path::PathBuf;

use super::Station;
use crate::audit::Event;
use crate::error::Error;
use crate::registry::CertRecord;

/// Why a certificate is revoked (the CRL reason codes a fleet operator uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl Reason {
    /// All reasons with their CRL names.
    pub const ALL: [(Reason, &'static str); 6] = [
        (Reason::Unspecified, "unspecified"),
        (Reason::KeyCompromise, "keyCompromise"),
        (Reason::AffiliationChanged, "affiliationChanged"),
        (Reason::Superseded, "superseded"),
        (Reason::CessationOfOperation, "cessationOfOperation"),
        (Reason::PrivilegeWithdrawn, "privilegeWithdrawn"),
    ];

    pub fn name(self) -> &'static str {
        Reason::ALL
            .iter()
            .find(|(r, _)| *r == self)
            .map_or("unspecified", |(_, n)| n)
    }

    /// Parses a CRL reason name such as `keyCompromise`.
    pub fn parse(s: &str) -> Result<Reason, Error> {
        Reason::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(s))
            .map(|(r, _)| *r)
            .ok_or_else(|| Error::InvalidInput {
                field: "reason",
                message: format!(
                    "{s:?} is not one of {}",
                    Reason::ALL.map(|(_, n)| n).join(", ")
                ),
            })
    }

    pub(super) fn rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Reason::Unspecified => R::Unspecified,
            Reason::KeyCompromise => R::KeyCompromise,
            Reason::AffiliationChanged => R::AffiliationChanged,
            Reason::Superseded => R::Superseded,
            Reason::CessationOfOperation => R::CessationOfOperation,
            Reason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        }
    }
}

/// The outcome of a revocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// The certificates now revoked (the device's active one and any superseded ones).
    pub records: Vec<CertRecord>,
    pub crl_path: PathBuf,
}

impl Station {
    /// Revokes a device (its active and any superseded certificates): the registry first,
    /// then a new CRL with every revoked serial.
    pub fn revoke(&mut self, device_id: &str, reason: Reason) -> Result<Revoked, Error> {
        self.revoke_as(device_id, reason, None)
    }

    /// [`Station::revoke`], audited with who asked (`by`, e.g. an operator's name).
    pub fn revoke_as(
        &mut self,
        device_id: &str,
        reason: Reason,
        by: Option<&str>,
    ) -> Result<Revoked, Error> {
        let records = self.registry.revoke_device(device_id, reason.name())?;
        self.audit
            .append_many(records.iter().map(|r| Event::Revoke {
                device_id: r.device_id.clone(),
                serial: r.serial_hex.clone(),
                reason: reason.name().to_owned(),
                by: by.map(str::to_owned),
            }))?;
        let crl_path = self.write_crl()?;
        Ok(Revoked { records, crl_path })
    }

    /// Revokes (reason superseded) every certificate superseded more than `grace` ago and,
    /// if there were any, writes a new CRL. Returns them.
    pub fn expire_superseded(&mut self, grace: time::Duration) -> Result<Vec<CertRecord>, Error> {
        let cutoff = (time::OffsetDateTime::now_utc() - grace).unix_timestamp();
        let expired = self.registry.expire_superseded(cutoff)?;
        if !expired.is_empty() {
            self.audit.append(Event::ExpireSuperseded {
                serials: expired.iter().map(|c| c.serial_hex.clone()).collect(),
            })?;
            self.write_crl()?;
        }
        Ok(expired)
    }
}
