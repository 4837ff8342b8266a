//! A fleet of simulated devices: the firmware core on the host, one task per device.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fleet_firmware::backoff::Backoff;
use fleet_firmware::bundle::Bundle;
use fleet_firmware::device::{App, Options, Stats};
use fleet_firmware::sim;
use tokio::sync::watch;
use tokio::task::JoinSet;

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
pub struct Fleet {
    pub devices: Vec<Arc<DeviceState>>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Fleet {
    /// Starts one task per bundle. `to` overrides the bundles' gateway address (the TLS server
    /// name stays the bundle's host).
    pub fn start(bundles: &[DeviceBundle], to: Option<SocketAddr>, options: Options) -> Fleet {
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut devices = Vec::with_capacity(bundles.len());
        for b in bundles {
            let state = Arc::new(DeviceState {
                device_id: b.device_id.clone(),
                ..DeviceState::default()
            });
            devices.push(state.clone());
            let bytes = b.bytes.clone();
            let stop_rx = stop_rx.clone();
            tasks.spawn(async move {
                let Ok(bundle) = Bundle::parse(&bytes) else {
                    return;
                };
                let mut app = SimApp {
                    state: state.clone(),
                };
                let mut stats = Stats::default();
                sim::run(
                    &bundle,
                    to,
                    &mut app,
                    &options,
                    Backoff::default(),
                    &mut stats,
                    stop_rx,
                    |e| {
                        state.connected.store(false, Ordering::Relaxed);
                        *state.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(e.to_string());
                    },
                )
                .await;
                state.connected.store(false, Ordering::Relaxed);
            });
        }
        Fleet {
            devices,
            stop,
            tasks,
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

    /// Stops every device and waits for their tasks.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}
