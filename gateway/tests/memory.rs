//! Memory of idle sessions against the real gateway binary (with its allocator and its
//! allocator settings): what 2,000 idle mTLS sessions made resident is given back to the
//! system within 5 seconds of their closing: at least two thirds of it (the release build
//! gives back about 90 % in `cargo xtask bench gateway`; jemalloc's defaults, 10 s decay
//! and no background thread, gave back 2-6 %).

mod common;

use std::time::{Duration, Instant};

use common::{device_connect, raise_fd_limit, rss_kib, GatewayProcess, TestPki};

const SESSIONS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_closed_sessions_is_given_back() {
    raise_fd_limit(SESSIONS + 1000);
    let pki = TestPki::new();
    // All from 127.0.0.1: the per-address connect rate must not be what is measured.
    let limits = "ip_connect_rate = 100000\nip_connect_burst = 100000";
    let gw = GatewayProcess::start(&pki, limits, pki.device("probe")).await;
    // One identity per session: sessions of one device id would take each other over.
    let devices: Vec<_> = (0..SESSIONS)
        .map(|i| pki.device(&format!("idle-{i:05}")))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(gw.pid());

    let mut open = Vec::with_capacity(SESSIONS);
    for chunk in devices.chunks(50) {
        let mut set = tokio::task::JoinSet::new();
        for device in chunk {
            set.spawn(device_connect(gw.addr, device.clone(), None));
        }
        while let Some(joined) = set.join_next().await {
            let (_, tls) = joined.unwrap().expect("an idle session connects");
            open.push(tls);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let opened = rss_kib(gw.pid());
    let grown = opened.saturating_sub(before);
    assert!(
        grown > 4 * SESSIONS as u64 / 1024,
        "{SESSIONS} sessions grew the gateway's RSS by only {grown} KiB: not a measurement"
    );

    drop(open);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut closed = rss_kib(gw.pid());
    // Given back: at least two thirds of what the sessions made resident.
    while closed.saturating_sub(before) * 3 > grown && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        closed = rss_kib(gw.pid());
    }
    println!(
        "RSS before {before} KiB, with {SESSIONS} sessions {opened} KiB, after they closed {closed} KiB"
    );
    assert!(
        closed.saturating_sub(before) * 3 <= grown,
        "RSS before {before} KiB, with {SESSIONS} idle sessions {opened} KiB, and still \
         {closed} KiB 5 s after they closed: less than two thirds of {grown} KiB given back; \
         log: {:?}",
        gw.log_tail(20)
    );
}
