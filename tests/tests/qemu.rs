//! The real firmware image on QEMU's mps2-an386 against a real gateway, station and backend
//! (scenarios 1–3 and 5 of the HIL). `cargo xtask test` builds the image, installs QEMU and
//! sets FLEET_REQUIRE_QEMU, so nothing is skipped there.

use std::path::PathBuf;

use fleet_hil::qemu::{self, Scenario};

fn setup() -> Option<(PathBuf, PathBuf)> {
    let required = std::env::var_os("FLEET_REQUIRE_QEMU").is_some();
    let image = std::env::var_os("FLEET_QEMU_IMAGE").map(PathBuf::from);
    let qemu = PathBuf::from("qemu-system-arm");
    let have_qemu = std::process::Command::new(&qemu)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    match image {
        Some(image) if image.is_file() && have_qemu => Some((qemu, image)),
        _ if required => panic!(
            "FLEET_REQUIRE_QEMU is set but qemu-system-arm or FLEET_QEMU_IMAGE ({:?}) is missing",
            std::env::var_os("FLEET_QEMU_IMAGE")
        ),
        _ => {
            eprintln!(
                "skipped: run `cargo xtask test` (or set FLEET_QEMU_IMAGE) for the emulated board"
            );
            None
        }
    }
}

async fn scenario(s: Scenario) -> qemu::Outcome {
    let Some((qemu_bin, image)) = setup() else {
        return qemu::Outcome::default();
    };
    let target = qemu::Target::Qemu {
        qemu: qemu_bin,
        image,
    };
    match qemu::run(s, &target).await {
        Ok(o) => {
            eprintln!("{} passed: {o:?}", s.name());
            o
        }
        Err(failure) => panic!("{failure}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_connects_over_mtls_and_publishes_telemetry() {
    let o = scenario(Scenario::Telemetry).await;
    if o.scenario.is_some() {
        assert!(o.telemetry >= 2 && o.connect.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_command_reaches_the_device_and_is_acknowledged() {
    let o = scenario(Scenario::Command).await;
    if o.scenario.is_some() {
        assert!(o.command_rtt.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_is_kicked_within_a_second_and_refused_after() {
    let o = scenario(Scenario::Revocation).await;
    if o.scenario.is_some() {
        assert!(o.revocation.is_some_and(|d| d.as_millis() < 1000));
        assert!(o.refused_attempts >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_with_the_wrong_trust_anchor_refuses_the_gateway() {
    let o = scenario(Scenario::WrongAnchor).await;
    if o.scenario.is_some() {
        assert!(o.refused_attempts >= 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_board_renews_its_certificate_and_reconnects_from_slot_b() {
    let o = scenario(Scenario::Rotation).await;
    if o.scenario.is_some() {
        assert!(o.connect.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_renewal_rolls_the_board_back_to_slot_a() {
    let o = scenario(Scenario::Rollback).await;
    if o.scenario.is_some() {
        assert_eq!(o.refused_attempts, 3);
    }
}
