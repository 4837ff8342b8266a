//! A fleet of simulated devices: the firmware core on the host, one task per device.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fleet_firmware::backoff::Backoff;
use fleet_firmware::device::{App, Options, Stats};
use fleet_firmware::sim::{self, SimConfig};
use fleet_protocol::bundle::Bundle;
use tokio::sync::watch;
use tokio::task::LocalSet;

use crate::Error;

/// A device's identity bundle, loaded and checked.
#[derive(Debug, Clone)]
pub struct DeviceBundle {
    pub path: PathBuf,
    pub device_id: String,
    pub tenant: String,
    pub bytes: Vec<u8>,
}

impl DeviceBundle {
    pub fn load(path: &Path) -> Result<DeviceBundle, Error> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let b = Bundle::parse(&bytes).map_err(|e| Error::Bundle {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        Ok(DeviceBundle {
            path: path.to_owned(),
            device_id: b.device_id.to_owned(),
            tenant: b.tenant.to_owned(),
            bytes,
        })
    }
}

/// Live counters of one device.
#[derive(Debug, Default)]
pub struct DeviceState {
    pub device_id: String,
    pub connected: AtomicBool,
    pub connects: AtomicU64,
    pub published: AtomicU64,
    pub commands: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// The telemetry payload a simulated device sends: deterministic, so a test can check that
/// the backend got exactly what was sent.
pub fn telemetry_payload(device_id: &str, seq: u32) -> String {
    format!("{{\"device\":\"{device_id}\",\"seq\":{seq}}}")
}

struct SimApp {
    state: Arc<DeviceState>,
}

impl App for SimApp {
    fn telemetry(&mut self, seq: u32, out: &mut [u8]) -> usize {
        let payload = telemetry_payload(&self.state.device_id, seq);
        let n = payload.len().min(out.len());
        out[..n].copy_from_slice(&payload.as_bytes()[..n]);
        self.state.published.fetch_add(1, Ordering::Relaxed);
        n
    }

    fn on_command(&mut self, _topic: &str, payload: &[u8], reply: &mut [u8]) -> Option<usize> {
        self.state.commands.fetch_add(1, Ordering::Relaxed);
        let n = payload.len().min(reply.len());
        reply[..n].copy_from_slice(&payload[..n]);
        Some(n)
    }

    fn on_connected(&mut self) {
        self.state.connected.store(true, Ordering::Relaxed);
        self.state.connects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Totals across the fleet at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub devices: usize,
    pub connected: usize,
    pub published: u64,
    pub commands: u64,
}

/// Running simulated devices.
///
/// The device loop is `!Send` (it is single-core firmware), so devices run on `LocalSet`s in
/// a few worker threads, each with its own current-thread runtime.
pub struct Fleet {
    pub devices: Vec<Arc<DeviceState>>,
    stop: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// Worker threads for a fleet (the machines this runs on have two cores).
const WORKERS: usize = 2;

impl Fleet {
    /// Starts every device. `to` overrides the bundles' gateway address (the TLS server name
    /// stays the bundle's host).
    pub fn start(bundles: &[DeviceBundle], to: Option<SocketAddr>, options: Options) -> Fleet {
        let (stop, stop_rx) = watch::channel(false);
        let devices: Vec<Arc<DeviceState>> = bundles
            .iter()
            .map(|b| {
                Arc::new(DeviceState {
                    device_id: b.device_id.clone(),
                    ..DeviceState::default()
                })
            })
            .collect();
        let mut shares: Vec<Vec<(Vec<u8>, Arc<DeviceState>)>> = vec![Vec::new(); WORKERS];
        for (i, (b, state)) in bundles.iter().zip(&devices).enumerate() {
            shares[i % WORKERS].push((b.bytes.clone(), state.clone()));
        }
        let workers = shares
            .into_iter()
            .filter(|share| !share.is_empty())
            .map(|share| {
                let stop_rx = stop_rx.clone();
                std::thread::spawn(move || run_worker(share, to, options, stop_rx))
            })
            .collect();
        Fleet {
            devices,
            stop,
            workers,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        self.devices.iter().fold(
            Snapshot {
                devices: self.devices.len(),
                ..Snapshot::default()
            },
            |mut s, d| {
                s.connected += usize::from(d.connected.load(Ordering::Relaxed));
                s.published += d.published.load(Ordering::Relaxed);
                s.commands += d.commands.load(Ordering::Relaxed);
                s
            },
        )
    }

    /// Stops every device and waits for the workers.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
    }
}

fn run_worker(
    share: Vec<(Vec<u8>, Arc<DeviceState>)>,
    to: Option<SocketAddr>,
    options: Options,
    stop: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            for (_, state) in &share {
                *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("cannot start a runtime: {e}"));
            }
            return;
        }
    };
    let local = LocalSet::new();
    for (bytes, state) in share {
        local.spawn_local(run_device(bytes, state, to, options, stop.clone()));
    }
    runtime.block_on(local);
}

async fn run_device(
    bytes: Vec<u8>,
    state: Arc<DeviceState>,
    to: Option<SocketAddr>,
    options: Options,
    stop: watch::Receiver<bool>,
) {
    if Bundle::parse(&bytes).is_err() {
        return;
    }
    let mut app = SimApp {
        state: state.clone(),
    };
    let mut stats = Stats::default();
    let config = SimConfig {
        to,
        options,
        backoff: Backoff::default(),
    };
    sim::run(&bytes, &config, &mut app, &mut stats, stop, |ended| {
        state.connected.store(false, Ordering::Relaxed);
        let why = match ended {
            Ok(done) => done.to_string(),
            Err(e) => e.to_string(),
        };
        *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    })
    .await;
    state.connected.store(false, Ordering::Relaxed);
}
