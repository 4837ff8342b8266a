//! A rig for certificate rotation end to end: a station serving its API (the renewal
//! service), a gateway with `[renewal]` pointing at it, and one device whose certificate is
//! close enough to its end that the gateway tells it to renew.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_gateway::config::{Admin, TlsFiles};
use fleet_gateway::renewal::Renewal;
use fleet_gateway::station_link::StationAccess;
use fleet_gateway::{Config, Gateway};
use fleet_protocol::bundle::Bundle;
use fleet_protocol::renewal::{ApiError, Issued, RenewalRequest};
use fleet_provision::serve::{Options, Server};
use fleet_provision::{BatchRequest, KeyProtection, Station};
use tokio::sync::oneshot;

/// Who answers the gateway's renewal requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewer {
    /// The station's real API (`fleet-provision serve`).
    Station,
    /// A stand-in that signs every request with a CA the gateway does not trust: the renewed
    /// identity is refused and the device must roll back.
    ForeignCa,
}

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
        listen: SocketAddr,
        device_host: &str,
        validity_days: u32,
        threshold_days: u32,
        renewer: Renewer,
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

        let station_api = match renewer {
            Renewer::Station => {
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
                let addr = server.local_addr();
                let (tx, rx) = oneshot::channel::<()>();
                stops.push(tx);
                tasks.push(tokio::spawn(async move {
                    let _ = server
                        .run(async {
                            let _ = rx.await;
                        })
                        .await;
                }));
                addr
            }
            Renewer::ForeignCa => {
                let (chain, key) = station.issue_server_identity(&["localhost"])?;
                drop(station);
                let (addr, tx, task) = foreign_renewer(&d, chain, key).await?;
                stops.push(tx);
                tasks.push(task);
                addr
            }
        };
        let mut config = Config::new(
            listen,
            TlsFiles {
                server_cert: d.join("gateway/server.pem"),
                server_key: d.join("gateway/server.key"),
                client_ca: vec![d.join("gateway/clients-ca.pem")],
                crl_issuers: Vec::new(),
                crl: vec![crl],
            },
        );
        config.admin = Some(Admin {
            listen: "127.0.0.1:0".parse()?,
            token: None,
        });
        config.audit_log = Some(d.join("gateway-audit.jsonl"));
        config.renewal = Some(Renewal {
            access: StationAccess {
                station: station_api.to_string(),
                server_name: "localhost".into(),
                client_cert: client.cert_path,
                client_key: client.key_path,
                station_ca: d.join("ca/root.pem"),
            },
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
        tail(&self.dir.path().join("gateway-audit.jsonl"), n)
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
    let path = bundle.with_extension("port.bin");
    write_bundle(
        &Bundle {
            gateway_port: port,
            ..parse_bundle(&bytes, bundle)?
        },
        &path,
    )?;
    Ok(path)
}

/// The bundle in `bytes`, read from `path`.
pub fn parse_bundle<'a>(bytes: &'a [u8], path: &Path) -> anyhow::Result<Bundle<'a>> {
    Bundle::parse(bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Encodes `bundle` into the file `to`.
pub fn write_bundle(bundle: &Bundle<'_>, to: &Path) -> anyhow::Result<()> {
    let mut out = vec![0u8; bundle.encoded_len()];
    bundle
        .emit(&mut out)
        .map_err(|e| anyhow::anyhow!("{}: {e}", to.display()))?;
    std::fs::write(to, out)?;
    Ok(())
}

/// An HTTPS endpoint answering `POST /v1/devices/{id}/renew` with a certificate for the
/// request's key, signed by a CA nobody trusts. Returns its address and how to stop it.
async fn foreign_renewer(
    dir: &Path,
    chain_pem: String,
    key_pem: String,
) -> anyhow::Result<(SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let foreign = Station::init(
        &dir.join("foreign-ca"),
        "Nobody Trusts Me",
        KeyProtection::InsecurePlaintext,
    )?;
    let chain =
        CertificateDer::pem_slice_iter(chain_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, mut rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            let (tcp, _) = tokio::select! {
                a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                _ = &mut rx => return,
            };
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            // One request per connection; the body is small JSON with the CSR PEM.
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let body = loop {
                let Ok(n) = tls.read(&mut chunk).await else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break Some(body[..len].to_owned());
                    }
                }
            };
            let answer = body.and_then(|b| foreign_renewal(&foreign, &b));
            let (status, body) = match answer {
                Some(issued) => ("200 OK", serde_json::to_string(&issued)),
                None => (
                    "400 Bad Request",
                    serde_json::to_string(&ApiError {
                        error: "bad request".into(),
                    }),
                ),
            };
            let body = body.unwrap_or_default();
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    Ok((addr, tx, task))
}

/// What the foreign station answers a relayed renewal with: a certificate for the request's
/// key from a CA the gateway does not trust, in the station's answer format.
fn foreign_renewal(foreign: &Station, body: &str) -> Option<Issued> {
    use sha2::{Digest, Sha256};
    let request: RenewalRequest = serde_json::from_str(body).ok()?;
    let der = fleet_provision::pki::csr_der(request.csr_pem.as_bytes()).ok()?;
    let key = fleet_provision::pki::check_csr(&der).ok()?;
    let serial = fleet_provision::pki::random_serial();
    let signed = fleet_provision::pki::sign_device_key(
        foreign.issuing_ca(),
        &key,
        "acme-000001",
        "acme",
        365,
        &serial,
    )
    .ok()?;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    Some(Issued {
        device_id: "acme-000001".into(),
        tenant: "acme".into(),
        serial: hex(&serial),
        fingerprint: hex(&Sha256::digest(&signed.der)),
        not_after: signed.not_after,
        certificate_pem: fleet_provision::pki::cert_to_pem(&signed.der),
        issuing_ca_pem: fleet_provision::pki::cert_to_pem(&foreign.issuing_ca().cert_der),
        bundle_base64: None,
    })
}

/// The last `n` lines of a text file (none when it cannot be read).
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}
