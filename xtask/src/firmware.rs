//! Cross builds of the firmware with Debian's Rust (rustup here has only x86_64 targets).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::sh::{self, step};

/// Targets the firmware core must build for: Cortex-M4F/M7 and ESP32-C3.
pub const TARGETS: [&str; 2] = ["thumbv7em-none-eabihf", "riscv32imc-unknown-none-elf"];

/// A board crate under `firmware/boards/` and the image it produces.
pub struct Board {
    pub name: &'static str,
    /// The board crate, under firmware/boards/.
    pub dir: &'static str,
    /// Cargo features of the board crate for this image (always its release profile).
    pub features: &'static [&'static str],
    pub target: &'static str,
    pub bin: &'static str,
    /// Budget: flash and static RAM, bytes.
    pub flash_budget: u64,
    pub ram_budget: u64,
    /// The ELF sections that occupy flash, and those that occupy RAM before the stack
    /// (initialised data is in both).
    pub flash_sections: &'static [&'static str],
    pub ram_sections: &'static [&'static str],
}

const CORTEX_M_FLASH: &[&str] = &[
    ".vector_table",
    ".text",
    ".p256-cortex-m4",
    ".rodata",
    ".data",
];
const CORTEX_M_RAM: &[&str] = &[".data", ".bss", ".uninit"];

/// The emulated Cortex-M4 (QEMU mps2-an386) built with `features`: the budget.
const fn emulated(name: &'static str, features: &'static [&'static str]) -> Board {
    Board {
        name,
        dir: "qemu-mps2-an386",
        features,
        target: "thumbv7em-none-eabihf",
        bin: "fleet-qemu-mps2-an386",
        flash_budget: 110 * 1024,
        ram_budget: 40 * 1024,
        flash_sections: CORTEX_M_FLASH,
        ram_sections: CORTEX_M_RAM,
    }
}

/// Every board image the test command builds. The emulated Cortex-M4 carries the issue's
/// budget, with its P-256 multiplications on `p256-cm4`; built again without them it is the
/// portable image, whose P-256 is all RustCrypto as on RISC-V boards, that the HIL also runs
/// (the STM32 image carries the `p256-cm4` code); the
/// NUCLEO-F767ZI (2 MiB flash, 512 KiB RAM) gets room for an application; the
/// ESP32-C3 (4 MiB flash, 400 KiB RAM) carries Espressif's Wi-Fi stack (~70 KiB of flash
/// and ~60 KiB of RAM of its own, and a 96 KiB heap: 32 KiB of it counted in `.bss`, the rest
/// in RAM the bootloader frees).
pub const BOARDS: [Board; 4] = [
    emulated("qemu-mps2-an386", &["p256-cm4"]),
    emulated("qemu-mps2-an386-portable", &[]),
    Board {
        name: "stm32",
        dir: "stm32",
        features: &[],
        target: "thumbv7em-none-eabihf",
        bin: "fleet-stm32",
        flash_budget: 256 * 1024,
        ram_budget: 96 * 1024,
        flash_sections: CORTEX_M_FLASH,
        ram_sections: CORTEX_M_RAM,
    },
    Board {
        name: "esp32c3",
        dir: "esp32c3",
        features: &[],
        target: "riscv32imc-unknown-none-elf",
        bin: "fleet-esp32c3",
        flash_budget: 256 * 1024,
        ram_budget: 96 * 1024,
        flash_sections: &[
            ".flash.appdesc",
            ".trap",
            ".rwtext",
            ".rwtext.wifi",
            ".rodata",
            ".rodata.wifi",
            ".text",
            ".data",
            ".data.wifi",
        ],
        ram_sections: &[".rwtext", ".rwtext.wifi", ".data", ".data.wifi", ".bss"],
    },
];

/// Section sizes of a board's ELF image: (flash, static RAM).
pub fn sections(board: &Board) -> anyhow::Result<(u64, u64)> {
    let image = board.image();
    let image = image.as_path();
    let out = Command::new("size").arg("-A").arg(image).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "size -A {}: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let size_of = |name: &str| -> u64 {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let flash = board.flash_sections.iter().map(|s| size_of(s)).sum();
    let ram = board.ram_sections.iter().map(|s| size_of(s)).sum();
    Ok((flash, ram))
}

/// `cargo xtask firmware size`: builds the boards, measures, writes BENCHMARKS.md.
pub fn size() -> anyhow::Result<()> {
    sh::ensure_debian_packages(&[("size", "binutils"), ("qemu-system-arm", "qemu-system-arm")])?;
    let all = selected(None)?;
    build_boards(&all)?;
    step("handshake instructions and peak stack on the emulated board (fleet-hil qemu --scenario measure)");
    let cm4 = measure(&BOARDS[0])?;
    let portable = measure(&BOARDS[1])?;
    let kib = |b: u64| b as f64 / 1024.0;
    let mut s = String::from("## Firmware images\n\nWritten by `cargo xtask firmware size`: release builds (opt-level \"z\", LTO, codegen-units 1, `-C panic=immediate-abort`, no panic locations, no `Debug` output) with Debian's rustc; the test command fails when an image is more than 10 % over its budget; flash = .vector_table + .text (+ `p256-cm4`'s section) + .rodata + .data, static RAM = .data + .bss (ESP32-C3: also its RAM-resident code, the Wi-Fi driver's sections and the application descriptor; its static RAM includes 32 KiB of the Wi-Fi heap). The image holds the network stack (embassy-net/smoltcp), our own TLS 1.3 client (`firmware/src/tls`: one suite, one group, one signature scheme, a client certificate; RustCrypto AES-GCM, HKDF and SHA-256; ~5 KiB less than embedded-tls, which it replaced) with our own X.509 chain check (~1 KiB where embedded-tls's `der`-based verifier took ~30 KiB), our MQTT codec (the device links the encoders of the packets it sends and a parser of what servers send: `Emit`, `Packet::parse_from_server`), rotation (CSR writer, A/B slots) and the board's drivers; RustCrypto AES and SHA-256 in their compact forms (`aes_compact`, `force-soft-compact`); the emulated board's RNG is AES-128-CTR on that AES (ChaCha20 took 2.5 KiB).\n\n| board | flash | budget | static RAM | budget |\n|---|---|---|---|---|\n");
    for board in &BOARDS {
        let (flash, ram) = sections(board)?;
        let mark = |v: u64, budget: u64| {
            if v > budget {
                format!(" ✗ ({:+.0} %)", (v as f64 / budget as f64 - 1.0) * 100.0)
            } else {
                " ✓".into()
            }
        };
        s.push_str(&format!(
            "| {} | {:.1} KiB | {:.0} KiB{} | {:.1} KiB | {:.0} KiB{} |\n",
            board.name,
            kib(flash),
            kib(board.flash_budget),
            mark(flash, board.flash_budget),
            kib(ram),
            kib(board.ram_budget),
            mark(ram, board.ram_budget)
        ));
    }
    let m = |n: Option<u64>| {
        n.map_or("not measured".into(), |n| {
            format!("{:.1} M", n as f64 / 1e6)
        })
    };
    let bytes = |n: Option<u64>| n.map_or("not measured".into(), |n| n.to_string());
    s.push_str(&format!(
        "\nOn the emulated Cortex-M4 (QEMU mps2-an386, `-icount shift=0`: one instruction per virtual nanosecond), from TCP connect to an accepted MQTT session (mutual TLS 1.3 handshake with P-256 ECDHE, two chain signatures and the server's CertificateVerify checked, the client's signature, then CONNECT and SUBSCRIBE):\n\n| image | P-256 | first connection | reconnect (chain verified before) | peak stack |\n|---|---|---|---|---|\n| qemu-mps2-an386 | key exchange and ECDSA point multiplications on `p256-cm4`, the rest on RustCrypto | **{}** | {} | {} B |\n| qemu-mps2-an386-portable | all RustCrypto (the RISC-V boards' P-256) | **{}** | {} | {} B |\n\nGoal ≤ 12 M instructions per mutual handshake: {}. On a reconnect the device does not check the gateway's chain again when the gateway presents the very same certificates for the same anchor and host (`ChainCache`); it checks the gateway's CertificateVerify every time. With `p256-cm4`, verification needs no field inversion (the sum's x coordinate is compared as c·dx² = dy² − (x1 + x2)·dx²) and inverts s with Stein's variable-time algorithm (s is public); the client's signature keeps the constant-time inversion. RustCrypto's `p256` is built at opt-level \"s\" in both images: at \"z\" its 256-bit values went through memcpy and memset calls (a sixth more instructions per handshake with `p256-cm4`, two thirds more without). Busy time excludes sleep: the emulated board sleeps in WFI; QEMU runs WFE as a no-op, and an idle loop on WFE, as embassy's, spins — its polling counted as work, about 3 M instructions per handshake with the network's timing.\n",
        m(cm4.handshake),
        m(cm4.reconnect),
        bytes(cm4.stack),
        m(portable.handshake),
        m(portable.reconnect),
        bytes(portable.stack),
        match cm4.handshake {
            Some(n) if n <= 12_000_000 => format!("✓ ({})", m(Some(n))),
            Some(n) => format!("✗ ({})", m(Some(n))),
            None => "not measured".into(),
        },
    ));
    println!("\n{s}");
    crate::bench::write_section("firmware", &s)?;
    println!("written: BENCHMARKS.md");
    Ok(())
}

/// What `fleet-hil qemu --scenario measure` reported for one image.
struct Measured {
    handshake: Option<u64>,
    reconnect: Option<u64>,
    stack: Option<u64>,
}

/// `fleet-hil qemu --scenario measure` on a built image.
fn measure(board: &Board) -> anyhow::Result<Measured> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["run", "--quiet", "-p", "fleet-hil", "--", "qemu"])
        .args(["--scenario", "measure", "--image"])
        .arg(board.image())
        .output()?;
    let verdict = String::from_utf8_lossy(&out.stdout).into_owned();
    let number = |key: &str| -> Option<u64> {
        verdict
            .split(key)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Ok(Measured {
        handshake: number("handshake "),
        reconnect: number("reconnect "),
        stack: number("peak stack "),
    })
}

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
pub fn build(only: Option<&str>) -> anyhow::Result<()> {
    ensure_toolchain()?;
    let boards = selected(only)?;
    for target in TARGETS
        .iter()
        .filter(|t| only.is_none() || boards.iter().any(|b| b.target == **t))
    {
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
    build_boards(&boards)?;
    check_budgets(&boards)
}

/// Every board, or the one named.
pub fn selected(only: Option<&str>) -> anyhow::Result<Vec<&'static Board>> {
    match only {
        None => Ok(BOARDS.iter().collect()),
        Some(name) => match BOARDS.iter().find(|b| b.name == name) {
            Some(b) => Ok(vec![b]),
            None => anyhow::bail!(
                "unknown board {name:?}; boards: {}",
                BOARDS.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
            ),
        },
    }
}

/// How far over its budget a board image may be before the test command fails.
const BUDGET_TOLERANCE: f64 = 1.10;

/// Prints every board's flash and static RAM against its budget; fails if one is more than
/// 10 % over.
pub fn check_budgets(boards: &[&Board]) -> anyhow::Result<()> {
    sh::ensure_debian_packages(&[("size", "binutils")])?;
    step("firmware size budgets (fail above budget + 10 %)");
    let mut over = Vec::new();
    for board in boards {
        let (flash, ram) = sections(board)?;
        for (what, used, budget) in [
            ("flash", flash, board.flash_budget),
            ("static RAM", ram, board.ram_budget),
        ] {
            let ratio = used as f64 / budget as f64;
            println!(
                "  {:<16} {:<10} {:>7.1} KiB of {:>4.0} KiB ({:>3.0} %)",
                board.name,
                what,
                used as f64 / 1024.0,
                budget as f64 / 1024.0,
                ratio * 100.0
            );
            if ratio > BUDGET_TOLERANCE {
                over.push(format!(
                    "{} {what}: {used} bytes, budget {budget} (+{:.0} %)",
                    board.name,
                    (ratio - 1.0) * 100.0
                ));
            }
        }
    }
    if !over.is_empty() {
        anyhow::bail!(
            "firmware over budget by more than 10 %: {}",
            over.join("; ")
        );
    }
    Ok(())
}

/// Builds each board crate (standalone, with its own `.cargo/config.toml`: target, linker,
/// `-Zbuild-std`, release profile for size).
pub fn build_boards(boards: &[&Board]) -> anyhow::Result<()> {
    ensure_toolchain()?;
    let root = std::env::current_dir()?;
    for board in boards {
        step(&format!("board {} ({})", board.name, board.target));
        let mut cargo = Command::new("/usr/bin/cargo");
        cargo.args(["build", "--quiet", "--locked", "--release"]);
        if !board.features.is_empty() {
            cargo.arg("--features").arg(board.features.join(","));
        }
        sh::run(
            cargo
                .current_dir(root.join("firmware/boards").join(board.dir))
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
