//! Certificate rotation without a device clock, end to end: the gateway tells the device its
//! certificate nears its end, the device makes a new key and a CSR, the gateway relays it to
//! the station's renewal API, the device stores the new identity in its other slot,
//! reconnects with it and confirms it. The simulated device runs the firmware core.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_firmware::device::{App, Options, RotationEvent, Stats};
use fleet_firmware::sim::{self, SimConfig};
use fleet_hil::rotation::RotationRig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<String>>>,
}

impl App for Recorder {
    fn telemetry(&mut self, seq: u32, out: &mut [u8]) -> usize {
        let text = format!("{{\"seq\":{seq}}}");
        out[..text.len()].copy_from_slice(text.as_bytes());
        text.len()
    }

    fn on_command(&mut self, _topic: &str, _payload: &[u8], _reply: &mut [u8]) -> Option<usize> {
        None
    }

    fn on_rotation(&mut self, event: RotationEvent<'_>) {
        self.events.lock().unwrap().push(format!("{event:?}"));
    }
}

async fn sessions(admin: std::net::SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

/// A rig and a simulated device running on its own thread (the firmware core's futures are
/// not `Send`), recording its rotation events.
struct Running {
    rig: RotationRig,
    events: Arc<Mutex<Vec<String>>>,
    stop: tokio::sync::watch::Sender<bool>,
    device: std::thread::JoinHandle<Stats>,
}

async fn start(renewer: fleet_hil::rotation::Renewer, config: SimConfig) -> Running {
    let rig = RotationRig::start("127.0.0.1:0".parse().unwrap(), "localhost", 10, 30, renewer)
        .await
        .expect("rig");
    let bytes = std::fs::read(&rig.bundle).unwrap();
    let recorder = Recorder::default();
    let events = recorder.events.clone();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let config = SimConfig {
        to: Some(rig.gateway),
        ..config
    };
    let device = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut app = recorder;
        let mut stats = Stats::default();
        rt.block_on(sim::run(
            &bytes,
            &config,
            &mut app,
            &mut stats,
            stop_rx,
            |_| {},
        ));
        stats
    });
    Running {
        rig,
        events,
        stop,
        device,
    }
}

impl Running {
    async fn finish(self) -> Stats {
        self.stop.send(true).unwrap();
        let device = self.device;
        let stats = tokio::task::spawn_blocking(move || device.join().unwrap())
            .await
            .unwrap();
        self.rig.stop().await;
        stats
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_renews_through_the_gateway_and_reconnects_with_the_new_certificate() {
    let run = start(
        fleet_hil::rotation::Renewer::Station,
        SimConfig {
            options: Options {
                telemetry_period_ms: 200,
                ..Options::default()
            },
            ..SimConfig::default()
        },
    )
    .await;
    let (rig, events) = (&run.rig, run.events.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e == "Status { renew: false }")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no confirmed renewal; events {:?}, gateway {:?}",
            events.lock().unwrap(),
            rig.gateway_log(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = events.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "Status { renew: true }",
            "Requested",
            "Renewed { generation: 2 }",
            "Stored { slot: 1 }",
            "Confirmed { slot: 1 }",
            "Status { renew: false }",
        ],
        "the whole rotation, once"
    );
    // The station superseded the old certificate; the gateway sees the new one.
    let certs = rig.certificates().unwrap();
    let statuses: Vec<&str> = certs.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(statuses, ["superseded", "active"]);
    let live = sessions(rig.admin).await;
    assert!(
        live.contains(&certs[1].0),
        "session with the new serial: {live}"
    );
    assert!(!live.contains(&certs[0].0));

    let stats = run.finish().await;
    assert_eq!(stats.connects, 2, "one connection per identity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_identity_the_gateway_refuses_is_rolled_back() {
    let run = start(
        fleet_hil::rotation::Renewer::ForeignCa,
        SimConfig {
            backoff: fleet_firmware::backoff::Backoff {
                base_ms: 20,
                cap_ms: 100,
            },
            ..SimConfig::default()
        },
    )
    .await;
    let (rig, events) = (&run.rig, run.events.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let rolled_back_and_back = || {
        let e = events.lock().unwrap();
        let at = e.iter().position(|x| x.starts_with("RolledBack"));
        at.is_some_and(|i| e[i + 1..].iter().any(|x| x == "Status { renew: true }"))
    };
    while !rolled_back_and_back() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rollback; events {:?}",
            events.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = events.lock().unwrap().clone();
    assert_eq!(
        seen[..6],
        [
            "Status { renew: true }",
            "Requested",
            "Renewed { generation: 2 }",
            "Stored { slot: 1 }",
            "RolledBack { from: 1, to: 0 }",
            "Status { renew: true }",
        ],
        "{seen:?}"
    );
    // The gateway refused the foreign certificate at the handshake each time (three times
    // before the rollback; the device may have started its next attempt since).
    let refusals = rig
        .gateway_log(100)
        .iter()
        .filter(|l| l.contains("unknown_ca"))
        .count();
    assert!(refusals >= 3, "{:?}", rig.gateway_log(20));
    run.finish().await;
}
