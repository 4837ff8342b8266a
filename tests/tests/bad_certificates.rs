//! Every kind of bad client credential and every outdated TLS offer is refused before CONNACK,
//! each with its own audit reason and metric label: one table of cases.

use std::sync::Arc;
use std::time::Duration;

use fleet_tests::{wait_for, Pki, RunningGateway, TENANT};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use time::{Duration as Days, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client certificate signed by `issuer`, with the given validity window and EKU.
fn client_cert(
    issuer: &rcgen::Issuer<'_, KeyPair>,
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    eku: ExtendedKeyUsagePurpose,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    client_cert_with_usage(issuer, cn, not_before, not_after, eku, &[])
}

/// [`client_cert`] with a KeyUsage extension listing `usages` (none: no extension).
fn client_cert_with_usage(
    issuer: &rcgen::Issuer<'_, KeyPair>,
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    eku: ExtendedKeyUsagePurpose,
    usages: &[KeyUsagePurpose],
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, TENANT);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![eku];
    p.key_usages = usages.to_vec();
    p.not_before = not_before;
    p.not_after = not_after;
    let cert = p.signed_by(&key, issuer).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// A TLS client presenting `identity` (or none) sends CONNECT; true if CONNACK came back.
async fn got_connack(
    gw: &RunningGateway,
    root: &std::path::Path,
    identity: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
) -> bool {
    got_connack_chain(gw, root, identity.map(|(c, k)| (vec![c], k))).await
}

/// [`got_connack`] with a whole chain (leaf first).
async fn got_connack_chain(
    gw: &RunningGateway,
    root: &std::path::Path,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> bool {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(root).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await?;
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        // CONNECT, MQTT 3.1.1, clean session, keep-alive 30, empty client id.
        tls.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 0])
            .await?;
        let mut answer = [0u8; 4];
        let n = tls.read(&mut answer).await?;
        Ok::<_, std::io::Error>(n >= 2 && answer[0] == 0x20)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(10), attempt).await,
        Ok(Ok(true))
    )
}

/// A ClientHello no rustls client would send (RFC 5246 layout, no supported_versions
/// extension): `minor` 1 = TLS 1.0, 2 = TLS 1.1, 3 = TLS 1.2, offering `suites`, with the
/// P-256 group, uncompressed points and ECDSA/PSS signature algorithms.
fn client_hello(minor: u8, suites: &[u16]) -> Vec<u8> {
    let mut hello = vec![0x03, minor];
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend_from_slice(&s.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // compression: null
    let extensions = [
        &[0x00, 0x0a, 0, 4, 0, 2, 0x00, 0x17][..], // supported_groups: secp256r1
        &[0x00, 0x0b, 0, 2, 1, 0],                 // ec_point_formats: uncompressed
        &[0x00, 0x0d, 0, 6, 0, 4, 0x04, 0x03, 0x08, 0x04], // signature_algorithms
    ]
    .concat();
    hello.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    hello.extend_from_slice(&extensions);
    let mut handshake = vec![1, 0, 0, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

/// Sends a hand-made ClientHello; the gateway must answer with an alert or close.
async fn refused_hello(gw: &RunningGateway, hello: &[u8], what: &str) {
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut reply = [0u8; 7];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut reply))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        n == 0 || reply[0] == 0x15,
        "{what} must get an alert or a close, got {:?}",
        &reply[..n]
    );
}

/// A client certificate for an RSA-1024 key, signed by the real issuing CA; the handshake is
/// made by `openssl s_client` (ring refuses to sign with a key that small).
async fn rsa1024_handshake(gw: &RunningGateway, pki: &Pki, issuer: &rcgen::Issuer<'_, KeyPair>) {
    let dir = pki.path("rsa1024");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key.pem");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs (cargo xtask test installs it)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        out.stdout
    };
    let key_s = key.to_str().unwrap();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        key_s,
    ]);
    let spki = openssl(&["pkey", "-in", key_s, "-pubout", "-outform", "DER"]);
    let public = rcgen::SubjectPublicKeyInfo::from_der(&spki).unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "d-rsa1024");
    p.distinguished_name.push(DnType::OrganizationName, TENANT);
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, p.signed_by(&public, issuer).unwrap().pem()).unwrap();
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &gw.addr.to_string(),
            "-servername",
            "localhost",
        ])
        // OpenSSL's own default security level would refuse to load a key this small.
        .args(["-cipher", "DEFAULT:@SECLEVEL=0"])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .arg("-CAfile")
        .arg(pki.path("ca/root.pem"))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl s_client runs");
    // TLS 1.3 reports a refused client certificate after the client's own handshake ends, so
    // the verdict is the gateway's audit record, checked with the others.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CONNECTED"),
        "openssl s_client did not reach the gateway: {out:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_credential_is_refused_with_its_reason() {
    let mut pki = Pki::new();
    let audit = pki.path("audit.jsonl");
    let devices = pki.devices(TENANT, 1);
    pki.station
        .revoke(
            &devices[0].device_id,
            fleet_provision::Reason::KeyCompromise,
        )
        .unwrap();
    let mut config = pki.gateway_config();
    config.audit_log = Some(audit.clone());
    let gw = RunningGateway::start(config).await;
    let root = pki.path("ca/root.pem");
    let issuer = pki.station.issuing_ca().issuer();
    let now = OffsetDateTime::now_utc();
    let foreign = fleet_provision::pki::new_root_ca("Foreign").unwrap();

    let revoked_der = fleet_firmware::bundle::Bundle::parse(&devices[0].bytes)
        .unwrap()
        .cert_der
        .to_vec();
    let revoked = {
        let b = fleet_protocol::bundle::Bundle::parse(&devices[0].bytes).unwrap();
        let key = fleet_provision::pki::pkcs8_pem_from_sec1(b.private_key_der.unwrap()).unwrap();
        (
            CertificateDer::from(b.cert_der.to_vec()),
            rustls_pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap(),
        )
    };
    let client = ExtendedKeyUsagePurpose::ClientAuth;
    // An end-entity certificate (CA:false) of the real issuing CA, used to sign another.
    let not_a_ca = {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "d-not-a-ca");
        p.distinguished_name.push(DnType::OrganizationName, TENANT);
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![client.clone()];
        let cert = p.signed_by(&key, issuer).unwrap();
        (cert.der().clone(), rcgen::Issuer::new(p, key))
    };
    let (leaf, leaf_key) = client_cert(
        &not_a_ca.1,
        "d-under-a-leaf",
        now - Days::days(1),
        now + Days::days(30),
        client.clone(),
    );
    // The control: the same kind of certificate with digitalSignature among its usages.
    let signing = client_cert_with_usage(
        issuer,
        "d-signing",
        now - Days::days(1),
        now + Days::days(30),
        client.clone(),
        &[
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ],
    );
    assert!(
        got_connack(&gw, &root, Some(signing)).await,
        "a certificate whose KeyUsage has digitalSignature must be accepted"
    );
    let cases = certificate_cases(issuer, foreign.issuer(), revoked);
    let mut expected = Vec::new();
    for (reason, identity) in cases {
        assert!(
            !got_connack(&gw, &root, identity).await,
            "{reason}: got CONNACK"
        );
        expected.push(reason);
    }

    // A chain whose leaf was signed by an end entity (CA:false) of the real issuing CA.
    assert!(
        !got_connack_chain(&gw, &root, Some((vec![leaf, not_a_ca.0], leaf_key))).await,
        "issuer_not_a_ca: got CONNACK"
    );
    expected.push("issuer_not_a_ca");
    // An RSA-1024 key in an otherwise valid certificate.
    rsa1024_handshake(&gw, &pki, issuer).await;
    expected.push("weak_key");
    // Offers no rustls client makes: TLS 1.0, TLS 1.1, and TLS 1.2 with only CBC (non-AEAD)
    // suites (ECDHE-ECDSA/RSA with AES-CBC, plain RSA with AES-CBC).
    let cbc = [0xC009, 0xC013, 0xC00A, 0xC014, 0x002F, 0x0035];
    refused_hello(&gw, &client_hello(1, &cbc), "TLS 1.0").await;
    expected.push("unsupported_tls_version");
    refused_hello(&gw, &client_hello(2, &cbc), "TLS 1.1").await;
    expected.push("unsupported_tls_version");
    refused_hello(&gw, &client_hello(3, &cbc), "TLS 1.2 without AEAD").await;
    expected.push("no_shared_cipher_suite");

    wait_for("one audit record per case", Duration::from_secs(5), || {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.lines().count() >= expected.len())
    })
    .await;
    check_audit(&audit, &expected, &revoked_der, &devices[0].device_id);
    // The same reasons label the refusal metric.
    let metrics = gw.shared.metrics.render(&[]);
    for reason in &expected {
        assert!(
            metrics.contains(&format!("result=\"refused\",reason=\"{reason}\"")),
            "no metric for {reason}:\n{metrics}"
        );
    }
    // The control's session ended when its client closed.
    wait_for("no live session", Duration::from_secs(5), || {
        gw.sessions.is_empty()
    })
    .await;
    gw.stop().await;
}

/// A client identity: certificate and key.
type Identity = (CertificateDer<'static>, PrivateKeyDer<'static>);

/// The certificate cases, each with the reason it must be refused for (`None`: no
/// certificate at all).
fn certificate_cases(
    issuer: &rcgen::Issuer<'_, KeyPair>,
    foreign: &rcgen::Issuer<'_, KeyPair>,
    revoked: Identity,
) -> Vec<(&'static str, Option<Identity>)> {
    let now = OffsetDateTime::now_utc();
    let client = ExtendedKeyUsagePurpose::ClientAuth;
    vec![
        (
            "expired",
            Some(client_cert(
                issuer,
                "d-expired",
                now - Days::days(30),
                now - Days::days(1),
                client.clone(),
            )),
        ),
        (
            "not_yet_valid",
            Some(client_cert(
                issuer,
                "d-future",
                now + Days::days(1),
                now + Days::days(30),
                client.clone(),
            )),
        ),
        (
            "bad_eku",
            Some(client_cert(
                issuer,
                "d-server-eku",
                now - Days::days(1),
                now + Days::days(30),
                ExtendedKeyUsagePurpose::ServerAuth,
            )),
        ),
        // A KeyUsage without digitalSignature (keyAgreement only): the key may not sign the
        // handshake. A certificate with digitalSignature among its usages is accepted (below).
        (
            "bad_key_usage",
            Some(client_cert_with_usage(
                issuer,
                "d-key-agreement-only",
                now - Days::days(1),
                now + Days::days(30),
                client.clone(),
                &[KeyUsagePurpose::KeyAgreement],
            )),
        ),
        (
            "unknown_ca",
            Some(client_cert(
                foreign,
                "d-foreign",
                now - Days::days(1),
                now + Days::days(30),
                client.clone(),
            )),
        ),
        ("revoked", Some(revoked)),
        ("no_client_certificate", None),
    ]
}

/// One audit record per case, in order, with its reason; the revoked one names its device.
fn check_audit(audit: &std::path::Path, expected: &[&str], revoked_der: &[u8], device_id: &str) {
    let records: Vec<serde_json::Value> = std::fs::read_to_string(audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reasons: Vec<&str> = records
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, expected);
    // The revoked certificate verified but for its revocation: the record says whose it was.
    let revoked = records.iter().find(|r| r["reason"] == "revoked").unwrap();
    let who = fleet_gateway::identity::Identity::from_cert_der(revoked_der, "service").unwrap();
    assert_eq!(revoked["device"], device_id, "{revoked}");
    assert_eq!(revoked["tenant"], TENANT);
    assert_eq!(revoked["serial"], who.serial_hex().as_str());
    assert_eq!(revoked["fingerprint"], who.fingerprint_hex().as_str());
    // Certificates that did not verify name nobody: their subject is the client's say-so.
    let foreign = records
        .iter()
        .find(|r| r["reason"] == "unknown_ca")
        .unwrap();
    assert!(foreign.get("device").is_none(), "{foreign}");
}
