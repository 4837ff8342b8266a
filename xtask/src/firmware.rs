//! Cross builds of the firmware with Debian's Rust (rustup here has only x86_64 targets).

use std::process::Command;

use crate::sh::{self, step};

/// Targets the firmware core must build for: Cortex-M4F/M7 and ESP32-C3.
pub const TARGETS: [&str; 2] = ["thumbv7em-none-eabihf", "riscv32imc-unknown-none-elf"];

/// Installs Debian's Rust when missing and builds the `#![no_std]` firmware crate for every
/// embedded target (core and alloc built from source with `-Zbuild-std`).
pub fn build() -> anyhow::Result<()> {
    // Absolute paths: rustup's rustc and cargo come first on PATH and would hide a missing
    // Debian toolchain.
    sh::ensure_debian_packages(&[
        ("/usr/bin/rustc", "rustc-web"),
        ("/usr/bin/cargo", "cargo-web"),
        ("/usr/lib/rustlib/src/rust/library/core", "rust-web-src"),
        ("/usr/bin/ld.lld-19", "lld-19"),
    ])?;
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
    Ok(())
}
