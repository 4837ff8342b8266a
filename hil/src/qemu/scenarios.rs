//! The scenarios that run on the common rig (station, gateway, backend): one function each,
//! from the booted device to what it measured, or the step that was not seen.

use std::time::{Duration, Instant};

use super::device::{backoffs, count, measurements, Device};
use super::rig::Rig;
use super::{Outcome, Scenario};

/// How long the device may take to boot and get its DHCP address.
const BOOT: Duration = Duration::from_secs(30);
/// How long any later step may take.
pub(super) const STEP: Duration = Duration::from_secs(20);

pub(super) fn not_seen(what: &str) -> String {
    format!("{what}: not seen in time")
}

/// Polls `done` every `every` until it holds; `what` names it when `STEP` passes first.
async fn until(what: &str, every: Duration, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let deadline = Instant::now() + STEP;
    while !done() {
        if Instant::now() > deadline {
            return Err(not_seen(what));
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}

pub(super) async fn drive(
    scenario: Scenario,
    rig: &mut Rig,
    vm: &Device,
    device: &str,
    started: Instant,
) -> Result<Outcome, String> {
    if matches!(scenario, Scenario::Rotation | Scenario::Rollback) {
        return Err("rotation scenarios run on their own rig".into());
    }
    let mut out = Outcome {
        scenario: Some(scenario),
        ..Outcome::default()
    };
    vm.wait_for(0, "dhcp address", BOOT)
        .await
        .ok_or_else(|| not_seen("boot and DHCP"))?;
    if scenario == Scenario::WrongAnchor {
        wrong_anchor(rig, vm, device, &mut out).await?;
        return Ok(out);
    }
    let (_, _, at) = vm
        .wait_for(0, "connected as", STEP)
        .await
        .ok_or_else(|| not_seen("mTLS handshake and CONNECT"))?;
    out.connect = Some(at - started);
    if scenario == Scenario::Measure {
        measure(rig, vm, device, &mut out).await?;
        return Ok(out);
    }
    telemetry(rig, device, &mut out).await?;
    match scenario {
        Scenario::Command => command(rig, vm, device, &mut out).await?,
        Scenario::Revocation => revocation(rig, vm, device, &mut out).await?,
        Scenario::Measure
        | Scenario::Telemetry
        | Scenario::WrongAnchor
        | Scenario::Rotation
        | Scenario::Rollback => {}
    }
    Ok(out)
}

/// The device must refuse the gateway's certificate, again and again, with backoff, and
/// tell the gateway why.
async fn wrong_anchor(
    rig: &Rig,
    vm: &Device,
    device: &str,
    out: &mut Outcome,
) -> Result<(), String> {
    let (i, line, _) = vm
        .wait_for(0, "connection ended", STEP)
        .await
        .ok_or_else(|| not_seen("the device refusing the gateway"))?;
    // The device names why: the chain does not lead to its anchor.
    if !line.contains("gateway certificate refused: certificate not issued by the trust anchor") {
        return Err(format!(
            "expected the certificate refused for its issuer, got: {line}"
        ));
    }
    vm.wait_for(i + 1, "connection ended", STEP)
        .await
        .ok_or_else(|| not_seen("a second refused attempt"))?;
    if vm.log().iter().any(|l| l.contains("connected as")) {
        return Err("the device connected despite the wrong trust anchor".into());
    }
    if rig
        .admin_has_session(device)
        .await
        .map_err(|e| e.to_string())?
    {
        return Err("the gateway shows a session for the device".into());
    }
    // The device sent a bad_certificate alert, and the gateway's audit log says so.
    until(
        "`client_refused_server_certificate` in the gateway's audit log",
        Duration::from_millis(100),
        || {
            rig.gateway_log(1000)
                .iter()
                .any(|l| l.contains("client_refused_server_certificate"))
        },
    )
    .await?;
    out.refused_attempts = count(vm, "connection ended");
    out.backoff_ms = backoffs(vm);
    Ok(())
}

/// The first connection's `measure:` line, then a reconnect's: the gateway kicks the
/// session and the device comes back.
async fn measure(rig: &Rig, vm: &Device, device: &str, out: &mut Outcome) -> Result<(), String> {
    let (first, _, _) = vm
        .wait_for(0, "measure: handshake", STEP)
        .await
        .ok_or_else(|| not_seen("the first `measure:` line"))?;
    rig.kick(device).await.map_err(|e| e.to_string())?;
    vm.wait_for(first + 1, "measure: handshake", STEP)
        .await
        .ok_or_else(|| not_seen("a reconnect after the kick"))?;
    measurements(vm, out);
    if out.handshake_instructions.is_none()
        || out.peak_stack_bytes.is_none()
        || out.reconnect_instructions.is_none()
    {
        return Err("the device logged no `measure:` lines".into());
    }
    Ok(())
}

/// The session is listed by the admin API and the backend receives two telemetry messages.
async fn telemetry(rig: &Rig, device: &str, out: &mut Outcome) -> Result<(), String> {
    if !rig
        .admin_has_session(device)
        .await
        .map_err(|e| e.to_string())?
    {
        return Err("the admin API does not list the device's session".into());
    }
    let seen = || {
        rig.backend
            .observed()
            .telemetry
            .get(device)
            .copied()
            .unwrap_or(0)
    };
    until(
        "two telemetry messages at the backend",
        Duration::from_millis(100),
        || seen() >= 2,
    )
    .await?;
    out.telemetry = seen();
    Ok(())
}

/// A backend command reaches the device and its acknowledgement comes back.
async fn command(rig: &Rig, vm: &Device, device: &str, out: &mut Outcome) -> Result<(), String> {
    rig.backend
        .command(device, b"{\"blink\":3}")
        .await
        .map_err(|e| e.to_string())?;
    vm.wait_for(0, "command topic=", STEP)
        .await
        .ok_or_else(|| not_seen("the command at the device"))?;
    until(
        "the device's acknowledgement at the backend",
        Duration::from_millis(50),
        || {
            out.command_rtt = rig.backend.observed().acked.get(device).copied();
            out.command_rtt.is_some()
        },
    )
    .await
}

/// `revoke` at the station: the session ends within 1 s and the reconnects are refused as
/// revoked, with growing backoff.
async fn revocation(
    rig: &mut Rig,
    vm: &Device,
    device: &str,
    out: &mut Outcome,
) -> Result<(), String> {
    let before = vm.log().len();
    let revoked_at = Instant::now();
    rig.station_revoke(device)?;
    let (i, _, ended) = vm
        .wait_for(before, "connection ended", Duration::from_secs(5))
        .await
        .ok_or_else(|| not_seen("the session ending after revocation"))?;
    out.revocation = Some(ended.saturating_duration_since(revoked_at));
    if out.revocation > Some(Duration::from_secs(1)) {
        return Err(format!("the kick took {:?} (> 1 s)", out.revocation));
    }
    let (j, line, _) = vm
        .wait_for(i + 1, "connection ended", STEP)
        .await
        .ok_or_else(|| not_seen("a refused reconnect"))?;
    if line.contains("telemetry") {
        return Err(format!("unexpected: {line}"));
    }
    vm.wait_for(j + 1, "reconnecting in", STEP)
        .await
        .ok_or_else(|| not_seen("backoff after the refusal"))?;
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
    until(
        "a `revoked` handshake refusal in the gateway's audit log",
        Duration::from_millis(100),
        || {
            rig.gateway_log(1000)
                .iter()
                .any(|l| l.contains("\"revoked\"") && l.contains("handshake"))
        },
    )
    .await?;
    out.refused_attempts = count(vm, "connection ended") - 1;
    out.backoff_ms = backoffs(vm);
    Ok(())
}
