//! `--publish-crl` (issue 18): a station that cannot publish its CRL to the cluster's NATS
//! still revokes — the registry and the CRL file have it — and says so, exiting non-zero
//! with a clear message. (Publishing that works, and the gateways that watch it:
//! tests/tests/crl_nats.rs of the workspace.)

mod common;

use common::{cli, cli_env, init_cli, stderr, stdout};

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_revocation_that_cannot_be_published_stands_and_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    init_cli(dir.path());
    let device = {
        let mut s = fleet_provision::Station::open(dir.path(), None).unwrap();
        s.issue_devices(&common::request("acme", 1)).unwrap()[0].clone()
    };
    let nats = format!("nats://127.0.0.1:{}", closed_port());
    let out = cli(
        dir.path(),
        &["revoke", &device.device_id, "--publish-crl", &nats],
    );
    assert!(!out.status.success(), "exit status: {:?}", out.status);
    let err = stderr(&out);
    assert!(
        err.contains("CRL not published to NATS at") && err.contains(&nats),
        "{err}"
    );
    assert!(err.contains("the registry has every revocation"), "{err}");
    assert!(
        stdout(&out).contains(&format!("revoked {}", device.device_id)),
        "{}",
        stdout(&out)
    );
    // In force locally: the registry and the CRL file list it.
    let listed = cli(dir.path(), &["devices", "--device", &device.device_id]);
    assert!(stdout(&listed).contains("revoked"), "{}", stdout(&listed));
    let crl = std::fs::read(dir.path().join("crl/issuing.crl.pem")).unwrap();
    let der = pem::parse(crl).unwrap().into_contents();
    let serial = hex::decode(&device.serial_hex).unwrap();
    assert!(
        der.windows(serial.len()).any(|w| w == serial.as_slice()),
        "the CRL file lists the serial"
    );

    // The same through the environment, and flags that do not go together.
    let out = cli_env(dir.path(), &["crl"], &[("FLEET_PUBLISH_CRL", &nats)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("CRL not published"),
        "{}",
        stderr(&out)
    );
    let out = cli(dir.path(), &["crl", "--nats-ca", "ca.pem"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("need --publish-crl"),
        "{}",
        stderr(&out)
    );
    let out = cli(dir.path(), &["crl", "--publish-crl", "http://x:1"]);
    assert!(
        stderr(&out).contains("is not a NATS URL"),
        "{}",
        stderr(&out)
    );
}
