//! Load generation for `cargo xtask bench gateway`: the same client code drives our gateway
//! and Mosquitto. Traffic goes to 127.0.0.1 only; every loop is bounded in count and time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_protocol::mqtt::{Connect, Packet};
use fleet_protocol::topic;
use fleet_provision::pki::Ca;
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rumqttc::{AsyncClient, Event, MqttOptions, QoS, TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::backend::scheme_topic;
use crate::Error;

/// A client identity minted for the benchmark (never written to disk).
#[derive(Clone)]
pub struct Minted {
    pub id: String,
    pub serial: Vec<u8>,
    pub config: Arc<rustls::ClientConfig>,
}

/// Mints client identities signed by the issuing CA; `service` ones carry OU=service.
pub struct Mint {
    ca: Ca,
    roots: rustls::RootCertStore,
    tenant: String,
}

impl Mint {
    pub fn new(
        issuing_cert: &Path,
        issuing_key: &Path,
        root: &Path,
        tenant: &str,
    ) -> Result<Mint, Error> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| Error::Read {
                path: p.to_owned(),
                source,
            })
        };
        let key = fleet_provision::pki::key_from_pem(&read(issuing_key)?, issuing_key, None)
            .map_err(|e| Error::Tls(e.to_string()))?;
        let ca =
            Ca::from_parts(&read(issuing_cert)?, &key).map_err(|e| Error::Tls(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(read(root)?.as_bytes()) {
            roots
                .add(c.map_err(|e| Error::Tls(e.to_string()))?)
                .map_err(|e| Error::Tls(e.to_string()))?;
        }
        Ok(Mint {
            ca,
            roots,
            tenant: tenant.to_owned(),
        })
    }

    pub fn identity(&self, id: &str, service: bool) -> Result<Minted, Error> {
        let e = |x: &dyn std::fmt::Display| Error::Tls(x.to_string());
        let key = KeyPair::generate().map_err(|x| e(&x))?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id);
        dn.push(DnType::OrganizationName, self.tenant.as_str());
        if service {
            dn.push(DnType::OrganizationalUnitName, "service");
        }
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let serial = fleet_provision::pki::random_serial();
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = p.signed_by(&key, self.ca.issuer()).map_err(|x| e(&x))?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|x| e(&x))?
        .with_root_certificates(self.roots.clone())
        .with_client_auth_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|x| e(&x))?;
        Ok(Minted {
            id: id.to_owned(),
            serial,
            config: Arc::new(config),
        })
    }

    /// Writes a CRL revoking `serials` (signed by the issuing CA) to `path`, atomically.
    pub fn write_crl(&self, serials: &[Vec<u8>], path: &Path) -> Result<(), Error> {
        use rcgen::{
            CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber,
        };
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from_slice(&(serials.len() as u64 + 1).to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(self.ca.issuer())
            .map_err(|e| Error::Tls(e.to_string()))?;
        let pem = crl.pem().map_err(|e| Error::Tls(e.to_string()))?;
        fleet_provision::write_file(path, pem.as_bytes(), false)
            .map_err(|e| Error::Tls(e.to_string()))
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// mTLS handshake, CONNECT, CONNACK. Returns the open stream.
pub async fn mqtt_connect(
    target: SocketAddr,
    who: &Minted,
    keep_alive: u16,
) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
    let mut tls = tokio_rustls::TlsConnector::from(who.config.clone())
        .connect(name, tcp)
        .await?;
    let connect = Packet::Connect(Connect {
        clean_session: true,
        keep_alive,
        client_id: &who.id,
        will: None,
        username: None,
        password: None,
    });
    let mut buf = [0u8; 128];
    let n = connect
        .emit(&mut buf)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    tls.write_all(&buf[..n]).await?;
    let mut ack = [0u8; 4];
    tls.read_exact(&mut ack).await?;
    if ack != [0x20, 2, 0, 0] {
        return Err(std::io::Error::other(format!("CONNACK refused: {ack:?}")));
    }
    Ok(tls)
}

/// Reads (and discards) until the peer closes the connection or `timeout` passes; returns
/// how long it took, or `None` on timeout.
pub async fn wait_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(timeout, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.ok().map(|()| start.elapsed())
}

/// Full mTLS connects per second (handshake, CONNECT, CONNACK, DISCONNECT, close) with
/// `workers` concurrent clients for `seconds`.
pub async fn connect_rate(target: SocketAddr, ids: &[Minted], seconds: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = JoinSet::new();
    for who in ids {
        let who = who.clone();
        let done = done.clone();
        tasks.spawn(async move {
            while Instant::now() < deadline {
                if let Ok(mut tls) = mqtt_connect(target, &who, 30).await {
                    let _ = tls.write_all(&[0xE0, 0]).await;
                    let _ = tls.shutdown().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let started = Instant::now();
    while tasks.join_next().await.is_some() {}
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Resident memory of a process in KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Opens `ids.len()` idle sessions and returns the server's RSS growth per session in bytes.
pub async fn idle_rss_per_session(
    target: SocketAddr,
    ids: &[Minted],
    server_pid: u32,
) -> Result<f64, Error> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before =
        rss_kib(server_pid).ok_or_else(|| Error::Backend(format!("no process {server_pid}")))?;
    let mut open = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(64) {
        let mut set = JoinSet::new();
        for who in chunk {
            let who = who.clone();
            set.spawn(async move { mqtt_connect(target, &who, 600).await });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(tls)) => open.push(tls),
                Ok(Err(e)) => return Err(Error::Backend(format!("idle session failed: {e}"))),
                Err(e) => return Err(Error::Backend(e.to_string())),
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after =
        rss_kib(server_pid).ok_or_else(|| Error::Backend(format!("no process {server_pid}")))?;
    drop(open);
    Ok((after.saturating_sub(before) * 1024) as f64 / ids.len() as f64)
}

fn rumqtt_options(target: SocketAddr, who: &Minted) -> MqttOptions {
    let mut o = MqttOptions::new(who.id.as_str(), "localhost", target.port());
    o.set_keep_alive(Duration::from_secs(60))
        .set_inflight(100)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            who.config.clone(),
        )));
    o
}

/// QoS 1 messages delivered per second: every publisher sends `per_publisher` messages to its
/// own telemetry topic; every subscriber (a service) subscribes to all of them.
pub async fn qos1_throughput(
    target: SocketAddr,
    tenant: &str,
    publishers: &[Minted],
    subscribers: &[Minted],
    per_publisher: u64,
) -> Result<f64, Error> {
    let expected = per_publisher * publishers.len() as u64 * subscribers.len() as u64;
    let received = Arc::new(AtomicU64::new(0));
    let mut subs = JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(subscribers.len());
    for who in subscribers {
        let (client, mut events) = AsyncClient::new(rumqtt_options(target, who), 1000);
        client
            .subscribe(
                scheme_topic(|s| topic::telemetry(s, tenant, "+")),
                QoS::AtLeastOnce,
            )
            .await
            .map_err(|e| Error::Backend(e.to_string()))?;
        let received = received.clone();
        let ready = ready_tx.clone();
        subs.spawn(async move {
            let _keep = client;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = ready.send(()).await;
                    }
                    Ok(Event::Incoming(rumqttc::Packet::Publish(_))) => {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
    }
    for _ in subscribers {
        tokio::time::timeout(Duration::from_secs(20), ready_rx.recv())
            .await
            .map_err(|_| Error::Backend("subscribers not ready in 20 s".into()))?;
    }
    let started = Instant::now();
    let mut pubs = JoinSet::new();
    for who in publishers {
        let (client, mut events) = AsyncClient::new(rumqtt_options(target, who), 1000);
        let topic = scheme_topic(|s| topic::telemetry(s, tenant, &who.id));
        pubs.spawn(async move {
            let sender = tokio::spawn(async move {
                for i in 0..per_publisher {
                    let _ = client
                        .publish(
                            topic.as_str(),
                            QoS::AtLeastOnce,
                            false,
                            i.to_be_bytes().to_vec(),
                        )
                        .await;
                }
                client
            });
            let mut acked = 0;
            while acked < per_publisher {
                match events.poll().await {
                    Ok(Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = sender.await;
        });
    }
    let limit = Instant::now() + Duration::from_secs(120);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    pubs.abort_all();
    subs.abort_all();
    let got = received.load(Ordering::Relaxed);
    if got < expected {
        return Err(Error::Backend(format!(
            "only {got} of {expected} QoS 1 messages arrived in 120 s"
        )));
    }
    Ok(expected as f64 / elapsed)
}

/// Revocation → kick latency, in milliseconds, over `rounds` rounds: a session is opened, the
/// CRL the gateway watches is rewritten to revoke it, and the time until the connection is
/// closed is measured.
pub async fn revocation_latency(
    target: SocketAddr,
    mint: &Mint,
    crl_path: &Path,
    rounds: usize,
) -> Result<Vec<f64>, Error> {
    let mut revoked = Vec::new();
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let who = mint.identity(&format!("revoke-{i:04}"), false)?;
        let mut tls = mqtt_connect(target, &who, 600)
            .await
            .map_err(|e| Error::Backend(format!("revocation round {i}: {e}")))?;
        revoked.push(who.serial.clone());
        let started = Instant::now();
        mint.write_crl(&revoked, crl_path)?;
        if wait_closed(&mut tls, Duration::from_secs(10))
            .await
            .is_none()
        {
            return Err(Error::Backend(format!(
                "round {i}: the revoked session was not closed in 10 s"
            )));
        }
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(samples)
}

/// What one target measured.
#[derive(Debug, Serialize)]
pub struct Results {
    pub target: String,
    pub connects_per_sec: f64,
    /// (sessions, bytes of server RSS per idle session)
    pub idle_rss: Vec<(usize, f64)>,
    pub qos1_msgs_per_sec: f64,
    /// Revocation → kick, milliseconds (empty for targets without live revocation).
    pub revocation_ms: Vec<f64>,
}

/// Where the load generator finds its inputs.
pub struct Setup {
    pub target: SocketAddr,
    pub name: String,
    pub server_pid: u32,
    pub issuing_cert: PathBuf,
    pub issuing_key: PathBuf,
    pub root: PathBuf,
    pub tenant: String,
    /// The CRL file the target watches, when it supports live revocation.
    pub crl: Option<PathBuf>,
    pub idle_sizes: Vec<usize>,
    pub connect_seconds: u64,
}

/// Runs every measurement against one target, printing progress to stderr.
pub async fn run(setup: &Setup) -> Result<Results, Error> {
    let mint = Mint::new(
        &setup.issuing_cert,
        &setup.issuing_key,
        &setup.root,
        &setup.tenant,
    )?;
    let step = |what: &str| eprintln!("[{}] {what}", setup.name);
    let max_idle = setup.idle_sizes.iter().copied().max().unwrap_or(0);
    step(&format!("minting {} client identities", max_idle + 40));
    let ids: Vec<Minted> = (0..max_idle + 40)
        .map(|i| mint.identity(&format!("bench-{i:06}"), false))
        .collect::<Result<_, _>>()?;
    let services: Vec<Minted> = (0..10)
        .map(|i| mint.identity(&format!("svc-{i:02}"), true))
        .collect::<Result<_, _>>()?;

    step(&format!(
        "full mTLS connects for {} s with 16 clients",
        setup.connect_seconds
    ));
    let connects_per_sec = connect_rate(setup.target, &ids[..16], setup.connect_seconds).await;
    step(&format!("{connects_per_sec:.0} connects/s"));

    let mut idle_rss = Vec::new();
    for &n in &setup.idle_sizes {
        step(&format!("{n} idle sessions"));
        let per = idle_rss_per_session(setup.target, &ids[40..40 + n], setup.server_pid).await?;
        step(&format!("{:.1} KiB per idle session", per / 1024.0));
        idle_rss.push((n, per));
    }

    step("QoS 1: 10 publishers x 2000 messages, 10 subscribers");
    let qos1_msgs_per_sec =
        qos1_throughput(setup.target, &setup.tenant, &ids[16..26], &services, 2000).await?;
    step(&format!("{qos1_msgs_per_sec:.0} deliveries/s"));

    let revocation_ms = match &setup.crl {
        Some(crl) => {
            step("revocation → kick, 20 rounds");
            revocation_latency(setup.target, &mint, crl, 20).await?
        }
        None => Vec::new(),
    };
    Ok(Results {
        target: setup.name.clone(),
        connects_per_sec,
        idle_rss,
        qos1_msgs_per_sec,
        revocation_ms,
    })
}
