//! Prometheus metrics (prometheus-client), scraped from the admin listener's `/metrics`.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::registry::SessionInfo;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `refused`.
    pub result: &'static str,
    /// Why it was refused (`none` when accepted).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    pub event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `in` (from clients) or `out` (to clients).
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `file_change`, `admin`, `sighup` or `api`.
    pub trigger: &'static str,
    /// `ok` or `refused` (a bad file or an older CRL: the previous state stays in force).
    pub result: &'static str,
}

/// A CRL issuer, by name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabels {
    pub issuer: String,
}

/// Every metric the gateway keeps.
pub struct Metrics {
    registry: Registry,
    /// TLS handshakes and CONNECTs, by outcome.
    pub connects: Family<ResultLabels, Counter>,
    pub sessions: Family<TenantLabels, Gauge>,
    pub messages: Family<DirectionLabels, Counter>,
    pub bytes: Family<DirectionLabels, Counter>,
    pub acl_denials: Counter,
    /// Sessions the gateway ended, by reason (revoked, takeover, admin_kick, keepalive, …).
    pub session_ends: Family<ReasonLabels, Counter>,
    pub revocation_kicks: Counter,
    pub malformed_packets: Counter,
    /// Refusals over the audit rate limit: counted in a summary record, not written alone.
    pub audit_suppressed: Counter,
    /// TLS reloads by trigger and result.
    pub reloads: Family<ReloadLabels, Counter>,
    /// CRLs refused for being older than the one in force, by reason (`lower_number`,
    /// `older_this_update`, `issuer_missing`).
    pub crl_rollbacks: Family<ReasonLabels, Counter>,
    /// CRLs from the cluster's CRL bucket refused, by reason (`unparsable`, `bad_signature`,
    /// `lower_number`, `older_this_update`, `load_failed`).
    pub crl_refused: Family<ReasonLabels, Counter>,
    /// 1 while the cluster's CRL bucket is watched, 0 while it is not (NATS unreachable).
    pub crl_source_up: Gauge,
    /// The number of the CRL in force, by issuer.
    pub crl_number: Family<IssuerLabels, Gauge>,
    /// The thisUpdate (Unix seconds) of the CRL in force, by issuer.
    pub crl_this_update: Family<IssuerLabels, Gauge>,
    /// Messages the broker did not deliver, by reason (`queue_full`, `expired`, `denied`,
    /// `session_ended`, `retained_store_full`).
    pub dropped: Family<ReasonLabels, Counter>,
    /// Broker events (`overflow_disconnect`, `session_expired`, `session_taken_over`,
    /// `will_published`, `paused`).
    pub broker_events: Family<EventLabels, Counter>,
    /// Sessions the broker holds, connected or kept for a client that is away.
    pub broker_sessions: Gauge,
    /// (session, filter) subscriptions held.
    pub subscriptions: Gauge,
}

/// Upper bounds (days) of the certificate-expiry histogram of connected devices.
const EXPIRY_BUCKETS_DAYS: [f64; 7] = [1.0, 7.0, 14.0, 30.0, 90.0, 180.0, 365.0];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fleet_gateway");
        let m = Metrics {
            connects: Family::default(),
            sessions: Family::default(),
            messages: Family::default(),
            bytes: Family::default(),
            acl_denials: Counter::default(),
            session_ends: Family::default(),
            revocation_kicks: Counter::default(),
            malformed_packets: Counter::default(),
            audit_suppressed: Counter::default(),
            reloads: Family::default(),
            crl_rollbacks: Family::default(),
            crl_refused: Family::default(),
            crl_source_up: Gauge::default(),
            crl_number: Family::default(),
            crl_this_update: Family::default(),
            dropped: Family::default(),
            broker_events: Family::default(),
            broker_sessions: Gauge::default(),
            subscriptions: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "connects",
            "TLS handshakes and MQTT CONNECTs by result and refusal reason",
            m.connects.clone(),
        );
        registry.register(
            "sessions",
            "Live MQTT sessions by tenant",
            m.sessions.clone(),
        );
        registry.register(
            "messages",
            "PUBLISH packets by direction",
            m.messages.clone(),
        );
        registry.register("bytes", "MQTT bytes by direction", m.bytes.clone());
        registry.register(
            "acl_denials",
            "Publishes and subscriptions the ACL refused",
            m.acl_denials.clone(),
        );
        registry.register(
            "session_ends",
            "Ended sessions by reason",
            m.session_ends.clone(),
        );
        registry.register(
            "revocation_kicks",
            "Live sessions closed because their certificate was revoked",
            m.revocation_kicks.clone(),
        );
        registry.register(
            "malformed_packets",
            "Connections closed for sending bytes that are not MQTT",
            m.malformed_packets.clone(),
        );
        registry.register(
            "audit_suppressed",
            "Refusals over the audit log's rate limit, written only as counts in a summary record",
            m.audit_suppressed.clone(),
        );
        registry.register(
            "tls_reloads",
            "Reloads of the TLS files by trigger and result",
            m.reloads.clone(),
        );
        registry.register(
            "crl_rollbacks",
            "CRLs refused because they are older than the CRL in force, by reason",
            m.crl_rollbacks.clone(),
        );
        registry.register(
            "crl_refused",
            "CRLs from the cluster's CRL bucket refused (bad signature, unparsable, older than the one in force), by reason",
            m.crl_refused.clone(),
        );
        registry.register(
            "crl_source_up",
            "1 while the cluster's CRL bucket is watched; 0 while it is not (the last verified CRLs stay in force)",
            m.crl_source_up.clone(),
        );
        registry.register(
            "crl_number",
            "The CRL number of the CRL in force, by issuer",
            m.crl_number.clone(),
        );
        registry.register(
            "crl_this_update_seconds",
            "The thisUpdate (Unix seconds) of the CRL in force, by issuer",
            m.crl_this_update.clone(),
        );
        registry.register(
            "dropped_messages",
            "Messages not delivered to a subscriber, by reason (queue_full: the overflow policy)",
            m.dropped.clone(),
        );
        registry.register(
            "broker_events",
            "Broker events: overflow disconnects, expired and taken-over sessions, wills, paused deliveries",
            m.broker_events.clone(),
        );
        registry.register(
            "broker_sessions",
            "Sessions held by the broker, connected or kept for an absent client",
            m.broker_sessions.clone(),
        );
        registry.register(
            "subscriptions",
            "Subscriptions held by the broker",
            m.subscriptions.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn connect(&self, reason: Option<&'static str>) {
        let labels = match reason {
            None => ResultLabels {
                result: "ok",
                reason: "none",
            },
            Some(reason) => ResultLabels {
                result: "refused",
                reason,
            },
        };
        self.connects.get_or_create(&labels).inc();
    }

    pub fn crl_rollback(&self, reason: &'static str) {
        self.crl_rollbacks
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn crl_refused(&self, reason: &'static str) {
        self.crl_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts `n` messages dropped for `reason` (the family gets the label even at 0, so a
    /// scrape shows every reason).
    pub fn dropped(&self, reason: &'static str, n: u64) {
        self.dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(n);
    }

    pub fn broker_event(&self, event: &'static str, n: u64) {
        self.broker_events
            .get_or_create(&EventLabels { event })
            .inc_by(n);
    }

    pub fn traffic(&self, direction: &'static str, messages: u64, bytes: u64) {
        let labels = DirectionLabels { direction };
        self.messages.get_or_create(&labels).inc_by(messages);
        self.bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// The Prometheus text exposition, including the certificate-expiry histogram of the
    /// devices connected right now.
    pub fn render(&self, sessions: &[SessionInfo]) -> String {
        let mut expiry = Registry::with_prefix("fleet_gateway");
        let histogram = Histogram::new(EXPIRY_BUCKETS_DAYS);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        for s in sessions {
            histogram.observe((s.identity.not_after - now) as f64 / 86_400.0);
        }
        expiry.register(
            "cert_expiry_days",
            "Days until the certificate of each connected client expires",
            histogram,
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        let mut more = String::new();
        let _ = encode(&mut more, &expiry);
        // Both end with "# EOF"; keep one.
        out.truncate(out.trim_end().trim_end_matches("# EOF").len());
        out.push_str(&more);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_the_expiry_histogram() {
        let m = Metrics::default();
        m.connect(None);
        m.connect(Some("unknown_ca"));
        m.connect(Some("unknown_ca"));
        m.acl_denials.inc();
        m.traffic("in", 2, 100);
        m.crl_rollback("lower_number");
        m.dropped("queue_full", 3);
        m.broker_event("paused", 0);
        m.reloads
            .get_or_create(&ReloadLabels {
                trigger: "file_change",
                result: "ok",
            })
            .inc();
        m.sessions
            .get_or_create(&TenantLabels {
                tenant: "acme".into(),
            })
            .inc();
        let text = m.render(&[]);
        for line in [
            "fleet_gateway_connects_total{result=\"ok\",reason=\"none\"} 1",
            "fleet_gateway_connects_total{result=\"refused\",reason=\"unknown_ca\"} 2",
            "fleet_gateway_acl_denials_total 1",
            "fleet_gateway_messages_total{direction=\"in\"} 2",
            "fleet_gateway_bytes_total{direction=\"in\"} 100",
            "fleet_gateway_sessions{tenant=\"acme\"} 1",
            "fleet_gateway_cert_expiry_days_count 0",
            "fleet_gateway_crl_rollbacks_total{reason=\"lower_number\"} 1",
            "fleet_gateway_dropped_messages_total{reason=\"queue_full\"} 3",
            "fleet_gateway_broker_events_total{event=\"paused\"} 0",
            "fleet_gateway_tls_reloads_total{trigger=\"file_change\",result=\"ok\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
