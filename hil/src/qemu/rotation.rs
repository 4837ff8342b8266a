//! Scenario 4 on its own rig: rotation through the gateway and the station, and rollback.

use std::time::{Duration, Instant};

use super::device::{backoffs, Device};
use super::scenarios::{not_seen, STEP};
use super::{Failure, Outcome, Scenario, Target};

/// Scenario 4: rotation through the gateway and the station, and rollback when the renewed
/// certificate is refused.
pub(super) async fn rotation(scenario: Scenario, target: &Target) -> Result<Outcome, Box<Failure>> {
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
        let (_, _, at) = vm
            .wait_for(0, "connected as", STEP)
            .await
            .ok_or_else(|| not_seen("mTLS handshake and CONNECT"))?;
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
                .ok_or_else(|| not_seen(needle))?;
        }
        if scenario == Scenario::Rotation {
            let (i, _, _) = vm
                .wait_for(0, "with slot B generation 2", STEP)
                .await
                .ok_or_else(|| not_seen("reconnecting from slot B"))?;
            vm.wait_for(i, "rotation: confirmed the identity in slot B", STEP)
                .await
                .ok_or_else(|| not_seen("the renewed identity confirmed"))?;
            vm.wait_for(i, "rotation: status renew=false", STEP)
                .await
                .ok_or_else(|| not_seen("the gateway satisfied with the new certificate"))?;
            let certs = rig.certificates().map_err(|e| e.to_string())?;
            let statuses: Vec<&str> = certs.iter().map(|(_, s)| s.as_str()).collect();
            if statuses != ["superseded", "active"] {
                return Err(format!("registry after renewal: {statuses:?}"));
            }
        } else {
            let (i, _, _) = vm
                .wait_for(0, "rolled back to slot A", Duration::from_secs(30))
                .await
                .ok_or_else(|| not_seen("rollback to slot A"))?;
            vm.wait_for(i, "with slot A generation 1", STEP)
                .await
                .ok_or_else(|| not_seen("reconnecting from slot A"))?;
            vm.wait_for(i, "connected as", STEP)
                .await
                .ok_or_else(|| not_seen("the old identity accepted again"))?;
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
