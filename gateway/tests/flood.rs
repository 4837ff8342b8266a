//! Slow-handshake flood against the real gateway binary: 10,000 TCP connections that never
//! send a byte and 200 that trickle one byte a second, from other loopback addresses, while a
//! device keeps connecting from 127.0.0.1. The device's connect latency stays low, the
//! gateway's memory stays bounded, and every idle handshake is cut at the timeout.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{
    device_connect, open_from, percentile, raise_fd_limit, rss_kib, GatewayProcess, TestPki,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: usize = 10_000;
const TRICKLE: usize = 200;
const HANDSHAKE_TIMEOUT_SECS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handshake_flood_does_not_delay_a_real_device() {
    raise_fd_limit(IDLE + TRICKLE + 1000);
    let pki = TestPki::new();
    let device = pki.device("acme-000001");
    let gw = GatewayProcess::start(
        &pki,
        &format!("handshake_timeout_secs = {HANDSHAKE_TIMEOUT_SECS}"),
        device.clone(),
    )
    .await;
    let mut quiet = Vec::new();
    for _ in 0..20 {
        quiet.push(
            device_connect(gw.addr, device.clone(), None)
                .await
                .unwrap()
                .0,
        );
    }
    quiet.sort();
    let rss_before = rss_kib(gw.pid());

    // The flood: 10,000 silent connections and 200 that trickle a byte a second.
    let flood_started = Instant::now();
    let mut idle = open_silent(gw.addr).await;
    let opened_in = flood_started.elapsed();
    let mut trickles = start_trickles(gw.addr);

    // The device during the flood: 100 connects, so the p99 is not just the one worst.
    let mut during = Vec::new();
    for _ in 0..100 {
        let (took, _) = device_connect(gw.addr, device.clone(), None)
            .await
            .expect("the device connects during the flood");
        during.push(took);
    }
    during.sort();
    let rss_flood = rss_kib(gw.pid());
    let p99 = percentile(&during, 0.99);
    let summary = format!(
        "{{\"silent\":{IDLE},\"trickling\":{TRICKLE},\"opened_ms\":{},\"device_p50_ms\":{:.2},\"device_p99_ms\":{:.2},\"quiet_p50_ms\":{:.2},\"rss_before_kib\":{rss_before},\"rss_flood_kib\":{rss_flood}}}",
        opened_in.as_millis(),
        percentile(&during, 0.5).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        percentile(&quiet, 0.5).as_secs_f64() * 1e3,
    );
    eprintln!("flood: {summary}");
    common::record_figures("flood", &summary);
    assert!(
        p99 < Duration::from_millis(100),
        "device connect p99 {p99:?} during the flood"
    );
    // Bounded memory: well under 10 KiB per pending connection.
    assert!(
        rss_flood.saturating_sub(rss_before) < 100 * 1024,
        "gateway RSS grew from {rss_before} KiB to {rss_flood} KiB"
    );

    // Every silent connection is cut at the handshake timeout (plus scheduling slack).
    let cut_by = flood_started + opened_in + Duration::from_secs(HANDSHAKE_TIMEOUT_SECS + 10);
    let cut = count_cut(&mut idle, cut_by).await;
    assert_eq!(
        cut,
        IDLE,
        "silent connections closed by the gateway; audit {:?}; log {:#?}",
        gw.audit_reasons(),
        gw.log_tail(20)
    );
    let mut trickles_cut = 0;
    while let Some(r) = trickles.join_next().await {
        trickles_cut += usize::from(r.unwrap_or(false));
    }
    assert_eq!(
        trickles_cut, TRICKLE,
        "trickling connections closed by the gateway"
    );
    // One audit record per refusal would let a flood grow the audit file without bound: the
    // refusals are written up to the audit rate limit and the rest counted in `suppressed`
    // summaries (written every 10 s), so every refusal is accounted for in a few lines.
    let slow = (IDLE + TRICKLE) as u64;
    let timeouts = audited_timeouts(&gw, slow).await;
    let records = gw.audit_records().len();
    println!("audit: {timeouts} handshake timeouts accounted for in {records} records");
    common::record_figures(
        "flood_audit",
        &format!("{{\"refusals\":{timeouts},\"records\":{records}}}"),
    );
    assert!(
        timeouts >= slow,
        "{timeouts} handshake_timeout refusals accounted for in the audit log, for {slow} slow \
         connections"
    );
    assert!(
        records < 2_000,
        "{records} audit records for {slow} refusals: the audit rate limit did not hold"
    );
}

/// 10,000 silent connections from 127.0.1.1–127.0.1.20 (500 each, within the default per-IP
/// burst), opened 250 at a time.
async fn open_silent(gateway: SocketAddr) -> Vec<TcpStream> {
    let mut idle = Vec::with_capacity(IDLE);
    for chunk in (0..IDLE).collect::<Vec<_>>().chunks(250) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let source = Ipv4Addr::new(127, 0, 1, (i % 20) as u8 + 1);
            set.spawn(open_from(Some(source), gateway));
        }
        while let Some(opened) = set.join_next().await {
            idle.push(opened.unwrap().expect("flood connection"));
        }
    }
    idle
}

/// 200 connections from 127.0.2.1–127.0.2.20 that trickle a byte a second; each task is true
/// once a write fails: the gateway closed the connection.
fn start_trickles(gateway: SocketAddr) -> tokio::task::JoinSet<bool> {
    let mut trickles = tokio::task::JoinSet::new();
    for i in 0..TRICKLE {
        trickles.spawn(async move {
            let source = Ipv4Addr::new(127, 0, 2, (i % 20) as u8 + 1);
            let Ok(mut s) = open_from(Some(source), gateway).await else {
                return false;
            };
            // A TLS record header, then one byte a second (bounded: 30 bytes).
            for b in [0x16u8, 0x03, 0x01, 0x00, 0xC8].into_iter().chain([0; 25]) {
                if s.write_all(&[b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            false
        });
    }
    trickles
}

/// How many of the connections the gateway has closed by `cut_by`.
async fn count_cut(idle: &mut [TcpStream], cut_by: Instant) -> usize {
    let mut cut = 0;
    for s in idle.iter_mut() {
        let left = cut_by.saturating_duration_since(Instant::now());
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(left.max(Duration::from_millis(1)), s.read(&mut byte));
        if let Ok(Ok(0) | Err(_)) = read.await {
            cut += 1;
        }
    }
    cut
}

/// The `handshake_timeout` refusals the audit log accounts for, once they reach `slow` (or
/// after 15 s): the summaries are written every 10 s.
async fn audited_timeouts(gw: &GatewayProcess, slow: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let timeouts = gw
            .audit_reasons()
            .get("handshake_timeout")
            .copied()
            .unwrap_or(0);
        if timeouts >= slow || Instant::now() > deadline {
            return timeouts;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
