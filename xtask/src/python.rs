//! The Python venv of the MQTT conformance suite (`tests/tests/conformance.rs`): paho-mqtt,
//! an MQTT client library nobody here wrote, from PyPI, pinned.

use std::path::PathBuf;
use std::process::Command;

use crate::sh;

/// The paho-mqtt release the suite is written against.
const PAHO_VERSION: &str = "2.1.0";

/// Where the venv lives (inside `target/`, so `cargo clean` removes it).
const VENV: &str = "target/conformance-venv";

/// Makes `target/conformance-venv` with paho-mqtt unless it is already there; returns the
/// absolute path of its interpreter (for FLEET_PAHO_PYTHON).
pub fn ensure_paho_venv() -> anyhow::Result<PathBuf> {
    let python = PathBuf::from(VENV).join("bin/python");
    if python.is_file() && succeeds(Command::new(&python).args(["-c", &paho_check()])) {
        return Ok(std::path::absolute(python)?);
    }
    sh::ensure_debian_packages(&[("python3", "python3")])?;
    // Debian's python3 has `venv` without `ensurepip` unless python3-venv is installed (its
    // documentation directory marks that package as installed).
    if !succeeds(Command::new("python3").args(["-c", "import ensurepip, venv"])) {
        sh::ensure_debian_packages(&[("/usr/share/doc/python3-venv", "python3-venv")])?;
    }
    sh::step(&format!(
        "python3 -m venv {VENV} && pip install paho-mqtt=={PAHO_VERSION}"
    ));
    sh::run(Command::new("python3").args(["-m", "venv", VENV]))?;
    sh::run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("paho-mqtt=={PAHO_VERSION}"),
    ]))?;
    Ok(std::path::absolute(python)?)
}

/// Python that exits 0 when the pinned paho-mqtt is importable.
fn paho_check() -> String {
    format!("import sys, paho.mqtt; sys.exit(paho.mqtt.__version__ != '{PAHO_VERSION}')")
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
