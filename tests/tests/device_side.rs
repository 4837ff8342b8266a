//! The device core against gateways it must not trust, and against a server that sends
//! garbage: refused with an error, never a panic, never a session.

use std::time::Duration;

use fleet_firmware::device::{App, Buffers, Device, Options, Outcome, Stats, MAX_PAYLOAD};
use fleet_firmware::outbox::Outbox;
use fleet_firmware::x509::CertError;
use fleet_firmware::{sim, Error};
use fleet_protocol::bundle::Bundle;
use fleet_tests::{Pki, RunningGateway, TENANT};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Quiet;

impl App for Quiet {
    fn telemetry(&mut self, _seq: u32, out: &mut [u8]) -> usize {
        out[0] = b'x';
        1
    }
    fn on_command(&mut self, _topic: &str, _payload: &[u8], _reply: &mut [u8]) -> Option<usize> {
        None
    }
}

/// One connection attempt of the firmware core; returns how it ended and the stats.
async fn attempt(bundle: &[u8], to: std::net::SocketAddr) -> (Result<Outcome, Error>, Stats) {
    let b = Bundle::parse(bundle).unwrap();
    let mut stats = Stats::default();
    let mut buffers = Box::new(Buffers::new());
    let mut outbox = Outbox::<1, MAX_PAYLOAD>::new();
    let device = Device {
        bundle: &b,
        options: Options {
            ack_timeout_ms: 3000,
            ..Options::default()
        },
        app: &mut Quiet,
        outbox: &mut outbox,
        buffers: &mut buffers,
        stats: &mut stats,
    };
    let ended = tokio::time::timeout(Duration::from_secs(10), sim::connect_once(Some(to), device))
        .await
        .expect("the attempt ends by itself");
    (ended, stats)
}

fn reemit(bytes: &[u8], change: impl FnOnce(Bundle<'_>) -> Vec<u8>) -> Vec<u8> {
    change(Bundle::parse(bytes).unwrap())
}

fn emit(b: &Bundle<'_>) -> Vec<u8> {
    let mut out = vec![0u8; b.encoded_len()];
    b.emit(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "current_thread")]
async fn the_device_refuses_a_gateway_with_the_wrong_name_or_the_wrong_ca() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut pki = Pki::new();
            let gw = RunningGateway::start(pki.gateway_config()).await;
            let device = pki.devices(TENANT, 1).remove(0);

            // The bundle as issued connects (so the refusals below are about the change).
            let (_, stats) = tokio::task::spawn_local({
                let bytes = device.bytes.clone();
                let to = gw.addr;
                async move {
                    let b = Bundle::parse(&bytes).unwrap();
                    let mut stats = Stats::default();
                    let mut buffers = Box::new(Buffers::new());
                    let mut outbox = Outbox::<1, MAX_PAYLOAD>::new();
                    let device = Device {
                        bundle: &b,
                        options: Options::default(),
                        app: &mut Quiet,
                        outbox: &mut outbox,
                        buffers: &mut buffers,
                        stats: &mut stats,
                    };
                    let run = sim::connect_once(Some(to), device);
                    let _ = tokio::time::timeout(Duration::from_millis(800), run).await;
                    ((), stats)
                }
            })
            .await
            .unwrap();
            assert_eq!(stats.connects, 1, "the untouched bundle connects");

            let wrong_name = reemit(&device.bytes, |b| {
                emit(&Bundle {
                    gateway_host: "not-the-gateway.example",
                    ..b
                })
            });
            let (ended, stats) = attempt(&wrong_name, gw.addr).await;
            assert!(
                matches!(ended, Err(Error::Certificate(CertError::HostMismatch))),
                "wrong host name: {ended:?}"
            );
            assert_eq!(stats.connects, 0);

            let other = Pki::new();
            let root = std::fs::read_to_string(other.path("ca/root.pem")).unwrap();
            let anchor =
                rustls::pki_types::CertificateDer::from_pem_slice(root.as_bytes()).unwrap();
            let wrong_ca = reemit(&device.bytes, |b| {
                emit(&Bundle {
                    trust_anchor_der: &anchor,
                    ..b
                })
            });
            let (ended, stats) = attempt(&wrong_ca, gw.addr).await;
            // The other PKI's root has the same name as ours: its key is what differs.
            assert!(
                matches!(
                    ended,
                    Err(Error::Certificate(
                        CertError::BadSignature | CertError::UntrustedIssuer
                    ))
                ),
                "wrong CA: {ended:?}"
            );
            assert_eq!(stats.connects, 0);
            assert_eq!(gw.device_sessions(), 0, "no session was ever opened");
            gw.stop().await;
        })
        .await;
}

/// A small deterministic generator, so a failure names a reproducible case.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "current_thread")]
async fn garbage_from_a_server_after_the_handshake_is_an_error_never_a_panic() {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut pki = Pki::new();
            let device = pki.devices(TENANT, 1).remove(0);
            // A TLS server with the gateway's identity that answers CONNECT with junk.
            let config = fleet_gateway::tls::server_config(&pki.gateway_config().tls).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
            // Hand-picked malformed packets, then random ones.
            let mut cases: Vec<Vec<u8>> = vec![
                vec![0x20, 0x02, 0x00],                   // CONNACK cut short
                vec![0x20, 0x05, 0x00, 0x00, 0, 0, 0],    // CONNACK with a bad length
                vec![0x20, 0x02, 0x00, 0x05],             // refused: not authorized
                vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x7f], // remaining length overflow
                vec![0x90, 0x03, 0x00, 0x01, 0x00],       // SUBACK before CONNACK
                vec![0xf0, 0x00],                         // reserved packet type
            ];
            for _ in 0..60 {
                let len = (rng.next() % 40) as usize;
                cases.push((0..len).map(|_| rng.next() as u8).collect());
            }
            let n = cases.len();
            let server = tokio::task::spawn_local(async move {
                for case in cases {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        continue;
                    };
                    let mut buf = [0u8; 512];
                    let _ = tls.read(&mut buf).await; // the CONNECT
                    let _ = tls.write_all(&case).await;
                    let _ = tls.flush().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = tls.shutdown().await;
                }
            });
            for i in 0..n {
                let (ended, stats) = attempt(&device.bytes, addr).await;
                assert_eq!(
                    stats.connects, 0,
                    "case {i} must not count as connected: {ended:?}"
                );
                assert!(ended.is_err(), "case {i} is an error: {ended:?}");
            }
            server.await.unwrap();
        })
        .await;
}
