//! MQTT 5 through real TLS: reason codes, properties, features the gateway does not offer,
//! and 3.1.1 and 5 clients on one gateway.

use std::time::Duration;

use fleet_protocol::mqtt::v5::{reason, Ack5, Packet5, Properties, Property, ReasonList};
use fleet_protocol::mqtt::{Publish, QoS, Subscribe, SubscribeFilters};
use fleet_tests::raw::Client5;
use fleet_tests::{export_pem, wait_for, Pki, RunningGateway, TENANT};
use tokio::time::timeout;

fn connack(bytes: &[u8]) -> (u8, Vec<Property<'_>>) {
    match Packet5::parse(bytes, 1 << 20).unwrap().unwrap().0 {
        Packet5::ConnAck(a) => (a.reason, a.properties.iter().collect()),
        p => panic!("expected CONNACK, got {p:?}"),
    }
}

fn publish<'a>(topic: &'a str, id: u16, props: &'a [Property<'a>]) -> Packet5<'a> {
    Packet5::Publish(
        Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic,
            packet_id: Some(id),
            payload: b"v5",
        },
        Properties::from_slice(props),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_5_reason_codes_and_both_versions_on_one_gateway() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 2);
    let (a, b) = (&bundles[0], &bundles[1]);
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let backend = pki.backend(gw.addr).await; // 3.1.1 (rumqttc)

    // An empty client id is accepted and told the certificate's device id; the CONNACK says
    // what the gateway does not offer and its packet size limit.
    let mut dev = Client5::open(&gw, &pki, a).await;
    let ack = dev.connect("", &[]).await;
    let (code, props) = connack(&ack);
    assert_eq!(code, reason::SUCCESS);
    assert!(props.contains(&Property::AssignedClientIdentifier(&a.device_id)));
    assert!(props.contains(&Property::MaximumPacketSize(256 * 1024)));
    assert!(props.contains(&Property::SubscriptionIdentifierAvailable(0)));

    // SUBSCRIBE: own commands granted QoS 1, another device's refused with 0x87.
    let own = format!("tenants/{TENANT}/devices/{}/cmd/#", a.device_id);
    let other = format!("tenants/{TENANT}/devices/{}/cmd/#", b.device_id);
    let filters = [
        (own.as_str(), QoS::AtLeastOnce),
        (other.as_str(), QoS::AtLeastOnce),
    ];
    dev.send(&Packet5::Subscribe(
        Subscribe {
            packet_id: 1,
            filters: SubscribeFilters::from_slice(&filters),
        },
        Properties::EMPTY,
    ))
    .await;
    let suback = dev.next().await;
    assert_eq!(
        Packet5::parse(&suback, 1 << 20).unwrap().unwrap().0,
        Packet5::SubAck(ReasonList {
            packet_id: 1,
            properties: Properties::EMPTY,
            reasons: &[reason::GRANTED_QOS_1, reason::NOT_AUTHORIZED],
        })
    );

    // PUBLISH to another device's topic: PUBACK 0x87, nothing delivered.
    let foreign = format!("tenants/{TENANT}/devices/{}/telemetry", b.device_id);
    dev.send(&publish(&foreign, 2, &[])).await;
    let puback = dev.next().await;
    assert_eq!(
        Packet5::parse(&puback, 1 << 20).unwrap().unwrap().0,
        Packet5::PubAck(Ack5 {
            packet_id: 2,
            reason: reason::NOT_AUTHORIZED,
            properties: Properties::EMPTY,
        })
    );

    // PUBLISH to its own topic (with properties): acknowledged, seen by the 3.1.1 backend.
    let telemetry = format!("tenants/{TENANT}/devices/{}/telemetry", a.device_id);
    let user = [Property::UserProperty("unit", "C")];
    dev.send(&publish(&telemetry, 3, &user)).await;
    assert_eq!(dev.next().await, [0x40, 2, 0, 3], "PUBACK success");
    wait_for(
        "the v5 message at the 3.1.1 backend",
        Duration::from_secs(5),
        || {
            backend
                .observed()
                .payloads
                .get(&a.device_id)
                .is_some_and(|p| p.iter().any(|m| m == b"v5"))
        },
    )
    .await;

    // A command from the 3.1.1 backend reaches the version 5 device.
    backend.command(&a.device_id, b"reboot").await.unwrap();
    let cmd = dev.next().await;
    let Packet5::Publish(p, _) = Packet5::parse(&cmd, 1 << 20).unwrap().unwrap().0 else {
        panic!("expected the command")
    };
    assert_eq!(p.payload, b"reboot");
    dev.send(&Packet5::PubAck(Ack5::success(p.packet_id.unwrap())))
        .await;

    // CONNECT refusals carry version 5 reason codes and say why.
    let mut wrong_id = Client5::open(&gw, &pki, b).await;
    let ack = wrong_id.connect(&a.device_id, &[]).await;
    let (code, props) = connack(&ack);
    assert_eq!(code, reason::NOT_AUTHORIZED);
    assert!(
        matches!(props[..], [Property::ReasonString(t)] if t.contains("differs")),
        "{props:?}"
    );
    assert!(wrong_id.closed().await);
    let mut auth = Client5::open(&gw, &pki, b).await;
    let ack = auth
        .connect(
            &b.device_id,
            &[Property::AuthenticationMethod("SCRAM-SHA-256")],
        )
        .await;
    assert_eq!(connack(&ack).0, reason::BAD_AUTHENTICATION_METHOD);

    // A topic alias (none offered): DISCONNECT 0x94, then the connection closes.
    let mut alias = Client5::open(&gw, &pki, b).await;
    assert_eq!(connack(&alias.connect(&b.device_id, &[]).await).0, 0);
    let own_b = format!("tenants/{TENANT}/devices/{}/telemetry", b.device_id);
    alias
        .send(&publish(&own_b, 1, &[Property::TopicAlias(1)]))
        .await;
    let bye = alias.next().await;
    assert!(matches!(
        Packet5::parse(&bye, 1 << 20).unwrap().unwrap().0,
        Packet5::Disconnect(d) if d.reason == reason::TOPIC_ALIAS_INVALID
    ));
    assert!(alias.closed().await);

    // Takeover: the first connection is told why it ends.
    let mut again = Client5::open(&gw, &pki, a).await;
    assert_eq!(connack(&again.connect(&a.device_id, &[]).await).0, 0);
    let bye = dev.next().await;
    assert!(matches!(
        Packet5::parse(&bye, 1 << 20).unwrap().unwrap().0,
        Packet5::Disconnect(d) if d.reason == reason::SESSION_TAKEN_OVER
    ));
    assert!(dev.closed().await);

    backend.close().await;
    gw.stop().await;
}

/// Interop with version 5 clients nobody here wrote: Debian's mosquitto_pub and
/// mosquitto_sub with `-V 5`; the message's properties survive the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_version_5_clients_keep_message_properties() {
    let required = std::env::var_os("FLEET_REQUIRE_MOSQUITTO").is_some();
    if std::process::Command::new("mosquitto_sub")
        .arg("--help")
        .output()
        .is_err()
    {
        assert!(!required, "mosquitto_sub is not installed");
        eprintln!("skipping: mosquitto clients not installed; run `cargo xtask test`");
        return;
    }
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let port = gw.addr.port().to_string();
    let ca = pki.path("ca/root.pem");
    let (svc_cert, svc_key, _) = pki.service_identity();
    let id = &bundles[0].device_id;
    let topic = format!("tenants/{TENANT}/devices/{id}/telemetry");

    let sub = tokio::process::Command::new("mosquitto_sub")
        .args(["-V", "5", "-h", "localhost", "-p", &port])
        .arg("--cafile")
        .arg(&ca)
        .arg("--cert")
        .arg(&svc_cert)
        .arg("--key")
        .arg(&svc_key)
        .args(["-i", fleet_tests::SERVICE, "-q", "1", "-C", "1", "-W", "20"])
        .args(["-t", &format!("tenants/{TENANT}/devices/+/telemetry")])
        .args(["-F", "%t|%p|%R|%P"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub starts");
    wait_for("mosquitto_sub's session", Duration::from_secs(10), || {
        gw.sessions
            .list()
            .iter()
            .any(|s| s.identity.id == fleet_tests::SERVICE)
    })
    .await;
    // The session exists before its SUBSCRIBE is routed; give the router a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (cert, key) = export_pem(&bundles[0], pki.dir.path());
    let reply = format!("tenants/{TENANT}/devices/{id}/cmd/reply");
    let out = tokio::process::Command::new("mosquitto_pub")
        .args(["-V", "5", "-h", "localhost", "-p", &port])
        .arg("--cafile")
        .arg(&ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-i", id, "-q", "1", "-m", "21.5", "-t", &topic])
        .args(["-D", "publish", "response-topic", &reply])
        .args(["-D", "publish", "user-property", "unit", "C"])
        .output()
        .await
        .expect("mosquitto_pub runs");
    assert!(
        out.status.success(),
        "mosquitto_pub -V 5 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = timeout(Duration::from_secs(20), sub.wait_with_output())
        .await
        .expect("mosquitto_sub got the message")
        .expect("mosquitto_sub ran");
    let line = String::from_utf8_lossy(&got.stdout);
    assert_eq!(
        line.trim(),
        format!("{topic}|21.5|{reply}|unit:C"),
        "stderr: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    gw.stop().await;
}
