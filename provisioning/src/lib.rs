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
pub mod bench;
pub mod boards;
mod error;
pub mod pki;
pub mod registry;
pub mod serve;

use std::io::Write;
use std::path::{Path, PathBuf};

use fleet_firmware::bundle::{Bundle, SEED_LEN};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use audit::{AuditLog, Event, Manifest};
use error::io;
pub use error::Error;
pub use pki::Passphrase;
use pki::{Ca, CaCert, CheckedCsr};
pub use registry::CertRecord;
use registry::{Activation, DeviceId, Registry, Reservation, SqliteRegistry};

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
    /// The certificates now revoked (the device's active one and any superseded ones).
    pub records: Vec<CertRecord>,
    pub crl_path: PathBuf,
}

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

/// One issued device (key-injection flow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIssued {
    pub device_id: String,
    pub serial_hex: String,
    pub bundle_path: PathBuf,
    pub cert_pem_path: PathBuf,
}

/// A certificate the station signed for a device-held key (CSR flow or renewal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    pub device_id: String,
    pub tenant: String,
    pub serial_hex: String,
    pub fingerprint_hex: String,
    /// Unix seconds.
    pub not_after: i64,
    pub cert_der: Vec<u8>,
}

impl Certified {
    pub fn cert_pem(&self) -> String {
        pki::cert_to_pem(&self.cert_der)
    }
}

/// Devices to certify from their own CSRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrRequest {
    pub tenant: String,
    pub validity_days: u32,
}

/// One CSR (DER) and, optionally, the device id to give it (else the tenant's next id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrInput {
    pub der: Vec<u8>,
    pub device_id: Option<String>,
}

/// Files written for a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// What opening a station found after a crash and settled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Serials reserved but never delivered: now aborted and on the CRL.
    pub aborted: Vec<String>,
    /// Bytes of a half-written audit record that were cut off.
    pub torn_bytes: usize,
}

/// An open station directory.
pub struct Station {
    dir: PathBuf,
    root: CaCert,
    issuing: Ca,
    issuing_not_after: time::OffsetDateTime,
    registry: SqliteRegistry,
    audit: AuditLog,
    recovered: Recovered,
    /// Held for the station's lifetime: one writer per directory keeps the audit chain whole.
    _lock: std::fs::File,
}

fn fingerprint(der: &[u8]) -> String {
    hex(&Sha256::digest(der))
}

/// Validity of gateway server and service certificates.
const SERVER_DAYS: i64 = 825;

/// Certificates signed, written and committed together: one fsync pass, one audit append and
/// one registry transaction per chunk.
const CHUNK: usize = 256;

/// A certificate signed in this run, not yet committed.
struct Signed {
    activation: Activation,
    event: Event,
    files: Vec<(PathBuf, Vec<u8>, bool)>,
}

impl Signed {
    fn new(
        device_id: &str,
        serial_hex: String,
        cert: pki::Signed,
        event: impl FnOnce(String) -> Event,
    ) -> Signed {
        let fingerprint_hex = fingerprint(&cert.der);
        Signed {
            event: event(fingerprint_hex.clone()),
            activation: Activation {
                device_id: device_id.to_owned(),
                not_after: cert.not_after,
                cert_der: cert.der,
                serial_hex,
                fingerprint_hex,
            },
            files: Vec::new(),
        }
    }
}

impl Station {
    /// Creates the CA hierarchy in `dir` (which must not already hold one).
    pub fn init(dir: &Path, org: &str, keys: KeyProtection) -> Result<Station, Error> {
        check_name("org", org, false)?;
        refuse_existing_ca(dir)?;
        let root = pki::new_root_ca(org)?;
        let issuing = pki::new_issuing_ca(&root, org)?;
        let pass = keys.passphrase();
        write_file(
            &dir.join("ca/root.key"),
            pki::key_to_pem(&root.key, pass)?.as_bytes(),
            true,
        )?;
        write_file(
            &dir.join("ca/issuing.key"),
            pki::key_to_pem(&issuing.key, pass)?.as_bytes(),
            true,
        )?;
        write_ca_certs(dir, &issuing.cert(), &root.cert())?;
        let mut station = Station::open(dir, pass)?;
        station.audit.append(Event::CaInit {
            org: org.to_owned(),
            root_fingerprint: fingerprint(&station.root.cert_der),
            issuing_fingerprint: fingerprint(&station.issuing.cert_der),
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
        refuse_existing_ca(dir)?;
        let pass = keys.passphrase();
        let read = |path: &Path| std::fs::read_to_string(path).map_err(io(path));
        let cert_of = |path: &Path| {
            CaCert::from_pem(&read(path)?).map_err(|message| Error::BadPem {
                path: path.to_owned(),
                message,
            })
        };
        let key_der = pki::key_from_pem(&read(issuing_key)?, issuing_key, pass)?;
        let cert = cert_of(issuing_cert)?;
        let root = root_cert.map_or_else(|| Ok(cert.clone()), cert_of)?;
        let ca = Ca::from_parts(&cert.cert_pem, &key_der)?;
        pki::check_importable(&ca, &root)?;
        write_file(
            &dir.join("ca/issuing.key"),
            pki::key_to_pem(&ca.key, pass)?.as_bytes(),
            true,
        )?;
        write_ca_certs(dir, &cert, &root)?;
        let mut station = Station::open(dir, pass)?;
        station.audit.append(Event::CaImport {
            issuing_fingerprint: fingerprint(&station.issuing.cert_der),
            root_fingerprint: fingerprint(&station.root.cert_der),
        })?;
        station.write_crl()?;
        Ok(station)
    }

    /// Opens an existing station directory; `passphrase` opens an encrypted issuing CA key.
    /// Settles what an earlier crash left behind (see [`Station::recovered`]).
    pub fn open(dir: &Path, passphrase: Option<&Passphrase>) -> Result<Station, Error> {
        let read = |rel: &str| -> Result<(PathBuf, String), Error> {
            let path = dir.join(rel);
            if !path.exists() {
                return Err(Error::NotAStation {
                    dir: dir.to_owned(),
                    what: path,
                });
            }
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            Ok((path, text))
        };
        let (root_path, root_text) = read("ca/root.pem")?;
        let root = CaCert::from_pem(&root_text).map_err(|message| Error::BadPem {
            path: root_path,
            message,
        })?;
        let (cert_path, cert_text) = read("ca/issuing.pem")?;
        let (key_path, key_text) = read("ca/issuing.key")?;
        let key_der = pki::key_from_pem(&key_text, &key_path, passphrase)?;
        let issuing = Ca::from_parts(&cert_text, &key_der).map_err(|e| Error::BadPem {
            path: cert_path.clone(),
            message: e.to_string(),
        })?;
        let issuing_not_after = x509_parser::parse_x509_certificate(&issuing.cert_der)
            .map_err(|e| Error::BadPem {
                path: cert_path,
                message: e.to_string(),
            })?
            .1
            .validity()
            .not_after
            .to_datetime();
        let lock_path = dir.join("station.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        // A lock held only for a moment (a process forked by this one between fork and exec
        // shares the descriptor) is waited out; a running `serve` or batch is not.
        let mut waited = 0;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if waited < 50 => {
                    waited += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::State(format!(
                        "{} is in use by another fleet-provision (is `serve` running? use its API, or stop it first)",
                        dir.display()
                    )))
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
            }
        }
        let registry = SqliteRegistry::open(&dir.join("registry.sqlite3"))?;
        let (audit, torn_bytes) = AuditLog::open(dir)?;
        let mut station = Station {
            dir: dir.to_owned(),
            root,
            issuing,
            issuing_not_after,
            registry,
            audit,
            recovered: Recovered::default(),
            _lock: lock,
        };
        station.recovered = station.recover(torn_bytes)?;
        Ok(station)
    }

    /// Settles reservations a crash or failure left: aborts them (their serials go on the
    /// CRL in case they were signed), removes files written for them, and records it.
    fn recover(&mut self, torn_bytes: usize) -> Result<Recovered, Error> {
        let aborted = self.registry.abort_reserved()?;
        if aborted.is_empty() && torn_bytes == 0 {
            return Ok(Recovered::default());
        }
        for cert in &aborted {
            let delivered = self
                .registry
                .device(&cert.device_id)?
                .iter()
                .any(|c| c.status != registry::Status::Aborted);
            if delivered {
                continue;
            }
            let out = self.registry.batch_out_dir(&cert.batch)?;
            let out = out.map_or_else(|| self.dir.join("devices"), PathBuf::from);
            for ext in ["bin", "pem", "hex"] {
                let file = out.join(format!("{}.{ext}", cert.device_id));
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&file)(e)),
                }
            }
        }
        let recovered = Recovered {
            aborted: aborted.into_iter().map(|c| c.serial_hex).collect(),
            torn_bytes,
        };
        self.audit.append(Event::Recovery {
            aborted: recovered.aborted.clone(),
            torn_bytes,
        })?;
        if !recovered.aborted.is_empty() {
            self.write_crl()?;
        }
        Ok(recovered)
    }

    /// After a failed operation: settle its reservations now rather than at the next run.
    fn settle<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if result.is_err() {
            // Best effort: the original error is what the caller needs to see; whatever is
            // left is settled by the next `open`.
            let _ = self.recover(0);
        }
        result
    }

    /// What opening this station found after a crash and settled.
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }

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

    /// The gateway server certificate for these host names / IP addresses.
    pub fn issue_server_cert(&self, hosts: &[&str]) -> Result<IssuedFiles, Error> {
        self.check_ca_valid()?;
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

    /// A server certificate held in memory (e.g. for `fleet-provision serve`), recorded in
    /// the audit log: (chain PEM, PKCS#8 key PEM).
    pub fn issue_server_identity(&self, hosts: &[&str]) -> Result<(String, String), Error> {
        self.check_ca_valid()?;
        let issued = pki::sign_server(&self.issuing, hosts, SERVER_DAYS)?;
        self.audit.append(Event::ServerCert {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            fingerprint: fingerprint(&issued.cert_der),
        })?;
        let chain = format!("{}{}", issued.cert_pem, self.issuing.cert_pem);
        Ok((chain, issued.key.serialize_pem()))
    }

    /// A backend service identity (it keeps its key: it runs in the cloud, not on a board).
    pub fn issue_service_cert(&self, name: &str, tenant: &str) -> Result<IssuedFiles, Error> {
        self.issue_role_cert(name, tenant, "service")
    }

    /// The gateway's client identity towards the station API (subject OU=gateway): it may
    /// renew certificates on behalf of the devices it authenticated, nothing else.
    pub fn issue_gateway_client_cert(&self, name: &str) -> Result<IssuedFiles, Error> {
        self.issue_role_cert(name, "fleet-gateway", "gateway")
    }

    fn issue_role_cert(&self, name: &str, tenant: &str, role: &str) -> Result<IssuedFiles, Error> {
        check_name("service name", name, true)?;
        check_name("tenant", tenant, true)?;
        self.check_ca_valid()?;
        let issued = pki::sign_role(&self.issuing, name, tenant, role, SERVER_DAYS)?;
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

    fn new_batch(&mut self, out_dir: Option<&Path>) -> Result<String, Error> {
        let batch = format!(
            "batch-{}-{:08x}",
            time::OffsetDateTime::now_utc().unix_timestamp(),
            OsRng.next_u32()
        );
        let out = out_dir.map(|p| p.to_string_lossy().into_owned());
        self.registry.begin_batch(&batch, out.as_deref())?;
        Ok(batch)
    }

    /// Makes a chunk of signed certificates durable and live: files (one filesystem sync),
    /// then their audit records (one fsync), then the registry (one transaction).
    fn deliver(&mut self, chunk: Vec<Signed>) -> Result<Vec<Activation>, Error> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for s in &chunk {
            for (path, bytes, secret) in &s.files {
                write_file_unsynced(path, bytes, *secret)?;
                let parent = path.parent().unwrap_or(Path::new(".")).to_owned();
                if !dirs.contains(&parent) {
                    dirs.push(parent);
                }
            }
        }
        for dir in &dirs {
            sync_filesystem(dir)?;
        }
        let (activations, events): (Vec<_>, Vec<_>) =
            chunk.into_iter().map(|s| (s.activation, s.event)).unzip();
        self.audit.append_many(events)?;
        self.registry.activate(&activations)?;
        Ok(activations)
    }

    /// Issues a batch of devices into `out` (default `DIR/devices`); `progress` is called
    /// after each one.
    pub fn issue_devices_with(
        &mut self,
        req: &BatchRequest,
        out: Option<&Path>,
        progress: impl FnMut(&DeviceIssued),
    ) -> Result<Vec<DeviceIssued>, Error> {
        check_name("tenant", &req.tenant, true)?;
        positive("count", req.count)?;
        positive("validity days", req.validity_days)?;
        if !fleet_firmware::bundle::valid_host(&req.gateway_host) {
            return Err(Error::InvalidInput {
                field: "gateway host",
                message: format!("{:?} is not a DNS name or IP address", req.gateway_host),
            });
        }
        positive("gateway port", u32::from(req.gateway_port))?;
        self.check_ca_valid()?;
        let result = self.issue_devices_inner(req, out, progress);
        self.settle(result)
    }

    fn issue_devices_inner(
        &mut self,
        req: &BatchRequest,
        out: Option<&Path>,
        mut progress: impl FnMut(&DeviceIssued),
    ) -> Result<Vec<DeviceIssued>, Error> {
        let batch = self.new_batch(out)?;
        let out = out.map_or_else(|| self.dir.join("devices"), Path::to_owned);
        let mut issued = Vec::with_capacity(req.count as usize);
        let mut manifest = Manifest {
            batch: batch.clone(),
            tenant: req.tenant.clone(),
            devices: Vec::with_capacity(req.count as usize),
        };
        let mut left = req.count as usize;
        while left > 0 {
            let n = left.min(CHUNK);
            left -= n;
            let serials: Vec<Vec<u8>> = (0..n).map(|_| pki::random_serial()).collect();
            let reservations: Vec<Reservation> = serials
                .iter()
                .map(|s| Reservation {
                    tenant: req.tenant.clone(),
                    batch: batch.clone(),
                    serial_hex: hex(s),
                    device: DeviceId::Next,
                })
                .collect();
            // Durable reservation first: a crash after this never reuses the ids or serials.
            let ids = self.registry.reserve(&reservations)?;
            let mut chunk = Vec::with_capacity(n);
            let mut done = Vec::with_capacity(n);
            for (device_id, serial) in ids.into_iter().zip(serials) {
                let (signed, device) = self.sign_injected(req, &batch, &out, device_id, &serial)?;
                chunk.push(signed);
                done.push(device);
            }
            for a in self.deliver(chunk)? {
                let device = done.remove(0);
                manifest.devices.push((
                    device.device_id.clone(),
                    device.serial_hex.clone(),
                    a.fingerprint_hex,
                ));
                progress(&device);
                issued.push(device);
            }
        }
        self.seal_batch(&manifest)?;
        Ok(issued)
    }

    /// Key injection for one device: a fresh key, its certificate, and the bundle holding both.
    fn sign_injected(
        &self,
        req: &BatchRequest,
        batch: &str,
        out: &Path,
        device_id: String,
        serial: &[u8],
    ) -> Result<(Signed, DeviceIssued), Error> {
        let serial_hex = hex(serial);
        let cert = pki::sign_device_with_serial(
            &self.issuing,
            &device_id,
            &req.tenant,
            i64::from(req.validity_days),
            serial,
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
        let device = DeviceIssued {
            bundle_path: out.join(format!("{device_id}.bin")),
            cert_pem_path: out.join(format!("{device_id}.pem")),
            device_id: device_id.clone(),
            serial_hex: serial_hex.clone(),
        };
        let der = pki::Signed {
            der: cert.cert_der,
            not_after: cert.not_after,
        };
        let mut signed = Signed::new(&device_id, serial_hex.clone(), der, |fingerprint| {
            Event::Issue {
                device_id: device_id.clone(),
                tenant: req.tenant.clone(),
                serial: serial_hex,
                fingerprint,
                batch: batch.to_owned(),
            }
        });
        signed.files = vec![
            (
                device.cert_pem_path.clone(),
                cert.cert_pem.into_bytes(),
                false,
            ),
            (device.bundle_path.clone(), bytes, true),
        ];
        Ok((signed, device))
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

    /// Issues a batch of devices into `DIR/devices`.
    pub fn issue_devices(&mut self, req: &BatchRequest) -> Result<Vec<DeviceIssued>, Error> {
        self.issue_devices_with(req, None, |_| {})
    }

    /// CSR flow: certifies keys the devices generated themselves (the private keys never
    /// leave them). Every request is checked before anything is reserved; a refused one
    /// fails the call with its position.
    pub fn certify_csrs(
        &mut self,
        req: &CsrRequest,
        csrs: &[CsrInput],
        progress: impl FnMut(&Certified),
    ) -> Result<Vec<Certified>, Error> {
        check_name("tenant", &req.tenant, true)?;
        positive("validity days", req.validity_days)?;
        self.check_ca_valid()?;
        let mut checked = Vec::with_capacity(csrs.len());
        for (i, input) in csrs.iter().enumerate() {
            let at = |e: Error| match e {
                Error::Csr(m) => Error::Csr(format!("request {} of {}: {m}", i + 1, csrs.len())),
                other => other,
            };
            if let Some(id) = &input.device_id {
                check_name("device id", id, true)?;
            }
            checked.push(pki::check_csr(&input.der).map_err(at)?);
        }
        let result = self.certify_inner(req, csrs, &checked, progress);
        self.settle(result)
    }

    fn certify_inner(
        &mut self,
        req: &CsrRequest,
        csrs: &[CsrInput],
        checked: &[CheckedCsr],
        mut progress: impl FnMut(&Certified),
    ) -> Result<Vec<Certified>, Error> {
        let batch = self.new_batch(None)?;
        let mut manifest = Manifest {
            batch: batch.clone(),
            tenant: req.tenant.clone(),
            devices: Vec::with_capacity(csrs.len()),
        };
        let mut out = Vec::with_capacity(csrs.len());
        for (inputs, keys) in csrs.chunks(CHUNK).zip(checked.chunks(CHUNK)) {
            let serials: Vec<Vec<u8>> = inputs.iter().map(|_| pki::random_serial()).collect();
            let reservations: Vec<Reservation> = inputs
                .iter()
                .zip(&serials)
                .map(|(input, s)| Reservation {
                    tenant: req.tenant.clone(),
                    batch: batch.clone(),
                    serial_hex: hex(s),
                    device: input
                        .device_id
                        .clone()
                        .map_or(DeviceId::Next, DeviceId::New),
                })
                .collect();
            let ids = self.registry.reserve(&reservations)?;
            let mut chunk = Vec::with_capacity(inputs.len());
            for ((device_id, serial), key) in ids.iter().zip(&serials).zip(keys) {
                let der = pki::sign_device_key(
                    &self.issuing,
                    key,
                    device_id,
                    &req.tenant,
                    i64::from(req.validity_days),
                    serial,
                )?;
                chunk.push(Signed::new(device_id, hex(serial), der, |fingerprint| {
                    Event::Issue {
                        device_id: device_id.clone(),
                        tenant: req.tenant.clone(),
                        serial: hex(serial),
                        fingerprint,
                        batch: batch.clone(),
                    }
                }));
            }
            for (a, device_id) in self.deliver(chunk)?.into_iter().zip(ids) {
                manifest.devices.push((
                    device_id.clone(),
                    a.serial_hex.clone(),
                    a.fingerprint_hex.clone(),
                ));
                let c = Certified {
                    device_id,
                    tenant: req.tenant.clone(),
                    serial_hex: a.serial_hex,
                    fingerprint_hex: a.fingerprint_hex,
                    not_after: a.not_after,
                    cert_der: a.cert_der,
                };
                progress(&c);
                out.push(c);
            }
        }
        self.seal_batch(&manifest)?;
        Ok(out)
    }

    /// Renewal: a device that proved it holds the certificate `presented_serial_hex` (over
    /// mTLS) gets a new certificate for the same device id and the new key in its CSR. The
    /// presented certificate must be the device's active one, or one superseded by an
    /// earlier renewal whose answer the device never received, and not revoked. Every
    /// older certificate of the device becomes superseded (revoked when its grace ends).
    pub fn renew(
        &mut self,
        device_id: &str,
        presented_serial_hex: &str,
        csr_der: &[u8],
        validity_days: u32,
    ) -> Result<Certified, Error> {
        positive("validity days", validity_days)?;
        self.check_ca_valid()?;
        let presented = self
            .registry
            .cert(presented_serial_hex)?
            .filter(|c| c.device_id == device_id)
            .ok_or_else(|| {
                Error::Forbidden(format!(
                    "certificate {presented_serial_hex} is not one of {device_id}'s"
                ))
            })?;
        match presented.status {
            registry::Status::Active | registry::Status::Superseded => {}
            other => {
                return Err(Error::Forbidden(format!(
                    "certificate {presented_serial_hex} of {device_id} is {}",
                    other.name()
                )))
            }
        }
        let key = pki::check_csr(csr_der)?;
        let old_der = self
            .registry
            .cert_der(presented_serial_hex)?
            .unwrap_or_default();
        let old_key = x509_parser::parse_x509_certificate(&old_der)
            .map(|(_, c)| c.public_key().subject_public_key.data.to_vec())
            .unwrap_or_default();
        if old_key == key.public_key {
            return Err(Error::Csr(
                "it carries the key of the current certificate; renewal needs a new key".into(),
            ));
        }
        let result = self.renew_inner(&presented, &key, validity_days);
        self.settle(result)
    }

    fn renew_inner(
        &mut self,
        presented: &CertRecord,
        key: &CheckedCsr,
        validity_days: u32,
    ) -> Result<Certified, Error> {
        let serial = pki::random_serial();
        let serial_hex = hex(&serial);
        self.registry.reserve(&[Reservation {
            tenant: presented.tenant.clone(),
            batch: presented.batch.clone(),
            serial_hex: serial_hex.clone(),
            device: DeviceId::Existing(presented.device_id.clone()),
        }])?;
        let der = pki::sign_device_key(
            &self.issuing,
            key,
            &presented.device_id,
            &presented.tenant,
            i64::from(validity_days),
            &serial,
        )?;
        let signed = Signed::new(
            &presented.device_id,
            serial_hex.clone(),
            der,
            |fingerprint| Event::Renew {
                device_id: presented.device_id.clone(),
                serial: serial_hex,
                fingerprint,
                presented: presented.serial_hex.clone(),
            },
        );
        let a = self
            .deliver(vec![signed])?
            .pop()
            .ok_or_else(|| Error::State("renewal delivered nothing".into()))?;
        Ok(Certified {
            device_id: presented.device_id.clone(),
            tenant: presented.tenant.clone(),
            serial_hex: a.serial_hex,
            fingerprint_hex: a.fingerprint_hex,
            not_after: a.not_after,
            cert_der: a.cert_der,
        })
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

    /// Where the station writes its CRL (PEM); point the gateway's `tls.crl` at it.
    pub fn crl_path(&self) -> PathBuf {
        self.dir.join("crl/issuing.crl.pem")
    }

    /// Revokes a device (its active and any superseded certificates): the registry first,
    /// then a new CRL with every revoked serial.
    pub fn revoke(&mut self, device_id: &str, reason: Reason) -> Result<Revoked, Error> {
        let records = self.registry.revoke_device(device_id, reason.name())?;
        self.audit
            .append_many(records.iter().map(|r| Event::Revoke {
                device_id: r.device_id.clone(),
                serial: r.serial_hex.clone(),
                reason: reason.name().to_owned(),
            }))?;
        let crl_path = self.write_crl()?;
        Ok(Revoked { records, crl_path })
    }

    /// Writes a fresh CRL (signed by the issuing CA, nextUpdate in 7 days) listing every
    /// revoked certificate and every aborted reservation, atomically, and returns its path.
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

    /// Every certificate in the registry.
    pub fn devices(&self) -> Result<Vec<CertRecord>, Error> {
        self.registry.list()
    }

    /// One device's certificates, oldest first.
    pub fn device(&self, device_id: &str) -> Result<Vec<CertRecord>, Error> {
        let certs = self.registry.device(device_id)?;
        if certs.is_empty() {
            return Err(Error::UnknownDevice(device_id.to_owned()));
        }
        Ok(certs)
    }

    /// A delivered certificate's DER.
    pub fn cert_der(&self, serial_hex: &str) -> Result<Option<Vec<u8>>, Error> {
        self.registry.cert_der(serial_hex)
    }
}

/// Every certificate in a station's registry, without its CA key or its writer lock (so it
/// works while `serve` runs).
pub fn list_registry(dir: &Path, device_id: Option<&str>) -> Result<Vec<CertRecord>, Error> {
    let path = dir.join("registry.sqlite3");
    if !path.exists() {
        return Err(Error::NotAStation {
            dir: dir.to_owned(),
            what: path,
        });
    }
    let registry = SqliteRegistry::open(&path)?;
    match device_id {
        None => registry.list(),
        Some(id) => {
            let certs = registry.device(id)?;
            if certs.is_empty() {
                return Err(Error::UnknownDevice(id.to_owned()));
            }
            Ok(certs)
        }
    }
}

/// Checks the audit log of a station directory without opening its CA key.
pub fn verify_audit_dir(dir: &Path) -> Result<audit::Verified, Vec<String>> {
    let path = dir.join("ca/issuing.pem");
    let cert = std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| CaCert::from_pem(&t))
        .map_err(|e| vec![format!("{}: {e}", path.display())])?;
    audit::verify(dir, &cert.cert_der)
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

fn positive(field: &'static str, n: u32) -> Result<(), Error> {
    if n == 0 {
        return Err(Error::InvalidInput {
            field,
            message: "must be at least 1".into(),
        });
    }
    Ok(())
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
    let cert = pki::cert_to_pem(bundle.cert_der);
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

/// Writes a file without waiting for the disk; `secret` files get mode 0600. Callers make
/// it durable with [`sync_filesystem`] before relying on it.
fn write_file_unsynced(path: &Path, bytes: &[u8], secret: bool) -> Result<(), Error> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))
}

/// Makes everything written to the filesystem holding `dir` durable: one `syncfs` instead of
/// an fsync per file (issuing thousands of devices a second depends on it).
fn sync_filesystem(dir: &Path) -> Result<(), Error> {
    let f = std::fs::File::open(dir).map_err(io(dir))?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: `f` is an open file descriptor for the duration of the call; syncfs only
        // reads it.
        if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
            return Err(io(dir)(std::io::Error::last_os_error()));
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Without syncfs: fsync every file in the directory, then the directory itself.
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if path.is_file() {
                std::fs::File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io(&path))?;
            }
        }
        f.sync_all().map_err(io(dir))
    }
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
