//! `fleet-provision`: the factory station.
//!
//! A station directory holds the CA hierarchy, the device registry and everything issued:
//!
//! ```text
//! DIR/ca/root.pem, root.key              root CA (keep offline in production)
//! DIR/ca/issuing.pem, issuing.key        issuing CA, signs everything below
//! DIR/gateway/server.pem, server.key     gateway server chain (leaf, issuing CA) and key
//! DIR/gateway/clients-ca.pem             the CA the gateway trusts for client certificates
//! DIR/devices/{id}.bin, {id}.pem         identity bundle to flash, certificate for humans
//! DIR/services/{name}.pem, {name}.key    backend service identities
//! DIR/registry.sqlite3                   device registry
//! ```

pub mod audit;
pub mod boards;
mod error;
pub mod pki;
pub mod registry;

use std::io::Write;
use std::path::{Path, PathBuf};

use fleet_firmware::bundle::{Bundle, SEED_LEN};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use audit::{AuditLog, Event, Manifest};
use error::io;
pub use error::Error;
use pki::Ca;
use registry::{Registry, SqliteRegistry};

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

    fn rcgen(self) -> rcgen::RevocationReason {
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
    pub record: registry::DeviceRecord,
    pub crl_path: PathBuf,
}

/// How the CA private keys are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProtection {
    /// PKCS#8 PEM without encryption: development only, and only when asked for explicitly.
    InsecurePlaintext,
}

/// A batch of devices to issue (key-injection flow: the station generates each key and
/// writes it only into that device's bundle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRequest {
    pub tenant: String,
    pub count: u32,
    pub gateway_host: String,
    pub gateway_port: u16,
    pub validity_days: u32,
}

/// One issued device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIssued {
    pub device_id: String,
    pub serial_hex: String,
    pub bundle_path: PathBuf,
    pub cert_pem_path: PathBuf,
}

/// Files written for a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// An open station directory.
pub struct Station {
    dir: PathBuf,
    root: Ca,
    issuing: Ca,
    registry: SqliteRegistry,
    audit: AuditLog,
}

fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// Validity of gateway server and service certificates.
const SERVER_DAYS: i64 = 825;

impl Station {
    /// Creates the CA hierarchy in `dir` (which must not already hold one).
    pub fn init(dir: &Path, org: &str, keys: KeyProtection) -> Result<Station, Error> {
        let KeyProtection::InsecurePlaintext = keys;
        check_name("org", org, false)?;
        let root_pem = dir.join("ca/root.pem");
        if root_pem.exists() {
            return Err(Error::CaExists {
                dir: dir.to_owned(),
                what: root_pem,
            });
        }
        let root = pki::new_root_ca(org)?;
        let issuing = pki::new_issuing_ca(&root, org)?;
        write_file(
            &dir.join("ca/root.key"),
            root.key.serialize_pem().as_bytes(),
            true,
        )?;
        write_file(
            &dir.join("ca/issuing.key"),
            issuing.key.serialize_pem().as_bytes(),
            true,
        )?;
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
        write_file(&root_pem, root.cert_pem.as_bytes(), false)?;
        let mut station = Station::open(dir)?;
        station.audit.append(Event::CaInit {
            org: org.to_owned(),
            root_fingerprint: fingerprint(&station.root.cert_der),
            issuing_fingerprint: fingerprint(&station.issuing.cert_der),
        })?;
        // An empty CRL from day one, so the gateway can be pointed at it before any revocation.
        station.write_crl()?;
        Ok(station)
    }

    /// Opens an existing station directory.
    pub fn open(dir: &Path) -> Result<Station, Error> {
        let read = |rel: &str| -> Result<String, Error> {
            let path = dir.join(rel);
            if !path.exists() {
                return Err(Error::NotAStation {
                    dir: dir.to_owned(),
                    what: path,
                });
            }
            std::fs::read_to_string(&path).map_err(io(&path))
        };
        let ca = |cert: &str, key: &str| -> Result<Ca, Error> {
            Ca::from_pem(&read(cert)?, &read(key)?).map_err(|e| Error::BadPem {
                path: dir.join(cert),
                message: e.to_string(),
            })
        };
        let root = ca("ca/root.pem", "ca/root.key")?;
        let issuing = ca("ca/issuing.pem", "ca/issuing.key")?;
        let registry = SqliteRegistry::open(&dir.join("registry.sqlite3"))?;
        let audit = AuditLog::open(dir)?;
        Ok(Station {
            dir: dir.to_owned(),
            root,
            issuing,
            registry,
            audit,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The issuing CA (to sign certificates outside the usual flows, e.g. in tests).
    pub fn issuing_ca(&self) -> &Ca {
        &self.issuing
    }

    /// The gateway server certificate for these host names / IP addresses.
    pub fn issue_server_cert(&self, hosts: &[&str]) -> Result<IssuedFiles, Error> {
        let issued = pki::sign_server(&self.issuing, hosts, SERVER_DAYS)?;
        let files = IssuedFiles {
            cert_path: self.dir.join("gateway/server.pem"),
            key_path: self.dir.join("gateway/server.key"),
        };
        let chain = format!("{}{}", issued.cert_pem, self.issuing.cert_pem);
        write_file(&files.key_path, issued.key.serialize_pem().as_bytes(), true)?;
        write_file(&files.cert_path, chain.as_bytes(), false)?;
        self.audit.append(Event::ServerCert {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            fingerprint: fingerprint(&issued.cert_der),
        })?;
        Ok(files)
    }

    /// A backend service identity (it keeps its key: it runs in the cloud, not on a board).
    pub fn issue_service_cert(&self, name: &str, tenant: &str) -> Result<IssuedFiles, Error> {
        check_name("service name", name, true)?;
        check_name("tenant", tenant, true)?;
        let issued = pki::sign_service(&self.issuing, name, tenant, SERVER_DAYS)?;
        let files = IssuedFiles {
            cert_path: self.dir.join(format!("services/{name}.pem")),
            key_path: self.dir.join(format!("services/{name}.key")),
        };
        write_file(&files.key_path, issued.key.serialize_pem().as_bytes(), true)?;
        write_file(&files.cert_path, issued.cert_pem.as_bytes(), false)?;
        self.audit.append(Event::ServiceCert {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            fingerprint: fingerprint(&issued.cert_der),
        })?;
        Ok(files)
    }

    /// Issues a batch of devices; `progress` is called after each one.
    pub fn issue_devices_with(
        &mut self,
        req: &BatchRequest,
        mut progress: impl FnMut(&DeviceIssued),
    ) -> Result<Vec<DeviceIssued>, Error> {
        check_name("tenant", &req.tenant, true)?;
        if req.count == 0 {
            return Err(Error::InvalidInput {
                field: "count",
                message: "must be at least 1".into(),
            });
        }
        if !fleet_firmware::bundle::valid_host(&req.gateway_host) {
            return Err(Error::InvalidInput {
                field: "gateway host",
                message: format!("{:?} is not a DNS name or IP address", req.gateway_host),
            });
        }
        if req.gateway_port == 0 {
            return Err(Error::InvalidInput {
                field: "gateway port",
                message: "must not be 0".into(),
            });
        }
        if req.validity_days == 0 {
            return Err(Error::InvalidInput {
                field: "validity days",
                message: "must be at least 1".into(),
            });
        }
        let batch = format!(
            "batch-{}-{:08x}",
            time::OffsetDateTime::now_utc().unix_timestamp(),
            OsRng.next_u32()
        );
        let mut out = Vec::with_capacity(req.count as usize);
        let mut manifest = Manifest {
            batch: batch.clone(),
            tenant: req.tenant.clone(),
            devices: Vec::with_capacity(req.count as usize),
        };
        for _ in 0..req.count {
            let (issued, fp) = self.issue_one(req, &batch)?;
            progress(&issued);
            manifest
                .devices
                .push((issued.device_id.clone(), issued.serial_hex.clone(), fp));
            out.push(issued);
        }
        self.seal_batch(&manifest)?;
        Ok(out)
    }

    /// Writes the batch manifest and its signature by the issuing CA key, and logs its hash.
    fn seal_batch(&self, manifest: &Manifest) -> Result<(), Error> {
        use rcgen::SigningKey;
        let bytes = serde_json::to_vec_pretty(manifest).map_err(|e| Error::Audit(e.to_string()))?;
        let signature = self.issuing.key.sign(&bytes)?;
        let base = self.dir.join(format!("batches/{}", manifest.batch));
        write_file(&base.with_extension("json"), &bytes, false)?;
        write_file(&base.with_extension("sig"), &signature, false)?;
        self.audit.append(Event::Manifest {
            batch: manifest.batch.clone(),
            devices: manifest.devices.len(),
            sha256: fingerprint(&bytes),
        })
    }

    /// Issues a batch of devices.
    pub fn issue_devices(&mut self, req: &BatchRequest) -> Result<Vec<DeviceIssued>, Error> {
        self.issue_devices_with(req, |_| {})
    }

    /// Issues one device; returns it and its certificate fingerprint.
    fn issue_one(
        &mut self,
        req: &BatchRequest,
        batch: &str,
    ) -> Result<(DeviceIssued, String), Error> {
        let serial = pki::random_serial();
        let serial_hex = hex(&serial);
        // Durable reservation first: a crash after this never reuses the id or serial.
        let device_id = self.registry.reserve(&req.tenant, batch, &serial_hex)?;
        let cert = pki::sign_device_with_serial(
            &self.issuing,
            &device_id,
            &req.tenant,
            i64::from(req.validity_days),
            &serial,
        )?;
        let key = cert.key_sec1_der()?;
        let mut seed = [0u8; SEED_LEN];
        OsRng.fill_bytes(&mut seed);
        let bundle = Bundle {
            generation: 1,
            device_id: &device_id,
            tenant: &req.tenant,
            cert_der: &cert.cert_der,
            private_key_der: Some(&key),
            trust_anchor_der: &self.root.cert_der,
            gateway_host: &req.gateway_host,
            gateway_port: req.gateway_port,
            seed: Some(&seed),
        };
        let mut bytes = vec![0u8; bundle.encoded_len()];
        bundle
            .emit(&mut bytes)
            .map_err(|e| Error::Bundle(format!("{device_id}: {e}")))?;
        let bundle_path = self.dir.join(format!("devices/{device_id}.bin"));
        let cert_pem_path = self.dir.join(format!("devices/{device_id}.pem"));
        write_file(&cert_pem_path, cert.cert_pem.as_bytes(), false)?;
        write_file(&bundle_path, &bytes, true)?;
        let fp = fingerprint(&cert.cert_der);
        self.registry.activate(&device_id, &fp)?;
        self.audit.append(Event::Issue {
            device_id: device_id.clone(),
            tenant: req.tenant.clone(),
            serial: serial_hex.clone(),
            fingerprint: fp.clone(),
            batch: batch.to_owned(),
        })?;
        Ok((
            DeviceIssued {
                device_id,
                serial_hex,
                bundle_path,
                cert_pem_path,
            },
            fp,
        ))
    }

    /// Where the station writes its CRL (PEM); point the gateway's `tls.crl` at it.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl/issuing.crl.pem")
    }

    /// Revokes a device: the registry first, then a new CRL with every revoked serial.
    pub fn revoke(&mut self, device_id: &str, reason: Reason) -> Result<Revoked, Error> {
        let record = self.registry.revoke(device_id, reason.name())?;
        self.audit.append(Event::Revoke {
            device_id: record.device_id.clone(),
            serial: record.serial_hex.clone(),
            reason: reason.name().to_owned(),
        })?;
        let crl_path = self.write_crl()?;
        Ok(Revoked { record, crl_path })
    }

    /// Writes a fresh CRL (signed by the issuing CA, nextUpdate in 7 days) listing every
    /// revoked certificate, atomically, and returns its path.
    pub fn write_crl(&mut self) -> Result<PathBuf, Error> {
        use rcgen::{
            CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber,
        };
        let now = time::OffsetDateTime::now_utc();
        let mut revoked_certs = Vec::new();
        for (serial_hex, at, reason) in self.registry.revoked()? {
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&unhex(&serial_hex)?),
                revocation_time: time::OffsetDateTime::from_unix_timestamp(at).unwrap_or(now),
                reason_code: Some(
                    Reason::parse(&reason)
                        .unwrap_or(Reason::Unspecified)
                        .rcgen(),
                ),
                invalidity_date: None,
            });
        }
        let number = self.registry.next_crl_number()?;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(7),
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
            sha256: fingerprint(pem.as_bytes()),
        })?;
        Ok(path)
    }

    /// Checks the audit chain, its anchor and every signed batch manifest.
    pub fn verify_audit(&self) -> Result<audit::Verified, Vec<String>> {
        audit::verify(&self.dir, &self.issuing.cert_der)
    }

    /// The registry's view of every device.
    pub fn devices(&self) -> Result<Vec<registry::DeviceRecord>, Error> {
        self.registry.list()
    }
}

fn check_name(field: &'static str, value: &str, strict: bool) -> Result<(), Error> {
    let ok = if strict {
        fleet_firmware::bundle::valid_name(value)
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

/// A device identity from its bundle as PEM text: (certificate, PKCS#8 private key), for
/// standard tools such as mosquitto_pub or openssl.
pub fn bundle_to_pem(bundle: &Bundle<'_>) -> Result<(String, String), Error> {
    let cert = pem::encode(&pem::Pem::new("CERTIFICATE", bundle.cert_der.to_vec()));
    let key_der = bundle.private_key_der.ok_or_else(|| {
        Error::Bundle(format!(
            "{}: no private key in the bundle (held by a secure element)",
            bundle.device_id
        ))
    })?;
    Ok((cert, pki::pkcs8_pem_from_sec1(key_der)?))
}

fn unhex(s: &str) -> Result<Vec<u8>, Error> {
    let bad = || Error::InvalidInput {
        field: "serial",
        message: format!("{s:?} is not hex"),
    };
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Writes a file atomically (temp file, fsync, rename); `secret` files get mode 0600.
pub fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<(), Error> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}
