//! Shared fixtures for the end-to-end tests: a station in a temp dir and a gateway on port 0.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleet_gateway::config::TlsFiles;
use fleet_gateway::{Config, Gateway};
use fleet_hil::backend::{Backend, ServiceIdentity};
use fleet_hil::fleet::DeviceBundle;
use fleet_provision::{BatchRequest, KeyProtection, Station};
use tokio::sync::oneshot;

pub mod browser;
pub mod cluster;
pub mod conformance;
pub mod stations;

pub const TENANT: &str = "acme";
pub const SERVICE: &str = "backend";

/// A factory station with a PKI, a gateway server certificate and a backend service identity.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub station: Station,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let station = Station::init(dir.path(), "Test Org", KeyProtection::InsecurePlaintext)
            .expect("ca init");
        station
            .issue_server_cert(&["localhost", "127.0.0.1"])
            .expect("server cert");
        station
            .issue_service_cert(SERVICE, TENANT)
            .expect("service cert");
        Pki { dir, station }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Issues `count` devices of `tenant` and loads their bundles.
    pub fn devices(&mut self, tenant: &str, count: u32) -> Vec<DeviceBundle> {
        let issued = self
            .station
            .issue_devices(&BatchRequest {
                tenant: tenant.into(),
                count,
                gateway_host: "localhost".into(),
                gateway_port: 8883,
                validity_days: 30,
            })
            .expect("issue devices");
        issued
            .iter()
            .map(|d| DeviceBundle::load(&d.bundle_path).expect("bundle"))
            .collect()
    }

    /// rumqttc options for a device identity (its certificate from the bundle), connecting
    /// to `port` on localhost as `client_id`.
    pub fn device_mqtt_options(
        &self,
        bundle: &DeviceBundle,
        client_id: &str,
        port: u16,
    ) -> rumqttc::MqttOptions {
        let mut o = rumqttc::MqttOptions::new(client_id, "localhost", port);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(device_client_config(
                bundle,
                &self.path("ca/root.pem"),
            )),
        ));
        o
    }

    pub fn gateway_config(&self) -> Config {
        Config::new(
            "127.0.0.1:0".parse().expect("addr"),
            TlsFiles {
                server_cert: self.path("gateway/server.pem"),
                server_key: self.path("gateway/server.key"),
                client_ca: vec![self.path("gateway/clients-ca.pem")],
                crl_issuers: Vec::new(),
                crl: vec![self.path("crl/issuing.crl.pem")],
            },
        )
    }

    pub fn service_identity(&self) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.path(&format!("services/{SERVICE}.pem")),
            self.path(&format!("services/{SERVICE}.key")),
            self.path("ca/root.pem"),
        )
    }

    /// A backend service connected to `addr`.
    pub async fn backend(&self, addr: SocketAddr) -> Backend {
        let (cert, key, ca) = self.service_identity();
        let id = ServiceIdentity {
            cert_pem: &cert,
            key_pem: &key,
            server_ca_pem: &ca,
        };
        Backend::connect("localhost", addr.port(), SERVICE, TENANT, &id)
            .await
            .expect("backend connects")
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A gateway serving on 127.0.0.1 at a free port; dropping it does not stop it, `stop` does.
pub struct RunningGateway {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub sessions: fleet_gateway::registry::Registry,
    pub shared: Arc<fleet_gateway::server::Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    pub async fn start(config: Config) -> RunningGateway {
        let gateway = Gateway::bind(config).await.expect("gateway binds");
        let addr = gateway.local_addr();
        let admin = gateway.admin_addr();
        let sessions = gateway.sessions();
        let shared = gateway.shared();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        RunningGateway {
            addr,
            admin,
            sessions,
            shared,
            stop: Some(stop),
            task,
        }
    }

    /// Whether a device (not service) session with this id is live.
    pub fn has_device(&self, id: &str) -> bool {
        self.sessions.list().iter().any(|s| {
            s.identity.id == id && s.identity.kind == fleet_gateway::identity::Kind::Device
        })
    }

    /// Number of live device sessions.
    pub fn device_sessions(&self) -> usize {
        self.sessions
            .list()
            .iter()
            .filter(|s| s.identity.kind == fleet_gateway::identity::Kind::Device)
            .count()
    }

    /// Shuts the gateway down and waits for it.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// One HTTP/1.1 request to the admin API: (status code, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin reachable");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.expect("send");
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.expect("read");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Polls `done` every 10 ms until it holds; panics after `timeout` naming `what`.
pub async fn wait_for(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A rustls client config with a device's certificate and key from its bundle.
pub fn device_client_config(bundle: &DeviceBundle, root_pem: &Path) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivateSec1KeyDer};
    let b = fleet_protocol::bundle::Bundle::parse(&bundle.bytes).expect("bundle");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(root_pem).expect("root pem") {
        roots.add(c.expect("cert")).expect("add root");
    }
    let key = PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(
        b.private_key_der.expect("bundle has a key").to_vec(),
    ));
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![CertificateDer::from(b.cert_der.to_vec())], key)
        .expect("client auth"),
    )
}

/// Writes a device's certificate and key from its bundle as PEM files (for external clients),
/// the way `fleet-provision bundle export` does.
pub fn export_pem(bundle: &DeviceBundle, dir: &Path) -> (PathBuf, PathBuf) {
    let b = fleet_protocol::bundle::Bundle::parse(&bundle.bytes).expect("bundle");
    let (cert_pem, key_pem) = fleet_provision::bundle_to_pem(&b).expect("PEM export");
    let cert = dir.join(format!("{}.pem", bundle.device_id));
    let key = dir.join(format!("{}.key", bundle.device_id));
    std::fs::write(&cert, cert_pem).expect("write cert");
    std::fs::write(&key, key_pem).expect("write key");
    (cert, key)
}

/// A raw MQTT 3.1.1 client over mutual TLS, for tests that need exact bytes on the wire.
pub mod raw {
    use std::time::Duration;

    use fleet_hil::fleet::DeviceBundle;
    use fleet_protocol::mqtt::v5::{Connect5, Packet5, Properties, Property};
    use fleet_protocol::mqtt::{Connect, Packet, Publish, QoS};
    use rustls_pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::{device_client_config, Pki, RunningGateway};

    pub type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

    /// Mutual TLS to the gateway with a device identity, nothing sent yet.
    pub async fn open(gw: &RunningGateway, pki: &Pki, b: &DeviceBundle) -> Tls {
        try_open(gw.addr, &pki.path("ca/root.pem"), b)
            .await
            .expect("TLS to the gateway")
    }

    /// Mutual TLS to the gateway at `addr` (whose chain ends at `root_pem`) with a device
    /// identity; the handshake's error if the gateway refuses it.
    pub async fn try_open(
        addr: std::net::SocketAddr,
        root_pem: &std::path::Path,
        b: &DeviceBundle,
    ) -> std::io::Result<Tls> {
        let connector = tokio_rustls::TlsConnector::from(device_client_config(b, root_pem));
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// A raw version 5 client: packets are written with our codec and read back as bytes.
    pub struct Client5 {
        pub tls: Tls,
        buf: Vec<u8>,
    }

    impl Client5 {
        pub async fn open(gw: &RunningGateway, pki: &Pki, b: &DeviceBundle) -> Client5 {
            Client5 {
                tls: open(gw, pki, b).await,
                buf: Vec::new(),
            }
        }

        pub async fn send(&mut self, p: &Packet5<'_>) {
            let mut out = vec![0u8; p.encoded_len()];
            p.emit(&mut out).unwrap();
            self.tls.write_all(&out).await.unwrap();
        }

        /// The bytes of the next whole packet from the gateway, which must be valid version 5.
        pub async fn next(&mut self) -> Vec<u8> {
            loop {
                if let Some((_, n)) = Packet5::parse(&self.buf, 1 << 20).expect("valid MQTT 5") {
                    return self.buf.drain(..n).collect();
                }
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(Duration::from_secs(5), self.tls.read(&mut chunk))
                    .await
                    .expect("the gateway answered in time")
                    .unwrap_or(0);
                assert!(n > 0, "connection closed while waiting for a packet");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }

        /// Whether the gateway closed the connection within 5 s (after anything it still sent).
        pub async fn closed(&mut self) -> bool {
            let mut chunk = [0u8; 256];
            matches!(
                tokio::time::timeout(Duration::from_secs(5), self.tls.read(&mut chunk)).await,
                Ok(Ok(0) | Err(_))
            )
        }

        /// Sends CONNECT (level 5) and returns the CONNACK's bytes.
        pub async fn connect(&mut self, client_id: &str, props: &[Property<'_>]) -> Vec<u8> {
            self.send(&Packet5::Connect(Connect5 {
                connect: Connect {
                    clean_session: true,
                    keep_alive: 60,
                    client_id,
                    will: None,
                    username: None,
                    password: None,
                },
                properties: Properties::from_slice(props),
                will_properties: Properties::EMPTY,
            }))
            .await;
            self.next().await
        }
    }

    pub fn encode(p: &Packet<'_>) -> Vec<u8> {
        let mut out = vec![0u8; p.encoded_len()];
        p.emit(&mut out).unwrap();
        out
    }

    /// Connects with a device identity, sends CONNECT and waits for an accepting CONNACK.
    pub async fn connect(gw: &RunningGateway, pki: &Pki, b: &DeviceBundle, keep_alive: u16) -> Tls {
        let mut tls = open(gw, pki, b).await;
        let ack = mqtt_connect(&mut tls, b, keep_alive)
            .await
            .expect("CONNACK");
        assert_eq!(ack, [0x20, 2, 0, 0], "CONNACK accepted");
        tls
    }

    /// Sends CONNECT as the device and returns the 4 bytes of the answer (a CONNACK
    /// accepting it is `20 02 00 00`); an error when the connection closes first.
    pub async fn mqtt_connect(
        tls: &mut Tls,
        b: &DeviceBundle,
        keep_alive: u16,
    ) -> std::io::Result<[u8; 4]> {
        let connect = Packet::Connect(Connect {
            clean_session: true,
            keep_alive,
            client_id: &b.device_id,
            will: None,
            username: None,
            password: None,
        });
        tls.write_all(&encode(&connect)).await?;
        let mut ack = [0u8; 4];
        tls.read_exact(&mut ack).await?;
        Ok(ack)
    }

    /// Waits until the gateway closes the connection; returns how long it took.
    pub async fn closed_within(tls: &mut Tls) -> Duration {
        fleet_hil::bench::wait_closed(tls, Duration::from_secs(10))
            .await
            .expect("the gateway did not close the connection")
    }

    pub fn publish(topic: &str, payload: &[u8]) -> Vec<u8> {
        encode(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic,
            packet_id: None,
            payload,
        }))
    }
}

/// The workspace's target directory (CARGO_TARGET_DIR, else `target/` beside this crate).
pub fn workspace_target() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The gateway binary the end-to-end tests run: FLEET_GATEWAY_BIN, else the debug build.
pub fn gateway_binary() -> std::path::PathBuf {
    let bin = std::env::var_os("FLEET_GATEWAY_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_target().join("debug/fleet-gateway"));
    assert!(
        bin.is_file(),
        "no gateway binary at {}: run `cargo build -p fleet-gateway` or set FLEET_GATEWAY_BIN",
        bin.display()
    );
    bin
}

/// The address a `fleet-gateway serve` child listens on, from the first line of its
/// stdout (`... listening on <addr>`), waiting at most 20 s; panics with `log` (its stderr
/// file) when it does not come. Take the stdout and put the child under a guard that stops
/// it before calling this, so a panic here does not leave it running.
pub fn gateway_address(stdout: std::process::ChildStdout, log: &std::path::Path) -> SocketAddr {
    use std::io::BufRead;
    // Read on a thread so that the wait is bounded.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut first);
        let _ = tx.send(first);
    });
    let first = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap_or_default();
    first
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "the gateway did not start: {first:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
}
