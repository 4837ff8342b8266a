//! Live sessions by identity: session takeover, kicks, and the list the admin API shows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::oneshot;

use crate::identity::Identity;

/// Why the gateway ended a session from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kick {
    /// Another connection with the same identity connected.
    Takeover,
    /// An operator asked for it.
    Admin,
    /// The certificate serial is now revoked.
    Revoked,
    /// The gateway is shutting down.
    Shutdown,
}

impl Kick {
    pub fn label(&self) -> &'static str {
        match self {
            Kick::Takeover => "takeover",
            Kick::Admin => "admin_kick",
            Kick::Revoked => "revoked",
            Kick::Shutdown => "shutdown",
        }
    }
}

/// A snapshot of one live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub identity: Arc<Identity>,
    pub peer: SocketAddr,
    pub connected_at: SystemTime,
    /// The MQTT version the client connected with.
    pub version: crate::session::Version,
}

struct Entry {
    conn: u64,
    info: SessionInfo,
    kick: Option<oneshot::Sender<Kick>>,
}

type Key = (String, String);

/// All live sessions, keyed by (tenant, id).
#[derive(Default, Clone)]
pub struct Registry {
    inner: Arc<Mutex<HashMap<Key, Entry>>>,
}

/// Held by a connection for as long as its session lives; dropping it deregisters.
pub struct Registration {
    registry: Registry,
    key: Key,
    conn: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.registry.lock();
        if map.get(&self.key).is_some_and(|e| e.conn == self.conn) {
            map.remove(&self.key);
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated (every update is
        // one insert or remove), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a session. If the same identity is still listed, that connection is told it
    /// was taken over (the broker core has already moved the session to the new one and
    /// closed the old connection with 0x8E; this makes sure its task ends with that reason).
    pub fn register(
        &self,
        info: SessionInfo,
        conn: u64,
    ) -> (Registration, oneshot::Receiver<Kick>) {
        let key = (info.identity.tenant.clone(), info.identity.id.clone());
        let (kick_tx, kick_rx) = oneshot::channel();
        let previous = self.lock().insert(
            key.clone(),
            Entry {
                conn,
                info,
                kick: Some(kick_tx),
            },
        );
        if let Some(k) = previous.and_then(|mut old| old.kick.take()) {
            let _ = k.send(Kick::Takeover);
        }
        (
            Registration {
                registry: self.clone(),
                key,
                conn,
            },
            kick_rx,
        )
    }

    /// Kicks the sessions for which `pick` is true; returns how many.
    pub fn kick_where(&self, reason: Kick, pick: impl Fn(&SessionInfo) -> bool) -> usize {
        let mut map = self.lock();
        let mut n = 0;
        for entry in map.values_mut().filter(|e| pick(&e.info)) {
            if let Some(k) = entry.kick.take() {
                let _ = k.send(reason.clone());
                n += 1;
            }
        }
        n
    }

    /// Snapshot of the live sessions, sorted by tenant and id.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self.lock().values().map(|e| e.info.clone()).collect();
        v.sort_by(|a, b| {
            (&a.identity.tenant, &a.identity.id).cmp(&(&b.identity.tenant, &b.identity.id))
        });
        v
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
