//! Cross builds of the firmware with Debian's Rust (rustup here has only x86_64 targets).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sh::{self, step};

/// Targets the firmware core must build for: Cortex-M4F/M7 and ESP32-C3.
pub const TARGETS: [&str; 2] = ["thumbv7em-none-eabihf", "riscv32imc-unknown-none-elf"];

/// A board crate under `firmware/boards/` and the image it produces.
pub struct Board {
    pub name: &'static str,
    pub target: &'static str,
    pub bin: &'static str,
}

/// Every board crate the test command builds.
pub const BOARDS: [Board; 1] = [Board {
    name: "qemu-mps2-an386",
    target: "thumbv7em-none-eabihf",
    bin: "fleet-qemu-mps2-an386",
}];

impl Board {
    /// Where `cargo xtask firmware build` leaves the image (ELF).
    pub fn image(&self) -> PathBuf {
        Path::new("target/boards")
            .join(self.name)
            .join(self.target)
            .join("release")
            .join(self.bin)
    }
}

/// Debian's toolchain for the cross builds, installed when missing.
fn ensure_toolchain() -> anyhow::Result<()> {
    // Absolute paths: rustup's rustc and cargo come first on PATH and would hide a missing
    // Debian toolchain.
    sh::ensure_debian_packages(&[
        ("/usr/bin/rustc", "rustc-web"),
        ("/usr/bin/cargo", "cargo-web"),
        ("/usr/lib/rustlib/src/rust/library/core", "rust-web-src"),
        ("/usr/bin/ld.lld-19", "lld-19"),
    ])
}

/// Installs Debian's Rust when missing, builds the `#![no_std]` firmware crate for every
/// embedded target (core and alloc built from source with `-Zbuild-std`), then every board.
pub fn build() -> anyhow::Result<()> {
    ensure_toolchain()?;
    for target in TARGETS {
        step(&format!(
            "fleet-firmware for {target} (Debian rustc, -Zbuild-std)"
        ));
        sh::run(
            Command::new("/usr/bin/cargo")
                .args(["build", "--release", "--quiet", "-p", "fleet-firmware"])
                .args(["-Zbuild-std=core,alloc", "--target", target])
                // rustup's rustc comes first on PATH; Debian's is the one with these targets.
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env("CARGO_TARGET_DIR", "target/cross"),
        )?;
    }
    build_boards()
}

/// Builds each board crate (standalone, with its own `.cargo/config.toml`: target, linker,
/// `-Zbuild-std`, release profile for size).
pub fn build_boards() -> anyhow::Result<()> {
    ensure_toolchain()?;
    let root = std::env::current_dir()?;
    for board in &BOARDS {
        step(&format!("board {} ({})", board.name, board.target));
        sh::run(
            Command::new("/usr/bin/cargo")
                .args(["build", "--release", "--quiet", "--locked"])
                .current_dir(root.join("firmware/boards").join(board.name))
                .env("RUSTC", "/usr/bin/rustc")
                .env("RUSTC_BOOTSTRAP", "1")
                .env(
                    "CARGO_TARGET_DIR",
                    root.join("target/boards").join(board.name),
                ),
        )?;
    }
    Ok(())
}
