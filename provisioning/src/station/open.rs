//! Creating a station's CA (`init`, `import`) and opening a station directory.

use std::path::{Path, PathBuf};

use super::{check_name, Recovered, Station};
use crate::audit::{AnchorAt, AuditLog, Event};
use crate::digest::sha256_hex;
use crate::error::Error;
use crate::fs::{lock_station, read_to_string, write_file};
use crate::pki::{self, Ca, CaCert, Passphrase};
use crate::registry::{
    PostgresRegistry, Registry, RegistryLocation, SqliteRegistry, StationIdentity,
};

/// How the CA private keys are stored.
#[derive(Debug, Clone)]
pub enum KeyProtection {
    /// Encrypted PKCS#8 (scrypt + AES-256-CBC) with this passphrase.
    Encrypted(Passphrase),
    /// PKCS#8 PEM without encryption: development only, and only when asked for explicitly.
    InsecurePlaintext,
}

impl KeyProtection {
    fn passphrase(&self) -> Option<&Passphrase> {
        match self {
            KeyProtection::Encrypted(p) => Some(p),
            KeyProtection::InsecurePlaintext => None,
        }
    }
}

impl Station {
    /// Creates the CA hierarchy in `dir` (which must not already hold one).
    pub fn init(dir: &Path, org: &str, keys: KeyProtection) -> Result<Station, Error> {
        Station::init_at(dir, org, keys, &RegistryLocation::StationDir)
    }

    /// [`Station::init`] with the registry at `registry`.
    pub fn init_at(
        dir: &Path,
        org: &str,
        keys: KeyProtection,
        registry: &RegistryLocation,
    ) -> Result<Station, Error> {
        check_name("org", org, false)?;
        refuse_existing_ca(dir)?;
        let root = pki::new_root_ca(org)?;
        let issuing = pki::new_issuing_ca(&root, org)?;
        let pass = keys.passphrase();
        write_key(&dir.join("ca/root.key"), &root, pass)?;
        write_key(&dir.join("ca/issuing.key"), &issuing, pass)?;
        write_ca_certs(dir, &issuing.cert(), &root.cert())?;
        let mut station = Station::open_at(dir, pass, registry)?;
        station.audit.append(Event::CaInit {
            org: org.to_owned(),
            root_fingerprint: sha256_hex(&station.root.cert_der),
            issuing_fingerprint: sha256_hex(&station.issuing.cert_der),
        })?;
        // An empty CRL from day one, so the gateway can be pointed at it before any revocation.
        station.write_crl()?;
        Ok(station)
    }

    /// Takes over an issuing CA made by another PKI (openssl, step-ca, Vault, …): its
    /// certificate and P-256 key (PEM: PKCS#8, encrypted PKCS#8 opened with `keys`'
    /// passphrase, or SEC1) and the root it chains to (the devices' trust anchor; the
    /// issuing certificate itself when it is self-signed). The key is stored as `keys` says.
    pub fn import(
        dir: &Path,
        issuing_cert: &Path,
        issuing_key: &Path,
        root_cert: Option<&Path>,
        keys: KeyProtection,
    ) -> Result<Station, Error> {
        let files = ImportFiles {
            cert: issuing_cert,
            key: issuing_key,
            root: root_cert,
        };
        Station::import_at(dir, &files, keys, &RegistryLocation::StationDir)
    }

    /// [`Station::import`] with the registry at `registry`.
    pub fn import_at(
        dir: &Path,
        files: &ImportFiles<'_>,
        keys: KeyProtection,
        registry: &RegistryLocation,
    ) -> Result<Station, Error> {
        let (issuing_cert, issuing_key, root_cert) = (files.cert, files.key, files.root);
        refuse_existing_ca(dir)?;
        let pass = keys.passphrase();
        let cert_of = |path: &Path| {
            CaCert::from_pem(&read_to_string(path)?).map_err(|message| Error::BadPem {
                path: path.to_owned(),
                message,
            })
        };
        let key_der = pki::key_from_pem(&read_to_string(issuing_key)?, issuing_key, pass)?;
        let cert = cert_of(issuing_cert)?;
        let root = root_cert.map_or_else(|| Ok(cert.clone()), cert_of)?;
        let ca = Ca::from_parts(&cert.cert_pem, &key_der)?;
        pki::check_importable(&ca, &root)?;
        write_key(&dir.join("ca/issuing.key"), &ca, pass)?;
        write_ca_certs(dir, &cert, &root)?;
        let mut station = Station::open_at(dir, pass, registry)?;
        station.audit.append(Event::CaImport {
            issuing_fingerprint: sha256_hex(&station.issuing.cert_der),
            root_fingerprint: sha256_hex(&station.root.cert_der),
        })?;
        station.write_crl()?;
        Ok(station)
    }

    /// Opens an existing station directory; `passphrase` opens an encrypted issuing CA key.
    /// Settles what an earlier crash left behind (see [`Station::recovered`]).
    pub fn open(dir: &Path, passphrase: Option<&Passphrase>) -> Result<Station, Error> {
        Station::open_at(dir, passphrase, &RegistryLocation::StationDir)
    }

    /// [`Station::open`] with the registry at `registry`.
    pub fn open_at(
        dir: &Path,
        passphrase: Option<&Passphrase>,
        registry: &RegistryLocation,
    ) -> Result<Station, Error> {
        let (root_path, root_text) = read_station_file(dir, "ca/root.pem")?;
        let root = CaCert::from_pem(&root_text).map_err(|message| Error::BadPem {
            path: root_path,
            message,
        })?;
        let (cert_path, cert_text) = read_station_file(dir, "ca/issuing.pem")?;
        let (key_path, key_text) = read_station_file(dir, "ca/issuing.key")?;
        let key_der = pki::key_from_pem(&key_text, &key_path, passphrase)?;
        let bad_cert = |message: String| Error::BadPem {
            path: cert_path.clone(),
            message,
        };
        let issuing = Ca::from_parts(&cert_text, &key_der).map_err(|e| bad_cert(e.to_string()))?;
        let issuing_not_after = x509_parser::parse_x509_certificate(&issuing.cert_der)
            .map_err(|e| bad_cert(e.to_string()))?
            .1
            .validity()
            .not_after
            .to_datetime();
        let lock = lock_station(dir)?;
        let at = registry;
        let registry = open_registry(dir, &issuing.cert_der, at, true)?;
        let (audit, torn_bytes) = open_audit(dir, at)?;
        let mut station = Station {
            dir: dir.to_owned(),
            root,
            issuing,
            issuing_not_after,
            registry,
            audit,
            recovered: Recovered::default(),
            _lock: lock,
            publisher: None,
            unpublished: None,
        };
        station.recovered = station.recover(torn_bytes)?;
        Ok(station)
    }
}

/// The station's audit log, anchored where its registry is (a shared registry knows the
/// station by its name, made by [`open_registry`]).
fn open_audit(dir: &Path, at: &RegistryLocation) -> Result<(AuditLog, usize), Error> {
    match at {
        RegistryLocation::StationDir => AuditLog::open(dir),
        RegistryLocation::Postgres(target) => {
            let station = station_name(dir, false)?;
            AuditLog::open_at(
                dir,
                AnchorAt::Shared {
                    target,
                    station: &station,
                },
            )
        }
    }
}

/// The files of an issuing CA to import (see [`Station::import`]).
#[derive(Debug, Clone, Copy)]
pub struct ImportFiles<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub root: Option<&'a Path>,
}

/// The station's registry: SQLite in `dir`, or the shared one as this station (named by
/// `dir/station-name`, made on first use when `create`).
pub(super) fn open_registry(
    dir: &Path,
    issuing_der: &[u8],
    at: &RegistryLocation,
    create: bool,
) -> Result<Box<dyn Registry + Send>, Error> {
    match at {
        RegistryLocation::StationDir => Ok(Box::new(SqliteRegistry::open(
            &dir.join("registry.sqlite3"),
        )?)),
        RegistryLocation::Postgres(target) => {
            let me = StationIdentity {
                station: station_name(dir, create)?,
                issuer: sha256_hex(issuing_der),
            };
            Ok(Box::new(PostgresRegistry::open(target, me)?))
        }
    }
}

/// The station's name in a shared registry, from `dir/station-name`: made once (`station-`
/// and 16 random hex digits) when missing and `create`. It names whose reservations a
/// crashed run left, so no two station directories may hold the same one (never copy it).
pub fn station_name(dir: &Path, create: bool) -> Result<String, Error> {
    let path = dir.join("station-name");
    if !path.exists() {
        if !create {
            return Ok(String::new());
        }
        let mut bytes = [0u8; 8];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
        let name = format!("station-{}", hex::encode(bytes));
        write_file(&path, format!("{name}\n").as_bytes(), false)?;
        return Ok(name);
    }
    let name = read_to_string(&path)?.trim().to_owned();
    if !fleet_protocol::bundle::valid_name(&name) {
        return Err(Error::InvalidInput {
            field: "station name",
            message: format!(
                "{}: {name:?} must be 1-64 of A-Z a-z 0-9 . _ -",
                path.display()
            ),
        });
    }
    Ok(name)
}

/// A file the station directory must hold: (its path, its text).
fn read_station_file(dir: &Path, rel: &str) -> Result<(PathBuf, String), Error> {
    let path = dir.join(rel);
    if !path.exists() {
        return Err(Error::NotAStation {
            dir: dir.to_owned(),
            what: path,
        });
    }
    let text = read_to_string(&path)?;
    Ok((path, text))
}

fn refuse_existing_ca(dir: &Path) -> Result<(), Error> {
    for what in ["ca/root.pem", "ca/issuing.pem", "ca/issuing.key"] {
        let path = dir.join(what);
        if path.exists() {
            return Err(Error::CaExists {
                dir: dir.to_owned(),
                what: path,
            });
        }
    }
    Ok(())
}

fn write_key(path: &Path, ca: &Ca, pass: Option<&Passphrase>) -> Result<(), Error> {
    write_file(path, pki::key_to_pem(&ca.key, pass)?.as_bytes(), true)
}

fn write_ca_certs(dir: &Path, issuing: &CaCert, root: &CaCert) -> Result<(), Error> {
    write_file(
        &dir.join("ca/issuing.pem"),
        issuing.cert_pem.as_bytes(),
        false,
    )?;
    write_file(
        &dir.join("gateway/clients-ca.pem"),
        issuing.cert_pem.as_bytes(),
        false,
    )?;
    // Written last: its presence marks a complete CA.
    write_file(&dir.join("ca/root.pem"), root.cert_pem.as_bytes(), false)
}
