//! `fleet-provision bench`: issuance throughput of both flows in a scratch station.
//!
//! Everything a real issuance does is timed: CSR checks, signing, the identity bundle and its
//! files (key injection), the registry transactions, the audit records and the batch manifest.
//! Device key generation for the CSR flow happens on the devices, so the CSRs are made before
//! the clock starts.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::{BatchRequest, CsrInput, CsrRequest, Error, KeyProtection, Station};

/// One flow's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub devices: u32,
    pub seconds: f64,
    pub per_second: f64,
}

/// What `run` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// CSR flow: check + sign + registry + audit.
    pub csr_flow: Flow,
    /// Key injection: key generation + sign + bundle + files + registry + audit.
    pub key_injection: Flow,
    /// Bytes of registry + audit log per device after both flows.
    pub storage_bytes_per_device: f64,
}

fn flow(devices: u32, started: Instant) -> Flow {
    let seconds = started.elapsed().as_secs_f64();
    Flow {
        devices,
        seconds,
        per_second: f64::from(devices) / seconds.max(1e-9),
    }
}

/// A scratch directory that is removed when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Issues `devices` devices with each flow; `progress(phase, done, total)` reports as it goes.
pub fn run(devices: u32, progress: &mut dyn FnMut(&str, u64, u64)) -> Result<Report, Error> {
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
    let mut station = Station::init(&dir.0, "Bench", KeyProtection::InsecurePlaintext)?;
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
    let started = Instant::now();
    station.certify_csrs(&req, &csrs, |_| {
        done += 1;
        if done % 256 == 0 {
            progress("CSR flow", done, total);
        }
    })?;
    let csr_flow = flow(devices, started);

    let req = BatchRequest {
        tenant: "bench-keys".into(),
        count: devices,
        gateway_host: "gateway.example".into(),
        gateway_port: 8883,
        validity_days: 365,
    };
    let mut done = 0;
    let started = Instant::now();
    station.issue_devices_with(&req, None, |_| {
        done += 1;
        if done % 256 == 0 {
            progress("key injection", done, total);
        }
    })?;
    let key_injection = flow(devices, started);
    let bytes: u64 = ["registry.sqlite3", "registry.sqlite3-wal", "audit.log"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.0.join(f)).ok())
        .map(|m| m.len())
        .sum();
    Ok(Report {
        csr_flow,
        key_injection,
        storage_bytes_per_device: bytes as f64 / (2.0 * f64::from(devices)),
    })
}
