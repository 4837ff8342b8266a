//! The station, gateway (with its admin API) and backend a scenario runs against.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_gateway::config::{Admin, TlsFiles};
use fleet_gateway::{Config, Gateway};
use fleet_protocol::bundle::Bundle;
use fleet_provision::{BatchRequest, KeyProtection, Reason, Station};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::backend::{Backend, ServiceIdentity};
use crate::rotation::{parse_bundle, write_bundle};

const TENANT: &str = "acme";
const SERVICE: &str = "hil-backend";

/// A station, a gateway (with its admin API) and a backend, on 127.0.0.1.
pub(super) struct Rig {
    device_host: String,
    pub(super) dir: tempfile::TempDir,
    station: Station,
    gateway: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    pub(super) backend: Backend,
}

impl Rig {
    pub(super) async fn start(listen: SocketAddr, device_host: &str) -> anyhow::Result<Rig> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let station = Station::init(d, "HIL", KeyProtection::InsecurePlaintext)?;
        // The device connects to `device_host`; the backend to 127.0.0.1.
        station.issue_server_cert(&[device_host, "127.0.0.1", "localhost"])?;
        station.issue_service_cert(SERVICE, TENANT)?;
        let mut config = Config::new(
            listen,
            TlsFiles {
                server_cert: d.join("gateway/server.pem"),
                server_key: d.join("gateway/server.key"),
                client_ca: vec![d.join("gateway/clients-ca.pem")],
                crl_issuers: Vec::new(),
                crl: vec![station.crl_path()],
            },
        );
        config.admin = Some(Admin {
            listen: "127.0.0.1:0".parse()?,
            token: None,
        });
        config.audit_log = Some(d.join("gateway-audit.jsonl"));
        let gw = Gateway::bind(config).await?;
        let gateway = gw.local_addr();
        let admin = gw
            .admin_addr()
            .ok_or_else(|| anyhow::anyhow!("admin API did not start"))?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = gw
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let (cert, key, ca) = (
            d.join(format!("services/{SERVICE}.pem")),
            d.join(format!("services/{SERVICE}.key")),
            d.join("ca/root.pem"),
        );
        let backend = Backend::connect(
            "localhost",
            gateway.port(),
            SERVICE,
            TENANT,
            &ServiceIdentity {
                cert_pem: &cert,
                key_pem: &key,
                server_ca_pem: &ca,
            },
        )
        .await?;
        Ok(Rig {
            device_host: device_host.to_owned(),
            dir,
            station,
            gateway,
            admin,
            stop: Some(stop),
            task,
            backend,
        })
    }

    /// One device whose bundle points at the gateway as the guest sees it.
    pub(super) fn device(&mut self) -> anyhow::Result<(String, PathBuf)> {
        let issued = self.station.issue_devices(&BatchRequest {
            tenant: TENANT.into(),
            count: 1,
            gateway_host: self.device_host.clone(),
            gateway_port: self.gateway.port(),
            validity_days: 30,
        })?;
        let d = issued
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no device issued"))?;
        Ok((d.device_id, d.bundle_path))
    }

    pub(super) fn gateway_log(&self, n: usize) -> Vec<String> {
        crate::rotation::tail(&self.dir.path().join("gateway-audit.jsonl"), n)
    }

    /// `GET /v1/sessions` on the admin API: whether `device` has a live session.
    /// Ends the device's session through the gateway's admin API.
    pub(super) async fn kick(&self, device: &str) -> anyhow::Result<()> {
        let mut s = tokio::net::TcpStream::connect(self.admin).await?;
        let request = format!(
            "POST /v1/sessions/{device}/kick HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).await?;
        anyhow::ensure!(
            reply.starts_with("HTTP/1.1 2"),
            "kick {device}: {}",
            reply.lines().next().unwrap_or("no reply")
        );
        Ok(())
    }

    pub(super) async fn admin_has_session(&self, device: &str) -> anyhow::Result<bool> {
        let mut s = tokio::net::TcpStream::connect(self.admin).await?;
        s.write_all(b"GET /v1/sessions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok(body.contains(&format!("\"{device}\"")))
    }

    pub(super) async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        self.backend.close().await;
    }
}

impl Rig {
    /// Revokes the way an operator does: registry + a new CRL, which the gateway watches.
    pub(super) fn station_revoke(&mut self, device: &str) -> Result<(), String> {
        self.station
            .revoke(device, Reason::KeyCompromise)
            .map(|_| ())
            .map_err(|e| format!("revoke: {e}"))
    }
}

/// The device's bundle with its trust anchor replaced by another CA's root.
pub(super) fn foreign_anchor_bundle(bundle: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let other = dir.join("foreign-ca");
    let foreign = Station::init(&other, "Someone Else", KeyProtection::InsecurePlaintext)?;
    let bytes = std::fs::read(bundle)?;
    let path = dir.join("wrong-anchor.bin");
    write_bundle(
        &Bundle {
            trust_anchor_der: &foreign.root_ca().cert_der,
            ..parse_bundle(&bytes, bundle)?
        },
        &path,
    )?;
    Ok(path)
}
