//! Revocation through the cluster's NATS (issue 18): "Revocation reaches every gateway
//! within 1 s without copying files: the station publishes each new CRL where every gateway
//! watches it … A gateway that cannot reach the source keeps the last verified CRL, says so
//! in metrics and `/readyz`, and refuses a CRL whose signature does not verify."
//!
//! Real components on loopback: a PostgreSQL server (the stations' shared registry),
//! nats-server with JetStream, station 1 serving its API (it listens for revocations of its
//! certificates by other stations and publishes its CRL), station 2 revoking with
//! `--publish-crl`'s publisher, and gateways in process whose configuration has no CRL file
//! at all: every revocation they enforce came through the CRL bucket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleet_hil::fleet::DeviceBundle;
use fleet_provision::publish::{issuer_key, Publisher};
use fleet_provision::{pki, serve, Reason};
use fleet_tests::cluster::{self, Nats, READY_WITHIN};
use fleet_tests::raw;
use fleet_tests::stations::{devices, Stations};
use fleet_tests::RunningGateway;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateRevocationListDer;

/// The spec's bound, from the revoke returning to every gateway enforcing it.
const WITHIN: Duration = Duration::from_secs(1);

/// Whether the gateway at `addr` refuses the device: at the handshake, or right after it
/// (in TLS 1.3 the client learns of a refused certificate at its first read).
async fn refused(addr: SocketAddr, root: &Path, b: &DeviceBundle) -> bool {
    let Ok(mut tls) = raw::try_open(addr, root, b).await else {
        return true;
    };
    !matches!(
        raw::mqtt_connect(&mut tls, b, 60).await,
        Ok([0x20, 2, 0, 0])
    )
}

/// Waits until `deadline` for the gateway to refuse the device; panics after it.
async fn refused_by(addr: SocketAddr, root: &Path, b: &DeviceBundle, deadline: Instant) {
    while !refused(addr, root, b).await {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts {} at the deadline",
            b.device_id
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A session of the device, accepted.
async fn session(addr: SocketAddr, root: &Path, b: &DeviceBundle) -> raw::Tls {
    let mut tls = raw::try_open(addr, root, b).await.expect("TLS");
    let ack = raw::mqtt_connect(&mut tls, b, 60).await.expect("CONNACK");
    assert_eq!(ack, [0x20, 2, 0, 0], "{} accepted by {addr}", b.device_id);
    tls
}

/// Polls `check` every 50 ms until it gives `Ok`; panics after [`READY_WITHIN`] with what
/// it gave last.
async fn eventually<T, F: std::future::Future<Output = Result<T, String>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        match check().await {
            Ok(done) => return done,
            Err(last) => assert!(
                start.elapsed() < READY_WITHIN,
                "{what} not within {READY_WITHIN:?}: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `/readyz` of the gateway answers 200 and says nothing about the CRL source.
async fn wait_watching(gw: &RunningGateway) {
    let admin = gw.admin.expect("admin listener");
    eventually("the gateway watching the CRL bucket", || async {
        let (status, body) = cluster::readyz(admin).await;
        if status == 200 && !body.contains("crl source") {
            Ok(())
        } else {
            Err(format!("{status} {body}"))
        }
    })
    .await;
}

/// The value of one sample (`name{labels}` as exposed) of the gateway's metrics.
async fn metric(gw: &RunningGateway, sample: &str) -> Option<f64> {
    let (_, body) = cluster::get(gw.admin.expect("admin listener"), "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (bounded) until `/readyz` and the metrics of the gateway agree with `up`; returns
/// what `/readyz` said.
async fn wait_source(gw: &RunningGateway, up: bool) -> String {
    let admin = gw.admin.expect("admin listener");
    eventually(&format!("CRL source up={up} reported"), || async {
        let (_, body) = cluster::readyz(admin).await;
        let gauge = metric(gw, "fleet_gateway_crl_source_up").await;
        if gauge == Some(f64::from(u8::from(up))) && body.contains("crl source") != up {
            Ok(body)
        } else {
            Err(format!("gauge {gauge:?}, readyz {body}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_on_station_2_reaches_every_gateway_and_survives_nats_outages() {
    let Some(stations) = Stations::new(2) else {
        return;
    };
    let Some(mut nats) = Nats::single() else {
        return;
    };
    let url = nats.urls()[0].clone();
    let root = stations.root_pem();
    let mut one = stations.open(1, Some(&url));
    one.issue_server_cert(&["localhost", "127.0.0.1"])
        .expect("gateway server certificate");
    let issued = devices(&mut one, 3);
    let [x, y, z] = [0, 1, 2].map(|i| &issued[i].bundle);
    let one_key = issuer_key(&one.issuing_ca().cert_der);

    // Station 1 serves: it listens for revocations of its certificates by other stations.
    let server = serve::Server::bind(
        one,
        serve::Options {
            listen: "127.0.0.1:0".parse().expect("addr"),
            hosts: vec!["localhost".into()],
            grace: time::Duration::hours(1),
            validity_days: 30,
        },
    )
    .await
    .expect("station 1 serves");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let caches = tempfile::tempdir().expect("temp dir");
    let urls = nats.urls();
    let config = |name: &str| {
        let cache = caches.path().join(format!("{name}.crls.pem"));
        stations.gateway_config(&urls, name, &cache)
    };
    let gw_a = RunningGateway::start(config("gw-a")).await;
    let gw_b = RunningGateway::start(config("gw-b")).await;
    wait_watching(&gw_a).await;
    wait_watching(&gw_b).await;
    let mut x_on_a = session(gw_a.addr, &root, x).await;
    let mut y_on_b = session(gw_b.addr, &root, y).await;

    // Station 2 revokes station 1's devices: each gateway closes the live session and
    // refuses a reconnect within 1 s of the revoke returning.
    let mut two = stations.open(2, Some(&url));
    for (device, live, holder, other) in [
        (x, &mut x_on_a, &gw_a, &gw_b),
        (y, &mut y_on_b, &gw_b, &gw_a),
    ] {
        two.revoke(&device.device_id, Reason::KeyCompromise)
            .expect("station 2 revokes");
        let returned = Instant::now();
        assert!(two.take_publish_failure().is_none(), "station 2 published");
        raw::closed_within(live).await;
        let closed = returned.elapsed();
        assert!(
            closed <= WITHIN,
            "{}'s session on {} closed {closed:?} after the revoke returned",
            device.device_id,
            holder.addr
        );
        for gw in [holder, other] {
            refused_by(gw.addr, &root, device, returned + WITHIN).await;
        }
    }
    assert!(!refused(gw_a.addr, &root, z).await, "z is not revoked");

    // A gateway started after the revocations learns them from the bucket.
    let gw_c = RunningGateway::start(config("gw-c")).await;
    wait_watching(&gw_c).await;
    refused_by(gw_c.addr, &root, x, Instant::now() + WITHIN).await;
    assert!(refused(gw_c.addr, &root, y).await);
    assert!(!refused(gw_c.addr, &root, z).await, "z is not revoked");
    gw_c.stop().await;

    let audits = ["gw-a", "gw-b"].map(|n| caches.path().join(format!("{n}.crls.audit.jsonl")));
    let forger = Forger {
        url: &url,
        key: &one_key,
        z_serial: &issued[2].serial,
    };
    forger
        .refused_by([(&gw_a, &audits[0]), (&gw_b, &audits[1])], &root, z)
        .await;

    // NATS goes away: the CRLs in force stay, /readyz and the metrics say so.
    nats.servers[0].kill();
    let said = wait_source(&gw_a, false).await;
    assert!(
        said.contains("crl source unreachable; keeping CRL #") && said.contains("Acme Line 1"),
        "{said}"
    );
    assert!(refused(gw_a.addr, &root, x).await);
    // A gateway that starts while NATS is away has the CRLs it verified before (its cache).
    gw_a.stop().await;
    let gw_a = RunningGateway::start(config("gw-a")).await;
    assert!(refused(gw_a.addr, &root, x).await, "refused from the cache");
    assert!(refused(gw_a.addr, &root, y).await, "refused from the cache");
    // NATS back: the source is up again.
    nats.servers[0].restart();
    wait_source(&gw_a, true).await;
    wait_source(&gw_b, true).await;
    assert!(refused(gw_a.addr, &root, x).await);

    gw_a.stop().await;
    gw_b.stop().await;
    let _ = stop.send(());
    serving
        .await
        .expect("station task")
        .expect("station 1 served");
}

/// What is put into the bucket under station 1's key: a forged CRL revoking z.
struct Forger<'a> {
    url: &'a str,
    key: &'a str,
    z_serial: &'a [u8],
}

impl Forger<'_> {
    /// A CRL of station 1's issuer name signed by a foreign CA, and a value that is no CRL,
    /// put into the bucket: refused, counted and audited (`crl_refused`, in each gateway's
    /// audit log) by every gateway; the state in force stays (z still connects).
    async fn refused_by(
        &self,
        gateways: [(&RunningGateway, &PathBuf); 2],
        root: &Path,
        z: &DeviceBundle,
    ) {
        let foreign_root = pki::new_root_ca("Mallory").expect("foreign root");
        let forged_ca = pki::new_issuing_ca(&foreign_root, "Acme Line 1").expect("forged CA");
        let now = time::OffsetDateTime::now_utc();
        let entry = pki::CrlEntry {
            serial: self.z_serial.to_vec(),
            revoked_at: now,
            reason: rcgen::RevocationReason::KeyCompromise,
        };
        let forged = pki::sign_crl(&forged_ca, 1 << 40, &[entry], now, time::Duration::days(7))
            .expect("forged CRL");
        let forged = CertificateRevocationListDer::from_pem_slice(forged.as_bytes()).expect("PEM");
        let publisher = Publisher::new(self.url);
        publisher
            .publish(self.key, &forged)
            .expect("put the forged CRL");
        publisher
            .publish("garbage", b"not a CRL")
            .expect("put garbage");
        for (gw, audit) in gateways {
            eventually("both refusals counted", || async {
                let bad = metric(
                    gw,
                    "fleet_gateway_crl_refused_total{reason=\"bad_signature\"}",
                )
                .await;
                let garbage =
                    metric(gw, "fleet_gateway_crl_refused_total{reason=\"unparsable\"}").await;
                if bad >= Some(1.0) && garbage >= Some(1.0) {
                    Ok(())
                } else {
                    Err(format!("{}: {bad:?}, {garbage:?}", gw.addr))
                }
            })
            .await;
            assert!(
                !refused(gw.addr, root, z).await,
                "the forged CRL is not in force"
            );
            let audit = std::fs::read_to_string(audit).expect("audit log");
            let refusals: Vec<&str> = audit
                .lines()
                .filter(|l| l.contains("crl_refused"))
                .collect();
            assert!(
                refusals.iter().any(|l| l.contains("bad_signature"))
                    && refusals.iter().any(|l| l.contains("unparsable")),
                "{} audited both refusals: {refusals:?}",
                gw.addr
            );
        }
    }
}
