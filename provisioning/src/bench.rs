//! `fleet-provision bench`: issuance throughput of both flows in a scratch station, with its
//! registry in the station directory (SQLite) or in a shared PostgreSQL database.
//!
//! Everything a real issuance does is timed: CSR checks, signing, the identity bundle and its
//! files (key injection), the registry transactions, the audit records and the batch manifest.
//! Device key generation for the CSR flow happens on the devices, so the CSRs are made before
//! the clock starts.
//!
//! Several stations on one database are several `bench` processes, each with a scratch
//! station of its own whose issuing CA the same root signs ([`Options::root`]), started
//! together by whoever runs them ([`Options::sync`]: each waits for a go line on stdin
//! before each timed flow) and timed against the wall clock, so the runner can take the
//! span from the first start to the last end.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::fs::read_to_string;
use crate::pki::{self, Ca};
use crate::{
    BatchRequest, CsrInput, CsrRequest, Error, ImportFiles, KeyProtection, RegistryLocation,
    Station,
};

/// What to measure and where.
#[derive(Clone, Default)]
pub struct Options {
    /// Devices per flow.
    pub devices: u32,
    /// Where the scratch station's registry is.
    pub registry: RegistryLocation,
    /// A station directory whose root CA (`ca/root.pem`, `ca/root.key`, unencrypted) signs
    /// the scratch station's issuing CA; without it the station makes a root of its own.
    pub root: Option<PathBuf>,
    /// Before each timed flow, print `ready <flow>` on stdout and wait for a line on stdin.
    pub sync: bool,
}

/// One flow's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub devices: u32,
    pub seconds: f64,
    pub per_second: f64,
    /// When the flow started and ended, Unix seconds (for a run of several stations).
    pub started_at: f64,
    pub ended_at: f64,
}

/// What `run` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// CSR flow: check + sign + registry + audit.
    pub csr_flow: Flow,
    /// Key injection: key generation + sign + bundle + files + registry + audit.
    pub key_injection: Flow,
    /// Bytes of registry + audit log per device after both flows (SQLite station only).
    pub storage_bytes_per_device: Option<f64>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Times a flow from `started`/`started_at` to now.
fn flow(devices: u32, started: Instant, started_at: f64) -> Flow {
    let seconds = started.elapsed().as_secs_f64();
    Flow {
        devices,
        seconds,
        per_second: f64::from(devices) / seconds.max(1e-9),
        started_at,
        ended_at: unix_now(),
    }
}

/// A scratch directory that is removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits for the go line when `sync`; returns the clock's start.
fn start(sync: bool, what: &str) -> Result<(Instant, f64), Error> {
    if sync {
        let io = |source| Error::Io {
            path: PathBuf::from("<stdin/stdout>"),
            source,
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {what}").map_err(io)?;
        out.flush().map_err(io)?;
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).map_err(io)? == 0 {
            return Err(Error::InvalidInput {
                field: "sync",
                message: format!("stdin closed before the go for {what}"),
            });
        }
    }
    Ok((Instant::now(), unix_now()))
}

/// The scratch station: a root of its own, or an issuing CA under `root`'s root CA.
fn scratch_station(dir: &Path, opts: &Options) -> Result<Station, Error> {
    let keys = KeyProtection::InsecurePlaintext;
    let Some(root_dir) = &opts.root else {
        return Station::init_at(dir, "Bench", keys, &opts.registry);
    };
    let cert_path = root_dir.join("ca/root.pem");
    let key_path = root_dir.join("ca/root.key");
    let key = pki::key_from_pem(&read_to_string(&key_path)?, &key_path, None)?;
    let root = Ca::from_parts(&read_to_string(&cert_path)?, &key)?;
    let issuing = pki::new_issuing_ca(&root, "Bench")?;
    let files = dir.with_extension("issuing");
    let (cert, key) = (files.join("issuing.pem"), files.join("issuing.key"));
    crate::write_file(&cert, issuing.cert_pem.as_bytes(), false)?;
    crate::write_file(&key, pki::key_to_pem(&issuing.key, None)?.as_bytes(), true)?;
    let import = ImportFiles {
        cert: &cert,
        key: &key,
        root: Some(&cert_path),
    };
    let station = Station::import_at(dir, &import, keys, &opts.registry);
    let _ = std::fs::remove_dir_all(&files);
    station
}

/// Issues `opts.devices` devices with each flow; `progress(phase, done, total)` reports as
/// it goes.
pub fn run(opts: &Options, progress: &mut dyn FnMut(&str, u64, u64)) -> Result<Report, Error> {
    let devices = opts.devices;
    if devices == 0 {
        return Err(Error::InvalidInput {
            field: "devices",
            message: "must be at least 1".into(),
        });
    }
    let dir = Scratch(std::env::temp_dir().join(format!(
        "fleet-provision-bench-{}-{}",
        std::process::id(),
        hex::encode(&crate::pki::random_serial()[..4])
    )));
    let mut station = scratch_station(&dir.0, opts)?;
    let total = u64::from(devices);

    let mut csrs = Vec::with_capacity(devices as usize);
    for i in 0..devices {
        let key = rcgen::KeyPair::generate()?;
        let csr = rcgen::CertificateParams::default().serialize_request(&key)?;
        csrs.push(CsrInput {
            der: csr.der().to_vec(),
            device_id: None,
        });
        if i % 500 == 0 {
            progress("making device CSRs (not timed)", u64::from(i), total);
        }
    }
    let req = CsrRequest {
        tenant: "bench-csr".into(),
        validity_days: 365,
    };
    let mut done = 0;
    let (started, at) = start(opts.sync, "csr")?;
    station.certify_csrs(&req, &csrs, |_| {
        done += 1;
        if done % 256 == 0 {
            progress("CSR flow", done, total);
        }
    })?;
    let csr_flow = flow(devices, started, at);

    let req = BatchRequest {
        tenant: "bench-keys".into(),
        count: devices,
        gateway_host: "gateway.example".into(),
        gateway_port: 8883,
        validity_days: 365,
    };
    let mut done = 0;
    let (started, at) = start(opts.sync, "keys")?;
    station.issue_devices_with(&req, None, |_| {
        done += 1;
        if done % 256 == 0 {
            progress("key injection", done, total);
        }
    })?;
    let key_injection = flow(devices, started, at);
    let storage_bytes_per_device =
        matches!(opts.registry, RegistryLocation::StationDir).then(|| {
            let bytes: u64 = ["registry.sqlite3", "registry.sqlite3-wal", "audit.log"]
                .iter()
                .filter_map(|f| std::fs::metadata(dir.0.join(f)).ok())
                .map(|m| m.len())
                .sum();
            bytes as f64 / (2.0 * f64::from(devices))
        });
    Ok(Report {
        csr_flow,
        key_injection,
        storage_bytes_per_device,
    })
}
