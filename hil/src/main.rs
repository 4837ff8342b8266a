use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use fleet_firmware::device::Options;
use fleet_hil::backend::{Backend, ServiceIdentity};
use fleet_hil::fleet::{DeviceBundle, Fleet};
use fleet_hil::refusals;

/// Runs fleet devices against a gateway and prints one verdict line.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Simulated devices from identity bundles publish telemetry; a backend service receives
    /// it and sends each device one command. Prints a live summary, then a verdict.
    Fleet {
        /// Directory of `*.bin` identity bundles.
        #[arg(long)]
        bundles: PathBuf,
        /// Use the first N bundles (sorted by name); all when absent.
        #[arg(long)]
        count: Option<usize>,
        /// Gateway address; the bundles' host name is still used for TLS verification.
        #[arg(long)]
        gateway: SocketAddr,
        #[arg(long, default_value_t = 15)]
        seconds: u64,
        /// Tenant of the backend service.
        #[arg(long)]
        tenant: String,
        /// Backend client id = its certificate CN.
        #[arg(long)]
        service: String,
        #[arg(long)]
        service_cert: PathBuf,
        #[arg(long)]
        service_key: PathBuf,
        /// CA the gateway's server certificate chains to.
        #[arg(long)]
        server_ca: PathBuf,
    },
    /// Measure one MQTT broker for `cargo xtask bench gateway`; prints JSON results.
    Bench {
        #[arg(long)]
        target: SocketAddr,
        /// Label for the results (e.g. fleet-gateway, mosquitto).
        #[arg(long)]
        name: String,
        /// PID of the broker, for its CPU time and resident memory.
        #[arg(long)]
        pid: u32,
        #[arg(long)]
        issuing_cert: PathBuf,
        #[arg(long)]
        issuing_key: PathBuf,
        #[arg(long)]
        root: PathBuf,
        #[arg(long, default_value = "acme")]
        tenant: String,
        /// CRL file the broker watches (measures revocation latency when given).
        #[arg(long)]
        crl: Option<PathBuf>,
        /// Idle-session counts to measure memory at (comma-separated).
        #[arg(long, value_delimiter = ',', default_values_t = vec![10_000usize, 100_000])]
        sessions: Vec<usize>,
        #[arg(long, default_value_t = 10)]
        connect_seconds: u64,
        /// Seconds of each message window (after a 1 s warm-up).
        #[arg(long, default_value_t = 5)]
        window_seconds: u64,
        /// Seconds the CPU of idle sessions is measured over.
        #[arg(long, default_value_t = 10)]
        idle_seconds: u64,
        /// Offered rate of the latency phase, messages/s.
        #[arg(long, default_value_t = 20_000)]
        latency_rate: u64,
        /// QoS 1 messages each publisher keeps unacknowledged (closed loop).
        #[arg(long, default_value_t = 16)]
        in_flight: u16,
        /// Phases to run (comma-separated; default all): connects, idle, qos0, qos1, fanout,
        /// latency, revocation.
        #[arg(long, value_delimiter = ',')]
        phases: Vec<String>,
    },
    /// The real firmware image on QEMU's mps2-an386 against a real gateway, station and
    /// backend: one verdict line per scenario.
    Qemu {
        /// The board image (ELF) built from firmware/boards/qemu-mps2-an386.
        #[arg(long)]
        image: PathBuf,
        /// telemetry, command, revocation or wrong-anchor (repeat; default: all).
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
        #[arg(long, default_value = "qemu-system-arm")]
        qemu: PathBuf,
    },
    /// The same scenarios on a real board, flashed and watched with probe-rs (STM32, RTT
    /// log) or espflash (ESP32-C3, serial log). The gateway listens on all interfaces.
    Probe {
        /// stm32f767zi (probe-rs) or esp32c3 (espflash).
        #[arg(long)]
        board: String,
        /// The board's firmware image (ELF) from firmware/boards/<board>.
        #[arg(long)]
        image: PathBuf,
        /// This machine's address as the board reaches it (same LAN).
        #[arg(long)]
        gateway_ip: std::net::IpAddr,
        /// telemetry, command, revocation, rotation, rollback or wrong-anchor (repeat;
        /// default: all of them).
        #[arg(long = "scenario")]
        scenarios: Vec<String>,
    },
    /// A device with a certificate from a foreign CA and a client without a certificate:
    /// both must be refused before CONNACK.
    Refusals {
        #[arg(long)]
        gateway: SocketAddr,
        /// Gateway host name as the devices know it.
        #[arg(long, default_value = "localhost")]
        host: String,
        /// CA the gateway's server certificate chains to.
        #[arg(long)]
        server_ca: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-hil: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Fleet {
                bundles,
                count,
                gateway,
                seconds,
                tenant,
                service,
                service_cert,
                service_key,
                server_ca,
            } => {
                let id = ServiceIdentity {
                    cert_pem: &service_cert,
                    key_pem: &service_key,
                    server_ca_pem: &server_ca,
                };
                fleet(&bundles, count, gateway, seconds, &tenant, &service, &id).await
            }
            Command::Refusals {
                gateway,
                host,
                server_ca,
            } => refusals_cmd(gateway, &host, &server_ca).await,
            Command::Qemu {
                image,
                scenarios,
                qemu,
            } => {
                if !image.is_file() {
                    anyhow::bail!(
                        "{}: no firmware image (cargo xtask firmware build)",
                        image.display()
                    );
                }
                let target = fleet_hil::qemu::Target::Qemu { qemu, image };
                scenarios_cmd(&target, &scenarios).await
            }
            Command::Probe {
                board,
                image,
                gateway_ip,
                scenarios,
            } => {
                let board = fleet_hil::probe::ProbeBoard::parse(&board).ok_or_else(|| {
                    anyhow::anyhow!("unknown board {board:?}: stm32f767zi or esp32c3")
                })?;
                let target = fleet_hil::qemu::Target::Probe {
                    board,
                    image,
                    gateway_ip,
                };
                scenarios_cmd(&target, &scenarios).await
            }
            Command::Bench {
                target,
                name,
                pid,
                issuing_cert,
                issuing_key,
                root,
                tenant,
                crl,
                sessions,
                connect_seconds,
                window_seconds,
                idle_seconds,
                latency_rate,
                in_flight,
                phases,
            } => {
                let phases = if phases.is_empty() {
                    fleet_hil::bench::PHASES.map(String::from).to_vec()
                } else {
                    phases
                };
                let setup = fleet_hil::bench::Setup {
                    target,
                    name,
                    server_pid: pid,
                    issuing_cert,
                    issuing_key,
                    root,
                    tenant,
                    crl,
                    sessions,
                    connect_seconds,
                    window_seconds,
                    idle_seconds,
                    latency_rate,
                    in_flight,
                    phases,
                };
                let results = fleet_hil::bench::run(&setup).await?;
                println!("{}", serde_json::to_string(&results)?);
                Ok(true)
            }
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fleet-hil: {e:#}");
            println!("VERDICT: ERROR {e}");
            ExitCode::FAILURE
        }
    }
}

async fn scenarios_cmd(target: &fleet_hil::qemu::Target, names: &[String]) -> anyhow::Result<bool> {
    use fleet_hil::qemu::{self, Scenario};
    let scenarios = if names.is_empty() {
        let emulated = matches!(target, fleet_hil::qemu::Target::Qemu { .. });
        Scenario::ALL
            .into_iter()
            .filter(|s| emulated || *s != Scenario::Measure)
            .collect::<Vec<_>>()
    } else {
        names
            .iter()
            .map(|n| {
                Scenario::parse(n).ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown scenario {n:?}; known: {}",
                        Scenario::ALL.map(Scenario::name).join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut all_passed = true;
    for s in scenarios {
        let started = Instant::now();
        match qemu::run(s, target).await {
            Ok(o) => println!(
                "VERDICT: PASS qemu {} in {:.1} s: connect {} handshake {} instructions, reconnect {} instructions, peak stack {} B, telemetry {} command rtt {} revocation {} refused attempts {} backoff {:?} ms",
                s.name(),
                started.elapsed().as_secs_f64(),
                o.connect.map_or("-".into(), |d| format!("{} ms", d.as_millis())),
                o.handshake_instructions.map_or("-".into(), |n| n.to_string()),
                o.reconnect_instructions.map_or("-".into(), |n| n.to_string()),
                o.peak_stack_bytes.map_or("-".into(), |n| n.to_string()),
                o.telemetry,
                o.command_rtt.map_or("-".into(), |d| format!("{} ms", d.as_millis())),
                o.revocation.map_or("-".into(), |d| format!("{} ms", d.as_millis())),
                o.refused_attempts,
                o.backoff_ms,
            ),
            Err(failure) => {
                all_passed = false;
                eprintln!("{failure}");
                println!("VERDICT: FAIL qemu {}: {}", s.name(), failure.step);
            }
        }
    }
    Ok(all_passed)
}

async fn fleet(
    dir: &std::path::Path,
    count: Option<usize>,
    gateway: SocketAddr,
    seconds: u64,
    tenant: &str,
    service: &str,
    id: &ServiceIdentity<'_>,
) -> anyhow::Result<bool> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    paths.sort();
    paths.truncate(count.unwrap_or(usize::MAX));
    let bundles = paths
        .iter()
        .map(|p| DeviceBundle::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    if bundles.is_empty() {
        anyhow::bail!("no *.bin identity bundles in {}", dir.display());
    }
    let host = gateway.ip().to_string();
    let backend = Backend::connect(&host, gateway.port(), service, tenant, id).await?;
    println!("backend {service:?} connected over mTLS and subscribed to tenants/{tenant}/devices/+/telemetry");
    let fleet = Fleet::start(&bundles, Some(gateway), Options::default());
    let started = Instant::now();
    let mut commanded = std::collections::HashSet::new();
    let mut last_total = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => {
                println!("interrupted: stopping the fleet");
                break;
            }
        }
        let seen = backend.observed();
        for device in seen.telemetry.keys() {
            if commanded.insert(device.clone()) {
                backend
                    .command(device, format!("ping {device}").as_bytes())
                    .await?;
            }
        }
        let snap = fleet.snapshot();
        let total: u64 = seen.telemetry.values().sum();
        let mut rtts: Vec<Duration> = seen.acked.values().copied().collect();
        rtts.sort();
        let p50 = rtts
            .get(rtts.len() / 2)
            .map_or("-".into(), |d| format!("{:.1} ms", d.as_secs_f64() * 1e3));
        println!(
            "t={:>3}s  devices connected {:>3}/{}  telemetry {:>6.1} msg/s (total {})  commands acked {:>3}/{}  round trip p50 {}",
            started.elapsed().as_secs(),
            snap.connected,
            snap.devices,
            (total - last_total) as f64,
            total,
            seen.acked.len(),
            snap.devices,
            p50
        );
        last_total = total;
    }
    let seen = backend.observed();
    let snap = fleet.snapshot();
    fleet.stop().await;
    backend.close().await;
    let heard = bundles
        .iter()
        .filter(|b| seen.telemetry.contains_key(&b.device_id))
        .count();
    let acked = bundles
        .iter()
        .filter(|b| seen.acked.contains_key(&b.device_id))
        .count();
    let pass = heard == bundles.len() && acked == bundles.len();
    println!(
        "VERDICT: {} devices={} telemetry_from={} commands_acked={} published={} received={}",
        if pass { "PASS" } else { "FAIL" },
        bundles.len(),
        heard,
        acked,
        snap.published,
        seen.telemetry.values().sum::<u64>()
    );
    Ok(pass)
}

async fn refusals_cmd(
    gateway: SocketAddr,
    host: &str,
    server_ca: &std::path::Path,
) -> anyhow::Result<bool> {
    let anchor = refusals::load_anchor(server_ca)?;
    let foreign = refusals::foreign_ca_device(gateway, host, &anchor).await?;
    println!("foreign-CA device:      {foreign}");
    let bare = refusals::no_certificate(gateway, host, &anchor).await?;
    println!("client without a cert:  {bare}");
    let pass = !foreign.got_connack && !bare.got_connack;
    println!(
        "VERDICT: {} foreign_ca_refused={} no_cert_refused={}",
        if pass { "PASS" } else { "FAIL" },
        !foreign.got_connack,
        !bare.got_connack
    );
    Ok(pass)
}
