//! The audit log: one JSON line per refused handshake or CONNECT and per session the gateway
//! ends from outside (revocation, kick, takeover).

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::identity::Identity;
use crate::Error;

/// One audit record.
#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    /// Seconds since the Unix epoch.
    pub ts: f64,
    /// `refused` or `ended`.
    pub event: &'static str,
    /// Stable reason label (`unknown_ca`, `revoked`, `client_id_mismatch`, `acl_will`, …).
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
    pub peer: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl<'a> AuditEvent<'a> {
    pub fn new(
        event: &'static str,
        reason: &'static str,
        detail: String,
        peer: SocketAddr,
        who: Option<&'a Identity>,
    ) -> Self {
        AuditEvent {
            ts: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            event,
            reason,
            detail,
            peer,
            device: who.map(|i| i.id.as_str()),
            tenant: who.map(|i| i.tenant.as_str()),
            serial: who.map(Identity::serial_hex),
            fingerprint: who.map(Identity::fingerprint_hex),
        }
    }
}

/// Where audit records go: always the `audit` tracing target, and a JSON-lines file if set.
#[derive(Default)]
pub struct AuditLog {
    file: Option<Mutex<File>>,
}

impl AuditLog {
    /// Appends to `path` (created if missing).
    pub fn open(path: &Path) -> Result<AuditLog, Error> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
        Ok(AuditLog {
            file: Some(Mutex::new(file)),
        })
    }

    pub fn record(&self, event: &AuditEvent<'_>) {
        let line = serde_json::to_string(event).unwrap_or_default();
        tracing::warn!(target: "audit", "{line}");
        if let Some(file) = &self.file {
            let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
            // A failing audit disk must not take the gateway down; it is logged instead.
            if let Err(e) = writeln!(f, "{line}") {
                tracing::error!(error = %e, "cannot write the audit log");
            }
        }
    }
}
