//! `kill -9` of the gateway under load, then a restart on the same port.
//!
//! The guarantee we give, and test here exactly: the broker core keeps messages in memory, so a
//! crash loses what it held (as Mosquitto without persistence does). What survives a crash:
//! - devices reconnect by themselves (capped exponential backoff, full jitter) and every QoS 1
//!   message a device had not seen acknowledged is sent again until it is: nothing is lost
//!   from the device's side;
//! - every QoS 1 message a device sent, and saw acknowledged, after the backend's subscription
//!   was in place is delivered to that backend;
//! - no session ever receives another device's messages, before, during or after the crash.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{device_connect, GatewayProcess, TestPki, Tls};
use fleet_protocol::mqtt::{Packet, Publish, QoS, Subscribe, SubscribeFilters};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEVICES: usize = 20;
const MESSAGES: u16 = 60;
const DEADLINE: Duration = Duration::from_secs(60);

fn encode(p: &Packet<'_>) -> Vec<u8> {
    let mut out = vec![0u8; p.encoded_len()];
    p.emit(&mut out).unwrap();
    out
}

/// A connection's read side with its buffer: whole packets as bytes, or `None` when the
/// connection ends or stays silent for `wait`.
async fn next(tls: &mut Tls, buf: &mut Vec<u8>, wait: Duration) -> Option<Vec<u8>> {
    loop {
        match Packet::parse(buf, 1 << 20) {
            Ok(Some((_, n))) => return Some(buf.drain(..n).collect()),
            Ok(None) => {}
            Err(_) => return None,
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(wait, tls.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

fn subscribe(filter: &str) -> Vec<u8> {
    encode(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: SubscribeFilters::from_slice(&[(filter, QoS::AtLeastOnce)]),
    }))
}

/// Backoff with full jitter: 50 ms · 2^attempt, capped at 2 s.
async fn backoff(attempt: u32, rng: &mut u64) {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let ceiling = (50u64 << attempt.min(6)).min(2_000);
    tokio::time::sleep(Duration::from_millis(*rng % ceiling + 1)).await;
}

/// Connects and subscribes (clean session), retrying until it works or the test deadline.
async fn session(
    gw: std::net::SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    filter: &str,
    rng: &mut u64,
    started: Instant,
) -> (Tls, Vec<u8>, Instant) {
    let mut attempt = 0;
    loop {
        if let Ok((_, mut tls)) = device_connect(gw, config.clone(), None).await {
            let mut buf = Vec::new();
            if tls.write_all(&subscribe(filter)).await.is_ok() {
                while let Some(p) = next(&mut tls, &mut buf, Duration::from_secs(2)).await {
                    if p[0] == 0x90 {
                        return (tls, buf, Instant::now());
                    }
                }
            }
        }
        assert!(
            started.elapsed() < DEADLINE,
            "could not reconnect to the gateway"
        );
        attempt += 1;
        backoff(attempt, rng).await;
    }
}

#[derive(Default)]
struct Backend {
    /// When the newest subscription was acknowledged.
    subscribed_at: Option<Instant>,
    /// (device, sequence) received.
    got: BTreeSet<(String, u16)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_under_load_loses_no_unacknowledged_message_and_leaks_nothing() {
    let pki = TestPki::new();
    let devices: Vec<(String, Arc<rustls::ClientConfig>)> = (0..DEVICES)
        .map(|i| {
            let id = format!("acme-{i:06}");
            let config = pki.device(&id);
            (id, config)
        })
        .collect();
    let service = pki.service("backend");
    // Its own identity, so checking that the gateway is up never takes over a device.
    let probe = pki.device("acme-probe");
    let mut gw = GatewayProcess::start(&pki, "", probe.clone()).await;
    let addr = gw.addr;
    let started = Instant::now();

    // The backend: subscribed to all telemetry, acknowledging; sends each device a command
    // naming it every 100 ms.
    let ids: Vec<String> = devices.iter().map(|(id, _)| id.clone()).collect();
    let (backend, backend_task) = spawn_backend(addr, service, ids, started);

    // The devices: MESSAGES QoS 1 messages each, resent until acknowledged (see run_device).
    let mut fleet = tokio::task::JoinSet::new();
    for (n, (id, config)) in devices.iter().cloned().enumerate() {
        fleet.spawn(run_device(addr, n, id, config, started));
    }

    // The crash, mid-load, and the restart.
    tokio::time::sleep(Duration::from_millis(600)).await;
    gw.kill();
    let killed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.restart(probe).await;

    let mut results = Vec::new();
    while let Some(r) = fleet.join_next().await {
        results.push(r.unwrap());
    }
    let all_acked_in = started.elapsed();
    // Let the last deliveries arrive, then stop the backend.
    tokio::time::sleep(Duration::from_millis(500)).await;
    backend_task.abort();
    let backend = backend.lock().unwrap();
    let subscribed_at = backend.subscribed_at.expect("backend subscribed");
    assert!(
        subscribed_at > killed_at,
        "the backend resubscribed after the restart"
    );

    let Delivery {
        required,
        lost_before,
        reconnected,
    } = check_deliveries(&results, &backend, subscribed_at);
    eprintln!(
        "restart: {DEVICES} devices × {MESSAGES} messages all acknowledged in {all_acked_in:?}; \
         {reconnected} devices reconnected after the kill; {required} messages sent after the \
         backend resubscribed, all delivered; {lost_before} acknowledged before that and not \
         delivered (in the broker when it was killed, or published while no subscriber was back)"
    );
    common::record_figures(
        "restart",
        &format!(
            "{{\"devices\":{DEVICES},\"messages\":{MESSAGES},\"all_acked_ms\":{},\"reconnected\":{reconnected},\"required\":{required},\"lost_before\":{lost_before}}}",
            all_acked_in.as_millis()
        ),
    );
    assert!(reconnected > 0, "the kill landed after the load ended");
}

/// A backend subscribed to every device's telemetry, acknowledging it and recording what it
/// got, that sends each device a command naming it every 100 ms; reconnects until the
/// deadline.
fn spawn_backend(
    addr: std::net::SocketAddr,
    service: Arc<rustls::ClientConfig>,
    ids: Vec<String>,
    started: Instant,
) -> (Arc<Mutex<Backend>>, tokio::task::JoinHandle<()>) {
    let backend = Arc::new(Mutex::new(Backend::default()));
    let b = backend.clone();
    let task = tokio::spawn(async move {
        let mut rng = 7u64;
        let filter = "tenants/acme/devices/+/telemetry";
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        'connection: loop {
            if started.elapsed() > DEADLINE {
                return;
            }
            let (mut tls, mut buf, at) = session(addr, &service, filter, &mut rng, started).await;
            b.lock().unwrap().subscribed_at = Some(at);
            loop {
                tokio::select! {
                    p = next(&mut tls, &mut buf, Duration::from_secs(30)) => {
                        let Some(p) = p else { continue 'connection };
                        if let Ok(Some((Packet::Publish(m), _))) = Packet::parse(&p, 1 << 20) {
                            let device = m.topic.split('/').nth(3).unwrap_or("").to_owned();
                            let seq = u16::from_be_bytes([m.payload[0], m.payload[1]]);
                            b.lock().unwrap().got.insert((device, seq));
                            if let Some(id) = m.packet_id {
                                if tls.write_all(&encode(&Packet::PubAck(id))).await.is_err() {
                                    continue 'connection;
                                }
                            }
                        }
                    }
                    _ = tick.tick() => {
                        for id in &ids {
                            let topic = format!("tenants/acme/devices/{id}/cmd/hello");
                            let cmd = encode(&Packet::Publish(Publish {
                                dup: false, qos: QoS::AtMostOnce, retain: false,
                                topic: &topic, packet_id: None, payload: id.as_bytes(),
                            }));
                            if tls.write_all(&cmd).await.is_err() {
                                continue 'connection;
                            }
                        }
                    }
                }
            }
        }
    });
    (backend, task)
}

/// What one device saw: its id, when the send that was acknowledged started (per sequence
/// number), how many commands named another device, how often it reconnected.
type DeviceResult = (String, HashMap<u16, Instant>, usize, usize);

/// One device: MESSAGES QoS 1 messages, one every 20 ms, each sent again (DUP) after a
/// reconnect until acknowledged.
async fn run_device(
    addr: std::net::SocketAddr,
    n: usize,
    id: String,
    config: Arc<rustls::ClientConfig>,
    started: Instant,
) -> DeviceResult {
    let mut rng = n as u64 * 0x9E37_79B9 + 1;
    let filter = format!("tenants/acme/devices/{id}/cmd/#");
    let topic = format!("tenants/acme/devices/{id}/telemetry");
    let mut acked_send: HashMap<u16, Instant> = HashMap::new();
    let mut foreign = 0usize;
    let mut reconnects = 0usize;
    let (mut tls, mut buf, _) = session(addr, &config, &filter, &mut rng, started).await;
    let mut seq = 1u16;
    let mut dup = false;
    while seq <= MESSAGES {
        let sent_at = Instant::now();
        let publish = encode(&Packet::Publish(Publish {
            dup,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: &topic,
            packet_id: Some(seq),
            payload: &seq.to_be_bytes(),
        }));
        let mut acked = tls.write_all(&publish).await.is_ok();
        if acked {
            acked = false;
            while let Some(p) = next(&mut tls, &mut buf, Duration::from_secs(2)).await {
                match Packet::parse(&p, 1 << 20) {
                    Ok(Some((Packet::PubAck(id), _))) if id == seq => {
                        acked = true;
                        break;
                    }
                    Ok(Some((Packet::Publish(cmd), _))) => {
                        foreign += usize::from(
                            cmd.payload != id.as_bytes()
                                || !cmd.topic.starts_with(&filter[..filter.len() - 1]),
                        );
                    }
                    _ => {}
                }
            }
        }
        if acked {
            acked_send.insert(seq, sent_at);
            seq += 1;
            dup = false;
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            reconnects += 1;
            (tls, buf, _) = session(addr, &config, &filter, &mut rng, started).await;
            dup = true;
        }
    }
    (id, acked_send, foreign, reconnects)
}

/// The figures of [`check_deliveries`].
struct Delivery {
    /// Messages acknowledged after the backend's subscription: each must have arrived.
    required: usize,
    /// Messages acknowledged before it that did not arrive.
    lost_before: usize,
    /// Devices that reconnected at least once.
    reconnected: usize,
}

/// Asserts no device got another's commands, every message was acknowledged, and every
/// message acknowledged after `subscribed_at` reached the backend.
fn check_deliveries(
    results: &[DeviceResult],
    backend: &Backend,
    subscribed_at: Instant,
) -> Delivery {
    let mut d = Delivery {
        required: 0,
        lost_before: 0,
        reconnected: 0,
    };
    for (id, acked, foreign, reconnects) in results {
        assert_eq!(
            *foreign, 0,
            "{id} received commands meant for another device"
        );
        assert_eq!(
            acked.len(),
            usize::from(MESSAGES),
            "{id}: every message acknowledged"
        );
        d.reconnected += usize::from(*reconnects > 0);
        for (seq, sent_at) in acked {
            let delivered = backend.got.contains(&(id.clone(), *seq));
            if *sent_at > subscribed_at {
                d.required += 1;
                assert!(
                    delivered,
                    "{id} #{seq}: acknowledged after the backend subscribed, never delivered"
                );
            } else if !delivered {
                d.lost_before += 1;
            }
        }
    }
    d
}
