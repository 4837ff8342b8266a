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

mod device;
mod rig;
mod rotation;
mod scenarios;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::probe;

pub use device::Device;
use rig::{foreign_anchor_bundle, Rig};
use rotation::rotation;
use scenarios::drive;

/// Where the guest sees the host's loopback (QEMU slirp).
pub const HOST_FROM_GUEST: &str = "10.0.2.2";
/// The flash address of identity slot A on this board (see `fleet-provision`'s board table).
pub const SLOT_A: u32 = 0x003F_0000;

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
    pub(super) fn network(&self) -> (String, SocketAddr) {
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
    pub(super) fn at(
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
