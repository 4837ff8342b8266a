//! Reading what a station issued: the registry and the audit log. The free functions work
//! without the CA key or the writer lock, so they run while `serve` does.

use std::path::Path;

use super::open::open_registry;
use super::Station;
use crate::audit;
use crate::error::Error;
use crate::pki::CaCert;
use crate::registry::{CertRecord, RegistryLocation};

impl Station {
    /// Checks the audit chain, its anchor and every signed batch manifest.
    pub fn verify_audit(&self) -> Result<audit::Verified, Vec<audit::Problem>> {
        audit::verify(&self.dir, &self.issuing.cert_der)
    }

    /// Every certificate in the registry.
    pub fn devices(&self) -> Result<Vec<CertRecord>, Error> {
        self.registry.list()
    }

    /// One device's certificates, oldest first.
    pub fn device(&self, device_id: &str) -> Result<Vec<CertRecord>, Error> {
        known(device_id, self.registry.device(device_id)?)
    }

    /// One device's certificates, oldest first; empty when the device is unknown.
    pub fn device_certs(&self, device_id: &str) -> Result<Vec<CertRecord>, Error> {
        self.registry.device(device_id)
    }

    /// A delivered certificate's DER.
    pub fn cert_der(&self, serial_hex: &str) -> Result<Option<Vec<u8>>, Error> {
        self.registry.cert_der(serial_hex)
    }
}

/// A device's certificates, or [`Error::UnknownDevice`] when it has none.
fn known(device_id: &str, certs: Vec<CertRecord>) -> Result<Vec<CertRecord>, Error> {
    if certs.is_empty() {
        return Err(Error::UnknownDevice(device_id.to_owned()));
    }
    Ok(certs)
}

/// Every certificate in a station's registry, without its CA key or its writer lock (so it
/// works while `serve` runs).
pub fn list_registry(dir: &Path, device_id: Option<&str>) -> Result<Vec<CertRecord>, Error> {
    list_registry_at(dir, &RegistryLocation::StationDir, device_id)
}

/// [`list_registry`] in the registry at `registry` (a shared one lists every station's
/// certificates).
pub fn list_registry_at(
    dir: &Path,
    registry: &RegistryLocation,
    device_id: Option<&str>,
) -> Result<Vec<CertRecord>, Error> {
    let needed = match registry {
        RegistryLocation::StationDir => "registry.sqlite3",
        RegistryLocation::Postgres(_) => "ca/issuing.pem",
    };
    let path = dir.join(needed);
    if !path.exists() {
        return Err(Error::NotAStation {
            dir: dir.to_owned(),
            what: path,
        });
    }
    let issuing_der = match registry {
        RegistryLocation::StationDir => Vec::new(),
        RegistryLocation::Postgres(_) => {
            CaCert::from_pem(&crate::fs::read_to_string(&path)?)
                .map_err(|message| Error::BadPem { path, message })?
                .cert_der
        }
    };
    let registry = open_registry(dir, &issuing_der, registry, false)?;
    match device_id {
        None => registry.list(),
        Some(id) => known(id, registry.device(id)?),
    }
}

/// Checks the audit log of a station directory without opening its CA key.
pub fn verify_audit_dir(dir: &Path) -> Result<audit::Verified, Vec<audit::Problem>> {
    let path = dir.join("ca/issuing.pem");
    let cert = std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| CaCert::from_pem(&t))
        .map_err(|reason| vec![audit::Problem::Unreadable { path, reason }])?;
    audit::verify(dir, &cert.cert_der)
}
