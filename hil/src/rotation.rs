//! A rig for certificate rotation end to end: a station serving its API (the renewal
//! service), a gateway with `[renewal]` pointing at it, and one device whose certificate is
//! close enough to its end that the gateway tells it to renew.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_firmware::bundle::Bundle;
use fleet_gateway::config::{Admin, TlsFiles};
use fleet_gateway::renewal::Renewal;
use fleet_gateway::{Config, Gateway};
use fleet_provision::serve::{Options, Server};
use fleet_provision::{BatchRequest, KeyProtection, Station};
use tokio::sync::oneshot;

/// The running pieces.
pub struct RotationRig {
    pub dir: tempfile::TempDir,
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    pub station_api: SocketAddr,
    pub device_id: String,
    /// The device's bundle, pointing at the gateway's port.
    pub bundle: PathBuf,
    stops: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RotationRig {
    /// `device_host`: the gateway's name as the device knows it (`localhost` on the host,
    /// `10.0.2.2` from QEMU). The device's certificate is valid `validity_days`; the gateway
    /// asks for renewal below `threshold_days`; renewed certificates are valid 365 days.
    pub async fn start(
        device_host: &str,
        validity_days: u32,
        threshold_days: u32,
    ) -> anyhow::Result<RotationRig> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().to_owned();
        let mut station = Station::init(&d, "Rotation", KeyProtection::InsecurePlaintext)?;
        station.issue_server_cert(&[device_host, "127.0.0.1", "localhost"])?;
        let client = station.issue_gateway_client_cert("gateway")?;
        let issued = station.issue_devices(&BatchRequest {
            tenant: "acme".into(),
            count: 1,
            gateway_host: device_host.into(),
            gateway_port: 1,
            validity_days,
        })?;
        let device = issued
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no device issued"))?;
        let crl = station.crl_path();
        let mut stops = Vec::new();
        let mut tasks = Vec::new();

        let server = Server::bind(
            station,
            Options {
                listen: "127.0.0.1:0".parse()?,
                hosts: vec!["localhost".into()],
                grace: time::Duration::hours(1),
                validity_days: 365,
            },
        )
        .await?;
        let station_api = server.local_addr();
        let (tx, rx) = oneshot::channel::<()>();
        stops.push(tx);
        tasks.push(tokio::spawn(async move {
            let _ = server
                .run(async {
                    let _ = rx.await;
                })
                .await;
        }));

        let mut config = Config::new(
            "127.0.0.1:0".parse()?,
            TlsFiles {
                server_cert: d.join("gateway/server.pem"),
                server_key: d.join("gateway/server.key"),
                client_ca: vec![d.join("gateway/clients-ca.pem")],
                crl: vec![crl],
            },
        );
        config.admin = Some(Admin {
            listen: "127.0.0.1:0".parse()?,
            token: None,
        });
        config.audit_log = Some(d.join("gateway-audit.jsonl"));
        config.renewal = Some(Renewal {
            station: station_api.to_string(),
            server_name: "localhost".into(),
            client_cert: client.cert_path,
            client_key: client.key_path,
            station_ca: d.join("ca/root.pem"),
            threshold: Duration::from_secs(86_400 * u64::from(threshold_days)),
        });
        let gw = Gateway::bind(config).await?;
        let gateway = gw.local_addr();
        let admin = gw
            .admin_addr()
            .ok_or_else(|| anyhow::anyhow!("admin API did not start"))?;
        let (tx, rx) = oneshot::channel::<()>();
        stops.push(tx);
        tasks.push(tokio::spawn(async move {
            let _ = gw
                .run(async {
                    let _ = rx.await;
                })
                .await;
        }));
        let bundle = with_port(&device.bundle_path, gateway.port())?;
        Ok(RotationRig {
            dir,
            gateway,
            admin,
            station_api,
            device_id: device.device_id,
            bundle,
            stops,
            tasks,
        })
    }

    /// The device's certificates in the registry (read-only, while the API runs):
    /// (serial, status) oldest first.
    pub fn certificates(&self) -> anyhow::Result<Vec<(String, String)>> {
        Ok(
            fleet_provision::list_registry(self.dir.path(), Some(&self.device_id))?
                .into_iter()
                .map(|c| (c.serial_hex, c.status.name().to_owned()))
                .collect(),
        )
    }

    /// The gateway's audit lines.
    pub fn gateway_log(&self, n: usize) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path().join("gateway-audit.jsonl"))
            .unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// Stops the gateway and the station API.
    pub async fn stop(mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// A copy of a bundle pointing at another gateway port (written next to it).
pub fn with_port(bundle: &Path, port: u16) -> anyhow::Result<PathBuf> {
    let bytes = std::fs::read(bundle)?;
    let b = Bundle::parse(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let moved = Bundle {
        gateway_port: port,
        ..b
    };
    let mut out = vec![0u8; moved.encoded_len()];
    moved.emit(&mut out).map_err(|e| anyhow::anyhow!("{e}"))?;
    let path = bundle.with_extension("port.bin");
    std::fs::write(&path, out)?;
    Ok(path)
}
