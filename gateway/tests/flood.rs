//! Slow-handshake flood against the real gateway binary: 10,000 TCP connections that never
//! send a byte and 200 that trickle one byte a second, from other loopback addresses, while a
//! device keeps connecting from 127.0.0.1. The device's connect latency stays low, the
//! gateway's memory stays bounded, and every idle handshake is cut at the timeout.
//!
//! The gateway runs as its own process so each side has its own file-descriptor limit.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const IDLE: usize = 10_000;
const TRICKLE: usize = 200;
const HANDSHAKE_TIMEOUT_SECS: u64 = 4;

struct Pem {
    cert: String,
    key: KeyPair,
}

fn leaf(issuer: &Issuer<'_, KeyPair>, cn: &str, eku: ExtendedKeyUsagePurpose) -> Pem {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".into()]).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "acme");
    p.distinguished_name = dn;
    p.extended_key_usages = vec![eku];
    let cert = p.signed_by(&key, issuer).unwrap();
    Pem {
        cert: cert.pem(),
        key,
    }
}

/// Kills the gateway process when the test ends, however it ends.
struct Gateway(std::process::Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One full device connect: TCP, mutual TLS, CONNECT, CONNACK. Returns how long it took.
async fn device_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<Duration, String> {
    let started = Instant::now();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 0])
        .await
        .map_err(|e| e.to_string())?;
    let mut ack = [0u8; 4];
    tls.read_exact(&mut ack).await.map_err(|e| e.to_string())?;
    if ack != [0x20, 2, 0, 0] {
        return Err(format!("CONNACK {ack:?}"));
    }
    let took = started.elapsed();
    let _ = tls.shutdown().await;
    Ok(took)
}

/// A TCP connection from `source` (another loopback address, so the device's own address is
/// not the one the per-IP limit throttles).
async fn open_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    socket.connect(to).await
}

/// Raises this process's open-file limit to its hard limit (the gateway child inherits it);
/// the flood needs one descriptor per connection on each side.
fn raise_fd_limit() {
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
        ok && lim.rlim_cur as usize > IDLE + TRICKLE + 1000,
        "the flood needs more than {} open files; the hard limit is {}",
        IDLE + TRICKLE + 1000,
        lim.rlim_max
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handshake_flood_does_not_delay_a_real_device() {
    raise_fd_limit();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "flood test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let server = leaf(&issuer, "localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let device = leaf(&issuer, "acme-000001", ExtendedKeyUsagePurpose::ClientAuth);
    let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
    write("ca.pem", &ca_cert.pem());
    write("server.pem", &server.cert);
    write("server.key", &server.key.serialize_pem());
    let port = free_port();
    write(
        "gateway.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\naudit_log = \"{}\"\n\
             [tls]\nserver_cert = \"server.pem\"\nserver_key = \"server.key\"\nclient_ca = [\"ca.pem\"]\n\
             [limits]\nhandshake_timeout_secs = {HANDSHAKE_TIMEOUT_SECS}\n\
             [admin]\nenabled = false\n",
            d.join("audit.jsonl").display()
        ),
    );
    let gateway = Gateway(
        std::process::Command::new(env!("CARGO_BIN_EXE_fleet-gateway"))
            .arg("serve")
            .arg("--config")
            .arg(d.join("gateway.toml"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(d.join("gateway.log")).unwrap())
            .spawn()
            .expect("gateway starts"),
    );
    let pid = gateway.0.id();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(device.cert.as_bytes()).unwrap()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(device.key.serialize_der())),
        )
        .unwrap(),
    );
    // The gateway is up when a device gets through.
    let deadline = Instant::now() + Duration::from_secs(20);
    while device_connect(addr, client.clone()).await.is_err() {
        assert!(Instant::now() < deadline, "gateway did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quiet: Vec<Duration> = {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(device_connect(addr, client.clone()).await.unwrap());
        }
        v
    };
    let rss_before = rss_kib(pid);

    // The flood: 10,000 silent connections from 127.0.1.1–127.0.1.20 (500 each, within the
    // default per-IP burst), and 200 that trickle a byte a second.
    let flood_started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for chunk in (0..IDLE).collect::<Vec<_>>().chunks(250) {
        let mut set = tokio::task::JoinSet::new();
        for &i in chunk {
            let source = Ipv4Addr::new(127, 0, 1, (i % 20) as u8 + 1);
            set.spawn(open_from(source, addr));
        }
        while let Some(opened) = set.join_next().await {
            idle.push(opened.unwrap().expect("flood connection"));
        }
    }
    let opened_in = flood_started.elapsed();
    let mut trickles = tokio::task::JoinSet::new();
    for i in 0..TRICKLE {
        trickles.spawn(async move {
            let source = Ipv4Addr::new(127, 0, 2, (i % 20) as u8 + 1);
            let Ok(mut s) = open_from(source, addr).await else {
                return false;
            };
            // A TLS record header, then one byte a second (bounded: 30 bytes). True once a
            // write fails: the gateway closed the connection.
            for b in [0x16u8, 0x03, 0x01, 0x00, 0xC8].into_iter().chain([0; 25]) {
                if s.write_all(&[b]).await.is_err() {
                    return true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            false
        });
    }

    // The device during the flood.
    let mut during = Vec::new();
    for _ in 0..50 {
        during.push(
            device_connect(addr, client.clone())
                .await
                .expect("the device connects during the flood"),
        );
    }
    during.sort();
    let rss_flood = rss_kib(pid);
    let p99 = percentile(&during, 0.99);
    let mut quiet_sorted = quiet.clone();
    quiet_sorted.sort();
    eprintln!(
        "flood: {IDLE} silent connections opened in {opened_in:?}; device connect p50 {:?} p99 {p99:?} (quiet p50 {:?}); gateway RSS {rss_before} KiB → {rss_flood} KiB",
        percentile(&during, 0.5),
        percentile(&quiet_sorted, 0.5),
    );
    assert!(
        p99 < Duration::from_millis(100),
        "device connect p99 {p99:?} during the flood"
    );
    // Bounded memory: well under 10 KiB per pending connection.
    assert!(
        rss_flood.saturating_sub(rss_before) < 100 * 1024,
        "gateway RSS grew from {rss_before} KiB to {rss_flood} KiB"
    );

    // Every silent connection is cut at the handshake timeout (plus scheduling slack).
    let cut_by = flood_started + opened_in + Duration::from_secs(HANDSHAKE_TIMEOUT_SECS + 10);
    let mut cut = 0;
    for s in idle.iter_mut() {
        let left = cut_by.saturating_duration_since(Instant::now());
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(left.max(Duration::from_millis(1)), s.read(&mut byte));
        if let Ok(Ok(0) | Err(_)) = read.await {
            cut += 1;
        }
    }
    if cut != IDLE {
        let audit = std::fs::read_to_string(d.join("audit.jsonl")).unwrap_or_default();
        let mut reasons = std::collections::BTreeMap::<String, usize>::new();
        for line in audit.lines() {
            let reason = line
                .split("\"reason\":\"")
                .nth(1)
                .and_then(|r| r.split('"').next());
            *reasons.entry(reason.unwrap_or("?").to_owned()).or_default() += 1;
        }
        let log = std::fs::read_to_string(d.join("gateway.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!("{cut} of {IDLE} silent connections closed by the gateway; audit reasons {reasons:?}; gateway log tail {tail:#?}");
    }
    let mut trickles_cut = 0;
    while let Some(r) = trickles.join_next().await {
        trickles_cut += usize::from(r.unwrap_or(false));
    }
    assert_eq!(
        trickles_cut, TRICKLE,
        "trickling connections closed by the gateway"
    );
    let audit = std::fs::read_to_string(d.join("audit.jsonl")).unwrap();
    let timeouts = audit
        .lines()
        .filter(|l| l.contains("\"handshake_timeout\""))
        .count();
    assert!(
        timeouts >= IDLE,
        "{timeouts} handshake_timeout audit records for {IDLE} silent connections"
    );
    drop(gateway);
}
