//! What the gateways of a cluster tell each other besides messages: revocations, admin
//! kicks and where each session is.
//!
//! - **Revocations** are keys `revoked.<sha256(issuer)>.<serial>` in the control bucket. A
//!   gateway whose CRL files change writes the serials that became revoked
//!   ([`Cluster::announce_revoked`](super::Cluster::announce_revoked)); every gateway
//!   watches the bucket, refuses those certificates from then on and closes their live
//!   sessions at once (within milliseconds of the write, well inside a second).
//! - **Kicks**: `POST /v1/sessions/{device}/kick` on any gateway also publishes an order on
//!   `<prefix>.control.kick`, which every gateway subscribes to; the one holding the session
//!   closes it.
//! - **Locations**: each gateway writes `session.<tenant>.<id>.<gateway>` for its live
//!   sessions (and deletes it when they end), and `gateway.<name>` with a heartbeat, every
//!   [`SYNC_EVERY`]; every gateway watches them, so `GET /v1/sessions?scope=cluster` on any
//!   of them lists the cluster's sessions with the gateway holding each. Sessions of a
//!   gateway whose heartbeat is older than [`STALE_AFTER`] (it died) are not listed.
//! - **Takeover**: a gateway that sees another gateway's entry for a client it holds, from
//!   a later connection, closes its own with 0x8E (session taken over), within
//!   [`SYNC_EVERY`] and a watch round trip. The session's state does not move: the new
//!   gateway starts it afresh.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::link::Link;
use super::subject::token;
use crate::identity::Kind;
use crate::registry::{Kick, Registry, SessionInfo};

/// How often a gateway writes its session locations and heartbeat.
pub const SYNC_EVERY: Duration = Duration::from_millis(500);
/// A gateway whose heartbeat is older than this is taken as gone.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_secs(1);

/// Where a session is: one entry of `GET /v1/sessions?scope=cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located {
    /// The gateway holding it (its `[cluster] name`).
    pub gateway: String,
    pub device: String,
    pub tenant: String,
    /// `device` or `service`.
    pub kind: String,
    pub serial: String,
    /// Seconds since the Unix epoch.
    pub connected_at: u64,
    /// The same in milliseconds: the newer of two connections of one client wins.
    #[serde(default)]
    pub connected_ms: u64,
    /// What the console shows of a session held by another gateway (absent in entries of
    /// gateways from before they were written).
    #[serde(default)]
    pub peer: String,
    /// SHA-256 of the certificate, hex.
    #[serde(default)]
    pub fingerprint: String,
    /// MQTT version: `3.1.1` or `5`.
    #[serde(default)]
    pub protocol: String,
    /// The certificate's notAfter, Unix seconds.
    #[serde(default)]
    pub cert_not_after: i64,
}

/// An admin kick, sent to every gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The gateway the operator asked.
    pub origin: String,
    pub device: String,
    pub tenant: Option<String>,
}

/// A revoked certificate as the control bucket holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RevokedEntry {
    /// The issuer's name (DER), hex.
    issuer: String,
    /// The serial number without leading zero bytes, hex.
    serial: String,
    /// The gateway that saw it in its CRL first.
    by: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Heartbeat {
    /// Seconds since the Unix epoch.
    at: u64,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each update is one insert or remove: a poisoned lock holds a consistent value.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The key of a revoked certificate.
fn revoked_key(issuer: &[u8], serial: &[u8]) -> String {
    let issuer = hex::encode(Sha256::digest(issuer));
    format!("revoked.{issuer}.{}", hex::encode(strip_zeros(serial)))
}

/// One gateway's entry for a client: during a takeover both gateways have one for a moment.
fn session_key(tenant: &str, id: &str, gateway: &str) -> String {
    format!("session.{}.{}.{}", token(tenant), token(id), token(gateway))
}

/// What every gateway knows of the cluster, kept current by the watch.
#[derive(Debug, Default)]
pub struct Control {
    revoked: Mutex<HashSet<(Vec<u8>, Vec<u8>)>>,
    sessions: Mutex<HashMap<String, Located>>,
    heartbeats: Mutex<HashMap<String, u64>>,
}

impl Control {
    /// Whether another gateway announced this certificate as revoked.
    pub fn is_revoked(&self, issuer: &[u8], serial: &[u8]) -> bool {
        lock(&self.revoked).contains(&(issuer.to_vec(), strip_zeros(serial).to_vec()))
    }

    /// The gateways whose heartbeat is current, by name.
    pub fn gateways(&self) -> Vec<String> {
        let now = unix_secs();
        let mut alive: Vec<String> = lock(&self.heartbeats)
            .iter()
            .filter(|(_, at)| now.saturating_sub(**at) <= STALE_AFTER.as_secs())
            .map(|(g, _)| g.clone())
            .collect();
        alive.sort();
        alive
    }

    /// The sessions of the gateways alive now, sorted by tenant, id.
    pub fn sessions(&self) -> Vec<Located> {
        let alive: HashSet<String> = self.gateways().into_iter().collect();
        let mut list: Vec<Located> = lock(&self.sessions)
            .values()
            .filter(|l| alive.contains(&l.gateway))
            .cloned()
            .collect();
        list.sort_by(|a, b| (&a.tenant, &a.device).cmp(&(&b.tenant, &b.device)));
        list
    }

    /// Applies one entry of the control bucket; closes the local sessions a revocation
    /// names, and the local session of a client that connected later to another gateway
    /// (`me`) — a takeover across gateways, closed with 0x8E.
    fn apply(&self, entry: &kv::Entry, registry: &Registry, me: &str) -> Result<(), String> {
        let put = entry.operation == kv::Operation::Put;
        let kind = entry.key.split('.').next().unwrap_or("");
        match kind {
            "revoked" if put => {
                let r: RevokedEntry =
                    serde_json::from_slice(&entry.value).map_err(|e| e.to_string())?;
                let issuer = hex::decode(&r.issuer).map_err(|e| e.to_string())?;
                let serial = hex::decode(&r.serial).map_err(|e| e.to_string())?;
                let kicked = registry.kick_where(Kick::Revoked, |s| {
                    s.identity.issuer == issuer && strip_zeros(&s.identity.serial) == serial
                });
                if kicked > 0 {
                    tracing::info!(
                        serial = r.serial,
                        by = r.by,
                        kicked,
                        "cluster: revoked certificate's session closed"
                    );
                }
                lock(&self.revoked).insert((issuer, serial));
            }
            "session" if put => {
                let l: Located = serde_json::from_slice(&entry.value).map_err(|e| e.to_string())?;
                if l.gateway != me {
                    let taken = registry.kick_where(Kick::Takeover, |s| {
                        s.identity.id == l.device
                            && s.identity.tenant == l.tenant
                            && unix_ms(s.connected_at) < l.connected_ms
                    });
                    if taken > 0 {
                        tracing::info!(
                            device = l.device,
                            to = l.gateway,
                            "cluster: session taken over by another gateway"
                        );
                    }
                }
                lock(&self.sessions).insert(entry.key.clone(), l);
            }
            "session" => {
                lock(&self.sessions).remove(&entry.key);
            }
            "gateway" if put => {
                let h: Heartbeat =
                    serde_json::from_slice(&entry.value).map_err(|e| e.to_string())?;
                let name = entry.key.strip_prefix("gateway.").unwrap_or_default();
                lock(&self.heartbeats).insert(name.to_owned(), h.at);
            }
            _ => {}
        }
        Ok(())
    }
}

/// A live session's location entry.
fn located(gateway: &str, s: &SessionInfo) -> Located {
    Located {
        gateway: gateway.to_owned(),
        device: s.identity.id.clone(),
        tenant: s.identity.tenant.clone(),
        kind: match s.identity.kind {
            Kind::Device => "device".into(),
            Kind::Service => "service".into(),
        },
        serial: s.identity.serial_hex(),
        connected_at: s
            .connected_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        connected_ms: unix_ms(s.connected_at),
        peer: s.peer.to_string(),
        fingerprint: s.identity.fingerprint_hex(),
        protocol: s.version.name().into(),
        cert_not_after: s.identity.not_after,
    }
}

impl Link {
    fn kick_subject(&self) -> String {
        format!("{}.control.kick", self.config.subject_prefix)
    }

    /// The control bucket, once NATS is ready.
    async fn control_bucket(&self) -> kv::Store {
        loop {
            if self.status.ready().is_ok() {
                if let Ok(store) = self.bucket(&self.config.control_bucket).await {
                    return store;
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Watches the control bucket into `control` (revocations close local sessions).
    pub(super) async fn watch_control(self: Arc<Self>, control: Arc<Control>, registry: Registry) {
        loop {
            let bucket = self.control_bucket().await;
            match bucket.watch_with_history(">").await {
                Ok(mut watch) => {
                    while let Some(entry) = watch.next().await {
                        let applied = entry
                            .map_err(|e| e.to_string())
                            .and_then(|e| control.apply(&e, &registry, &self.name));
                        if let Err(e) = applied {
                            tracing::warn!(error = %e, "cluster: control bucket entry ignored");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cluster: cannot watch the control bucket"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Carries out the admin kicks other gateways send.
    pub(super) async fn obey_kicks(self: Arc<Self>, registry: Registry) {
        loop {
            match self.client.subscribe(self.kick_subject()).await {
                Ok(mut orders) => {
                    while let Some(m) = orders.next().await {
                        match serde_json::from_slice::<Order>(&m.payload) {
                            Ok(o) if o.origin != self.name => {
                                let n = registry.kick_where(Kick::Admin, |s| {
                                    s.identity.id == o.device
                                        && o.tenant.as_ref().is_none_or(|t| *t == s.identity.tenant)
                                });
                                tracing::info!(
                                    device = o.device,
                                    from = o.origin,
                                    kicked = n,
                                    "cluster: admin kick"
                                );
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!(error = %e, "cluster: kick order ignored"),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cluster: cannot subscribe to kick orders"),
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Sends an admin kick to every other gateway.
    pub(super) async fn send_kick(&self, order: &Order) -> Result<(), String> {
        let body = serde_json::to_vec(order).map_err(|e| e.to_string())?;
        self.client
            .publish(self.kick_subject(), body.into())
            .await
            .map_err(|e| e.to_string())?;
        self.client.flush().await.map_err(|e| e.to_string())
    }

    /// Writes the revoked certificates not yet in the bucket.
    pub(super) async fn write_revoked(&self, revoked: &[(Vec<u8>, Vec<u8>)]) -> Result<(), String> {
        let bucket = self.bucket(&self.config.control_bucket).await?;
        for (issuer, serial) in revoked {
            let entry = RevokedEntry {
                issuer: hex::encode(issuer),
                serial: hex::encode(strip_zeros(serial)),
                by: self.name.clone(),
            };
            let body = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
            // `create` fails when another gateway wrote it first: that is fine.
            let _ = bucket
                .create(revoked_key(issuer, serial), body.into())
                .await;
        }
        Ok(())
    }

    /// Keeps this gateway's session locations and heartbeat in the control bucket.
    pub(super) async fn publish_locations(self: Arc<Self>, registry: Registry) {
        let mut written: HashMap<String, Located> = HashMap::new();
        let mut bucket: Option<kv::Store> = None;
        let mut tick = tokio::time::interval(SYNC_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.status.ready().is_err() {
                continue;
            }
            if bucket.is_none() {
                bucket = self.bucket(&self.config.control_bucket).await.ok();
            }
            let Some(store) = &bucket else {
                continue;
            };
            if let Err(e) = self.sync_locations(store, &registry, &mut written).await {
                tracing::warn!(error = %e, "cluster: session locations not written");
                bucket = None;
            }
        }
    }

    async fn sync_locations(
        &self,
        store: &kv::Store,
        registry: &Registry,
        written: &mut HashMap<String, Located>,
    ) -> Result<(), String> {
        let now: HashMap<String, Located> = registry
            .list()
            .iter()
            .map(|s| {
                (
                    session_key(&s.identity.tenant, &s.identity.id, &self.name),
                    located(&self.name, s),
                )
            })
            .collect();
        let gone: Vec<String> = written
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            store.delete(&key).await.map_err(|e| e.to_string())?;
            written.remove(&key);
        }
        for (key, l) in now {
            if written.get(&key) != Some(&l) {
                let body = serde_json::to_vec(&l).map_err(|e| e.to_string())?;
                store
                    .put(&key, body.into())
                    .await
                    .map_err(|e| e.to_string())?;
                written.insert(key, l);
            }
        }
        let beat = serde_json::to_vec(&Heartbeat { at: unix_secs() }).map_err(|e| e.to_string())?;
        store
            .put(format!("gateway.{}", token(&self.name)), beat.into())
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kv_keys() {
        let key = revoked_key(b"\x30\x10issuer", &[0, 0, 0x12, 0x34]);
        assert!(
            key.starts_with("revoked.") && key.ends_with(".1234"),
            "{key}"
        );
        assert_eq!(key.split('.').count(), 3);
        assert_eq!(
            session_key("acme", "dev/1.a", "gw-1"),
            "session.acme.dev=2F1=2Ea.gw-1"
        );
        let ok = |k: &str| {
            k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b))
        };
        assert!(ok(&key) && ok(&session_key("a b", "ü", "g")));
    }

    #[test]
    fn sessions_of_a_silent_gateway_are_not_listed() {
        let control = Control::default();
        let at = |gw: &str, device: &str| Located {
            gateway: gw.into(),
            device: device.into(),
            tenant: "acme".into(),
            kind: "device".into(),
            serial: "01".into(),
            connected_at: 0,
            connected_ms: 0,
            peer: String::new(),
            fingerprint: String::new(),
            protocol: String::new(),
            cert_not_after: 0,
        };
        lock(&control.sessions).insert("session.acme.d2".into(), at("gw-b", "d2"));
        lock(&control.sessions).insert("session.acme.d1".into(), at("gw-a", "d1"));
        lock(&control.heartbeats).insert("gw-a".into(), unix_secs());
        lock(&control.heartbeats).insert("gw-b".into(), unix_secs() - 60);
        assert_eq!(control.sessions(), [at("gw-a", "d1")]);
        lock(&control.heartbeats).insert("gw-b".into(), unix_secs());
        assert_eq!(control.sessions(), [at("gw-a", "d1"), at("gw-b", "d2")]);
    }

    #[test]
    fn revoked_serials_match_without_leading_zeros() {
        let control = Control::default();
        lock(&control.revoked).insert((b"issuer".to_vec(), vec![0x12]));
        assert!(control.is_revoked(b"issuer", &[0, 0x12]));
        assert!(!control.is_revoked(b"other", &[0x12]));
    }
}
