//! `cargo xtask bench gateway`: our gateway against Debian's Mosquitto 2, same PKI, same load
//! generator, one run, per core (see [`gateway`]). Writes its section of BENCHMARKS.md and
//! bench/gateway.svg.
//!
//! `cargo xtask bench provisioning`: the station's issuance throughput on one core, both flows.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::sh::{self, step};

mod gateway;
mod gateway_report;

pub use gateway::{gateway, gateway_report_only, GatewayOptions};

/// Replaces one bench's section of BENCHMARKS.md (between its markers), keeping the others.
pub fn write_section(name: &str, body: &str) -> anyhow::Result<()> {
    let (start, end) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let block = format!("{start}\n{}\n{end}", body.trim_end());
    let old = std::fs::read_to_string("BENCHMARKS.md").unwrap_or_default();
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &old[..a], &old[b + end.len()..]),
        _ if old.trim().is_empty() => format!("# Benchmarks\n\n{block}\n"),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    std::fs::write("BENCHMARKS.md", new)?;
    Ok(())
}

#[derive(Debug, Deserialize)]
struct Flow {
    devices: u32,
    seconds: f64,
    per_second: f64,
}

#[derive(Debug, Deserialize)]
struct Provisioning {
    csr_flow: Flow,
    key_injection: Flow,
    storage_bytes_per_device: f64,
}

/// Issuance throughput of the station on one core (`taskset -c 0`), both flows.
pub fn provisioning(devices: u32) -> anyhow::Result<()> {
    step("building fleet-provision (release)");
    sh::cargo(&["build", "--release", "--quiet", "-p", "fleet-provision"])?;
    step(&format!("issuing {devices} devices per flow on one core"));
    let mut cmd = if Path::new("/usr/bin/taskset").exists() {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg("target/release/fleet-provision");
        c
    } else {
        Command::new("target/release/fleet-provision")
    };
    let out = cmd
        .args(["bench", "--devices", &devices.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run fleet-provision bench")?;
    if !out.status.success() {
        bail!("fleet-provision bench failed: {}", out.status);
    }
    let r: Provisioning = serde_json::from_slice(&out.stdout)?;
    let host = cpu_model();
    let mut s = String::new();
    s.push_str("## Provisioning station\n\n");
    s.push_str(&format!(
        "Written by `cargo xtask bench provisioning`: `fleet-provision bench` pinned to one core of a {host}, \
         in a scratch station on the local disk. Every certificate is fully issued: checks, signature, \
         registry transactions (reserve before signing, activate after delivery), hash-chained audit records \
         and the signed batch manifest, committed in groups of 256 (one filesystem sync, one audit fsync and \
         two SQLite transactions per group). The CSR flow excludes device key generation (it happens on the \
         devices); key injection includes the station's key generation and writing each bundle and PEM file. \
         No competitor to compare with here: AWS IoT Core, EMQX and Mosquitto have no factory station.\n\n"
    ));
    s.push_str("| measure | result | target |\n|---|---|---|\n");
    s.push_str(&format!(
        "| CSR flow: certificates/s (CSR check + sign + registry + audit) | {:.0} | ≥ 10,000 |\n",
        r.csr_flow.per_second
    ));
    s.push_str(&format!(
        "| CSR flow: {} devices | {:.2} s | — |\n",
        r.csr_flow.devices, r.csr_flow.seconds
    ));
    s.push_str(&format!(
        "| key injection: devices/s (keygen + sign + bundle + 2 files + registry + audit) | {:.0} | — |\n",
        r.key_injection.per_second
    ));
    s.push_str(&format!(
        "| key injection: a {}-device batch | {:.2} s | — |\n",
        r.key_injection.devices, r.key_injection.seconds
    ));
    s.push_str(&format!(
        "| registry + audit log per device | {:.0} bytes | — |\n",
        r.storage_bytes_per_device
    ));
    println!("\n{s}");
    write_section("provisioning", &s)?;
    println!("written: BENCHMARKS.md");
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
