//! Reading what a station issued: the registry and the audit log. The free functions work
//! without the CA key or the writer lock, so they run while `serve` does.

use std::path::Path;

use super::open::{open_registry, station_name};
use super::Station;
use crate::audit;
use crate::error::Error;
use crate::pki::CaCert;
use crate::registry::{CertRecord, PostgresTarget, RegistryLocation};

impl Station {
    /// Checks the audit chain, its anchor and every signed batch manifest.
    pub fn verify_audit(&self) -> Result<audit::Verified, Vec<audit::Problem>> {
        audit::verify_at(&self.dir, &self.issuing.cert_der, self.audit.anchor_at())
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
    verify_audit_dir_at(dir, &RegistryLocation::StationDir)
}

/// [`verify_audit_dir`] with the anchor where the registry at `registry` keeps it (a shared
/// registry: also the registry's copy of each record).
pub fn verify_audit_dir_at(
    dir: &Path,
    registry: &RegistryLocation,
) -> Result<audit::Verified, Vec<audit::Problem>> {
    let cert = issuing_cert(dir).map_err(|p| vec![p])?;
    match registry {
        RegistryLocation::StationDir => audit::verify(dir, &cert),
        RegistryLocation::Postgres(target) => {
            let station = local_station(dir).map_err(|p| vec![p])?;
            let at = audit::AnchorAt::Shared {
                target,
                station: &station,
            };
            audit::verify_at(dir, &cert, at)
        }
    }
}

/// Checks every station's audit chain in the shared registry at `target`, and the log and
/// manifests of the station in `dir` (see [`audit::verify_all_stations`]).
pub fn verify_all_stations(
    dir: &Path,
    target: &PostgresTarget,
) -> Result<Vec<audit::StationVerified>, Vec<audit::StationProblem>> {
    let local = |problem| {
        vec![audit::StationProblem {
            station: station_name(dir, false).unwrap_or_default(),
            problem,
        }]
    };
    let cert = issuing_cert(dir).map_err(local)?;
    let station = local_station(dir).map_err(local)?;
    audit::verify_all_stations(dir, &cert, target, &station)
}

/// The DER of the station's issuing CA certificate.
fn issuing_cert(dir: &Path) -> Result<Vec<u8>, audit::Problem> {
    let path = dir.join("ca/issuing.pem");
    std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| CaCert::from_pem(&t))
        .map(|c| c.cert_der)
        .map_err(|reason| audit::Problem::Unreadable { path, reason })
}

/// The name of the station in `dir` in a shared registry (it must have one).
fn local_station(dir: &Path) -> Result<String, audit::Problem> {
    let path = dir.join("station-name");
    match station_name(dir, false) {
        Ok(name) if !name.is_empty() => Ok(name),
        Ok(_) => Err(audit::Problem::Unreadable {
            path,
            reason: "missing: this directory has never opened a shared registry".into(),
        }),
        Err(e) => Err(audit::Problem::Unreadable {
            path,
            reason: e.to_string(),
        }),
    }
}
