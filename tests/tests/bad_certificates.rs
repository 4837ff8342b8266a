//! Every kind of bad client credential is refused before CONNACK, each with its own audit
//! reason and metric label.

use std::sync::Arc;
use std::time::Duration;

use fleet_tests::{wait_for, Pki, RunningGateway, TENANT};
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
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
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, TENANT);
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.extended_key_usages = vec![eku];
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
        Some((cert, key)) => builder.with_client_auth_cert(vec![cert], key).unwrap(),
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

/// A TLS 1.1 ClientHello (no supported_versions extension), assembled from RFC 4346.
fn tls11_client_hello() -> Vec<u8> {
    let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // session id
    hello.extend_from_slice(&[0, 4, 0xC0, 0x13, 0x00, 0x2F]); // ECDHE-RSA-AES128-SHA, AES128-SHA
    hello.extend_from_slice(&[1, 0]); // compression: null
    let mut handshake = vec![1, 0, 0, hello.len() as u8];
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01, 0, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
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

    let revoked = {
        let b = fleet_firmware::bundle::Bundle::parse(&devices[0].bytes).unwrap();
        let key = fleet_provision::pki::pkcs8_pem_from_sec1(b.private_key_der.unwrap()).unwrap();
        (
            CertificateDer::from(b.cert_der.to_vec()),
            rustls_pki_types::pem::PemObject::from_pem_slice(key.as_bytes()).unwrap(),
        )
    };
    let client = ExtendedKeyUsagePurpose::ClientAuth;
    let cases: Vec<(
        &str,
        Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>,
    )> = vec![
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
        (
            "unknown_ca",
            Some(client_cert(
                foreign.issuer(),
                "d-foreign",
                now - Days::days(1),
                now + Days::days(30),
                client.clone(),
            )),
        ),
        ("revoked", Some(revoked)),
        ("no_client_certificate", None),
    ];
    let mut expected = Vec::new();
    for (reason, identity) in cases {
        assert!(
            !got_connack(&gw, &root, identity).await,
            "{reason}: got CONNACK"
        );
        expected.push(reason);
    }

    // TLS 1.1 is not offered by any rustls client: send the ClientHello by hand.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    tcp.write_all(&tls11_client_hello()).await.unwrap();
    let mut reply = [0u8; 7];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut reply))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        n == 0 || reply[0] == 0x15,
        "TLS 1.1 must get an alert or a close, got {:?}",
        &reply[..n]
    );
    expected.push("incompatible_client");

    wait_for("one audit record per case", Duration::from_secs(5), || {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.lines().count() >= expected.len())
    })
    .await;
    let reasons: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(reasons, expected);
    assert!(gw.sessions.is_empty());
    gw.stop().await;
}
