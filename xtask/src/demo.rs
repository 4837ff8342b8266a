//! `cargo xtask demo`: the whole product on this machine, with embedded defaults: a dev PKI,
//! the gateway (with its admin API, fleet console and audit file), simulated devices and a
//! backend; one device is revoked with `fleet-provision revoke` while it is connected, and
//! the time the gateway takes to close its session is measured through the admin API.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::sh::{self, step};

const TENANT: &str = "acme";
const SERVICE: &str = "backend";

/// Stops (SIGTERM, then SIGKILL) a process we started (the gateway, the fleet) if the demo
/// fails halfway.
struct GatewayProcess(Child);

impl GatewayProcess {
    fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.0.kill()?;
                return Ok(self.0.wait()?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.stop();
        }
    }
}

pub fn run(
    devices: usize,
    seconds: u64,
    dir: &Path,
    port: u16,
    admin_port: u16,
) -> anyhow::Result<()> {
    if devices == 0 {
        bail!("--devices must be at least 1");
    }
    // Ctrl-C reaches the gateway and the fleet directly (same process group): they stop
    // cleanly, and this process carries on to report and to reap the gateway.
    let _ = ctrlc::set_handler(|| eprintln!("\ninterrupted: finishing up"));
    step("building fleet-provision, fleet-gateway and fleet-hil");
    sh::cargo(&[
        "build",
        "--quiet",
        "-p",
        "fleet-provision",
        "-p",
        "fleet-gateway",
        "-p",
        "fleet-hil",
    ])?;
    let provision = |args: &[&str]| {
        sh::run(
            Command::new(bin("fleet-provision"))
                .arg("--dir")
                .arg(dir)
                .args(args),
        )
    };
    dev_pki(dir, &provision)?;
    let fleet_dir = demo_fleet(dir, devices, port, &provision)?;
    let token = admin_token(dir)?;
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    step(&format!(
        "starting fleet-gateway on 127.0.0.1:{port} (mutual TLS required), console on {admin}"
    ));
    let (mut gateway, log_path) = start_gateway(dir, port, admin)?;

    step(&format!(
        "{devices} simulated devices (the firmware core on this host) + a backend service, {seconds} s"
    ));
    let gateway_addr = format!("127.0.0.1:{port}");
    let (mut fleet, acked) = start_fleet(dir, &fleet_dir, devices, seconds, &gateway_addr)?;
    let victim = bundles_in(&fleet_dir)?
        .get(devices - 1)
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .context("no device to revoke")?;
    let admin_api = AdminApi { addr: admin, token };
    let revoked = live_revocation(&admin_api, &acked, devices, &victim, &provision);
    if let Err(e) = &revoked {
        println!("live revocation not shown: {e:#}");
    }
    println!(
        "\nfleet console: http://{admin}/   (admin token: {})",
        admin_api.token
    );
    println!("the fleet keeps running until its {seconds} s are up");
    let fleet_status = fleet.0.wait().context("fleet-hil")?;
    let refusals = show_refusals(dir, &gateway_addr, &log_path);

    step("stopping the gateway (SIGTERM)");
    let status = gateway.stop()?;
    println!("fleet-gateway exited: {status}");
    if !fleet_status.success() {
        bail!("fleet-hil fleet failed: {fleet_status}");
    }
    refusals?;
    revoked?;
    println!(
        "\ndemo finished: data in {}, gateway log in {}",
        dir.display(),
        log_path.display()
    );
    Ok(())
}

/// A binary of this workspace, as `cargo build` left it.
fn bin(name: &str) -> PathBuf {
    PathBuf::from("target/debug").join(name)
}

fn display(p: PathBuf) -> String {
    p.display().to_string()
}

/// The dev PKI (root → issuing CA, unencrypted keys), the gateway's server certificate and
/// the backend's service identity, each made once and then reused.
fn dev_pki(dir: &Path, provision: &dyn Fn(&[&str]) -> anyhow::Result<()>) -> anyhow::Result<()> {
    step(&format!("station directory {}", dir.display()));
    if dir.join("ca/root.pem").exists() {
        println!(
            "dev PKI already present: reusing {}",
            dir.join("ca").display()
        );
    } else {
        println!("creating a dev PKI (root CA → issuing CA); keys unencrypted: dev only");
        provision(&[
            "ca",
            "init",
            "--org",
            "Fleet Demo",
            "--insecure-plaintext-keys",
        ])?;
    }
    if !dir.join("gateway/server.pem").exists() {
        provision(&["server-cert", "--host", "localhost", "--host", "127.0.0.1"])?;
    }
    if !dir.join(format!("services/{SERVICE}.pem")).exists() {
        provision(&["service-cert", "--name", SERVICE, "--tenant", TENANT])?;
    }
    Ok(())
}

/// `fleet-hil fleet`: the simulated devices and the backend, for `seconds`; returns the
/// process (stopped with SIGTERM if the demo fails before its time is up) and the count of
/// acknowledged messages it reports.
fn start_fleet(
    dir: &Path,
    fleet_dir: &Path,
    devices: usize,
    seconds: u64,
    gateway_addr: &str,
) -> anyhow::Result<(GatewayProcess, Arc<AtomicUsize>)> {
    let mut fleet = Command::new(bin("fleet-hil"))
        .args(["fleet", "--bundles"])
        .arg(fleet_dir)
        .args([
            "--count",
            &devices.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .args([
            "--gateway",
            gateway_addr,
            "--tenant",
            TENANT,
            "--service",
            SERVICE,
        ])
        .args([
            "--service-cert",
            &display(dir.join(format!("services/{SERVICE}.pem"))),
        ])
        .args([
            "--service-key",
            &display(dir.join(format!("services/{SERVICE}.key"))),
        ])
        .args(["--server-ca", &display(dir.join("ca/root.pem"))])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start fleet-hil")?;
    let acked = follow_fleet(fleet.stdout.take().context("fleet-hil stdout")?);
    Ok((GatewayProcess(fleet), acked))
}

/// `fleet-hil refusals` (devices the gateway must refuse), then what the gateway's audit log
/// says about them.
fn show_refusals(dir: &Path, gateway_addr: &str, log_path: &Path) -> anyhow::Result<()> {
    step("devices the gateway must refuse");
    let refusals = sh::run(
        Command::new(bin("fleet-hil"))
            .args(["refusals", "--gateway", gateway_addr, "--host", "localhost"])
            .args(["--server-ca", &display(dir.join("ca/root.pem"))]),
    );
    std::thread::sleep(Duration::from_millis(300));
    println!("the gateway's audit log says:");
    let log_text = std::fs::read_to_string(log_path).unwrap_or_default();
    for line in log_text.lines().filter(|l| l.contains("refused")).take(20) {
        println!("  {}", line.trim());
    }
    refusals
}

/// `dir/demo-fleet/`: copies of the bundles of `devices` devices that are not revoked (a
/// previous demo revoked one), provisioning more when there are too few.
fn demo_fleet(
    dir: &Path,
    devices: usize,
    port: u16,
    provision: &dyn Fn(&[&str]) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    let mut active = active_bundles(dir)?;
    if active.len() < devices {
        step(&format!("provisioning {} devices", devices - active.len()));
        provision(&[
            "batch",
            "--count",
            &(devices - active.len()).to_string(),
            "--tenant",
            TENANT,
            "--gateway-host",
            "localhost",
            "--gateway-port",
            &port.to_string(),
        ])?;
        active = active_bundles(dir)?;
    } else {
        println!(
            "{} active devices provisioned: using {devices} of them",
            active.len()
        );
    }
    let fleet_dir = dir.join("demo-fleet");
    if fleet_dir.exists() {
        std::fs::remove_dir_all(&fleet_dir)
            .with_context(|| format!("cannot clear {}", fleet_dir.display()))?;
    }
    std::fs::create_dir_all(&fleet_dir)?;
    for bundle in active.iter().take(devices) {
        let name = bundle.file_name().context("bundle name")?;
        std::fs::copy(bundle, fleet_dir.join(name))
            .with_context(|| format!("cannot copy {}", bundle.display()))?;
    }
    Ok(fleet_dir)
}

/// Bundles of devices with an active certificate, by `fleet-provision devices`.
fn active_bundles(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("target/debug/fleet-provision")
        .arg("--dir")
        .arg(dir)
        .arg("devices")
        .output()
        .context("cannot run fleet-provision devices")?;
    if !out.status.success() {
        bail!(
            "fleet-provision devices: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listing = String::from_utf8_lossy(&out.stdout);
    let active: std::collections::HashSet<&str> = listing
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let id = f.next()?;
            (f.nth(1)? == "active").then_some(id)
        })
        .collect();
    Ok(device_bundles(dir)?
        .into_iter()
        .filter(|p| {
            p.file_stem()
                .is_some_and(|s| active.contains(s.to_string_lossy().as_ref()))
        })
        .collect())
}

/// The console's admin token: `dir/admin.token`, made once from the system's randomness.
fn admin_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("admin.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if t.trim().len() >= 16 {
            return Ok(t.trim().to_owned());
        }
    }
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("/dev/urandom")?,
        &mut bytes,
    )?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, format!("{token}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

fn start_gateway(
    dir: &Path,
    port: u16,
    admin: SocketAddr,
) -> anyhow::Result<(GatewayProcess, PathBuf)> {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\naudit_log = \"audit.jsonl\"\n\n[tls]\n\
             server_cert = \"gateway/server.pem\"\nserver_key = \"gateway/server.key\"\n\
             client_ca = [\"gateway/clients-ca.pem\"]\ncrl = [\"crl/issuing.crl.pem\"]\n\n\
             [admin]\nlisten = \"{admin}\"\ntoken_file = \"admin.token\"\n"
        ),
    )
    .with_context(|| format!("cannot write {}", config.display()))?;
    let log_path = dir.join("gateway.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut gateway = GatewayProcess(
        Command::new("target/debug/fleet-gateway")
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("cannot start fleet-gateway")?,
    );
    let stdout = gateway.0.stdout.take().context("gateway stdout")?;
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    if !first.contains("listening on") {
        let status = gateway.stop()?;
        bail!(
            "fleet-gateway did not start ({status}); see {}:\n{}",
            log_path.display(),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    println!("{} (log: {})", first.trim(), log_path.display());
    Ok((gateway, log_path))
}

/// Prints fleet-hil's summary lines as they come and keeps the number of devices whose
/// command was acknowledged (`commands acked N/M`).
fn follow_fleet(stdout: std::process::ChildStdout) -> Arc<AtomicUsize> {
    let acked = Arc::new(AtomicUsize::new(0));
    let seen = acked.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("{line}");
            if let Some(n) = line
                .split("commands acked")
                .nth(1)
                .and_then(|rest| rest.trim_start().split('/').next())
                .and_then(|n| n.trim().parse().ok())
            {
                seen.store(n, Ordering::Relaxed);
            }
        }
    });
    acked
}

/// Revokes `victim` with the station's CLI while it is connected, and shows how long the
/// gateway took to close its session and that its reconnects are refused.
fn live_revocation(
    admin: &AdminApi,
    acked: &AtomicUsize,
    devices: usize,
    victim: &str,
    provision: &dyn Fn(&[&str]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < devices || !admin.has_session(victim)? {
        if Instant::now() > deadline {
            bail!("the fleet did not get going within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    step(&format!(
        "revoking {victim} with fleet-provision revoke while it is connected"
    ));
    let refused_before = admin.refused_revoked()?;
    let started = Instant::now();
    provision(&["revoke", victim, "--reason", "keyCompromise"])?;
    let written = started.elapsed();
    while admin.has_session(victim)? {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the gateway still holds {victim}'s session 10 s after the revocation");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let closed = started.elapsed();
    println!(
        "revocation: {victim}'s live session closed {:.0} ms after `fleet-provision revoke` started \
         ({:.0} ms after the new CRL was written; the command took {:.0} ms)",
        closed.as_secs_f64() * 1e3,
        (closed - written.min(closed)).as_secs_f64() * 1e3,
        written.as_secs_f64() * 1e3
    );
    // The device reconnects with backoff; every attempt must be refused.
    let until = Instant::now() + Duration::from_secs(8);
    while admin.refused_revoked()? < refused_before + 2 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(200));
    }
    let refused = admin.refused_revoked()? - refused_before;
    if admin.has_session(victim)? {
        bail!("{victim} is connected again after its revocation");
    }
    if refused == 0 {
        bail!("no reconnect of {victim} was refused as revoked within 8 s");
    }
    println!("{victim} reconnected {refused} times since: every attempt refused (revoked); the audit log says:");
    for record in admin.audit("reason=revoked&limit=4")? {
        println!("  {record}");
    }
    Ok(())
}

/// The gateway's admin API, over plain HTTP/1.1 on loopback.
struct AdminApi {
    addr: SocketAddr,
    token: String,
}

impl AdminApi {
    fn get(&self, path: &str) -> anyhow::Result<String> {
        let mut tcp = std::net::TcpStream::connect(self.addr)
            .with_context(|| format!("admin API {}", self.addr))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.token
        )?;
        let mut response = String::new();
        std::io::Read::read_to_string(&mut tcp, &mut response)?;
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
        }
        Ok(body.to_owned())
    }

    fn has_session(&self, device: &str) -> anyhow::Result<bool> {
        let list: serde_json::Value = serde_json::from_str(&self.get("/v1/sessions")?)?;
        Ok(list
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s["device"] == device)))
    }

    /// Handshakes refused because the certificate is revoked, since the gateway started.
    fn refused_revoked(&self) -> anyhow::Result<u64> {
        let stats: serde_json::Value = serde_json::from_str(&self.get("/v1/console/stats")?)?;
        Ok(stats["refused_by_reason"]["revoked"].as_u64().unwrap_or(0))
    }

    fn audit(&self, query: &str) -> anyhow::Result<Vec<String>> {
        let feed: serde_json::Value =
            serde_json::from_str(&self.get(&format!("/v1/audit?{query}"))?)?;
        Ok(feed["records"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|x| {
                        format!(
                            "{} {}: {} ({})",
                            x["event"].as_str().unwrap_or(""),
                            x["reason"].as_str().unwrap_or(""),
                            x["detail"].as_str().unwrap_or(""),
                            x["explanation"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn device_bundles(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    bundles_in(&dir.join("devices"))
}

/// The `*.bin` bundles in `dir`, sorted by name.
fn bundles_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    v.sort();
    Ok(v)
}
