//! `cargo xtask bench gateway`: our gateway against Debian's Mosquitto 2, same PKI, same load
//! generator, one run. Writes its section of BENCHMARKS.md and bench/gateway.svg.
//!
//! `cargo xtask bench provisioning`: the station's issuance throughput on one core, both flows.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::sh::{self, step};

#[derive(Debug, Deserialize)]
struct Results {
    connects_per_sec: f64,
    idle_rss: Vec<(usize, f64)>,
    qos1_msgs_per_sec: f64,
    revocation_ms: Vec<f64>,
}

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
        let deadline = Instant::now() + Duration::from_secs(5);
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

/// Runs `program args…` under a raised open-file limit (10k sessions need 10k sockets).
fn with_fd_limit(program: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let quoted: Vec<String> = std::iter::once(program.display().to_string())
        .chain(args.iter().cloned())
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let log = std::fs::File::create(log)?;
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n $(ulimit -Hn) 2>/dev/null; exec {}",
            quoted.join(" ")
        ))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))
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

/// Re-renders BENCHMARKS.md and the chart from the results of the last run.
pub fn gateway_report_only() -> anyhow::Result<()> {
    let load = |name: &str| -> anyhow::Result<Results> {
        let path = PathBuf::from(format!("target/bench/{name}.json"));
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("{}: run `cargo xtask bench gateway` first", path.display())
        })?;
        Ok(serde_json::from_str(text.trim())?)
    };
    write_outputs(&load("fleet-gateway")?, &load("mosquitto")?)
}

fn write_outputs(ours: &Results, theirs: &Results) -> anyhow::Result<()> {
    let report = report(ours, theirs);
    println!("\n{report}");
    std::fs::create_dir_all("bench")?;
    chart(ours, theirs, Path::new("bench/gateway.svg"))?;
    write_section("gateway", &report)?;
    println!("written: BENCHMARKS.md, bench/gateway.svg");
    Ok(())
}

pub fn gateway(idle: &[usize], connect_seconds: u64) -> anyhow::Result<()> {
    sh::ensure_debian_packages(&[("mosquitto", "mosquitto")])?;
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
    let bin = |n: &str| PathBuf::from("target/release").join(n);
    let dir = std::path::absolute("target/bench")?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let pki = dir.join("pki");
    step("a fresh P-256 PKI for both brokers");
    let provision = |args: &[&str]| {
        sh::run(
            Command::new(bin("fleet-provision"))
                .arg("--dir")
                .arg(&pki)
                .args(args)
                .stdout(Stdio::null()),
        )
    };
    provision(&["ca", "init", "--org", "Bench", "--insecure-plaintext-keys"])?;
    provision(&["server-cert", "--host", "localhost", "--host", "127.0.0.1"])?;
    let p = |rel: &str| pki.join(rel).display().to_string();
    let chain = dir.join("ca-chain.pem");
    std::fs::write(
        &chain,
        [
            std::fs::read(pki.join("ca/issuing.pem"))?,
            std::fs::read(pki.join("ca/root.pem"))?,
        ]
        .concat(),
    )?;

    let ours: SocketAddr = "127.0.0.1:18883".parse()?;
    let theirs: SocketAddr = "127.0.0.1:18884".parse()?;
    let gw_config = dir.join("gateway.toml");
    std::fs::write(
        &gw_config,
        format!(
            "listen = \"{ours}\"\n[tls]\nserver_cert = \"{}\"\nserver_key = \"{}\"\nclient_ca = [\"{}\"]\ncrl = [\"{}\"]\n\
             [limits]\nmax_connections = 60000\nmax_handshakes = 4096\nip_connect_rate = 1000000\nip_connect_burst = 1000000\n\
             publish_rate = 1000000\npublish_burst = 1000000\nqueue_messages = 100000000\nqueue_bytes = 4294967296\n\
             [admin]\nenabled = false\n",
            p("gateway/server.pem"), p("gateway/server.key"), p("gateway/clients-ca.pem"), p("crl/issuing.crl.pem"),
        ),
    )?;
    let mq_config = dir.join("mosquitto.conf");
    std::fs::write(
        &mq_config,
        format!(
            "user root\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\nmax_inflight_messages 100\n\
             max_queued_messages 0\nmax_queued_bytes 0\n\
             listener {} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
             use_identity_as_username true\ntls_version tlsv1.3\nmax_connections -1\n",
            theirs.port(), chain.display(), p("gateway/server.pem"), p("gateway/server.key"),
        ),
    )?;

    let mut all = Vec::new();
    let targets = [
        Target {
            name: "fleet-gateway",
            program: std::path::absolute(bin("fleet-gateway"))?,
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
    ];
    for Target {
        name,
        program,
        args,
        addr,
        crl,
    } in targets
    {
        step(&format!("measuring {name} on {addr}"));
        let log = dir.join(format!("{name}.log"));
        let broker = Broker(with_fd_limit(&program, &args, &log)?);
        wait_listening(addr, &log)?;
        let mut cmd = vec![
            "bench".to_string(),
            "--target".into(),
            addr.to_string(),
            "--name".into(),
            name.into(),
            "--pid".into(),
            broker.0.id().to_string(),
            "--issuing-cert".into(),
            p("ca/issuing.pem"),
            "--issuing-key".into(),
            p("ca/issuing.key"),
            "--root".into(),
            p("ca/root.pem"),
            "--connect-seconds".into(),
            connect_seconds.to_string(),
        ];
        for n in idle {
            cmd.extend(["--idle".into(), n.to_string()]);
        }
        if let Some(crl) = crl {
            cmd.extend(["--crl".into(), crl]);
        }
        let out_path = dir.join(format!("{name}.json"));
        let out = std::fs::File::create(&out_path)?;
        let hil = std::path::absolute(bin("fleet-hil"))?;
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n $(ulimit -Hn) 2>/dev/null; exec '{}' {}",
                hil.display(),
                cmd.iter()
                    .map(|a| format!("'{a}'"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
            .stdout(out)
            .status()?;
        drop(broker);
        if !status.success() {
            bail!(
                "the load generator failed against {name}; broker log: {}",
                log.display()
            );
        }
        let text = std::fs::read_to_string(&out_path)?;
        let results: Results = serde_json::from_str(text.trim())
            .with_context(|| format!("{}: not the load generator's JSON", out_path.display()))?;
        all.push(results);
    }
    let [ours, theirs] =
        <[Results; 2]>::try_from(all).map_err(|_| anyhow::anyhow!("two targets expected"))?;
    write_outputs(&ours, &theirs)
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

fn report(ours: &Results, theirs: &Results) -> String {
    let host = cpu_model();
    let mut s = String::new();
    s.push_str("## Gateway vs Mosquitto\n\n");
    s.push_str("Written by `cargo xtask bench gateway`: our gateway and Debian's Mosquitto 2 in one run, same P-256 PKI, ");
    s.push_str("same load generator (`fleet-hil bench`), TLS 1.3 with client certificates required, all on 127.0.0.1. ");
    s.push_str(&format!(
        "Mosquitto runs with `max_queued_messages 0` and `max_queued_bytes 0`: with its default of 1,000 \
         queued messages per client it drops QoS 1 messages to online subscribers and the QoS 1 test cannot \
         complete. Our gateway runs likewise with per-session queues large enough for the whole test \
         (`queue_messages` 100,000,000, `queue_bytes` 4 GiB; its defaults, 10,000 / 16 MiB, drop the \
         overflow and count it). Machine: {} cores, {host}. Both brokers \
         share the machine with the load generator. The gateway binary allocates with jemalloc. An idle session \
         holds rustls's connection state and buffers, the connection task with its rules, and the broker core's \
         per-session record; no queue is preallocated.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    s.push_str("| measure | fleet-gateway | mosquitto | ratio (ours / theirs) | target |\n|---|---|---|---|---|\n");
    s.push_str(&format!(
        "| full mTLS connects/s (handshake + CONNECT + CONNACK + close, 16 clients) | {:.0} | {:.0} | {:.2}× | ≥ 2× |\n",
        ours.connects_per_sec, theirs.connects_per_sec, ours.connects_per_sec / theirs.connects_per_sec
    ));
    for ((n, a), (_, b)) in ours.idle_rss.iter().zip(&theirs.idle_rss) {
        s.push_str(&format!(
            "| server RSS per idle mTLS session at {n} sessions | {:.1} KiB | {:.1} KiB | {:.2}× | ≤ 0.5× and ≤ 16 KiB |\n",
            a / 1024.0, b / 1024.0, a / b
        ));
    }
    s.push_str(&format!(
        "| QoS 1 deliveries/s (10 publishers × 2000 msgs → 10 subscribers) | {:.0} | {:.0} | {:.2}× | ≥ 1.5× |\n",
        ours.qos1_msgs_per_sec, theirs.qos1_msgs_per_sec, ours.qos1_msgs_per_sec / theirs.qos1_msgs_per_sec
    ));
    s.push_str(&format!(
        "| revocation → live session closed, p50 / p99 (20 rounds) | {:.0} ms / {:.0} ms | not supported (CRLs are read at start; no live kick) | — | p99 ≤ 1000 ms |\n",
        percentile(&ours.revocation_ms, 50.0), percentile(&ours.revocation_ms, 99.0)
    ));
    s.push_str("\n![chart](bench/gateway.svg)\n");
    s
}

fn chart(ours: &Results, theirs: &Results, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let idle = |r: &Results| r.idle_rss.first().map_or(0.0, |(_, b)| b / 1024.0);
    let data = [
        (
            "mTLS connects/s (higher is better)",
            ours.connects_per_sec,
            theirs.connects_per_sec,
        ),
        (
            "QoS 1 deliveries/s (higher is better)",
            ours.qos1_msgs_per_sec,
            theirs.qos1_msgs_per_sec,
        ),
        (
            "KiB RSS per idle session (lower is better)",
            idle(ours),
            idle(theirs),
        ),
    ];
    for (panel, (title, a, b)) in panels.iter().zip(data) {
        let top = a.max(b) * 1.2 + 1e-9;
        let mut c = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(25)
            .y_label_area_size(55)
            .build_cartesian_2d((0..1).into_segmented(), 0.0..top)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(0) => "fleet-gateway".into(),
                SegmentValue::CenterOf(1) => "mosquitto".into(),
                _ => String::new(),
            })
            .draw()?;
        c.draw_series(
            [(0, a, BLUE), (1, b, RED)]
                .into_iter()
                .map(|(x, v, color)| {
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(x), 0.0),
                            (SegmentValue::Exact(x + 1), v),
                        ],
                        color.mix(0.7).filled(),
                    );
                    bar.set_margin(0, 0, 12, 12);
                    bar
                }),
        )?;
    }
    root.present()?;
    Ok(())
}

/// Replaces one bench's section of BENCHMARKS.md (between its markers), keeping the others.
pub fn write_section(name: &str, body: &str) -> anyhow::Result<()> {
    let (start, end) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let block = format!("{start}\n{}\n{end}", body.trim_end());
    let old = std::fs::read_to_string("BENCHMARKS.md").unwrap_or_default();
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &old[..a], &old[b + end.len()..]),
        _ if old.trim().is_empty() => format!("# Benchmarks\n\n{block}\n"),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    std::fs::write("BENCHMARKS.md", new)?;
    Ok(())
}

#[derive(Debug, Deserialize)]
struct Flow {
    devices: u32,
    seconds: f64,
    per_second: f64,
}

#[derive(Debug, Deserialize)]
struct Provisioning {
    csr_flow: Flow,
    key_injection: Flow,
    storage_bytes_per_device: f64,
}

/// Issuance throughput of the station on one core (`taskset -c 0`), both flows.
pub fn provisioning(devices: u32) -> anyhow::Result<()> {
    step("building fleet-provision (release)");
    sh::cargo(&["build", "--release", "--quiet", "-p", "fleet-provision"])?;
    step(&format!("issuing {devices} devices per flow on one core"));
    let mut cmd = if Path::new("/usr/bin/taskset").exists() {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg("target/release/fleet-provision");
        c
    } else {
        Command::new("target/release/fleet-provision")
    };
    let out = cmd
        .args(["bench", "--devices", &devices.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run fleet-provision bench")?;
    if !out.status.success() {
        bail!("fleet-provision bench failed: {}", out.status);
    }
    let r: Provisioning = serde_json::from_slice(&out.stdout)?;
    let host = cpu_model();
    let mut s = String::new();
    s.push_str("## Provisioning station\n\n");
    s.push_str(&format!(
        "Written by `cargo xtask bench provisioning`: `fleet-provision bench` pinned to one core of a {host}, \
         in a scratch station on the local disk. Every certificate is fully issued: checks, signature, \
         registry transactions (reserve before signing, activate after delivery), hash-chained audit records \
         and the signed batch manifest, committed in groups of 256 (one filesystem sync, one audit fsync and \
         two SQLite transactions per group). The CSR flow excludes device key generation (it happens on the \
         devices); key injection includes the station's key generation and writing each bundle and PEM file. \
         No competitor to compare with here: AWS IoT Core, EMQX and Mosquitto have no factory station.\n\n"
    ));
    s.push_str("| measure | result | target |\n|---|---|---|\n");
    s.push_str(&format!(
        "| CSR flow: certificates/s (CSR check + sign + registry + audit) | {:.0} | ≥ 10,000 |\n",
        r.csr_flow.per_second
    ));
    s.push_str(&format!(
        "| CSR flow: {} devices | {:.2} s | — |\n",
        r.csr_flow.devices, r.csr_flow.seconds
    ));
    s.push_str(&format!(
        "| key injection: devices/s (keygen + sign + bundle + 2 files + registry + audit) | {:.0} | — |\n",
        r.key_injection.per_second
    ));
    s.push_str(&format!(
        "| key injection: a {}-device batch | {:.2} s | — |\n",
        r.key_injection.devices, r.key_injection.seconds
    ));
    s.push_str(&format!(
        "| registry + audit log per device | {:.0} bytes | — |\n",
        r.storage_bytes_per_device
    ));
    println!("\n{s}");
    write_section("provisioning", &s)?;
    println!("written: BENCHMARKS.md");
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
