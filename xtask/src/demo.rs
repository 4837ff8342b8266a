//! `cargo xtask demo`: the whole product on this machine, with embedded defaults.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::sh::{self, step};

const TENANT: &str = "acme";
const SERVICE: &str = "backend";

/// Kills (SIGTERM, then SIGKILL) the gateway we started if the demo fails halfway.
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

pub fn run(devices: usize, seconds: u64, dir: &Path, port: u16) -> anyhow::Result<()> {
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
    let bin = |name: &str| PathBuf::from("target/debug").join(name);
    let provision = |args: &[&str]| {
        sh::run(
            Command::new(bin("fleet-provision"))
                .arg("--dir")
                .arg(dir)
                .args(args),
        )
    };

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
    let have = device_bundles(dir)?.len();
    if have < devices {
        step(&format!("provisioning {} devices", devices - have));
        provision(&[
            "batch",
            "--count",
            &(devices - have).to_string(),
            "--tenant",
            TENANT,
            "--gateway-host",
            "localhost",
            "--gateway-port",
            &port.to_string(),
        ])?;
    } else {
        println!("{have} devices already provisioned: using {devices} of them");
    }

    step(&format!(
        "starting fleet-gateway on 127.0.0.1:{port} (mutual TLS required)"
    ));
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\n\n[tls]\nserver_cert = \"gateway/server.pem\"\n\
             server_key = \"gateway/server.key\"\nclient_ca = [\"gateway/clients-ca.pem\"]\n\
             crl = [\"crl/issuing.crl.pem\"]\n"
        ),
    )
    .with_context(|| format!("cannot write {}", config.display()))?;
    let log_path = dir.join("gateway.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut gateway = GatewayProcess(
        Command::new(bin("fleet-gateway"))
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

    step(&format!(
        "{devices} simulated devices (the firmware core on this host) + a backend service, {seconds} s"
    ));
    let gateway_addr = format!("127.0.0.1:{port}");
    let s = |p: PathBuf| p.display().to_string();
    let fleet = sh::run(
        Command::new(bin("fleet-hil"))
            .args(["fleet", "--bundles"])
            .arg(dir.join("devices"))
            .args([
                "--count",
                &devices.to_string(),
                "--seconds",
                &seconds.to_string(),
            ])
            .args([
                "--gateway",
                &gateway_addr,
                "--tenant",
                TENANT,
                "--service",
                SERVICE,
            ])
            .args([
                "--service-cert",
                &s(dir.join(format!("services/{SERVICE}.pem"))),
            ])
            .args([
                "--service-key",
                &s(dir.join(format!("services/{SERVICE}.key"))),
            ])
            .args(["--server-ca", &s(dir.join("ca/root.pem"))]),
    );

    step("devices the gateway must refuse");
    let refusals = sh::run(
        Command::new(bin("fleet-hil"))
            .args([
                "refusals",
                "--gateway",
                &gateway_addr,
                "--host",
                "localhost",
            ])
            .args(["--server-ca", &s(dir.join("ca/root.pem"))]),
    );
    std::thread::sleep(Duration::from_millis(300));
    println!("the gateway's audit log says:");
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    for line in log_text.lines().filter(|l| l.contains("refused")) {
        println!("  {}", line.trim());
    }

    step("stopping the gateway (SIGTERM)");
    let status = gateway.stop()?;
    println!("fleet-gateway exited: {status}");
    fleet?;
    refusals?;
    println!(
        "\ndemo finished: data in {}, gateway log in {}",
        dir.display(),
        log_path.display()
    );
    Ok(())
}

fn device_bundles(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let devices = dir.join("devices");
    if !devices.exists() {
        return Ok(Vec::new());
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(&devices)
        .with_context(|| format!("cannot list {}", devices.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    v.sort();
    Ok(v)
}
