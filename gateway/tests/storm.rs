//! Connect storm: 5,000 valid devices reconnecting at once, as after a gateway restart, from
//! 25 loopback addresses (200 each: devices behind carrier NATs). Every device retries with
//! capped exponential backoff and full jitter, like the firmware. All must be back, and the
//! default per-IP limits must not lock any of them out.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{device_connect, percentile, raise_fd_limit, GatewayProcess, TestPki};

const DEVICES: usize = 5_000;
const ADDRESSES: usize = 25;
/// The bound this test enforces; the measured figure is printed (and recorded for the report).
const ALL_BACK_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_devices_reconnecting_at_once_all_get_back() {
    raise_fd_limit(DEVICES + 1000);
    let pki = TestPki::new();
    let configs: Vec<_> = (0..DEVICES)
        .map(|i| pki.device(&format!("acme-{i:06}")))
        .collect();
    let gw = GatewayProcess::start(&pki, "", configs[0].clone()).await;

    let started = Instant::now();
    let mut storm = tokio::task::JoinSet::new();
    for (i, config) in configs.into_iter().enumerate() {
        let addr = gw.addr;
        let source = Ipv4Addr::new(127, 0, 4, (i % ADDRESSES) as u8 + 1);
        storm.spawn(async move {
            let mut attempts = 0u32;
            // Small xorshift per device for the jitter: no shared RNG, no lock.
            let mut rng = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            loop {
                attempts += 1;
                if let Ok((_, tls)) = device_connect(addr, config.clone(), Some(source)).await {
                    return Some((started.elapsed(), attempts, tls));
                }
                if started.elapsed() > ALL_BACK_WITHIN {
                    return None;
                }
                // Full jitter over an exponential ceiling: 100 ms · 2^n, capped at 5 s.
                let ceiling = 100u64 << attempts.min(6);
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                tokio::time::sleep(Duration::from_millis(rng % ceiling.min(5_000))).await;
            }
        });
    }
    let mut back = Vec::with_capacity(DEVICES);
    let mut retried = 0;
    let mut open = Vec::with_capacity(DEVICES);
    while let Some(done) = storm.join_next().await {
        if let Some((at, attempts, tls)) = done.unwrap() {
            back.push(at);
            retried += usize::from(attempts > 1);
            open.push(tls);
        }
    }
    back.sort();
    let reasons = gw.audit_reasons();
    let summary = format!(
        "{{\"devices\":{DEVICES},\"addresses\":{ADDRESSES},\"back\":{},\"retried\":{retried},\"p50_ms\":{},\"p99_ms\":{},\"all_back_ms\":{},\"ip_rate_limited\":{}}}",
        back.len(),
        percentile(&back, 0.5).as_millis(),
        percentile(&back, 0.99).as_millis(),
        back.last().map_or(0, |d| d.as_millis()),
        reasons.get("ip_rate_limited").copied().unwrap_or(0),
    );
    eprintln!("storm: {summary}");
    common::record_figures("storm", &summary);
    assert_eq!(
        back.len(),
        DEVICES,
        "devices back within {ALL_BACK_WITHIN:?}; audit {reasons:?}"
    );
    assert_eq!(
        reasons.get("ip_rate_limited"),
        None,
        "the per-IP limit turned legitimate devices away"
    );
}
