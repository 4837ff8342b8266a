//! The station: an open station directory and what it does, one concept per module.
//!
//! - [`open`]: creating a CA (`init`, `import`) and opening a directory;
//! - [`recover`]: settling what a crash or a failed operation left behind;
//! - [`deliver`]: making signed certificates durable and live, batches and their manifests;
//! - [`issue`]: key injection (the station generates keys into identity bundles);
//! - [`certify`]: the CSR flow (keys generated on the devices);
//! - [`renew`]: a device's new certificate for a new key;
//! - [`revoke`] and [`crl`]: revocation and the CRL;
//! - [`roles`]: gateway server, service and gateway client certificates;
//! - [`lookup`]: the registry and the audit log, read;
//! - [`bundle`]: the identity bundle, built in this one place.

mod bundle;
mod certify;
mod crl;
mod deliver;
mod issue;
mod lookup;
mod open;
mod recover;
mod renew;
mod revoke;
mod roles;

use std::path::{Path, PathBuf};

pub use bundle::bundle_to_pem;
pub use certify::{Certified, CsrInput, CsrRequest};
pub use issue::{BatchRequest, DeviceIssued};
pub use lookup::{
    list_registry, list_registry_at, verify_all_stations, verify_audit_dir, verify_audit_dir_at,
};
pub use open::{station_name, ImportFiles, KeyProtection};
pub use recover::Recovered;
pub use renew::RenewalPolicy;
pub use revoke::{Reason, Revoked};
pub use roles::IssuedFiles;

use crate::audit::AuditLog;
use crate::error::Error;
use crate::pki::{Ca, CaCert};
use crate::registry::Registry;

/// Validity of gateway server and service certificates.
const SERVER_DAYS: i64 = 825;

/// Certificates signed, written and committed together: one fsync pass, one audit append and
/// one registry transaction per chunk.
const CHUNK: usize = 256;

/// An open station directory.
pub struct Station {
    dir: PathBuf,
    root: CaCert,
    issuing: Ca,
    issuing_not_after: time::OffsetDateTime,
    registry: Box<dyn Registry + Send>,
    audit: AuditLog,
    recovered: Recovered,
    /// Held for the station's lifetime: one writer per directory keeps the audit chain whole.
    _lock: std::fs::File,
    /// Where every CRL written is also published (the gateway cluster's NATS), if anywhere.
    publisher: Option<crate::publish::Publisher>,
    /// Why the last CRL written was not published, until taken.
    unpublished: Option<crate::publish::PublishError>,
}

impl Station {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The issuing CA (to sign certificates outside the usual flows, e.g. in tests).
    pub fn issuing_ca(&self) -> &Ca {
        &self.issuing
    }

    /// The root CA certificate (the devices' trust anchor).
    pub fn root_ca(&self) -> &CaCert {
        &self.root
    }

    fn check_ca_valid(&self) -> Result<(), Error> {
        if self.issuing_not_after <= time::OffsetDateTime::now_utc() {
            return Err(Error::CaExpired {
                not_after: self.issuing_not_after.to_string(),
            });
        }
        Ok(())
    }
}

fn positive(field: &'static str, n: u32) -> Result<(), Error> {
    if n == 0 {
        return Err(Error::InvalidInput {
            field,
            message: "must be at least 1".into(),
        });
    }
    Ok(())
}

/// Whether `id` lies in `tenant`'s namespace: `{tenant}-{suffix}` with a suffix that holds
/// no `-`. So the tenant an id belongs to is everything before its last `-`, and no two
/// tenants' namespaces overlap, whatever `-` their names hold (`acme` owns `acme-7`, never
/// `acme-eu-7`, which is `acme-eu`'s). Generated ids (`{tenant}-000001`) are in it.
pub fn in_tenant_namespace(tenant: &str, id: &str) -> bool {
    id.strip_prefix(tenant)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|suffix| !suffix.is_empty() && !suffix.contains('-'))
}

/// Checks a new device id or tenant: the protocol's name rule (1-64 of A-Z a-z 0-9 . _ -,
/// so never a topic separator, a wildcard, NUL or whitespace in a certificate CN or a topic
/// level) and a letter or digit first (never `.`, `..` or a leading `-`). Names already in
/// the registry are not checked again.
fn check_new_name(field: &'static str, value: &str) -> Result<(), Error> {
    check_name(field, value, true)?;
    if value.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            field,
            message: format!("{value:?} must start with a letter or a digit"),
        })
    }
}

/// Checks a name: `strict` ones (ids, tenants, service names) are 1-64 of A-Z a-z 0-9 . _ -;
/// others (an organisation) 1-64 printable characters.
fn check_name(field: &'static str, value: &str, strict: bool) -> Result<(), Error> {
    let ok = if strict {
        fleet_protocol::bundle::valid_name(value)
    } else {
        !value.trim().is_empty() && value.len() <= 64 && !value.contains(['\0', '\n'])
    };
    if ok {
        Ok(())
    } else if strict {
        Err(Error::InvalidInput {
            field,
            message: format!("{value:?} must be 1-64 of A-Z a-z 0-9 . _ -"),
        })
    } else {
        Err(Error::InvalidInput {
            field,
            message: format!("{value:?} must be 1-64 printable characters"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_belongs_to_the_tenant_before_its_last_dash() {
        assert!(in_tenant_namespace("acme", "acme-000001"));
        assert!(in_tenant_namespace("acme", "acme-board_7.a"));
        assert!(in_tenant_namespace("acme-eu", "acme-eu-000001"));
        // acme-eu's ids are never acme's, and the other way round.
        assert!(!in_tenant_namespace("acme", "acme-eu-000001"));
        assert!(!in_tenant_namespace("acme-eu", "acme-000001"));
        for id in ["acme", "acme-", "acmex-1", "other-000001", "xacme-1", ""] {
            assert!(!in_tenant_namespace("acme", id), "{id}");
        }
    }

    #[test]
    fn a_new_name_starts_with_a_letter_or_digit() {
        for good in ["a", "7", "acme-000001", "A.b_c-d"] {
            assert!(check_new_name("device id", good).is_ok(), "{good}");
        }
        for bad in [
            ".", "..", "-x", "_x", "", "a/b", "a+b", "a#b", "a b", "a\0b", "a\tb",
        ] {
            let err = check_new_name("device id", bad).unwrap_err();
            assert!(err.to_string().contains("device id"), "{bad}: {err}");
        }
    }
}
