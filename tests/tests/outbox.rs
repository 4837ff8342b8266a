//! QoS 1 telemetry survives a dropped connection: what the gateway has not acknowledged, and
//! what the device queued while offline, arrives after the reconnect; beyond the outbox's
//! capacity the oldest messages are dropped and counted. The device is the firmware core.

use std::time::Duration;

use fleet_firmware::device::{App, Buffers, Device, Options, Outcome, Stats, MAX_PAYLOAD};
use fleet_firmware::outbox::Outbox;
use fleet_firmware::sim;
use fleet_gateway::registry::Kick;
use fleet_protocol::bundle::Bundle;
use fleet_protocol::mqtt::QoS;
use fleet_tests::{Pki, RunningGateway, TENANT};

struct Quiet;

impl App for Quiet {
    fn telemetry(&mut self, _seq: u32, _out: &mut [u8]) -> usize {
        0
    }
    fn on_command(&mut self, _topic: &str, _payload: &[u8], _reply: &mut [u8]) -> Option<usize> {
        None
    }
}

type Box8 = Box<Outbox<8, MAX_PAYLOAD>>;

/// Runs one connection of the device on this thread until the gateway ends it.
fn connect(
    bundle: Vec<u8>,
    to: std::net::SocketAddr,
    mut outbox: Box8,
) -> tokio::task::JoinHandle<(Result<Outcome, fleet_firmware::Error>, Box8)> {
    tokio::task::spawn_local(async move {
        let b = Bundle::parse(&bundle).unwrap();
        let mut buffers = Box::new(Buffers::new());
        let mut stats = Stats::default();
        let device = Device {
            bundle: &b,
            options: Options {
                telemetry_period_ms: 0,
                telemetry_qos: QoS::AtLeastOnce,
                rotation: false,
                ..Options::default()
            },
            app: &mut Quiet,
            outbox: &mut outbox,
            buffers: &mut buffers,
            stats: &mut stats,
        };
        let ended = sim::connect_once(Some(to), device).await;
        (ended, outbox)
    })
}

async fn wait_for(backend: &fleet_hil::backend::Backend, device: &str, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got: Vec<String> = backend
            .observed()
            .payloads
            .get(device)
            .map(|p| {
                p.iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if got.len() >= n || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn qos1_messages_survive_a_dropped_connection_and_the_oldest_are_dropped_beyond_capacity() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut pki = Pki::new();
            let gw = RunningGateway::start(pki.gateway_config()).await;
            let backend = pki.backend(gw.addr).await;
            let device = pki.devices(TENANT, 1).remove(0);
            let id = device.device_id.clone();

            let mut outbox: Box8 = Box::new(Outbox::new());
            for i in 0..3 {
                outbox.push(format!("m{i}").as_bytes()).unwrap();
            }
            let first = connect(device.bytes.clone(), gw.addr, outbox);
            assert_eq!(wait_for(&backend, &id, 3).await, ["m0", "m1", "m2"]);
            // Let the PUBACKs reach the device, then drop the connection from the gateway.
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                gw.sessions.kick_where(Kick::Admin, |s| s.identity.id == id),
                1
            );
            let (_, mut outbox) = first.await.unwrap();
            assert!(outbox.is_empty(), "acknowledged messages are forgotten");

            // Offline: ten readings into an outbox of eight.
            for i in 3..13 {
                outbox.push(format!("m{i}").as_bytes()).unwrap();
            }
            assert_eq!((outbox.len(), outbox.dropped()), (8, 2));

            let second = connect(device.bytes.clone(), gw.addr, outbox);
            let got = wait_for(&backend, &id, 11).await;
            let expected: Vec<String> = ["m0", "m1", "m2"]
                .into_iter()
                .map(str::to_owned)
                .chain((5..13).map(|i| format!("m{i}")))
                .collect();
            assert_eq!(
                got, expected,
                "no loss up to capacity, the oldest two dropped"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            gw.sessions.kick_where(Kick::Admin, |s| s.identity.id == id);
            let (_, outbox) = second.await.unwrap();
            assert!(outbox.is_empty());
            assert_eq!(outbox.dropped(), 2);
            backend.close().await;
            gw.stop().await;
        })
        .await;
}
