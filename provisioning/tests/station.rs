//! The station against a real SQLite file and real certificates in a temp directory.

mod common;

use std::path::Path;
use std::process::Command;

use common::{cli, init_cli, request, station};
use fleet_protocol::bundle::Bundle;
use fleet_provision::registry::Status;
use fleet_provision::{BatchRequest, Error, KeyProtection, Station};
use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

fn pem_der(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    x509_parser::pem::Pem::iter_from_buffer(&data)
        .map(|p| p.unwrap().contents)
        .collect()
}

#[test]
fn devices_chain_to_the_root_and_bundles_match_their_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = station(dir.path());
    st.issue_server_cert(&["localhost", "127.0.0.1"]).unwrap();
    st.issue_service_cert("backend", "acme").unwrap();
    let issued = st.issue_devices(&request("acme", 3)).unwrap();
    assert_eq!(issued.len(), 3);

    let root = pem_der(&dir.path().join("ca/root.pem")).remove(0);
    let issuing = pem_der(&dir.path().join("ca/issuing.pem")).remove(0);
    let (_, root_cert) = X509Certificate::from_der(&root).unwrap();
    let (_, issuing_cert) = X509Certificate::from_der(&issuing).unwrap();
    issuing_cert
        .verify_signature(Some(root_cert.public_key()))
        .expect("issuing ← root");
    assert_eq!(
        issuing_cert
            .basic_constraints()
            .unwrap()
            .unwrap()
            .value
            .path_len_constraint,
        Some(0)
    );

    for d in &issued {
        let bytes = std::fs::read(&d.bundle_path).unwrap();
        let b = Bundle::parse(&bytes).expect("bundle parses");
        assert_eq!((b.device_id, b.tenant), (d.device_id.as_str(), "acme"));
        assert_eq!((b.gateway_host, b.gateway_port), ("gateway.test", 8883));
        assert_eq!(b.trust_anchor_der, &root[..], "devices trust the root");
        assert!(b.seed.is_some());
        let (_, cert) = X509Certificate::from_der(b.cert_der).unwrap();
        cert.verify_signature(Some(issuing_cert.public_key()))
            .expect("device ← issuing");
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        let o = cert
            .subject()
            .iter_organization()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!((cn, o), (d.device_id.as_str(), "acme"));
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!cert.is_ca());
        assert_eq!(
            hex::encode(cert.raw_serial()).trim_start_matches("00"),
            d.serial_hex.trim_start_matches("00")
        );
        // The private key in the bundle is the certificate's key.
        let key = p256::SecretKey::from_sec1_der(b.private_key_der.unwrap()).unwrap();
        let public = key.public_key();
        let sec1_point = p256::EncodedPoint::from(public);
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            sec1_point.as_bytes()
        );
    }

    let service_der = pem_der(&dir.path().join("services/backend.pem")).remove(0);
    let (_, service) = X509Certificate::from_der(&service_der).unwrap();
    assert_eq!(
        service
            .subject()
            .iter_organizational_unit()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "service"
    );
    let chain = pem_der(&dir.path().join("gateway/server.pem"));
    assert_eq!(chain.len(), 2, "server leaf + issuing CA");
    assert_eq!(chain[1], issuing);
}

#[test]
fn ids_are_never_reused_and_the_registry_matches_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = station(dir.path());
    let first = st.issue_devices(&request("acme", 2)).unwrap();
    let second = st.issue_devices(&request("acme", 2)).unwrap();
    drop(st);
    let mut st = Station::open(dir.path(), None).unwrap();
    let third = st.issue_devices(&request("acme", 1)).unwrap();
    let other = st.issue_devices(&request("globex", 1)).unwrap();
    let ids: Vec<&str> = first
        .iter()
        .chain(&second)
        .chain(&third)
        .map(|d| d.device_id.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "acme-000001",
            "acme-000002",
            "acme-000003",
            "acme-000004",
            "acme-000005"
        ]
    );
    assert_eq!(other[0].device_id, "globex-000001");

    let rows = st.devices().unwrap();
    assert_eq!(rows.len(), 6);
    for row in &rows {
        assert_eq!(row.status, Status::Active);
        let bytes =
            std::fs::read(dir.path().join(format!("devices/{}.bin", row.device_id))).unwrap();
        let b = Bundle::parse(&bytes).unwrap();
        assert_eq!(
            row.fingerprint_hex.as_deref(),
            Some(hex::encode(Sha256::digest(b.cert_der)).as_str())
        );
    }
    let serials: std::collections::HashSet<_> = rows.iter().map(|r| &r.serial_hex).collect();
    assert_eq!(serials.len(), 6);
}

#[test]
fn bad_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Station::open(dir.path(), None)
        .err()
        .expect("empty dir is not a station");
    assert!(matches!(err, Error::NotAStation { .. }), "{err}");
    assert!(err.to_string().contains("ca init"), "{err}");

    let mut st = station(dir.path());
    let again = Station::init(dir.path(), "Acme", KeyProtection::InsecurePlaintext)
        .err()
        .unwrap();
    assert!(matches!(again, Error::CaExists { .. }), "{again}");

    for (req, field) in [
        (request("acme", 0), "count"),
        (request("ac/me", 1), "tenant"),
        (request("", 1), "tenant"),
        (
            BatchRequest {
                gateway_port: 0,
                ..request("acme", 1)
            },
            "gateway port",
        ),
        (
            BatchRequest {
                gateway_host: "bad host".into(),
                ..request("acme", 1)
            },
            "gateway host",
        ),
    ] {
        let e = st.issue_devices(&req).expect_err("refused");
        assert!(e.to_string().contains(field), "{e} should mention {field}");
    }
    assert!(
        st.devices().unwrap().is_empty(),
        "refused requests reserve nothing"
    );
    assert!(st.issue_server_cert(&[]).is_err());
    assert!(st.issue_service_cert("a b", "acme").is_err());
}

#[test]
fn command_line_walkthrough_and_openssl_verifies_the_export() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let refused = cli(d, &["ca", "init", "--org", "Acme"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--insecure-plaintext-keys"));

    init_cli(d);
    let batch = cli(
        d,
        &[
            "batch",
            "--count",
            "2",
            "--tenant",
            "acme",
            "--gateway-host",
            "localhost",
        ],
    );
    assert!(
        batch.status.success(),
        "{}",
        String::from_utf8_lossy(&batch.stderr)
    );
    assert!(String::from_utf8_lossy(&batch.stdout).contains("2 devices issued for tenant acme"));

    let bundle = d.join("devices/acme-000001.bin");
    let show = cli(d, &["bundle", "show", bundle.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("acme-000001") && text.contains("present (not shown)"),
        "{text}"
    );

    let (cert, key) = (d.join("out.pem"), d.join("out.key"));
    let export = cli(
        d,
        &[
            "bundle",
            "export",
            bundle.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    let garbage = d.join("garbage.bin");
    std::fs::write(&garbage, b"not a bundle").unwrap();
    let bad = cli(d, &["bundle", "show", garbage.to_str().unwrap()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("garbage.bin"));

    let listing = cli(d, &["devices"]);
    assert_eq!(String::from_utf8_lossy(&listing.stdout).lines().count(), 2);

    // A tool nobody here wrote must accept the chain and the exported key.
    if Command::new("openssl").arg("version").output().is_ok() {
        let verify = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(d.join("ca/root.pem"))
            .arg("-untrusted")
            .arg(d.join("ca/issuing.pem"))
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );
        let key_check = Command::new("openssl")
            .args(["pkey", "-noout", "-in"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            key_check.status.success(),
            "{}",
            String::from_utf8_lossy(&key_check.stderr)
        );
    }
}

#[test]
fn batch_output_goes_where_the_line_wants_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    init_cli(d);
    let out = d.join("line-7");
    let batch = cli(
        d,
        &[
            "batch",
            "--count",
            "2",
            "--tenant",
            "acme",
            "--gateway-host",
            "gw.test",
            "--hex-board",
            "esp32c3",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        batch.status.success(),
        "{}",
        String::from_utf8_lossy(&batch.stderr)
    );
    for ext in ["bin", "pem", "hex"] {
        assert!(out.join(format!("acme-000002.{ext}")).exists(), "{ext}");
    }
    assert!(
        !d.join("devices").exists(),
        "nothing in the station's own directory"
    );
    let manifests = std::fs::read_dir(d.join("batches")).unwrap().count();
    assert_eq!(manifests, 2, "manifest and its signature");
}
