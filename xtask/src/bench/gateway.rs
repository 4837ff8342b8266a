//! `cargo xtask bench gateway`, per core: each broker (our gateway, then Debian's Mosquitto 2,
//! same PKI) is pinned to core 1 with `taskset -c 1` and the load generator (`fleet-hil
//! bench`) to core 0, so the figures compare what one core of each broker does, with the
//! broker's CPU time per operation (from /proc/<pid>/stat) next to every rate. A second,
//! shorter run per broker leaves both unpinned: the multi-core scaling row.
//!
//! Both brokers trust only the root; clients send their certificate and the issuing CA (a
//! chain of two); our gateway checks the issuing CA's CRL through `tls.crl_issuers`. Every
//! limit on connections is raised on both: the open-file limit of both processes (as root:
//! up to 1,048,576), our `max_connections`, Mosquitto's `max_connections -1`; idle sessions
//! come from 127.0.0.2 onwards, 20,000 per source address, each size against a broker
//! process of its own.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;

use super::gateway_report::{chart, report};
use super::write_section;
use crate::sh::{self, step};

/// What the load generator reports (see `fleet_hil::bench::Results`).
#[derive(Debug, Default, Deserialize)]
pub(super) struct Results {
    pub connects: Option<Rate>,
    #[serde(default)]
    pub idle: Vec<Idle>,
    pub qos0: Option<Flow>,
    pub qos1: Option<Flow>,
    pub fanout: Option<Flow>,
    pub latency: Option<Latency>,
    #[serde(default)]
    pub revocation_ms: Vec<f64>,
    #[serde(default)]
    pub window_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Rate {
    pub per_second: f64,
    pub cpu_us_per_op: f64,
    pub generator_cpu_share: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Idle {
    pub sessions: usize,
    pub keep_alive: u16,
    pub bytes_per_session: f64,
    pub given_back: f64,
    pub rss_before_kib: u64,
    pub rss_closed_kib: u64,
    pub idle_cpu_share: f64,
    pub idle_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Flow {
    pub rate: Rate,
    pub lost: u64,
    pub acknowledged: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Latency {
    pub offered_per_second: f64,
    pub delivered_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One broker's figures: pinned to one core, and unpinned (the scaling phases only).
#[derive(Debug, Default)]
pub(super) struct Measured {
    pub one_core: Results,
    pub all_cores: Results,
}

/// The command's options.
pub struct GatewayOptions {
    pub sessions: Vec<usize>,
    pub connect_seconds: u64,
    pub window_seconds: u64,
    pub idle_seconds: u64,
    /// Phases of the per-core run (empty: all).
    pub phases: Vec<String>,
    /// Skip the unpinned (multi-core) run.
    pub no_scaling: bool,
}

/// Open files the load generator needs besides the idle sessions (as `fleet_hil::bench`).
const FD_MARGIN: u64 = 1000;

/// The open-file limit the brokers and the load generator get: what [`shell`] can raise it to.
fn open_file_limit() -> anyhow::Result<u64> {
    let out = shell(None, Path::new("sh"), &["-c".into(), "ulimit -n".into()]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .or_else(|_| {
            if text.trim() == "unlimited" {
                Ok(u64::MAX)
            } else {
                Err(())
            }
        })
        .map_err(|()| anyhow::anyhow!("cannot read the open-file limit: {text:?}"))
}

/// The phases of the unpinned run.
const SCALING_PHASES: &str = "connects,qos0";

/// A broker to measure: how to start it and where it listens.
struct Target {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    addr: SocketAddr,
    /// The CRL file it watches, if it revokes live.
    crl: Option<String>,
}

/// A broker process we started; stopped (SIGTERM, then SIGKILL) when dropped.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn quote(args: impl IntoIterator<Item = String>) -> String {
    args.into_iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `sh -c` that raises the open-file limit (as far as allowed), then runs `program args…`,
/// on `core` if given (`taskset -c`). `exec` keeps the PID: it is the program's.
fn shell(core: Option<u32>, program: &Path, args: &[String]) -> Command {
    let pin = core.map_or(String::new(), |c| format!("taskset -c {c} "));
    let line = format!(
        "ulimit -n 1048576 2>/dev/null || ulimit -n $(ulimit -Hn) 2>/dev/null; exec {pin}{}",
        quote(std::iter::once(program.display().to_string()).chain(args.iter().cloned()))
    );
    let mut c = Command::new("sh");
    c.arg("-c").arg(line);
    c
}

fn wait_listening(addr: SocketAddr, log: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "nothing listens on {addr} after 15 s; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    )
}

fn load(path: &Path) -> anyhow::Result<Results> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: run `cargo xtask bench gateway` first", path.display()))?;
    serde_json::from_str(text.trim())
        .with_context(|| format!("{}: not the load generator's JSON", path.display()))
}

fn measured(dir: &Path, name: &str) -> anyhow::Result<Measured> {
    let all = dir.join(format!("{name}-all-cores.json"));
    let main = dir.join(format!("{name}.json"));
    let mut one_core = if main.exists() {
        load(&main)?
    } else {
        Results::default()
    };
    // The idle sizes, each measured in a broker of its own (see `per_core`), smallest first.
    let prefix = format!("{name}-idle-");
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let file = entry?.file_name().to_string_lossy().into_owned();
        if let Some(n) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".json"))
            .and_then(|n| n.parse::<usize>().ok())
        {
            sizes.push(n);
        }
    }
    sizes.sort_unstable();
    for n in sizes {
        one_core
            .idle
            .extend(load(&dir.join(format!("{prefix}{n}.json")))?.idle);
    }
    if !main.exists() && one_core.idle.is_empty() {
        bail!("{}: run `cargo xtask bench gateway` first", main.display());
    }
    Ok(Measured {
        one_core,
        all_cores: if all.exists() {
            load(&all)?
        } else {
            Results::default()
        },
    })
}

/// Re-renders BENCHMARKS.md and the chart from the results of the last run.
pub fn gateway_report_only() -> anyhow::Result<()> {
    let dir = Path::new("target/bench");
    write_outputs(
        &measured(dir, "fleet-gateway")?,
        &measured(dir, "mosquitto")?,
    )
}

fn write_outputs(ours: &Measured, theirs: &Measured) -> anyhow::Result<()> {
    let text = report(ours, theirs);
    println!("\n{text}");
    std::fs::create_dir_all("bench")?;
    chart(
        &ours.one_core,
        &theirs.one_core,
        Path::new("bench/gateway.svg"),
    )?;
    write_section("gateway", &text)?;
    println!("written: BENCHMARKS.md, bench/gateway.svg");
    Ok(())
}

/// The PKI (root → issuing CA, a server certificate) both brokers use, and their configs.
fn setup(dir: &Path, ours: SocketAddr, theirs: SocketAddr) -> anyhow::Result<[Target; 2]> {
    let pki = dir.join("pki");
    step("a fresh P-256 PKI for both brokers (root → issuing CA → clients)");
    let provision = |args: &[&str]| {
        sh::run(
            Command::new("target/release/fleet-provision")
                .arg("--dir")
                .arg(&pki)
                .args(args)
                .stdout(Stdio::null()),
        )
    };
    provision(&["ca", "init", "--org", "Bench", "--insecure-plaintext-keys"])?;
    provision(&["server-cert", "--host", "localhost", "--host", "127.0.0.1"])?;
    let p = |rel: &str| pki.join(rel).display().to_string();
    let gw_config = dir.join("gateway.toml");
    std::fs::write(
        &gw_config,
        format!(
            "listen = \"{ours}\"\n[tls]\nserver_cert = \"{}\"\nserver_key = \"{}\"\n\
             client_ca = [\"{}\"]\ncrl_issuers = [\"{}\"]\ncrl = [\"{}\"]\n\
             [limits]\nmax_connections = 1000000\nmax_handshakes = 4096\n\
             ip_connect_rate = 1000000\nip_connect_burst = 1000000\n\
             publish_rate = 1000000\npublish_burst = 1000000\nqueue_messages = 100000000\nqueue_bytes = 4294967296\n\
             [admin]\nenabled = false\n",
            p("gateway/server.pem"),
            p("gateway/server.key"),
            p("ca/root.pem"),
            p("ca/issuing.pem"),
            p("crl/issuing.crl.pem"),
        ),
    )?;
    let mq_config = dir.join("mosquitto.conf");
    std::fs::write(
        &mq_config,
        format!(
            "user root\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n\
             max_inflight_messages 100\nmax_queued_messages 0\nmax_queued_bytes 0\n\
             set_tcp_nodelay true\n\
             listener {} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
             use_identity_as_username true\ntls_version tlsv1.3\nmax_connections -1\n",
            theirs.port(),
            p("ca/root.pem"),
            p("gateway/server.pem"),
            p("gateway/server.key"),
        ),
    )?;
    Ok([
        Target {
            name: "fleet-gateway",
            program: std::path::absolute("target/release/fleet-gateway")?,
            args: vec![
                "serve".into(),
                "--config".into(),
                gw_config.display().to_string(),
            ],
            addr: ours,
            crl: Some(p("crl/issuing.crl.pem")),
        },
        Target {
            name: "mosquitto",
            program: PathBuf::from("/usr/sbin/mosquitto"),
            args: vec!["-c".into(), mq_config.display().to_string()],
            addr: theirs,
            crl: None,
        },
    ])
}

/// Starts the broker (on `core`, or anywhere), runs the load generator (on the other core,
/// or anywhere) with `extra` arguments, and returns what it measured; the load generator's
/// JSON and the broker's log are `label`.json and `label`.log in `dir`.
fn measure(
    dir: &Path,
    target: &Target,
    pinned: bool,
    extra: &[String],
    label: &str,
) -> anyhow::Result<Results> {
    let log = dir.join(format!("{label}.log"));
    let out = dir.join(format!("{label}.json"));
    let child = shell(pinned.then_some(1), &target.program, &target.args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("cannot start {}", target.program.display()))?;
    let broker = Broker(child);
    wait_listening(target.addr, &log)?;
    let p = |rel: &str| dir.join("pki").join(rel).display().to_string();
    let mut args = vec![
        "bench".to_string(),
        "--target".into(),
        target.addr.to_string(),
        "--name".into(),
        target.name.into(),
        "--pid".into(),
        broker.0.id().to_string(),
        "--issuing-cert".into(),
        p("ca/issuing.pem"),
        "--issuing-key".into(),
        p("ca/issuing.key"),
        "--root".into(),
        p("ca/root.pem"),
    ];
    if let Some(crl) = &target.crl {
        args.extend(["--crl".into(), crl.clone()]);
    }
    args.extend(extra.iter().cloned());
    let hil = std::path::absolute("target/release/fleet-hil")?;
    let status = shell(pinned.then_some(0), &hil, &args)
        .stdout(std::fs::File::create(&out)?)
        .status()?;
    drop(broker);
    if !status.success() {
        bail!(
            "the load generator failed against {}; broker log: {}",
            target.name,
            log.display()
        );
    }
    load(&out)
}

/// Every phase of the load generator, in its order (`fleet_hil::bench::PHASES`).
const PHASES: [&str; 7] = [
    "connects",
    "idle",
    "qos0",
    "qos1",
    "fanout",
    "latency",
    "revocation",
];

/// The per-core run of one broker: the phases other than `idle` against one broker process,
/// then each idle-session size against a broker process of its own. An allocator keeps much
/// of what a closed batch of sessions used (Mosquitto all of it), so a size measured in a
/// process that had held another batch before grew from that kept memory and showed only
/// part of its cost: 18,000 sessions after 10,000 showed 8.4 KiB per session for our
/// gateway and 10.9 KiB for Mosquitto, whose sessions cost 18.2 and 24.5 KiB when measured
/// alone.
fn per_core(dir: &Path, target: &Target, o: &GatewayOptions) -> anyhow::Result<Results> {
    if let Some(unknown) = o.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
        bail!("unknown phase {unknown:?}; phases: {}", PHASES.join(", "));
    }
    let selected = |p: &&str| o.phases.is_empty() || o.phases.iter().any(|q| q == p);
    let timing = vec![
        "--connect-seconds".to_string(),
        o.connect_seconds.to_string(),
        "--window-seconds".into(),
        o.window_seconds.to_string(),
        "--idle-seconds".into(),
        o.idle_seconds.to_string(),
    ];
    let others: Vec<&str> = PHASES
        .iter()
        .copied()
        .filter(|p| *p != "idle" && selected(p))
        .collect();
    let mut results = Results::default();
    if !others.is_empty() {
        let mut args = timing.clone();
        args.extend(["--phases".into(), others.join(",")]);
        results = measure(dir, target, true, &args, target.name)?;
    }
    if selected(&"idle") {
        for &n in &o.sessions {
            step(&format!(
                "{}: {n} idle sessions, a fresh broker",
                target.name
            ));
            let mut args = timing.clone();
            args.extend([
                "--phases".into(),
                "idle".into(),
                "--sessions".into(),
                n.to_string(),
            ]);
            let label = format!("{}-idle-{n}", target.name);
            results
                .idle
                .extend(measure(dir, target, true, &args, &label)?.idle);
        }
    }
    Ok(results)
}

/// Runs the whole comparison and writes BENCHMARKS.md and the chart.
pub fn gateway(o: &GatewayOptions) -> anyhow::Result<()> {
    sh::ensure_debian_packages(&[("mosquitto", "mosquitto"), ("taskset", "util-linux")])?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 {
        bail!("per-core measurement pins the broker and the load generator to two different cores; this machine has {cores}");
    }
    let fds = open_file_limit()?;
    let most = o.sessions.iter().copied().max().unwrap_or(0) as u64;
    let runs_idle = o.phases.is_empty() || o.phases.iter().any(|p| p == "idle");
    if runs_idle && most + FD_MARGIN > fds {
        bail!(
            "{most} idle sessions need an open-file limit of at least {} for the broker and the \
             load generator; processes started here get {fds} (the hard limit; raising it needs \
             root with CAP_SYS_RESOURCE). Raise it, or pass --sessions with at most {}",
            most + FD_MARGIN,
            fds.saturating_sub(FD_MARGIN)
        );
    }
    step("building release binaries");
    sh::cargo(&[
        "build",
        "--release",
        "--quiet",
        "-p",
        "fleet-gateway",
        "-p",
        "fleet-hil",
        "-p",
        "fleet-provision",
    ])?;
    let dir = std::path::absolute("target/bench")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let targets = setup(&dir, "127.0.0.1:18883".parse()?, "127.0.0.1:18884".parse()?)?;
    let scaling = [
        "--phases".to_string(),
        SCALING_PHASES.into(),
        "--connect-seconds".into(),
        o.connect_seconds.to_string(),
        "--window-seconds".into(),
        o.window_seconds.to_string(),
    ];
    let mut all = Vec::new();
    for target in &targets {
        step(&format!(
            "{}: pinned to core 1, load generator on core 0",
            target.name
        ));
        let one_core = per_core(&dir, target, o)?;
        let all_cores = if o.no_scaling {
            Results::default()
        } else {
            step(&format!("{}: all cores (scaling row)", target.name));
            let label = format!("{}-all-cores", target.name);
            measure(&dir, target, false, &scaling, &label)?
        };
        all.push(Measured {
            one_core,
            all_cores,
        });
    }
    let [ours, theirs] =
        <[Measured; 2]>::try_from(all).map_err(|_| anyhow::anyhow!("two targets expected"))?;
    write_outputs(&ours, &theirs)
}
