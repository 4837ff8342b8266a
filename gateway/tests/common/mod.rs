//! Shared by the hostile-network tests: a throwaway PKI, the gateway binary as its own process
//! (so each side of a flood has its own file-descriptor limit), and a device that connects
//! from a chosen loopback address.

#![allow(dead_code)] // each test binary uses its own part

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A CA, the gateway's server certificate, and device identities on demand.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let cert = ca.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        let pki = TestPki {
            ca: cert.der().clone(),
            issuer: Issuer::new(ca, key),
            dir,
        };
        let (server, key) = pki.leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
        std::fs::write(pki.path("server.pem"), server.pem()).unwrap();
        std::fs::write(pki.path("server.key"), key.serialize_pem()).unwrap();
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn leaf(&self, cn: &str, eku: ExtendedKeyUsagePurpose) -> (rcgen::Certificate, KeyPair) {
        self.leaf_in(cn, None, eku)
    }

    fn leaf_in(
        &self,
        cn: &str,
        ou: Option<&str>,
        eku: ExtendedKeyUsagePurpose,
    ) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".into()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name.push(DnType::OrganizationName, "acme");
        if let Some(ou) = ou {
            p.distinguished_name
                .push(DnType::OrganizationalUnitName, ou);
        }
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert, key)
    }

    /// A TLS client config for device `id` of tenant acme.
    pub fn device(&self, id: &str) -> Arc<rustls::ClientConfig> {
        self.client(id, None)
    }

    /// A TLS client config for backend service `name` of tenant acme (subject OU=service).
    pub fn service(&self, name: &str) -> Arc<rustls::ClientConfig> {
        self.client(name, Some("service"))
    }

    fn client(&self, cn: &str, ou: Option<&str>) -> Arc<rustls::ClientConfig> {
        let (cert, key) = self.leaf_in(cn, ou, ExtendedKeyUsagePurpose::ClientAuth);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap(),
        )
    }
}

/// The gateway binary serving on 127.0.0.1; killed when dropped, however the test ends.
pub struct GatewayProcess {
    child: std::process::Child,
    config: PathBuf,
    pub addr: SocketAddr,
    pub audit: PathBuf,
    pub log: PathBuf,
}

impl GatewayProcess {
    /// Starts the gateway with `limits` (TOML lines for `[limits]`) and waits until `probe`
    /// (a device config) gets a CONNACK.
    pub async fn start(
        pki: &TestPki,
        limits: &str,
        probe: Arc<rustls::ClientConfig>,
    ) -> GatewayProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = pki.dir.path();
        let audit = d.join("audit.jsonl");
        let config = d.join("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\naudit_log = \"{}\"\n\
                 [tls]\nserver_cert = \"server.pem\"\nserver_key = \"server.key\"\n\
                 client_ca = [\"ca.pem\"]\n[limits]\n{limits}\n[admin]\nenabled = false\n",
                audit.display()
            ),
        )
        .unwrap();
        let log = d.join("gateway.log");
        let mut gw = GatewayProcess {
            child: spawn(&config, &log),
            config,
            addr: ([127, 0, 0, 1], port).into(),
            audit,
            log,
        };
        gw.wait_up(probe).await;
        gw
    }

    async fn wait_up(&mut self, probe: Arc<rustls::ClientConfig>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while device_connect(self.addr, probe.clone(), None)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "gateway did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, then the same binary and config again on the same port.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn restart(&mut self, probe: Arc<rustls::ClientConfig>) {
        self.child = spawn(&self.config, &self.log);
        self.wait_up(probe).await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Refusals and session ends in the audit log by reason: records written one by one plus
    /// those the `suppressed` summaries stand for.
    pub fn audit_reasons(&self) -> std::collections::BTreeMap<String, u64> {
        let mut reasons = std::collections::BTreeMap::new();
        for record in self.audit_records() {
            match record["suppressed"].as_object() {
                Some(counts) => {
                    for (reason, n) in counts {
                        *reasons.entry(reason.clone()).or_default() += n.as_u64().unwrap_or(0);
                    }
                }
                None => {
                    let reason = record["reason"].as_str().unwrap_or("?").to_owned();
                    *reasons.entry(reason).or_default() += 1;
                }
            }
        }
        reasons
    }

    /// Every record of the audit log.
    pub fn audit_records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The last lines of the gateway's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> Vec<String> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut tail: Vec<String> = log.lines().rev().take(lines).map(String::from).collect();
        tail.reverse();
        tail
    }
}

fn spawn(config: &Path, log: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_fleet-gateway"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .expect("gateway starts")
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A TCP connection from `source` (another loopback address: the per-IP limit throttles each
/// address on its own).
pub async fn open_from(source: Option<Ipv4Addr>, to: SocketAddr) -> std::io::Result<TcpStream> {
    match source {
        None => TcpStream::connect(to).await,
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::from((ip, 0)))?;
            socket.connect(to).await
        }
    }
}

/// One full device connect: TCP, mutual TLS, CONNECT (empty client id), CONNACK accepted.
/// Returns how long it took and the open connection.
pub async fn device_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    source: Option<Ipv4Addr>,
) -> Result<(Duration, Tls), String> {
    let started = Instant::now();
    let tcp = open_from(source, addr).await.map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0])
        .await
        .map_err(|e| e.to_string())?;
    let mut ack = [0u8; 4];
    tls.read_exact(&mut ack).await.map_err(|e| e.to_string())?;
    if ack != [0x20, 2, 0, 0] {
        return Err(format!("CONNACK {ack:?}"));
    }
    Ok((started.elapsed(), tls))
}

/// Raises this process's open-file limit to its hard limit (a gateway child inherits it);
/// fails the test, saying so, when that is less than `need`.
pub fn raise_fd_limit(need: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    let ok = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    assert!(
        ok && lim.rlim_cur as usize > need,
        "this test needs more than {need} open files; the hard limit is {}",
        lim.rlim_max
    );
}

/// The `p` quantile (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Where the hostile-network figures go for `cargo xtask report` (when it asks).
pub fn record_figures(name: &str, json: &str) {
    if let Some(dir) = std::env::var_os("FLEET_REPORT_DIR") {
        let dir = Path::new(&dir);
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join(format!("{name}.json")), json);
    }
}
