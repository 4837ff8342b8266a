//! Factory → identity → mTLS → gateway → backend, with real TLS, the real gateway on port 0
//! and the real firmware core running as simulated devices.

use std::time::Duration;

use fleet_firmware::device::Options;
use fleet_hil::fleet::{telemetry_payload, Fleet};
use fleet_hil::refusals;
use fleet_protocol::mqtt::QoS;
use fleet_tests::{export_pem, wait_for, Pki, RunningGateway, TENANT};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, Packet};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_publish_and_the_backend_receives_exactly_that() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 3);
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let backend = pki.backend(gw.addr).await;

    let options = Options {
        telemetry_period_ms: 100,
        telemetry_qos: QoS::AtLeastOnce,
        ..Options::default()
    };
    let fleet = Fleet::start(&bundles, Some(gw.addr), options);
    let device_sessions = || {
        gw.sessions
            .list()
            .iter()
            .filter(|s| s.identity.kind == fleet_gateway::identity::Kind::Device)
            .count()
    };
    wait_for("3 device sessions", Duration::from_secs(20), || {
        device_sessions() == 3
    })
    .await;
    wait_for("5 messages per device", Duration::from_secs(20), || {
        fleet
            .devices
            .iter()
            .all(|d| d.published.load(std::sync::atomic::Ordering::Relaxed) >= 5)
    })
    .await;

    // Every device gets one command and acknowledges it.
    for b in &bundles {
        backend
            .command(&b.device_id, b"hello")
            .await
            .expect("command");
    }
    wait_for("3 command acks", Duration::from_secs(10), || {
        backend.observed().acked.len() == 3
    })
    .await;

    let published: Vec<u64> = fleet
        .devices
        .iter()
        .map(|d| d.published.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    fleet.stop().await;
    // QoS 1 to a QoS 1 subscriber on loopback: what was published arrives, in order, once.
    let want = |i: usize| -> Vec<Vec<u8>> {
        (0..published[i] as u32)
            .map(|seq| telemetry_payload(&bundles[i].device_id, seq).into_bytes())
            .collect()
    };
    wait_for("all published telemetry", Duration::from_secs(10), || {
        let seen = backend.observed();
        (0..3)
            .all(|i| seen.payloads.get(&bundles[i].device_id).map_or(0, Vec::len) >= want(i).len())
    })
    .await;
    let seen = backend.observed();
    for (i, b) in bundles.iter().enumerate() {
        assert_eq!(
            seen.payloads[&b.device_id],
            want(i),
            "telemetry of {}",
            b.device_id
        );
        assert!(seen.acked.contains_key(&b.device_id));
    }
    backend.close().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_device_and_certificateless_client_never_get_connack() {
    let pki = Pki::new();
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let anchor = refusals::load_anchor(&pki.path("ca/root.pem")).expect("anchor");

    let foreign = refusals::foreign_ca_device(gw.addr, "localhost", &anchor)
        .await
        .expect("attempt runs");
    assert!(
        !foreign.got_connack,
        "foreign-CA device got a CONNACK: {foreign}"
    );
    let bare = refusals::no_certificate(gw.addr, "localhost", &anchor)
        .await
        .expect("attempt runs");
    assert!(
        !bare.got_connack,
        "certificate-less client got a CONNACK: {bare}"
    );
    assert!(gw.sessions.is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_must_match_the_certificate() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 2);
    let gw = RunningGateway::start(pki.gateway_config()).await;

    // Device 0's certificate, device 1's id: refused with "not authorized".
    let options = pki.device_mqtt_options(&bundles[0], &bundles[1].device_id, gw.addr.port());
    let (_client, mut events) = AsyncClient::new(options, 10);
    let outcome = tokio::time::timeout(Duration::from_secs(10), events.poll())
        .await
        .expect("an answer");
    match outcome {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized)
        }
        other => panic!("expected CONNACK not-authorized, got {other:?}"),
    }
    assert!(gw.sessions.is_empty());
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_becomes_the_certificate_cn() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let backend = pki.backend(gw.addr).await;

    let options = pki.device_mqtt_options(&bundles[0], "", gw.addr.port());
    let (client, mut events) = AsyncClient::new(options, 10);
    let id = bundles[0].device_id.clone();
    client
        .publish(
            format!("tenants/{TENANT}/devices/{id}/telemetry"),
            rumqttc::QoS::AtLeastOnce,
            false,
            b"from-empty-id".to_vec(),
        )
        .await
        .expect("queue publish");
    let acked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("connection failed: {e}"),
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "no PUBACK");
    let sessions = gw.sessions.list();
    assert_eq!(sessions.len(), 2, "device and backend");
    assert!(sessions.iter().any(|s| s.identity.id == id));
    wait_for("telemetry at the backend", Duration::from_secs(5), || {
        backend
            .observed()
            .payloads
            .get(&id)
            .is_some_and(|p| p == &[b"from-empty-id".to_vec()])
    })
    .await;
    backend.close().await;
    gw.stop().await;
}

/// Interop with a client nobody here wrote: Debian's mosquitto_pub with a device identity
/// exported from its bundle. `cargo xtask test` installs mosquitto-clients and sets
/// FLEET_REQUIRE_MOSQUITTO so this cannot silently skip there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_with_a_provisioned_device_identity() {
    let required = std::env::var_os("FLEET_REQUIRE_MOSQUITTO").is_some();
    let found = std::process::Command::new("mosquitto_pub")
        .arg("--help")
        .output()
        .is_ok();
    if !found {
        assert!(
            !required,
            "mosquitto_pub is not installed (cargo xtask test installs it)"
        );
        eprintln!("skipping: mosquitto_pub not installed; run `cargo xtask test`");
        return;
    }
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let backend = pki.backend(gw.addr).await;
    let (cert, key) = export_pem(&bundles[0], pki.dir.path());
    let id = &bundles[0].device_id;
    let out = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &gw.addr.port().to_string()])
        .arg("--cafile")
        .arg(pki.path("ca/root.pem"))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-i", id, "-q", "1", "-m", "from-mosquitto"])
        .args(["-t", &format!("tenants/{TENANT}/devices/{id}/telemetry")])
        .output()
        .await
        .expect("mosquitto_pub runs");
    assert!(
        out.status.success(),
        "mosquitto_pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "mosquitto's message at the backend",
        Duration::from_secs(5),
        || {
            backend
                .observed()
                .payloads
                .get(id)
                .is_some_and(|p| p == &[b"from-mosquitto".to_vec()])
        },
    )
    .await;
    backend.close().await;
    gw.stop().await;
}
