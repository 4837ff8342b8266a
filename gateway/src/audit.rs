//! The audit log: one JSON line per refused handshake or CONNECT and per session the gateway
//! ends from outside (revocation, kick, takeover).
//!
//! Refusals come from the network, so an attacker decides how many there are: a flood of
//! silent connections would otherwise write one `handshake_timeout` line each. Refusal
//! records are rate limited per source IP and in all ([`AuditLimits`]); a refusal over the
//! limit is counted instead, and [`AuditLog::flush_suppressed`] (every
//! [`SUMMARY_INTERVAL`], and at shutdown) writes one `suppressed` record per source with the
//! counts by reason. Nothing is lost from the figures, and the file grows by at most the
//! configured rate plus one summary per source per interval. Records of sessions the gateway
//! ended are never limited: there is at most one per session.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::limits::{PerIp, TokenBucket};

use serde::Serialize;

use crate::identity::Identity;
use crate::Error;

/// One audit record.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent<'a> {
    /// Seconds since the Unix epoch.
    pub ts: f64,
    /// `refused`, `ended`, `suppressed`, or `crl_refused` (the gateway's own decisions).
    pub event: &'static str,
    /// Stable reason label (`unknown_ca`, `revoked`, `client_id_mismatch`, `acl_will`, …).
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
    /// The client's address (none in records of the gateway's own decisions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// In a `suppressed` record: the refusals it stands for, by reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<BTreeMap<&'static str, u64>>,
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
            peer: Some(peer),
            ..AuditEvent::gateway(event, reason, detail)
        }
        .with_identity(who)
    }

    /// A record of the gateway's own decision, about no client (a refused CRL).
    pub fn gateway(event: &'static str, reason: &'static str, detail: String) -> Self {
        AuditEvent {
            ts: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            event,
            reason,
            detail,
            peer: None,
            device: None,
            tenant: None,
            serial: None,
            fingerprint: None,
            suppressed: None,
        }
    }

    /// The same record naming the certificate's device, tenant, serial and fingerprint.
    pub fn with_identity(self, who: Option<&'a Identity>) -> Self {
        AuditEvent {
            device: who.map(|i| i.id.as_str()),
            tenant: who.map(|i| i.tenant.as_str()),
            serial: who.map(Identity::serial_hex),
            fingerprint: who.map(Identity::fingerprint_hex),
            ..self
        }
    }
}

/// How many refusal records are written; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AuditLimits {
    pub source_per_minute: f64,
    pub source_burst: f64,
    pub per_minute: f64,
    pub burst: f64,
}

impl AuditLimits {
    pub fn from_limits(l: &crate::config::Limits) -> AuditLimits {
        AuditLimits {
            source_per_minute: l.audit_source_per_minute,
            source_burst: l.audit_source_burst,
            per_minute: l.audit_per_minute,
            burst: l.audit_burst,
        }
    }
}

impl Default for AuditLimits {
    fn default() -> Self {
        AuditLimits::from_limits(&crate::config::Limits::default())
    }
}

/// How often the counts of refusals not written are summarised.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Sources with suppressed refusals tracked one by one; beyond, they are summed under the
/// unspecified address so the counts themselves stay bounded.
const MAX_SUMMARISED_SOURCES: usize = 10_000;

/// Refusals not written since the last summary, by source and reason.
#[derive(Default)]
struct Suppressed {
    by_source: HashMap<IpAddr, BTreeMap<&'static str, u64>>,
}

impl Suppressed {
    fn count(&mut self, source: IpAddr, reason: &'static str) {
        let source = if self.by_source.len() >= MAX_SUMMARISED_SOURCES
            && !self.by_source.contains_key(&source)
        {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            source
        };
        *self
            .by_source
            .entry(source)
            .or_default()
            .entry(reason)
            .or_default() += 1;
    }
}

/// Where audit records go: always the `audit` tracing target, and a JSON-lines file if set.
pub struct AuditLog {
    file: Option<Mutex<File>>,
    per_source: PerIp,
    all: Mutex<TokenBucket>,
    suppressed: Mutex<Suppressed>,
}

impl Default for AuditLog {
    fn default() -> Self {
        AuditLog::new(None, AuditLimits::default())
    }
}

impl AuditLog {
    fn new(file: Option<File>, limits: AuditLimits) -> AuditLog {
        AuditLog {
            file: file.map(Mutex::new),
            per_source: PerIp::new(limits.source_per_minute / 60.0, limits.source_burst),
            all: Mutex::new(TokenBucket::new(
                limits.per_minute / 60.0,
                limits.burst,
                Instant::now(),
            )),
            suppressed: Mutex::default(),
        }
    }

    /// Records only to the `audit` tracing target.
    pub fn without_file(limits: AuditLimits) -> AuditLog {
        AuditLog::new(None, limits)
    }

    /// Appends to `path` (created if missing).
    pub fn open(path: &Path, limits: AuditLimits) -> Result<AuditLog, Error> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
        Ok(AuditLog::new(Some(file), limits))
    }

    /// Records a refusal, unless its source (or everyone together) is over the limit: then
    /// it is only counted for the next summary. Returns whether it was written.
    pub fn refusal(&self, event: &AuditEvent<'_>) -> bool {
        let now = Instant::now();
        let source = event
            .peer
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip());
        let allowed = self.per_source.allow(source, now)
            && self.all.lock().unwrap_or_else(|p| p.into_inner()).take(now);
        if allowed {
            self.record(event);
        } else {
            self.suppressed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .count(source, event.reason);
        }
        allowed
    }

    /// Writes one `suppressed` record per source whose refusals were not written since the
    /// last call, with their counts by reason; returns how many refusals they stand for.
    pub fn flush_suppressed(&self) -> u64 {
        let taken = std::mem::take(&mut *self.suppressed.lock().unwrap_or_else(|p| p.into_inner()));
        let mut sources: Vec<_> = taken.by_source.into_iter().collect();
        sources.sort_unstable_by_key(|(ip, _)| *ip);
        let mut total = 0;
        for (source, reasons) in sources {
            let n: u64 = reasons.values().sum();
            total += n;
            let by_reason: Vec<String> = reasons.iter().map(|(r, c)| format!("{r} {c}")).collect();
            let from = if source.is_unspecified() {
                "sources beyond the tracked ones".to_owned()
            } else {
                source.to_string()
            };
            let mut event = AuditEvent::new(
                "suppressed",
                "audit_rate_limited",
                format!(
                    "{n} refusals from {from} over the audit rate limit, not written one by one: {}",
                    by_reason.join(", ")
                ),
                SocketAddr::new(source, 0),
                None,
            );
            event.suppressed = Some(reasons);
            self.record(&event);
        }
        total
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(peer: &str, reason: &'static str) -> AuditEvent<'static> {
        AuditEvent::new(
            "refused",
            reason,
            "test".into(),
            peer.parse().unwrap(),
            None,
        )
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_flooding_source_is_summarised_and_others_still_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let limits = AuditLimits {
            source_per_minute: 1.0,
            source_burst: 5.0,
            per_minute: 60.0,
            burst: 100.0,
        };
        let log = AuditLog::open(&path, limits).unwrap();
        let written = (0..1000)
            .filter(|i| {
                let reason = if i % 2 == 0 {
                    "handshake_timeout"
                } else {
                    "unknown_ca"
                };
                log.refusal(&refusal("10.0.0.1:4000", reason))
            })
            .count();
        assert_eq!(
            written, 5,
            "the burst, then nothing within the same instant"
        );
        assert!(log.refusal(&refusal("10.0.0.2:4000", "unknown_ca")));
        // Session ends are never limited.
        log.record(&AuditEvent::new(
            "ended",
            "revoked",
            "test".into(),
            "10.0.0.1:4001".parse().unwrap(),
            None,
        ));
        assert_eq!(log.flush_suppressed(), 995);
        assert_eq!(log.flush_suppressed(), 0, "counts reset after a summary");

        let records = lines(&path);
        assert_eq!(records.len(), 5 + 1 + 1 + 1);
        let summary = records.last().unwrap();
        assert_eq!(summary["event"], "suppressed");
        assert_eq!(summary["reason"], "audit_rate_limited");
        assert_eq!(
            summary["suppressed"],
            serde_json::json!({"handshake_timeout": 497, "unknown_ca": 498})
        );
        assert_eq!(summary["peer"], "10.0.0.1:0");
        let detail = summary["detail"].as_str().unwrap();
        assert!(
            detail.contains("handshake_timeout 497") && detail.contains("unknown_ca 498"),
            "{detail}"
        );
    }

    #[test]
    fn many_sources_are_held_by_the_global_limit() {
        let limits = AuditLimits {
            source_per_minute: 60.0,
            source_burst: 10.0,
            per_minute: 60.0,
            burst: 50.0,
        };
        let log = AuditLog::without_file(limits);
        let written = (0..2000u32)
            .filter(|i| {
                let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
                log.refusal(&refusal(&format!("{ip}:1"), "unknown_ca"))
            })
            .count();
        assert_eq!(written, 50, "the global burst");
        assert_eq!(log.flush_suppressed(), 1950);
    }
}
