//! What the console's tables show: live sessions (searchable, a page at a time; in a
//! cluster, every gateway's, each with the gateway holding it) and the certificates of
//! connected devices (expiry histogram, devices due for renewal).

use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::exposition::Counters;
use crate::cluster::control::Located;
use crate::identity::Kind;
use crate::registry::SessionInfo;

/// One live session.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRow {
    pub device: String,
    pub tenant: String,
    /// `device` or `service`.
    pub kind: String,
    /// Certificate serial, hex.
    pub serial: String,
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
    pub peer: String,
    /// Unix seconds.
    pub connected_at: u64,
    /// Unix seconds.
    pub cert_not_after: i64,
    /// MQTT version: `3.1.1` or `5`.
    pub protocol: String,
    /// In a cluster: the gateway holding the session (its `[cluster] name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

impl SessionRow {
    /// A session of this gateway (`gateway`: its cluster name, if it is in one).
    pub fn new(s: &SessionInfo, gateway: Option<&str>) -> SessionRow {
        SessionRow {
            device: s.identity.id.clone(),
            tenant: s.identity.tenant.clone(),
            kind: match s.identity.kind {
                Kind::Device => "device",
                Kind::Service => "service",
            }
            .into(),
            serial: s.identity.serial_hex(),
            fingerprint: s.identity.fingerprint_hex(),
            peer: s.peer.to_string(),
            connected_at: s
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cert_not_after: s.identity.not_after,
            protocol: s.version.name().into(),
            gateway: gateway.map(str::to_owned),
        }
    }

    /// A session another gateway of the cluster holds, from its location entry.
    pub fn located(l: &Located) -> SessionRow {
        SessionRow {
            device: l.device.clone(),
            tenant: l.tenant.clone(),
            kind: l.kind.clone(),
            serial: l.serial.clone(),
            fingerprint: l.fingerprint.clone(),
            peer: l.peer.clone(),
            connected_at: l.connected_at,
            cert_not_after: l.cert_not_after,
            protocol: l.protocol.clone(),
            gateway: Some(l.gateway.clone()),
        }
    }

    /// Whether `needle` (lowercase) is part of the device id, tenant, serial, fingerprint,
    /// peer address or gateway name.
    fn matches(&self, needle: &str) -> bool {
        [
            &self.device,
            &self.tenant,
            &self.serial,
            &self.fingerprint,
            &self.peer,
        ]
        .into_iter()
        .chain(&self.gateway)
        .any(|field| field.to_ascii_lowercase().contains(needle))
    }
}

/// Rows a page holds by default, and at most.
pub const DEFAULT_PAGE: usize = 25;
pub const MAX_PAGE: usize = 500;

/// `?q=&tenant=&offset=&limit=&scope=`
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageQuery {
    pub q: Option<String>,
    pub tenant: Option<String>,
    pub offset: Option<usize>,
    pub limit: Option<usize>,
    /// `local`: only this gateway's sessions; `cluster` (the default in a cluster): every
    /// gateway's.
    pub scope: Option<String>,
}

/// One page of the matching sessions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Page {
    /// Sessions matching the query (on every page).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub items: Vec<SessionRow>,
    /// In a cluster: this gateway's name (rows then say which gateway holds each session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// The rows matching `query`, sorted by tenant, id and gateway, one page of them.
pub fn page(mut rows: Vec<SessionRow>, query: &PageQuery) -> Page {
    let needle = query.q.as_deref().unwrap_or("").trim().to_ascii_lowercase();
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let offset = query.offset.unwrap_or(0);
    rows.retain(|row| {
        query
            .tenant
            .as_deref()
            .is_none_or(|t| t.is_empty() || row.tenant == t)
            && (needle.is_empty() || row.matches(&needle))
    });
    rows.sort_by(|a, b| {
        (&a.tenant, &a.device, &a.gateway).cmp(&(&b.tenant, &b.device, &b.gateway))
    });
    Page {
        total: rows.len(),
        offset,
        limit,
        items: rows.into_iter().skip(offset).take(limit).collect(),
        gateway: None,
    }
}

/// One bar of the expiry histogram.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Bucket {
    /// Lower bound in days (exclusive), `null` for the first bar (it also holds the expired).
    pub from_days: Option<f64>,
    /// Upper bound in days (inclusive), `null` for the last bar.
    pub to_days: Option<f64>,
    pub count: u64,
}

/// Bars from the gateway's cumulative `cert_expiry_days` histogram.
pub fn buckets(counters: &Counters) -> Vec<Bucket> {
    let mut below = 0;
    let mut from = None;
    counters
        .expiry_buckets
        .iter()
        .map(|&(le, cumulative)| {
            let bar = Bucket {
                from_days: from,
                to_days: le.is_finite().then_some(le),
                count: cumulative.saturating_sub(below),
            };
            below = cumulative;
            from = Some(le);
            bar
        })
        .collect()
}

/// Devices listed as due for renewal, at most.
pub const MAX_DUE: usize = 500;

/// Connected devices whose certificate ends within `threshold_secs` of `now`, soonest first
/// (at most [`MAX_DUE`]), and how many there are in all.
pub fn due(sessions: &[SessionInfo], now: i64, threshold_secs: i64) -> (usize, Vec<SessionRow>) {
    let mut due: Vec<&SessionInfo> = sessions
        .iter()
        .filter(|s| s.identity.kind == Kind::Device && s.identity.not_after - now <= threshold_secs)
        .collect();
    due.sort_by_key(|s| (s.identity.not_after, s.identity.id.clone()));
    let total = due.len();
    (
        total,
        due.into_iter()
            .take(MAX_DUE)
            .map(|s| SessionRow::new(s, None))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::identity::Identity;
    use crate::session::Version;

    fn session(id: &str, tenant: &str, not_after: i64, version: Version) -> SessionInfo {
        SessionInfo {
            identity: Arc::new(Identity {
                id: id.into(),
                tenant: tenant.into(),
                kind: Kind::Device,
                serial: vec![0x0a, 0xbc],
                issuer: Vec::new(),
                fingerprint: [0x5e; 32],
                not_after,
            }),
            peer: "127.0.0.1:4000".parse().unwrap(),
            connected_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
            version,
        }
    }

    fn rows(sessions: &[SessionInfo]) -> Vec<SessionRow> {
        sessions.iter().map(|s| SessionRow::new(s, None)).collect()
    }

    #[test]
    fn a_cluster_lists_every_gateways_sessions_with_the_gateway_holding_each() {
        let here = session("acme-000002", "acme", 5000, Version::V5);
        let there = Located {
            gateway: "gw-b".into(),
            device: "acme-000001".into(),
            tenant: "acme".into(),
            kind: "device".into(),
            serial: "0abc".into(),
            connected_at: 1000,
            connected_ms: 1_000_000,
            peer: "127.0.0.1:5000".into(),
            fingerprint: "5e".repeat(32),
            protocol: "3.1.1".into(),
            cert_not_after: 7000,
        };
        let all = vec![
            SessionRow::new(&here, Some("gw-a")),
            SessionRow::located(&there),
        ];
        let p = page(all.clone(), &PageQuery::default());
        let held: Vec<(&str, Option<&str>)> = p
            .items
            .iter()
            .map(|r| (r.device.as_str(), r.gateway.as_deref()))
            .collect();
        assert_eq!(
            held,
            [("acme-000001", Some("gw-b")), ("acme-000002", Some("gw-a"))]
        );
        assert_eq!(
            (p.items[0].cert_not_after, p.items[0].peer.as_str()),
            (7000, "127.0.0.1:5000")
        );
        let on_b = PageQuery {
            q: Some("GW-B".into()),
            ..PageQuery::default()
        };
        let p = page(all, &on_b);
        assert_eq!(p.total, 1);
        assert_eq!(p.items[0].device, "acme-000001");
        // A row of a single gateway has no gateway field at all.
        let single = serde_json::to_value(SessionRow::new(&here, None)).unwrap();
        assert!(single.get("gateway").is_none(), "{single}");
    }

    #[test]
    fn search_and_pages() {
        let sessions: Vec<SessionInfo> = (1..=30)
            .map(|i| session(&format!("acme-{i:06}"), "acme", 0, Version::V311))
            .chain([session("beta-000001", "beta", 0, Version::V5)])
            .collect();
        let all = page(rows(&sessions), &PageQuery::default());
        assert_eq!(
            (all.total, all.items.len(), all.limit),
            (31, DEFAULT_PAGE, DEFAULT_PAGE)
        );
        let second = page(
            rows(&sessions),
            &PageQuery {
                offset: Some(25),
                ..PageQuery::default()
            },
        );
        assert_eq!(second.items.len(), 6);
        assert_eq!(second.items[0].device, "acme-000026");
        let found = page(
            rows(&sessions),
            &PageQuery {
                q: Some(" ACME-000017 ".into()),
                ..PageQuery::default()
            },
        );
        assert_eq!(found.total, 1);
        assert_eq!(found.items[0].device, "acme-000017");
        assert_eq!(found.items[0].protocol, "3.1.1");
        assert_eq!(found.items[0].serial, "0abc");
        assert_eq!(found.items[0].connected_at, 1000);
        let beta = page(
            rows(&sessions),
            &PageQuery {
                tenant: Some("beta".into()),
                ..PageQuery::default()
            },
        );
        assert_eq!(beta.total, 1);
        assert_eq!(beta.items[0].protocol, "5");
        let by_fingerprint = PageQuery {
            q: Some("5e5e5e".into()),
            limit: Some(10_000),
            ..PageQuery::default()
        };
        let p = page(rows(&sessions), &by_fingerprint);
        assert_eq!((p.total, p.limit), (31, MAX_PAGE));
    }

    #[test]
    fn histogram_bars_and_due_devices() {
        let counters = Counters {
            expiry_buckets: vec![(1.0, 1), (7.0, 1), (30.0, 4), (f64::INFINITY, 5)],
            ..Counters::default()
        };
        let bars = buckets(&counters);
        let counts: Vec<u64> = bars.iter().map(|b| b.count).collect();
        assert_eq!(counts, [1, 0, 3, 1]);
        assert_eq!((bars[0].from_days, bars[0].to_days), (None, Some(1.0)));
        assert_eq!((bars[3].from_days, bars[3].to_days), (Some(30.0), None));

        let day = 86_400;
        let sessions = [
            session("late", "acme", 100 * day, Version::V311),
            session("soon", "acme", 3 * day, Version::V311),
            session("sooner", "acme", day, Version::V311),
        ];
        let (total, rows) = due(&sessions, 0, 30 * day);
        assert_eq!(total, 2);
        let ids: Vec<&str> = rows.iter().map(|r| r.device.as_str()).collect();
        assert_eq!(ids, ["sooner", "soon"]);
    }
}
