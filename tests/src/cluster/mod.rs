//! Fixtures of the gateway cluster tests (`tests/tests/cluster.rs`): nats-server with
//! JetStream on loopback (one server or three clustered), gateways (the binary) that share
//! one PKI and one NATS, each with its admin listener, and a wait for a route between two
//! of them.

pub mod nats;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use nats::{Nats, NatsServer};

use crate::conformance::{Broker, Conn, Msg};

/// How long a gateway may take to be ready (connected, stream and buckets set up).
pub const READY_WITHIN: Duration = Duration::from_secs(20);

/// The config a cluster gateway adds to the conformance gateway's: its admin listener and
/// its `[cluster]` table.
pub fn cluster_toml(servers: &[String], name: &str, admin: SocketAddr) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[admin]\nlisten = \"{admin}\"\n\n[cluster]\nservers = [{}]\nname = \"{name}\"\n",
        servers.join(", ")
    )
}

/// A free loopback address for an admin listener: below the kernel's ephemeral range (where
/// the NATS servers' and every client's ports come from, so none of them can take it between
/// this check and the gateway's bind), from a counter starting at a place of this process's
/// own.
pub fn free_admin() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + u16::try_from(std::process::id() % 500).unwrap_or(0) * 20;
    for _ in 0..10_000 {
        let port = 20_000 + (base - 20_000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 10_000;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port in 20000..30000 for an admin listener");
}

/// Gateways on one NATS (the first owns the PKI the others share).
pub struct Gateways {
    pub gateways: Vec<Broker>,
    pub admins: Vec<SocketAddr>,
}

impl Gateways {
    /// `n` gateways named `gw-a`, `gw-b`, … on `servers`, without waiting for readiness.
    pub fn start(servers: &[String], n: usize) -> Gateways {
        let mut gateways: Vec<Broker> = Vec::new();
        let mut admins = Vec::new();
        for i in 0..n {
            let admin = free_admin();
            let name = format!("gw-{}", char::from(b'a' + u8::try_from(i).expect("few")));
            let extra = cluster_toml(servers, &name, admin);
            let gw = match gateways.first() {
                Some(first) => first.sibling_gateway(&extra),
                None => Broker::gateway_with(&extra),
            };
            gateways.push(gw);
            admins.push(admin);
        }
        Gateways { gateways, admins }
    }

    /// Waits until every gateway says it is ready; panics with their logs otherwise.
    pub async fn wait_ready(&self) {
        for (gw, admin) in self.gateways.iter().zip(&self.admins) {
            let start = Instant::now();
            loop {
                let (status, body) = readyz(*admin).await;
                if status == 200 {
                    break;
                }
                assert!(
                    start.elapsed() < READY_WITHIN,
                    "gateway at {} not ready within {READY_WITHIN:?}: {status} {body}\n{}",
                    gw.addr,
                    gw.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Every gateway's log (for failure messages).
    pub fn logs(&self) -> String {
        self.gateways
            .iter()
            .map(|g| format!("--- gateway {} ---\n{}", g.addr, g.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `GET /readyz` on an admin listener: (status, body); (0, why) when it does not answer.
pub async fn readyz(admin: SocketAddr) -> (u16, String) {
    get(admin, "/readyz").await
}

/// One GET on an admin listener: (status, body); (0, why) when it does not answer.
pub async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    {
        Ok(Ok(_)) => crate::http(admin, "GET", path, None).await,
        Ok(Err(e)) => (0, e.to_string()),
        Err(_) => (0, "connect timed out".into()),
    }
}

/// Publishes QoS 0 probes on `topic` from `publisher` until `subscriber` (subscribed to a
/// filter matching it) receives one, then lets the stragglers arrive and drops them: the
/// route between the two gateways works when this returns. (The SUBACK already waits for
/// the NATS subscription; a test that checks that publishes right after it instead.)
pub async fn await_route(publisher: &mut Conn, subscriber: &mut Conn, topic: &str) {
    let start = Instant::now();
    loop {
        publisher.publish(&Msg::new(topic, "probe", 0, 0)).await;
        if let Ok(p) = subscriber.recv(Duration::from_millis(100)).await {
            let m = p.publish().expect("a probe PUBLISH");
            assert_eq!(m.text(), "probe", "{}: {m:?}", subscriber.name);
            break;
        }
        assert!(
            start.elapsed() < READY_WITHIN,
            "no route from {} to {} on {topic}",
            publisher.name,
            subscriber.name
        );
    }
    while let Ok(p) = subscriber.recv(Duration::from_millis(300)).await {
        let m = p.publish().expect("a probe PUBLISH");
        assert_eq!(m.text(), "probe", "{}: {m:?}", subscriber.name);
    }
}

/// One NATS and two ready gateways, or `None` (a skip) without nats-server.
pub async fn pair() -> Option<(Nats, Gateways)> {
    let nats = Nats::single()?;
    let gws = Gateways::start(&nats.urls(), 2);
    gws.wait_ready().await;
    Some((nats, gws))
}

/// Waits (bounded by `within`) until the connection is closed by the gateway; returns how
/// long that took.
pub async fn closed_within(conn: &mut Conn, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match conn.recv(within.saturating_sub(start.elapsed())).await {
            Err(crate::conformance::wire::Gone::Closed) => return start.elapsed(),
            Err(crate::conformance::wire::Gone::Timeout) => {
                panic!("{}: still open after {within:?}", conn.name)
            }
            // A DISCONNECT (v5) or anything else before the close.
            Ok(_) | Err(_) => {}
        }
    }
}
