//! CSR flow: the station certifies device-generated keys and decides everything else.

mod common;

use common::{cli, init_cli, openssl, openssl_csr, station, stderr, stdout};
use fleet_provision::{CsrAt, CsrInput, CsrRequest, Error};
use x509_parser::prelude::{FromDer, X509Certificate};

fn req(tenant: &str) -> CsrRequest {
    CsrRequest {
        tenant: tenant.into(),
        validity_days: 90,
    }
}

fn input(der: Vec<u8>) -> CsrInput {
    CsrInput {
        der,
        device_id: None,
    }
}

#[test]
fn the_station_sets_subject_usage_and_validity_and_copies_only_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = station(d);
    // The device asks for its own name, server auth and a key usage the station does not
    // set; the station ignores all of it.
    let der = openssl_csr(
        d,
        "dev",
        "prime256v1",
        &[
            "-subj",
            "/CN=i-choose-my-own-name/O=other-tenant",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-addext",
            "keyUsage=keyCertSign",
        ],
    );
    let out = st
        .certify_csrs(&req("acme"), &[input(der.clone())], |_| {})
        .unwrap();
    assert_eq!(out.len(), 1);
    let c = &out[0];
    assert_eq!(c.device_id, "acme-000001");
    let (_, cert) = X509Certificate::from_der(&c.cert_der).unwrap();
    let subject = cert.subject().to_string();
    assert!(
        subject.contains("CN=acme-000001") && subject.contains("O=acme"),
        "{subject}"
    );
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert!(cert.subject_alternative_name().unwrap().is_none());
    let days =
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86_400;
    assert_eq!(days, 90);
    // The key is the device's.
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
    assert_eq!(
        cert.public_key().raw,
        csr.certification_request_info.subject_pki.raw
    );
    // openssl accepts the chain; the registry and the audit log know the certificate.
    std::fs::write(d.join("dev.pem"), c.cert_pem()).unwrap();
    openssl(
        d,
        &[
            "verify",
            "-CAfile",
            "ca/root.pem",
            "-untrusted",
            "ca/issuing.pem",
            "dev.pem",
        ],
    );
    let rows = st.devices().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].fingerprint_hex.as_deref(),
        Some(c.fingerprint_hex.as_str())
    );
    assert_eq!(st.verify_audit().unwrap().devices, 1);
}

#[test]
fn refused_requests_say_why_and_reserve_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = station(d);
    let good = openssl_csr(d, "good", "prime256v1", &[]);
    let mut bad_sig = good.clone();
    let n = bad_sig.len();
    bad_sig[n - 5] ^= 0x55; // inside the signature
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "CA:true",
            openssl_csr(
                d,
                "ca",
                "prime256v1",
                &["-addext", "basicConstraints=critical,CA:TRUE"],
            ),
            "CA:true",
        ),
        (
            "SAN",
            openssl_csr(
                d,
                "san",
                "prime256v1",
                &["-addext", "subjectAltName=DNS:gateway.test"],
            ),
            "subject alternative names",
        ),
        ("RSA", openssl_csr(d, "rsa", "rsa", &[]), "not P-256"),
        (
            "P-384",
            openssl_csr(d, "p384", "secp384r1", &[]),
            "not P-256",
        ),
        ("bad signature", bad_sig, "signature does not verify"),
        (
            "garbage",
            b"definitely not DER".to_vec(),
            "not a PKCS#10 request",
        ),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            "not a PKCS#10 request",
        ),
        (
            "trailing bytes",
            [good.as_slice(), b"xx"].concat(),
            "bytes after the request",
        ),
        ("empty", Vec::new(), "not a PKCS#10 request"),
    ];
    for (what, der, needle) in cases {
        // Second in a batch of two: the message names it and the good one is not issued.
        let err = st
            .certify_csrs(&req("acme"), &[input(good.clone()), input(der)], |_| {})
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                Error::Csr {
                    at: CsrAt::Batch { index: 2, count: 2 },
                    ..
                }
            ),
            "{what}: {msg}"
        );
        assert!(
            msg.contains(needle) && msg.contains("request 2 of 2"),
            "{what}: {msg}"
        );
    }
    assert!(
        st.devices().unwrap().is_empty(),
        "refused batches reserve nothing"
    );

    // A device id given twice (or already taken) is refused, and nothing of that batch stays.
    let named = |id: &str| CsrInput {
        der: good.clone(),
        device_id: Some(id.into()),
    };
    st.certify_csrs(&req("acme"), &[named("board-0001")], |_| {})
        .unwrap();
    let err = st
        .certify_csrs(
            &req("acme"),
            &[named("board-0002"), named("board-0001")],
            |_| {},
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::DuplicateDevice(ref id) if id == "board-0001"),
        "{err}"
    );
    let err = st
        .certify_csrs(
            &req("acme"),
            &[named("board-0003"), named("board-0003")],
            |_| {},
        )
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateDevice(_)), "{err}");
    let ids: Vec<String> = st
        .devices()
        .unwrap()
        .into_iter()
        .map(|r| r.device_id)
        .collect();
    assert_eq!(ids, ["board-0001"]);
    let err = st
        .certify_csrs(&req("acme"), &[named("bad id/with slash")], |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("device id"), "{err}");
    assert!(st.verify_audit().is_ok());
}

/// A small deterministic generator, so a failure can be reproduced from its iteration.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn mutated_requests_never_panic_and_accepted_ones_are_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = openssl_csr(
        d,
        "fuzz",
        "prime256v1",
        &["-addext", "keyUsage=digitalSignature"],
    );
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    for i in 0..3000 {
        let mut der = good.clone();
        match rng.next() % 4 {
            0 => {
                let at = (rng.next() as usize) % der.len();
                der[at] ^= 1 << (rng.next() % 8);
            }
            1 => der.truncate((rng.next() as usize) % der.len()),
            2 => {
                let at = (rng.next() as usize) % der.len();
                der[at] = rng.next() as u8;
            }
            _ => {
                let at = (rng.next() as usize) % der.len();
                der.insert(at, rng.next() as u8);
            }
        }
        // Never panics; anything accepted still has a P-256 key and a valid self-signature.
        if let Ok(checked) = fleet_provision::pki::check_csr(&der) {
            accepted += 1;
            assert_eq!(checked.public_key.len(), 65, "iteration {i}");
            assert_eq!(checked.public_key[0], 4, "iteration {i}");
        }
    }
    // Flipping a bit almost anywhere breaks the signature: few mutants may pass.
    assert!(accepted < 300, "{accepted} of 3000 mutants accepted");
}

#[test]
fn command_line_signs_csrs_into_certificates_and_keyless_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    init_cli(d);
    openssl_csr(d, "a", "prime256v1", &[]);
    openssl(
        d,
        &["req", "-in", "a.csr", "-inform", "DER", "-out", "a.pem.csr"],
    );
    openssl_csr(d, "b", "prime256v1", &[]);
    let (a, b) = (d.join("a.pem.csr"), d.join("b.csr"));
    let out = cli(
        d,
        &[
            "sign",
            "--csr",
            a.to_str().unwrap(),
            "--csr",
            b.to_str().unwrap(),
            "--tenant",
            "acme",
            "--gateway-host",
            "gateway.test",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).lines().count(), 2, "{}", stdout(&out));
    let bundle = std::fs::read(d.join("devices/acme-000002.bin")).unwrap();
    let parsed = fleet_protocol::bundle::Bundle::parse(&bundle).unwrap();
    assert!(
        parsed.private_key_der.is_none(),
        "the key stays on the device"
    );
    assert_eq!(parsed.gateway_host, "gateway.test");
    openssl(
        d,
        &[
            "verify",
            "-CAfile",
            "ca/root.pem",
            "-untrusted",
            "ca/issuing.pem",
            "devices/acme-000001.pem",
        ],
    );
    let named = cli(
        d,
        &[
            "sign",
            "--csr",
            a.to_str().unwrap(),
            "--tenant",
            "acme",
            "--device-id",
            "acme-000001",
        ],
    );
    assert!(!named.status.success());
    assert_eq!(
        stderr(&named).trim(),
        "fleet-provision: device acme-000001 already exists in the registry"
    );
    let rsa = openssl_csr(d, "r", "rsa", &[]);
    assert!(!rsa.is_empty());
    let refused = cli(
        d,
        &[
            "sign",
            "--csr",
            d.join("r.csr").to_str().unwrap(),
            "--tenant",
            "acme",
        ],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("not P-256"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn the_firmware_request_writer_is_accepted_here_and_by_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = p256::SecretKey::random(&mut rand_core::OsRng);
    let mut buf = [0u8; fleet_firmware::csr::MAX_CSR];
    let n = fleet_firmware::csr::write_csr(&key, "acme-000042", "acme", &mut buf).unwrap();
    let checked = fleet_provision::pki::check_csr(&buf[..n]).unwrap();
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    assert_eq!(
        checked.public_key,
        key.public_key().to_encoded_point(false).as_bytes()
    );
    std::fs::write(d.join("fw.csr"), &buf[..n]).unwrap();
    let out = openssl(
        d,
        &[
            "req", "-in", "fw.csr", "-inform", "DER", "-verify", "-noout", "-subject",
        ],
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("CN = acme-000042") || text.contains("CN=acme-000042"),
        "{text}"
    );
    // The SEC1 key the firmware writes into its next bundle is what openssl reads too.
    let mut key_buf = [0u8; 200];
    let k = fleet_firmware::csr::write_sec1_key(&key, &mut key_buf).unwrap();
    let pem = pem::encode(&pem::Pem::new("EC PRIVATE KEY", key_buf[..k].to_vec()));
    std::fs::write(d.join("fw.key"), pem).unwrap();
    openssl(d, &["ec", "-in", "fw.key", "-check", "-noout"]);
}
