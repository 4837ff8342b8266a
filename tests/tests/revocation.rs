//! Live revocation: `fleet-provision revoke` writes a CRL, the gateway notices the file change,
//! closes the revoked device's session within a second and refuses it from then on.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleet_firmware::device::Options;
use fleet_hil::fleet::Fleet;
use fleet_provision::Reason;
use fleet_tests::{wait_for, Pki, RunningGateway, TENANT};
use rumqttc::AsyncClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_is_kicked_within_a_second_and_refused_after() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 2);
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let fleet = Fleet::start(&bundles, Some(gw.addr), Options::default());
    wait_for("2 device sessions", Duration::from_secs(20), || {
        gw.device_sessions() == 2
    })
    .await;

    let (victim, bystander) = (&bundles[0].device_id, &bundles[1].device_id);
    let started = Instant::now();
    pki.station
        .revoke(victim, Reason::KeyCompromise)
        .expect("revoke");
    wait_for(
        "the revoked session to close",
        Duration::from_secs(5),
        || !gw.has_device(victim),
    )
    .await;
    let took = started.elapsed();
    eprintln!("revocation → session closed in {took:?}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(gw.has_device(bystander), "other devices are untouched");

    // The device keeps retrying (with backoff) and is refused every time.
    let connects = fleet.devices[0].connects.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!gw.has_device(victim));
    assert_eq!(
        fleet.devices[0].connects.load(Ordering::Relaxed),
        connects,
        "no new session"
    );
    let error = fleet.devices[0]
        .last_error
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_default();
    assert!(
        error.contains("TLS"),
        "device sees a TLS refusal, got {error:?}"
    );

    // Any other client with that certificate is refused too.
    let options = pki.device_mqtt_options(&bundles[0], victim, gw.addr.port());
    let (_client, mut events) = AsyncClient::new(options, 10);
    let outcome = tokio::time::timeout(Duration::from_secs(10), events.poll())
        .await
        .expect("answer");
    assert!(outcome.is_err(), "revoked certificate got {outcome:?}");
    fleet.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_crl_is_refused_and_the_previous_state_stays_in_force() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 2);
    pki.station
        .revoke(&bundles[0].device_id, Reason::KeyCompromise)
        .unwrap();
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let fleet = Fleet::start(&bundles[1..], Some(gw.addr), Options::default());
    wait_for("the good device", Duration::from_secs(20), || {
        gw.device_sessions() == 1
    })
    .await;

    let crl = pki.station.crl_path();
    let good = std::fs::read(&crl).unwrap();
    // Garbage, and a CRL signed by a CA the gateway does not trust: both refused on reload.
    let foreign = tempfile::tempdir().unwrap();
    let mut other = fleet_provision::Station::init(
        foreign.path(),
        "Other",
        fleet_provision::KeyProtection::InsecurePlaintext,
    )
    .unwrap();
    let foreign_crl = std::fs::read(other.write_crl().unwrap()).unwrap();
    for bad in [b"garbage".to_vec(), foreign_crl] {
        std::fs::write(&crl, &bad).unwrap();
        let err = gw
            .shared
            .reload(fleet_gateway::reload::Trigger::Api)
            .expect_err("bad CRL refused");
        assert!(err.to_string().contains("issuing.crl.pem"), "{err}");
        // Still refusing the revoked device, still serving the good one.
        assert!(gw.has_device(&bundles[1].device_id));
    }
    let revoked = fleet_gateway::identity::Identity::from_cert_der(
        fleet_protocol::bundle::Bundle::parse(&bundles[0].bytes)
            .unwrap()
            .cert_der,
        "service",
    )
    .unwrap();
    assert!(
        gw.shared.is_revoked(&revoked),
        "previous CRL still in force"
    );
    std::fs::write(&crl, good).unwrap();
    assert_eq!(
        gw.shared
            .reload(fleet_gateway::reload::Trigger::Api)
            .expect("good CRL loads"),
        0
    );
    fleet.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_reading_is_still_kicked_promptly() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let backend = pki.backend(gw.addr).await;
    let id = bundles[0].device_id.clone();

    // The device subscribes to its commands, then never reads again.
    let options = pki.device_mqtt_options(&bundles[0], &id, gw.addr.port());
    let (client, mut events) = AsyncClient::new(options, 10);
    client
        .subscribe(
            format!("tenants/{TENANT}/devices/{id}/cmd/#"),
            rumqttc::QoS::AtMostOnce,
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) = events.poll().await {
                return;
            }
        }
    })
    .await
    .expect("subscribed");

    // Commands pile up until the gateway's writes to the device stall.
    for _ in 0..80 {
        backend.command_sized(&id, 200 * 1024).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(gw.has_device(&id));

    let started = Instant::now();
    pki.station.revoke(&id, Reason::KeyCompromise).unwrap();
    wait_for(
        "the stalled session to close",
        Duration::from_secs(5),
        || !gw.has_device(&id),
    )
    .await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    drop(events);
    backend.close().await;
    gw.stop().await;
}

/// The server certificate presented by a new handshake (DER).
async fn presented_server_cert(
    gw: &RunningGateway,
    pki: &Pki,
    bundle: &fleet_hil::fleet::DeviceBundle,
) -> Vec<u8> {
    let config = fleet_tests::device_client_config(bundle, &pki.path("ca/root.pem"));
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_certificate_is_used_without_a_restart() {
    use rustls_pki_types::pem::PemObject;
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let first_file = |pki: &Pki| {
        rustls_pki_types::CertificateDer::pem_file_iter(pki.path("gateway/server.pem"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .to_vec()
    };
    assert_eq!(
        presented_server_cert(&gw, &pki, &bundles[0]).await,
        first_file(&pki)
    );

    pki.station
        .issue_server_cert(&["localhost", "127.0.0.1", "gw2.example.com"])
        .unwrap();
    let renewed = first_file(&pki);
    let started = Instant::now();
    loop {
        if presented_server_cert(&gw, &pki, &bundles[0]).await == renewed {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

/// A CRL with a lower number than the one in force, copied over the configured file, is
/// refused: the device revoked since stays refused, and the refusal is logged, audited and
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_crl_does_not_replace_a_newer_one() {
    use fleet_gateway::reload::Trigger;
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 2);
    let crl = pki.station.crl_path();
    let older = std::fs::read(&crl).unwrap();
    let audit = pki.path("audit.jsonl");
    let mut config = pki.gateway_config();
    config.audit_log = Some(audit.clone());
    let gw = RunningGateway::start(config).await;
    let fleet = Fleet::start(&bundles, Some(gw.addr), Options::default());
    wait_for("2 device sessions", Duration::from_secs(20), || {
        gw.device_sessions() == 2
    })
    .await;

    let (victim, bystander) = (&bundles[0].device_id, &bundles[1].device_id);
    pki.station.revoke(victim, Reason::KeyCompromise).unwrap();
    wait_for(
        "the revoked session to close",
        Duration::from_secs(5),
        || !gw.has_device(victim),
    )
    .await;

    // The older CRL (number 1, validly signed, revoking nobody) copied over the newer one.
    std::fs::copy(pki.path("crl/issuing.crl.pem"), pki.path("newer.crl.pem")).unwrap();
    std::fs::write(&crl, &older).unwrap();
    let rollbacks = "fleet_gateway_crl_rollbacks_total{reason=\"lower_number\"} 1";
    wait_for(
        "the watcher to refuse the older CRL",
        Duration::from_secs(5),
        || gw.shared.metrics.render(&[]).contains(rollbacks),
    )
    .await;
    let err = gw
        .shared
        .reload(Trigger::Api)
        .expect_err("an explicit reload refuses it too");
    assert!(
        matches!(&err, fleet_gateway::Error::CrlRollback { rollback, .. } if rollback.label() == "lower_number"),
        "{err}"
    );
    assert!(err.to_string().contains("issuing.crl.pem"), "{err}");
    let metrics = gw.shared.metrics.render(&[]);
    for line in [
        "fleet_gateway_crl_rollbacks_total{reason=\"lower_number\"} 2",
        "fleet_gateway_tls_reloads_total{trigger=\"file_change\",result=\"refused\"} 1",
    ] {
        assert!(metrics.contains(line), "no {line:?} in\n{metrics}");
    }

    // The revoked device keeps retrying and is still refused; the other one is untouched.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!gw.has_device(victim), "the revoked device got back in");
    assert!(gw.has_device(bystander));
    let options = pki.device_mqtt_options(&bundles[0], victim, gw.addr.port());
    let (_client, mut events) = AsyncClient::new(options, 10);
    let outcome = tokio::time::timeout(Duration::from_secs(10), events.poll())
        .await
        .expect("answer");
    assert!(outcome.is_err(), "revoked certificate got {outcome:?}");

    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "crl_refused")
        .collect();
    assert_eq!(
        refused.len(),
        2,
        "the watcher's reload and the explicit one"
    );
    assert_eq!(refused[0]["reason"], "lower_number");
    let detail = refused[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("issuing.crl.pem") && detail.contains("number 1, lower than 2"),
        "{detail}"
    );

    // Putting the newer CRL back is accepted again.
    std::fs::copy(pki.path("newer.crl.pem"), &crl).unwrap();
    assert_eq!(
        gw.shared.reload(Trigger::Api).expect("the newer CRL loads"),
        0
    );
    fleet.stop().await;
    gw.stop().await;
}
