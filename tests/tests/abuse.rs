//! Authenticated abuse: a device with a valid certificate sends oversized packets, floods
//! publishes, subscribes to `#`, piles up thousands of subscriptions, leaves QoS 2 exchanges
//! open and uses a topic alias. Its own session is limited or closed each time; a bystander
//! publishing at a steady rate meanwhile loses nothing.

use std::time::Duration;

use fleet_protocol::mqtt::v5::{self, Packet5, Properties, Property};
use fleet_protocol::mqtt::{Packet, Publish, QoS, SubAckCode, Subscribe, SubscribeFilters};
use fleet_tests::raw::{closed_within, connect, encode, publish, Client5, Tls};
use fleet_tests::{wait_for, Pki, RunningGateway, TENANT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Messages the bystander publishes (QoS 1, 40 per second: inside its rate limit).
const STEADY: u16 = 160;

/// The bytes of the next whole packet; fails after 5 s or on a close.
async fn next(tls: &mut Tls, buf: &mut Vec<u8>) -> Vec<u8> {
    loop {
        if let Some((_, n)) = Packet::parse(buf, 1 << 20).expect("valid MQTT") {
            return buf.drain(..n).collect();
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut chunk))
            .await
            .expect("answer in time")
            .unwrap_or(0);
        assert!(n > 0, "connection closed while waiting");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads packets until `want` matches one.
async fn expect(tls: &mut Tls, buf: &mut Vec<u8>, want: impl Fn(&Packet<'_>) -> bool) {
    loop {
        let bytes = next(tls, buf).await;
        if let Some((p, _)) = Packet::parse(&bytes, 1 << 20).unwrap() {
            if want(&p) {
                return;
            }
        }
    }
}

fn subscribe(id: u16, filters: &[(&str, QoS)]) -> Vec<u8> {
    encode(&Packet::Subscribe(Subscribe {
        packet_id: id,
        filters: SubscribeFilters::from_slice(filters),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abusive_device_is_contained_and_a_bystander_loses_nothing() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 2);
    let (bystander, attacker) = (&bundles[0], &bundles[1]);
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let backend = pki.backend(gw.addr).await;

    // The bystander: STEADY QoS 1 messages at 40/s, every one acknowledged.
    let mut steady = connect(&gw, &pki, bystander, 60).await;
    let topic = format!("tenants/{TENANT}/devices/{}/telemetry", bystander.device_id);
    let steady_task = tokio::spawn(async move {
        let mut acked = 0u16;
        let mut buf = Vec::new();
        for id in 1..=STEADY {
            let p = Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: &topic,
                packet_id: Some(id),
                payload: &id.to_be_bytes(),
            });
            steady.write_all(&encode(&p)).await.unwrap();
            expect(&mut steady, &mut buf, |p| *p == Packet::PubAck(id)).await;
            acked += 1;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        (acked, steady)
    });

    let own = |leaf: &str| format!("tenants/{TENANT}/devices/{}/{leaf}", attacker.device_id);
    // 1. A packet above max_packet_size (256 KiB): closed.
    let mut tls = connect(&gw, &pki, attacker, 60).await;
    tls.write_all(&publish(&own("telemetry"), &vec![0u8; 300 * 1024]))
        .await
        .unwrap_or(());
    closed_within(&mut tls).await;

    // 2. A publish flood above the rate limit (burst 200): closed.
    let mut tls = connect(&gw, &pki, attacker, 60).await;
    let one = publish(&own("telemetry"), b"x");
    let flood: Vec<u8> = (0..1000).flat_map(|_| one.clone()).collect();
    let _ = tls.write_all(&flood).await;
    closed_within(&mut tls).await;

    // 3. Subscribing to everything: refused (0x80), the session goes on.
    let mut tls = connect(&gw, &pki, attacker, 60).await;
    let mut buf = Vec::new();
    tls.write_all(&subscribe(1, &[("#", QoS::AtMostOnce)]))
        .await
        .unwrap();
    expect(&mut tls, &mut buf, |p| {
        matches!(p, Packet::SubAck(a) if a.packet_id == 1
            && a.return_codes.iter().all(|c| c == SubAckCode::Failure))
    })
    .await;

    // 4. Thousands of subscriptions (its own command topics, all allowed by the ACL): the
    //    first 100 are granted, the rest refused; the router holds 100 filters, not 2,000.
    let filters: Vec<String> = (0..2000).map(|i| own(&format!("cmd/f{i}"))).collect();
    let (mut granted, mut refused) = (0, 0);
    for (n, chunk) in filters.chunks(100).enumerate() {
        let list: Vec<(&str, QoS)> = chunk
            .iter()
            .map(|f| (f.as_str(), QoS::AtMostOnce))
            .collect();
        let id = n as u16 + 10;
        tls.write_all(&subscribe(id, &list)).await.unwrap();
        loop {
            let bytes = next(&mut tls, &mut buf).await;
            if let Some((Packet::SubAck(a), _)) = Packet::parse(&bytes, 1 << 20).unwrap() {
                assert_eq!(a.packet_id, id);
                for c in a.return_codes.iter() {
                    match c {
                        SubAckCode::Failure => refused += 1,
                        SubAckCode::Granted(_) => granted += 1,
                    }
                }
                break;
            }
        }
    }
    assert_eq!(
        (granted, refused),
        (100, 1900),
        "subscriptions granted / refused"
    );

    // 5. QoS 2 exchanges left open (no PUBREL), then more than the burst: closed as rate
    //    limited; the gateway holds at most 65,535 ids per session by construction.
    let qos2: Vec<u8> = (1..=300u16)
        .flat_map(|id| {
            encode(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: false,
                topic: &own("telemetry"),
                packet_id: Some(id),
                payload: b"2",
            }))
        })
        .collect();
    let _ = tls.write_all(&qos2).await;
    closed_within(&mut tls).await;

    // 6. A topic alias in MQTT 5 (none offered): DISCONNECT 0x94, closed.
    let mut v5client = Client5::open(&gw, &pki, attacker).await;
    let connack = v5client.connect(&attacker.device_id, &[]).await;
    assert!(matches!(
        Packet5::parse(&connack, 1 << 20).unwrap(),
        Some((Packet5::ConnAck(a), _)) if a.reason == v5::reason::SUCCESS
    ));
    let topic = own("telemetry");
    let alias = [Property::TopicAlias(3)];
    let aliased = Packet5::Publish(
        Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: &topic,
            packet_id: None,
            payload: b"a",
        },
        Properties::from_slice(&alias),
    );
    v5client.send(&aliased).await;
    let bye = v5client.next().await;
    assert!(
        matches!(
            Packet5::parse(&bye, 1 << 20).unwrap(),
            Some((Packet5::Disconnect(d), _)) if d.reason == v5::reason::TOPIC_ALIAS_INVALID
        ),
        "expected DISCONNECT 0x94, got {bye:02x?}"
    );
    assert!(v5client.closed().await);

    // The bystander: every message acknowledged and delivered, its session never touched.
    let (acked, _still_open) = steady_task.await.unwrap();
    assert_eq!(acked, STEADY, "bystander PUBACKs");
    wait_for(
        "every bystander message at the backend",
        Duration::from_secs(10),
        || {
            backend
                .observed()
                .telemetry
                .get(&bystander.device_id)
                .is_some_and(|&n| n >= u64::from(STEADY))
        },
    )
    .await;
    assert!(gw.has_device(&bystander.device_id));
    // What the attacker triggered is on record: rate limit, size, alias, ACL.
    let metrics = gw.shared.metrics.render(&[]);
    for reason in ["rate_limited", "malformed_packet", "topic_alias_invalid"] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "no session-end metric {reason}:\n{metrics}"
        );
    }
    backend.close().await;
    gw.stop().await;
}
