//! Message measurements: QoS 0 and QoS 1 (closed loop, losses counted) from many publishers
//! to one subscriber, fan-out from one publisher to ten subscribers, and latency at a fixed
//! open-loop rate. Payloads are 256 bytes: a sequence number and the send time, then filler.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_protocol::mqtt::QoS;
use fleet_protocol::topic;
use serde::Serialize;
use tokio::task::JoinSet;

use super::client::{Conn, Event};
use super::measure::{percentile, Progress, Rate, Window};
use super::Minted;
use crate::backend::scheme_topic;
use crate::Error;

pub const PAYLOAD: usize = 256;

/// Where and for how long the message phases run.
pub struct Plan {
    pub target: SocketAddr,
    pub pid: u32,
    pub tenant: String,
    /// Warm-up before each window, and the window.
    pub warmup: Duration,
    pub window: Duration,
}

/// One message phase's outcome: the delivery rate over the window (with the broker's CPU
/// per delivered message), and for QoS 1 what was acknowledged and what never arrived.
#[derive(Debug, Clone, Serialize)]
pub struct Flow {
    pub rate: Rate,
    pub sent: u64,
    pub acknowledged: u64,
    pub received: u64,
    pub lost: u64,
}

/// Latency at a fixed offered rate.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub offered_per_second: f64,
    pub delivered_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub samples: usize,
}

fn telemetry(tenant: &str, id: &str) -> String {
    scheme_topic(|s| topic::telemetry(s, tenant, id))
}

fn payload(seq: u64, sent_ns: u64) -> [u8; PAYLOAD] {
    let mut p = [0x5a; PAYLOAD];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(&sent_ns.to_be_bytes());
    p
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Backend(format!("{what}: {e}"))
}

/// What a latency subscriber needs: the clock origin of the send times, where the samples
/// go, and the send time (ns since the origin) from which deliveries count.
type Timing = (Instant, Arc<Mutex<Vec<f64>>>, Arc<AtomicU64>);

/// Subscribers (each to `filter` at `qos`), counting deliveries into `received`; with
/// `latencies`, the latency of each delivery sent after `since_ns` too.
async fn subscribers(
    plan: &Plan,
    who: &[Minted],
    filter: &str,
    qos: QoS,
    received: &Arc<AtomicU64>,
    latencies: Option<Timing>,
    tasks: &mut JoinSet<()>,
) -> Result<(), Error> {
    for s in who {
        let mut conn = Conn::open(plan.target, s, 60, None)
            .await
            .map_err(io("subscriber"))?;
        conn.subscribe(filter, qos).await.map_err(io("subscribe"))?;
        let received = received.clone();
        let latencies = latencies.clone();
        tasks.spawn(async move {
            while let Ok(event) = conn.next().await {
                if let Event::Publish { head, .. } = event {
                    received.fetch_add(1, Ordering::Relaxed);
                    if let Some((origin, samples, since)) = &latencies {
                        let sent = u64::from_be_bytes(head[8..16].try_into().unwrap_or_default());
                        let now = origin.elapsed().as_nanos() as u64;
                        if sent >= since.load(Ordering::Relaxed) {
                            let ms = now.saturating_sub(sent) as f64 / 1e6;
                            samples.lock().unwrap_or_else(|p| p.into_inner()).push(ms);
                        }
                    }
                }
            }
        });
    }
    Ok(())
}

/// Every publisher connected (and its telemetry topic) before any of them sends: traffic
/// from the first ones would slow the handshakes of the rest.
async fn connect_all(plan: &Plan, who: &[Minted]) -> Result<Vec<(Conn, String)>, Error> {
    let mut all = Vec::with_capacity(who.len());
    for p in who {
        let conn = Conn::open(plan.target, p, 60, None)
            .await
            .map_err(io("publisher"))?;
        all.push((conn, telemetry(&plan.tenant, &p.id)));
    }
    Ok(all)
}

/// Publishers sending QoS 0 as fast as they can until `stop`, counting into `sent`.
async fn flat_out_publishers(
    plan: &Plan,
    who: &[Minted],
    stop: &Arc<AtomicBool>,
    sent: &Arc<AtomicU64>,
    tasks: &mut JoinSet<()>,
) -> Result<(), Error> {
    for (mut conn, topic) in connect_all(plan, who).await? {
        let (stop, sent) = (stop.clone(), sent.clone());
        tasks.spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..16 {
                    seq += 1;
                    if conn
                        .publish(&topic, QoS::AtMostOnce, 0, &payload(seq, 0))
                        .is_err()
                    {
                        return;
                    }
                }
                if conn.flush().await.is_err() {
                    return;
                }
                sent.fetch_add(16, Ordering::Relaxed);
            }
        });
    }
    Ok(())
}

/// Warm-up, then the window: the rate of deliveries counted in `received` during it.
async fn window(plan: &Plan, received: &AtomicU64, progress: &Progress) -> Result<Rate, Error> {
    tokio::time::sleep(plan.warmup).await;
    let at_start = received.load(Ordering::Relaxed);
    let window = Window::start(plan.pid)?;
    let end = Instant::now() + plan.window;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        progress.say(format!(
            "{} delivered",
            received.load(Ordering::Relaxed) - at_start
        ));
    }
    window.finish(received.load(Ordering::Relaxed) - at_start)
}

/// QoS 0: `publishers` flat out, each to its own telemetry topic; `subscribers` subscribe to
/// every device's telemetry (50 → 1) or to the one publisher's topic (1 → 10, fan-out).
pub async fn qos0(
    plan: &Plan,
    publishers: &[Minted],
    subscribers_: &[Minted],
    progress: &Progress,
) -> Result<Flow, Error> {
    let filter = if publishers.len() == 1 {
        telemetry(&plan.tenant, &publishers[0].id)
    } else {
        telemetry(&plan.tenant, "+")
    };
    let (received, sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    progress.say("connecting");
    subscribers(
        plan,
        subscribers_,
        &filter,
        QoS::AtMostOnce,
        &received,
        None,
        &mut tasks,
    )
    .await?;
    flat_out_publishers(plan, publishers, &stop, &sent, &mut tasks).await?;
    let rate = window(plan, &received, progress).await;
    stop.store(true, Ordering::Relaxed);
    tasks.abort_all();
    let rate = rate?;
    Ok(Flow {
        received: rate.ops,
        rate,
        sent: sent.load(Ordering::Relaxed),
        acknowledged: 0,
        lost: 0,
    })
}

/// QoS 1 closed loop: each publisher keeps `in_flight` messages unacknowledged and sends the
/// next one when a PUBACK comes; the subscriber acknowledges every delivery. After the window
/// the publishers stop, and once they are drained (bounded: 10 s, then 10 s more for the
/// subscriber) every acknowledged message that did not reach the subscriber counts as lost;
/// `sent` − `acknowledged` were never acknowledged.
pub async fn qos1(
    plan: &Plan,
    publishers: &[Minted],
    subscriber: &Minted,
    in_flight: u16,
    progress: &Progress,
) -> Result<Flow, Error> {
    let received = Arc::new(AtomicU64::new(0));
    let (sent, acked) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let mut subs = JoinSet::new();
    progress.say("connecting");
    let filter = telemetry(&plan.tenant, "+");
    let one = std::slice::from_ref(subscriber);
    subscribers(
        plan,
        one,
        &filter,
        QoS::AtLeastOnce,
        &received,
        None,
        &mut subs,
    )
    .await?;
    let mut pubs = JoinSet::new();
    for (mut conn, topic) in connect_all(plan, publishers).await? {
        let (stop, sent, acked) = (stop.clone(), sent.clone(), acked.clone());
        pubs.spawn(async move {
            let mut seq = 0u64;
            let mut open = 0u16;
            for id in 1..=in_flight {
                seq += 1;
                let _ = conn.publish(&topic, QoS::AtLeastOnce, id, &payload(seq, 0));
                open += 1;
            }
            sent.fetch_add(u64::from(in_flight), Ordering::Relaxed);
            while open > 0 {
                let Ok(event) = conn.next().await else { return };
                if let Event::PubAck(id) = event {
                    acked.fetch_add(1, Ordering::Relaxed);
                    open -= 1;
                    if !stop.load(Ordering::Relaxed) {
                        seq += 1;
                        let _ = conn.publish(&topic, QoS::AtLeastOnce, id, &payload(seq, 0));
                        sent.fetch_add(1, Ordering::Relaxed);
                        open += 1;
                    }
                }
            }
        });
    }
    let rate = window(plan, &received, progress).await;
    stop.store(true, Ordering::Relaxed);
    progress.say("draining");
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        while pubs.join_next().await.is_some() {}
    })
    .await;
    let settle = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < acked.load(Ordering::Relaxed)
        && Instant::now() < settle
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pubs.abort_all();
    subs.abort_all();
    let rate = rate?;
    if drained.is_err() {
        progress.say("some publishers still had unacknowledged messages 10 s after the window");
    }
    let (acknowledged, total) = (
        acked.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    );
    Ok(Flow {
        rate,
        sent: sent.load(Ordering::Relaxed),
        acknowledged,
        received: total,
        lost: acknowledged.saturating_sub(total),
    })
}

/// Open loop at `per_second` messages per second in all (QoS 0, spread over the
/// publishers in 10 ms ticks) to one subscriber: the latency of each delivery in the window.
pub async fn latency(
    plan: &Plan,
    publishers: &[Minted],
    subscriber: &Minted,
    per_second: u64,
    progress: &Progress,
) -> Result<Latency, Error> {
    let origin = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::new()));
    // Only messages sent after the warm-up count; until then, nothing sent qualifies.
    let since = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();
    progress.say("connecting");
    let filter = telemetry(&plan.tenant, "+");
    let one = std::slice::from_ref(subscriber);
    let timing = Some((origin, samples.clone(), since.clone()));
    subscribers(
        plan,
        one,
        &filter,
        QoS::AtMostOnce,
        &received,
        timing,
        &mut tasks,
    )
    .await?;
    let per_tick = (per_second as f64 / publishers.len() as f64 / 100.0).max(1.0);
    for (mut conn, topic) in connect_all(plan, publishers).await? {
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let (mut seq, mut owed) = (0u64, 0.0f64);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                owed += per_tick;
                while owed >= 1.0 {
                    owed -= 1.0;
                    seq += 1;
                    let now = origin.elapsed().as_nanos() as u64;
                    let _ = conn.publish(&topic, QoS::AtMostOnce, 0, &payload(seq, now));
                }
                if conn.flush().await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::time::sleep(plan.warmup).await;
    since.store(origin.elapsed().as_nanos() as u64, Ordering::Relaxed);
    let at_start = received.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(plan.window).await;
    let delivered = received.load(Ordering::Relaxed) - at_start;
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    // Messages of the window still on their way get a moment to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tasks.abort_all();
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    if samples.is_empty() {
        return Err(Error::Backend("latency: nothing was delivered".into()));
    }
    Ok(Latency {
        offered_per_second: per_tick * 100.0 * publishers.len() as f64,
        delivered_per_second: delivered as f64 / seconds,
        p50_ms: percentile(&samples, 50.0),
        p99_ms: percentile(&samples, 99.0),
        samples: samples.len(),
    })
}
