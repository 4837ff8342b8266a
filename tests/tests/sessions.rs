//! Session rules through real TLS: takeover, keep-alive, size and rate limits, garbage input.

use std::time::{Duration, Instant};

use fleet_hil::fleet::DeviceBundle;
use fleet_tests::raw::{closed_within, connect, publish};
use fleet_tests::{wait_for, Pki, RunningGateway, TENANT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_keepalive_size_rate_and_garbage() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 3);
    let mut config = pki.gateway_config();
    config.limits.publish_rate = 20.0;
    config.limits.publish_burst = 20.0;
    config.limits.max_packet_size = 4096;
    let gw = RunningGateway::start(config).await;
    let topic = |b: &DeviceBundle| format!("tenants/{TENANT}/devices/{}/telemetry", b.device_id);

    // A bystander that must survive everything below.
    let mut bystander = connect(&gw, &pki, &bundles[2], 60).await;

    // Takeover: the same identity connecting again closes the first connection.
    let mut first = connect(&gw, &pki, &bundles[0], 60).await;
    let _second = connect(&gw, &pki, &bundles[0], 60).await;
    closed_within(&mut first).await;
    wait_for("one session for the device", Duration::from_secs(5), || {
        gw.sessions
            .list()
            .iter()
            .filter(|s| s.identity.id == bundles[0].device_id)
            .count()
            == 1
    })
    .await;

    // Keep-alive 1 s and silence: closed after 1.5 s, not before.
    let mut idle = connect(&gw, &pki, &bundles[1], 1).await;
    let took = closed_within(&mut idle).await;
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(3),
        "keep-alive close after {took:?}"
    );

    // Oversized packet: announced size above max_packet_size closes the connection.
    let mut big = connect(&gw, &pki, &bundles[1], 60).await;
    big.write_all(&publish(&topic(&bundles[1]), &[0u8; 5000]))
        .await
        .unwrap();
    closed_within(&mut big).await;

    // Publish flood above 20/s with a burst of 20: closed as rate limited.
    let mut flood = connect(&gw, &pki, &bundles[1], 60).await;
    let one = publish(&topic(&bundles[1]), b"x");
    let burst: Vec<u8> = (0..50).flat_map(|_| one.clone()).collect();
    flood.write_all(&burst).await.unwrap();
    closed_within(&mut flood).await;

    // Garbage after the handshake: that connection alone is closed.
    let mut garbage = connect(&gw, &pki, &bundles[1], 60).await;
    garbage.write_all(&[0xF0, 0x00, 0xDE, 0xAD]).await.unwrap();
    closed_within(&mut garbage).await;

    // The bystander still works: PINGREQ → PINGRESP.
    bystander.write_all(&[0xC0, 0x00]).await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), bystander.read_exact(&mut pong))
        .await
        .expect("bystander answered")
        .unwrap();
    assert_eq!(pong, [0xD0, 0x00]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connection_rate_limit() {
    let pki = Pki::new();
    let mut config = pki.gateway_config();
    config.limits.ip_connect_rate = 1.0;
    config.limits.ip_connect_burst = 3.0;
    let gw = RunningGateway::start(config).await;
    // Three attempts pass the limiter (they then fail TLS: no certificate); the fourth is
    // closed at accept, before any TLS.
    let mut closed_at_accept = 0;
    for _ in 0..4 {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let mut buf = [0u8; 1];
        let start = Instant::now();
        let r = tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await;
        if matches!(r, Ok(Ok(0)) | Ok(Err(_))) && start.elapsed() < Duration::from_millis(300) {
            closed_at_accept += 1;
        }
    }
    assert_eq!(
        closed_at_accept, 1,
        "exactly the attempt beyond the burst is closed at once"
    );
    gw.stop().await;
}
