//! The real firmware image on QEMU's mps2-an386 against a real gateway, station and backend
//! (every HIL scenario but the measurement). `cargo xtask test` builds the images, installs
//! QEMU and sets FLEET_REQUIRE_QEMU, so nothing is skipped there. FLEET_QEMU_IMAGE is the
//! default image (P-256 multiplications on `p256-cm4`); FLEET_QEMU_IMAGE_PORTABLE the one
//! whose P-256 is all RustCrypto, as on RISC-V boards.

use std::path::PathBuf;

use fleet_hil::qemu::{self, Scenario};

fn setup(image_var: &str) -> Option<(PathBuf, PathBuf)> {
    let required = std::env::var_os("FLEET_REQUIRE_QEMU").is_some();
    let image = std::env::var_os(image_var).map(PathBuf::from);
    let qemu = PathBuf::from("qemu-system-arm");
    let have_qemu = std::process::Command::new(&qemu)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    match image {
        Some(image) if image.is_file() && have_qemu => Some((qemu, image)),
        _ if required => panic!(
            "FLEET_REQUIRE_QEMU is set but qemu-system-arm or {image_var} ({:?}) is missing",
            std::env::var_os(image_var)
        ),
        _ => {
            eprintln!(
                "skipped: run `cargo xtask test` (or set {image_var}) for the emulated board"
            );
            None
        }
    }
}

async fn scenario(s: Scenario) -> qemu::Outcome {
    on_image("FLEET_QEMU_IMAGE", s).await
}

/// Emulated boards running at once. The tests run in parallel; nine boards with their
/// gateways on a two-core machine starve each other, and the timing checks (revocation within
/// a second) then measure the machine rather than the gateway.
static BOARDS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn on_image(image_var: &str, s: Scenario) -> qemu::Outcome {
    let Some((qemu_bin, image)) = setup(image_var) else {
        return qemu::Outcome::default();
    };
    let _turn = BOARDS
        .acquire()
        .await
        .expect("the semaphore is never closed");
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

/// The portable P-256 image: the gateway accepts its key exchange and client signature, and
/// it accepts the gateway's chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portable_p256_image_connects_and_publishes() {
    let o = on_image("FLEET_QEMU_IMAGE_PORTABLE", Scenario::Telemetry).await;
    if o.scenario.is_some() {
        assert!(o.telemetry >= 2 && o.connect.is_some());
    }
}

/// The portable P-256 image derives its new key's public point and signs its CSR with
/// RustCrypto; the station checks the signature, the device the new certificate's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portable_p256_image_renews_its_certificate() {
    let o = on_image("FLEET_QEMU_IMAGE_PORTABLE", Scenario::Rotation).await;
    if o.scenario.is_some() {
        assert!(o.connect.is_some());
    }
}

/// A chain from another CA is refused by the portable P-256 image too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portable_p256_image_refuses_a_foreign_gateway() {
    let o = on_image("FLEET_QEMU_IMAGE_PORTABLE", Scenario::WrongAnchor).await;
    if o.scenario.is_some() {
        assert!(o.refused_attempts >= 2);
    }
}
