//! The real firmware image on an emulated Cortex-M4: QEMU's mps2-an386 with its LAN9118,
//! user-mode networking only (the guest reaches the host's loopback as 10.0.2.2), against a
//! real gateway and a backend, checked from the device's log and the gateway's admin API.
//!
//! Scenarios:
//! 0. `measure`: boot and connect under `-icount shift=0`; instructions per handshake and
//!    peak stack from the device's `measure:` line;
//! 1. `telemetry`: boot → DHCP → mTLS → CONNECT → telemetry seen by a backend subscriber;
//! 2. `command`: a backend command reaches the device and is acknowledged;
//! 3. `revocation`: `revoke` → the gateway kicks the device within 1 s → its reconnects are
//!    refused and it backs off;
//! 4. `rotation`: the gateway reports near-expiry → the device sends a CSR → gets a new
//!    certificate → reconnects with it from slot B; `rollback`: the new certificate is
//!    refused → the device rolls back to slot A;
//! 5. `wrong-anchor`: a bundle whose trust anchor is another CA → the device refuses the
//!    gateway.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_gateway::config::{Admin, TlsFiles};
use fleet_gateway::{Config, Gateway};
use fleet_protocol::bundle::Bundle;
use fleet_provision::{BatchRequest, KeyProtection, Reason, Station};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, Notify};

use crate::backend::{Backend, ServiceIdentity};
use crate::probe;

/// Where the guest sees the host's loopback (QEMU slirp).
pub const HOST_FROM_GUEST: &str = "10.0.2.2";
/// The flash address of identity slot A on this board (see `fleet-provision`'s board table).
pub const SLOT_A: u32 = 0x003F_0000;
const TENANT: &str = "acme";
const SERVICE: &str = "hil-backend";

/// A scenario of the emulated board.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Boot and connect under `-icount shift=0`: the handshake's instructions and the peak
    /// stack.
    Measure,
    Telemetry,
    Command,
    Revocation,
    Rotation,
    Rollback,
    WrongAnchor,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::Measure,
        Scenario::Telemetry,
        Scenario::Command,
        Scenario::Revocation,
        Scenario::Rotation,
        Scenario::Rollback,
        Scenario::WrongAnchor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Measure => "measure",
            Scenario::Telemetry => "telemetry",
            Scenario::Command => "command",
            Scenario::Revocation => "revocation",
            Scenario::Rotation => "rotation",
            Scenario::Rollback => "rollback",
            Scenario::WrongAnchor => "wrong-anchor",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Where the firmware runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// QEMU's mps2-an386 (the test command's target).
    Qemu { qemu: PathBuf, image: PathBuf },
    /// A real board flashed and run through probe-rs (STM32) or espflash (ESP32-C3); the
    /// gateway listens on all interfaces and the board reaches it at `gateway_ip`.
    Probe {
        board: probe::ProbeBoard,
        image: PathBuf,
        gateway_ip: std::net::IpAddr,
    },
}

impl Target {
    /// The gateway address the device's bundle names, and where the gateway listens.
    fn network(&self) -> (String, SocketAddr) {
        match self {
            Target::Qemu { .. } => (
                HOST_FROM_GUEST.into(),
                SocketAddr::from(([127, 0, 0, 1], 0)),
            ),
            Target::Probe { gateway_ip, .. } => {
                (gateway_ip.to_string(), SocketAddr::from(([0, 0, 0, 0], 0)))
            }
        }
    }
}

/// Why a scenario failed, with the evidence.
#[derive(Debug)]
pub struct Failure {
    pub scenario: Scenario,
    pub step: String,
    pub device_log: Vec<String>,
    pub gateway_log: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "scenario {} failed: {}", self.scenario.name(), self.step)?;
        writeln!(f, "--- last {} device log lines", self.device_log.len())?;
        for l in &self.device_log {
            writeln!(f, "{l}")?;
        }
        writeln!(f, "--- last {} gateway audit lines", self.gateway_log.len())?;
        for l in &self.gateway_log {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// A failed step with the last 50 lines of the device's log and the gateway's audit.
    fn at(
        scenario: Scenario,
        step: String,
        vm: Option<&Device>,
        gateway_log: Vec<String>,
    ) -> Box<Failure> {
        Box::new(Failure {
            scenario,
            step,
            device_log: vm.map(|q| q.tail(50)).unwrap_or_default(),
            gateway_log,
        })
    }
}

/// What a passed scenario measured.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub scenario: Option<Scenario>,
    /// Host time from QEMU start to the device's session at the gateway.
    pub connect: Option<Duration>,
    /// Telemetry messages the backend received from the device.
    pub telemetry: u64,
    /// Command round trip seen by the backend.
    pub command_rtt: Option<Duration>,
    /// `revoke` → the device's session closed.
    pub revocation: Option<Duration>,
    /// Refused reconnect attempts observed.
    pub refused_attempts: u32,
    /// Backoff delays the device announced, in ms.
    pub backoff_ms: Vec<u64>,
    /// Instructions the core executed from TCP connect to an accepted MQTT session (mutual
    /// TLS handshake, CONNECT, SUBSCRIBE), and the peak stack then, from the device's log.
    pub handshake_instructions: Option<u64>,
    pub peak_stack_bytes: Option<u64>,
    /// The same for the reconnect after the gateway kicked the session: the device has
    /// verified this gateway's chain before and checks only its `CertificateVerify`.
    pub reconnect_instructions: Option<u64>,
}

/// Reads the device's `measure:` lines: the first connection's, and a reconnect's.
fn measurements(vm: &Device, out: &mut Outcome) {
    let lines: Vec<String> = vm
        .log()
        .into_iter()
        .filter(|l| l.contains("measure: handshake"))
        .collect();
    let number_after = |line: &str, key: &str| -> Option<u64> {
        line.split(key)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    if let Some(first) = lines.first() {
        out.handshake_instructions = number_after(first, "busy ");
        out.peak_stack_bytes = number_after(first, "peak stack ");
    }
    out.reconnect_instructions = lines.get(1).and_then(|l| number_after(l, "busy "));
}

/// A running device — QEMU, or a real board through probe-rs/espflash — whose log (semihosting,
/// RTT or serial) is collected line by line.
pub struct Device {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    more: Arc<Notify>,
    reader: tokio::task::JoinHandle<()>,
}

impl Device {
    /// Starts the device on `target` with `bundle` as its identity (slot A). With
    /// `count_instructions`, QEMU runs with `-icount shift=0`: one instruction is one virtual
    /// nanosecond, so the firmware's busy-time figures are instruction counts (idle time
    /// then runs slower than real time, so only the measurement scenario uses it).
    pub async fn start(
        target: &Target,
        bundle: &Path,
        count_instructions: bool,
    ) -> std::io::Result<Device> {
        let mut command = match target {
            Target::Qemu { qemu, image } => {
                let mut c = Command::new(qemu);
                if count_instructions {
                    c.args(["-icount", "shift=0"]);
                }
                c.args(["-machine", "mps2-an386", "-cpu", "cortex-m4", "-nographic"])
                    .args(["-monitor", "none", "-serial", "null"])
                    .args(["-semihosting-config", "enable=on,target=native"])
                    // User-mode networking only: no tap device, nothing leaves the machine.
                    .args(["-nic", "user,model=lan9118"])
                    .arg("-device")
                    .arg(format!("loader,file={},addr={SLOT_A:#x}", bundle.display()))
                    .arg("-kernel")
                    .arg(image);
                c
            }
            Target::Probe { board, image, .. } => {
                probe::flash_and_run(board, image, bundle).await?
            }
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let more = Arc::new(Notify::new());
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (l, m) = (lines.clone(), more.clone());
        let reader = tokio::spawn(async move {
            let push = |line: String| {
                l.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), line));
                m.notify_waiters();
            };
            let mut out = stdout.map(|s| BufReader::new(s).lines());
            let mut err = stderr.map(|s| BufReader::new(s).lines());
            loop {
                tokio::select! {
                    Some(Ok(Some(line))) = async { match out.as_mut() { Some(o) => Some(o.next_line().await), None => None } } => push(line),
                    Some(Ok(Some(line))) = async { match err.as_mut() { Some(e) => Some(e.next_line().await), None => None } } => push(format!("stderr: {line}")),
                    else => break,
                }
            }
        });
        Ok(Device {
            child,
            lines,
            more,
            reader,
        })
    }

    /// The log so far.
    pub fn log(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    fn tail(&self, n: usize) -> Vec<String> {
        let all = self.log();
        all[all.len().saturating_sub(n)..].to_vec()
    }

    /// Waits for a log line at index `from` or later containing `needle`; returns its index,
    /// the line and when it arrived.
    pub async fn wait_for(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Option<(usize, String, Instant)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.more.notified();
            {
                let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((i, (at, l))) = lines
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, (_, l))| l.contains(needle))
                {
                    return Some((i, l.clone(), *at));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Stops the device's process (QEMU or the probe tool we started, by its handle).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        self.reader.abort();
    }
}

/// A station, a gateway (with its admin API) and a backend, on 127.0.0.1.
struct Rig {
    device_host: String,
    dir: tempfile::TempDir,
    station: Station,
    gateway: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    backend: Backend,
}

impl Rig {
    async fn start(listen: SocketAddr, device_host: &str) -> anyhow::Result<Rig> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let station = Station::init(d, "HIL", KeyProtection::InsecurePlaintext)?;
        // The device connects to `device_host`; the backend to 127.0.0.1.
        station.issue_server_cert(&[device_host, "127.0.0.1", "localhost"])?;
        station.issue_service_cert(SERVICE, TENANT)?;
        let mut config = Config::new(
            listen,
            TlsFiles {
                server_cert: d.join("gateway/server.pem"),
                server_key: d.join("gateway/server.key"),
                client_ca: vec![d.join("gateway/clients-ca.pem")],
                crl_issuers: Vec::new(),
                crl: vec![station.crl_path()],
            },
        );
        config.admin = Some(Admin {
            listen: "127.0.0.1:0".parse()?,
            token: None,
        });
        config.audit_log = Some(d.join("gateway-audit.jsonl"));
        let gw = Gateway::bind(config).await?;
        let gateway = gw.local_addr();
        let admin = gw
            .admin_addr()
            .ok_or_else(|| anyhow::anyhow!("admin API did not start"))?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = gw
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let (cert, key, ca) = (
            d.join(format!("services/{SERVICE}.pem")),
            d.join(format!("services/{SERVICE}.key")),
            d.join("ca/root.pem"),
        );
        let backend = Backend::connect(
            "localhost",
            gateway.port(),
            SERVICE,
            TENANT,
            &ServiceIdentity {
                cert_pem: &cert,
                key_pem: &key,
                server_ca_pem: &ca,
            },
        )
        .await?;
        Ok(Rig {
            device_host: device_host.to_owned(),
            dir,
            station,
            gateway,
            admin,
            stop: Some(stop),
            task,
            backend,
        })
    }

    /// One device whose bundle points at the gateway as the guest sees it.
    fn device(&mut self) -> anyhow::Result<(String, PathBuf)> {
        let issued = self.station.issue_devices(&BatchRequest {
            tenant: TENANT.into(),
            count: 1,
            gateway_host: self.device_host.clone(),
            gateway_port: self.gateway.port(),
            validity_days: 30,
        })?;
        let d = issued
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no device issued"))?;
        Ok((d.device_id, d.bundle_path))
    }

    fn gateway_log(&self, n: usize) -> Vec<String> {
        crate::rotation::tail(&self.dir.path().join("gateway-audit.jsonl"), n)
    }

    /// `GET /v1/sessions` on the admin API: whether `device` has a live session.
    /// Ends the device's session through the gateway's admin API.
    async fn kick(&self, device: &str) -> anyhow::Result<()> {
        let mut s = tokio::net::TcpStream::connect(self.admin).await?;
        let request = format!(
            "POST /v1/sessions/{device}/kick HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).await?;
        anyhow::ensure!(
            reply.starts_with("HTTP/1.1 2"),
            "kick {device}: {}",
            reply.lines().next().unwrap_or("no reply")
        );
        Ok(())
    }

    async fn admin_has_session(&self, device: &str) -> anyhow::Result<bool> {
        let mut s = tokio::net::TcpStream::connect(self.admin).await?;
        s.write_all(b"GET /v1/sessions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok(body.contains(&format!("\"{device}\"")))
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.backend.close().await;
    }
}

/// Boots the image and runs one scenario against a fresh station, gateway and backend.
pub async fn run(scenario: Scenario, target: &Target) -> Result<Outcome, Box<Failure>> {
    if matches!(scenario, Scenario::Rotation | Scenario::Rollback) {
        return rotation(scenario, target).await;
    }
    if scenario == Scenario::Measure && !matches!(target, Target::Qemu { .. }) {
        return Err(Failure::at(
            scenario,
            "instruction counts need the emulator (-icount)".into(),
            None,
            Vec::new(),
        ));
    }
    let fail = |step: String, vm: Option<&Device>, rig: Option<&Rig>| {
        Failure::at(
            scenario,
            step,
            vm,
            rig.map(|r| r.gateway_log(50)).unwrap_or_default(),
        )
    };
    let (device_host, listen) = target.network();
    let mut rig = Rig::start(listen, &device_host).await.map_err(|e| {
        fail(
            format!("setting up station, gateway and backend: {e:#}"),
            None,
            None,
        )
    })?;
    let (device, mut bundle) = rig
        .device()
        .map_err(|e| fail(format!("issuing the device: {e:#}"), None, Some(&rig)))?;
    if scenario == Scenario::WrongAnchor {
        bundle = foreign_anchor_bundle(&bundle, rig.dir.path()).map_err(|e| {
            fail(
                format!("making the wrong-anchor bundle: {e:#}"),
                None,
                Some(&rig),
            )
        })?;
    }
    let started = Instant::now();
    let vm = Device::start(target, &bundle, scenario == Scenario::Measure)
        .await
        .map_err(|e| fail(format!("starting the device: {e}"), None, Some(&rig)))?;
    let result = drive(scenario, &mut rig, &vm, &device, started).await;
    let out = match result {
        Ok(o) => Ok(o),
        Err(step) => Err(fail(step, Some(&vm), Some(&rig))),
    };
    vm.stop().await;
    rig.stop().await;
    out
}

const BOOT: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(20);

async fn drive(
    scenario: Scenario,
    rig: &mut Rig,
    vm: &Device,
    device: &str,
    started: Instant,
) -> Result<Outcome, String> {
    let mut out = Outcome {
        scenario: Some(scenario),
        ..Outcome::default()
    };
    let step = |what: &str| format!("{what}: not seen in time");
    if matches!(scenario, Scenario::Rotation | Scenario::Rollback) {
        return Err("rotation scenarios run on their own rig".into());
    }
    vm.wait_for(0, "dhcp address", BOOT)
        .await
        .ok_or_else(|| step("boot and DHCP"))?;
    if scenario == Scenario::WrongAnchor {
        // The device must refuse the gateway's certificate, again and again, with backoff.
        let (i, line, _) = vm
            .wait_for(0, "connection ended", STEP)
            .await
            .ok_or_else(|| step("the device refusing the gateway"))?;
        // The device names why: the chain does not lead to its anchor.
        if !line.contains("gateway certificate refused: certificate not issued by the trust anchor")
        {
            return Err(format!(
                "expected the certificate refused for its issuer, got: {line}"
            ));
        }
        let (_, _, _) = vm
            .wait_for(i + 1, "connection ended", STEP)
            .await
            .ok_or_else(|| step("a second refused attempt"))?;
        if vm.log().iter().any(|l| l.contains("connected as")) {
            return Err("the device connected despite the wrong trust anchor".into());
        }
        let session = rig
            .admin_has_session(device)
            .await
            .map_err(|e| e.to_string())?;
        if session {
            return Err("the gateway shows a session for the device".into());
        }
        // The device told the gateway why (a bad_certificate alert), and the gateway's audit
        // log says so.
        let deadline = Instant::now() + STEP;
        while !rig
            .gateway_log(1000)
            .iter()
            .any(|l| l.contains("client_refused_server_certificate"))
        {
            if Instant::now() > deadline {
                return Err(step(
                    "`client_refused_server_certificate` in the gateway's audit log",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        out.refused_attempts = count(vm, "connection ended");
        out.backoff_ms = backoffs(vm);
        return Ok(out);
    }
    let (_, _, at) = vm
        .wait_for(0, "connected as", STEP)
        .await
        .ok_or_else(|| step("mTLS handshake and CONNECT"))?;
    out.connect = Some(at - started);
    if scenario == Scenario::Measure {
        // Then a reconnect: the gateway kicks the session, the device comes back.
        let (first, _, _) = vm
            .wait_for(0, "measure: handshake", STEP)
            .await
            .ok_or_else(|| step("the first `measure:` line"))?;
        rig.kick(device).await.map_err(|e| e.to_string())?;
        vm.wait_for(first + 1, "measure: handshake", STEP)
            .await
            .ok_or_else(|| step("a reconnect after the kick"))?;
        measurements(vm, &mut out);
        if out.handshake_instructions.is_none()
            || out.peak_stack_bytes.is_none()
            || out.reconnect_instructions.is_none()
        {
            return Err("the device logged no `measure:` lines".into());
        }
        return Ok(out);
    }
    if !rig
        .admin_has_session(device)
        .await
        .map_err(|e| e.to_string())?
    {
        return Err("the admin API does not list the device's session".into());
    }
    let deadline = Instant::now() + STEP;
    while rig
        .backend
        .observed()
        .telemetry
        .get(device)
        .copied()
        .unwrap_or(0)
        < 2
    {
        if Instant::now() > deadline {
            return Err(step("two telemetry messages at the backend"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out.telemetry = rig
        .backend
        .observed()
        .telemetry
        .get(device)
        .copied()
        .unwrap_or(0);
    match scenario {
        Scenario::Measure
        | Scenario::Telemetry
        | Scenario::WrongAnchor
        | Scenario::Rotation
        | Scenario::Rollback => {}
        Scenario::Command => {
            rig.backend
                .command(device, b"{\"blink\":3}")
                .await
                .map_err(|e| e.to_string())?;
            vm.wait_for(0, "command topic=", STEP)
                .await
                .ok_or_else(|| step("the command at the device"))?;
            let deadline = Instant::now() + STEP;
            loop {
                if let Some(rtt) = rig.backend.observed().acked.get(device) {
                    out.command_rtt = Some(*rtt);
                    break;
                }
                if Instant::now() > deadline {
                    return Err(step("the device's acknowledgement at the backend"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Scenario::Revocation => {
            let before = vm.log().len();
            let revoked_at = Instant::now();
            rig.station_revoke(device)?;
            let (i, _, ended) = vm
                .wait_for(before, "connection ended", Duration::from_secs(5))
                .await
                .ok_or_else(|| step("the session ending after revocation"))?;
            out.revocation = Some(ended.saturating_duration_since(revoked_at));
            if out.revocation > Some(Duration::from_secs(1)) {
                return Err(format!("the kick took {:?} (> 1 s)", out.revocation));
            }
            // Its reconnects are refused, with growing backoff.
            let (j, line, _) = vm
                .wait_for(i + 1, "connection ended", STEP)
                .await
                .ok_or_else(|| step("a refused reconnect"))?;
            if line.contains("telemetry") {
                return Err(format!("unexpected: {line}"));
            }
            vm.wait_for(j + 1, "reconnecting in", STEP)
                .await
                .ok_or_else(|| step("backoff after the refusal"))?;
            if vm.log()[i + 1..].iter().any(|l| l.contains("connected as")) {
                return Err("the revoked device connected again".into());
            }
            if rig
                .admin_has_session(device)
                .await
                .map_err(|e| e.to_string())?
            {
                return Err("the admin API still lists the revoked device".into());
            }
            // The gateway refused the reconnect because the certificate is revoked.
            let deadline = Instant::now() + STEP;
            while !rig
                .gateway_log(1000)
                .iter()
                .any(|l| l.contains("\"revoked\"") && l.contains("handshake"))
            {
                if Instant::now() > deadline {
                    return Err(step(
                        "a `revoked` handshake refusal in the gateway's audit log",
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            out.refused_attempts = count(vm, "connection ended") - 1;
            out.backoff_ms = backoffs(vm);
        }
    }
    Ok(out)
}

impl Rig {
    /// Revokes the way an operator does: registry + a new CRL, which the gateway watches.
    fn station_revoke(&mut self, device: &str) -> Result<(), String> {
        self.station
            .revoke(device, Reason::KeyCompromise)
            .map(|_| ())
            .map_err(|e| format!("revoke: {e}"))
    }
}

fn count(vm: &Device, needle: &str) -> u32 {
    vm.log().iter().filter(|l| l.contains(needle)).count() as u32
}

fn backoffs(vm: &Device) -> Vec<u64> {
    vm.log()
        .iter()
        .filter_map(|l| {
            l.split("reconnecting in ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// The device's bundle with its trust anchor replaced by another CA's root.
fn foreign_anchor_bundle(bundle: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let other = dir.join("foreign-ca");
    let foreign = Station::init(&other, "Someone Else", KeyProtection::InsecurePlaintext)?;
    let bytes = std::fs::read(bundle)?;
    let b = Bundle::parse(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let wrong = Bundle {
        trust_anchor_der: &foreign.root_ca().cert_der,
        ..b
    };
    let mut out = vec![0u8; wrong.encoded_len()];
    wrong.emit(&mut out).map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = dir.join("wrong-anchor.bin");
    std::fs::write(&path, out)?;
    Ok(path)
}

/// Scenario 4: rotation through the gateway and the station, and rollback when the renewed
/// certificate is refused.
async fn rotation(scenario: Scenario, target: &Target) -> Result<Outcome, Box<Failure>> {
    use crate::rotation::{Renewer, RotationRig};
    let renewer = if scenario == Scenario::Rotation {
        Renewer::Station
    } else {
        Renewer::ForeignCa
    };
    let fail = |step: String, vm: Option<&Device>, rig: Option<&RotationRig>| {
        Failure::at(
            scenario,
            step,
            vm,
            rig.map(|r| r.gateway_log(50)).unwrap_or_default(),
        )
    };
    // A 10-day certificate and a 30-day threshold: the gateway asks for renewal at once.
    let (device_host, listen) = target.network();
    let rig = RotationRig::start(listen, &device_host, 10, 30, renewer)
        .await
        .map_err(|e| fail(format!("setting up station, gateway: {e:#}"), None, None))?;
    let started = Instant::now();
    let vm = Device::start(target, &rig.bundle, false)
        .await
        .map_err(|e| fail(format!("starting the device: {e}"), None, Some(&rig)))?;
    let result = async {
        let step = |what: &str| format!("{what}: not seen in time");
        let (_, _, at) = vm
            .wait_for(0, "connected as", STEP)
            .await
            .ok_or_else(|| step("mTLS handshake and CONNECT"))?;
        let mut out = Outcome {
            scenario: Some(scenario),
            connect: Some(at - started),
            ..Outcome::default()
        };
        for needle in [
            "rotation: status renew=true",
            "rotation: new key made, CSR sent",
            "rotation: new certificate, generation 2",
            "rotation: stored the renewed identity in slot B",
        ] {
            vm.wait_for(0, needle, STEP)
                .await
                .ok_or_else(|| step(needle))?;
        }
        if scenario == Scenario::Rotation {
            let (i, _, _) = vm
                .wait_for(0, "with slot B generation 2", STEP)
                .await
                .ok_or_else(|| step("reconnecting from slot B"))?;
            vm.wait_for(i, "rotation: confirmed the identity in slot B", STEP)
                .await
                .ok_or_else(|| step("the renewed identity confirmed"))?;
            vm.wait_for(i, "rotation: status renew=false", STEP)
                .await
                .ok_or_else(|| step("the gateway satisfied with the new certificate"))?;
            let certs = rig.certificates().map_err(|e| e.to_string())?;
            let statuses: Vec<&str> = certs.iter().map(|(_, s)| s.as_str()).collect();
            if statuses != ["superseded", "active"] {
                return Err(format!("registry after renewal: {statuses:?}"));
            }
        } else {
            let (i, _, _) = vm
                .wait_for(0, "rolled back to slot A", Duration::from_secs(30))
                .await
                .ok_or_else(|| step("rollback to slot A"))?;
            vm.wait_for(i, "with slot A generation 1", STEP)
                .await
                .ok_or_else(|| step("reconnecting from slot A"))?;
            vm.wait_for(i, "connected as", STEP)
                .await
                .ok_or_else(|| step("the old identity accepted again"))?;
            out.refused_attempts = 3;
        }
        out.backoff_ms = backoffs(&vm);
        Ok::<_, String>(out)
    }
    .await;
    let out = result.map_err(|step| fail(step, Some(&vm), Some(&rig)));
    vm.stop().await;
    rig.stop().await;
    out
}
