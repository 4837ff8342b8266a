//! What the console's tables show: live sessions (searchable, a page at a time) and the
//! certificates of connected devices (expiry histogram, devices due for renewal).

use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use super::exposition::Counters;
use crate::identity::Kind;
use crate::registry::SessionInfo;
use crate::session::Version;

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
}

impl SessionRow {
    pub fn new(s: &SessionInfo) -> SessionRow {
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
            protocol: match s.version {
                Version::V311 => "3.1.1",
                Version::V5 => "5",
            }
            .into(),
        }
    }

    /// Whether `needle` (lowercase) is part of the device id, tenant, serial, fingerprint or
    /// peer address.
    fn matches(&self, needle: &str) -> bool {
        [
            &self.device,
            &self.tenant,
            &self.serial,
            &self.fingerprint,
            &self.peer,
        ]
        .iter()
        .any(|field| field.to_ascii_lowercase().contains(needle))
    }
}

/// Rows a page holds by default, and at most.
pub const DEFAULT_PAGE: usize = 25;
pub const MAX_PAGE: usize = 500;

/// `?q=&tenant=&offset=&limit=`
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageQuery {
    pub q: Option<String>,
    pub tenant: Option<String>,
    pub offset: Option<usize>,
    pub limit: Option<usize>,
}

/// One page of the matching sessions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Page {
    /// Sessions matching the query (on every page).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub items: Vec<SessionRow>,
}

/// The sessions matching `query`, sorted by tenant and id, one page of them.
pub fn page(sessions: &[SessionInfo], query: &PageQuery) -> Page {
    let needle = query.q.as_deref().unwrap_or("").trim().to_ascii_lowercase();
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let offset = query.offset.unwrap_or(0);
    let matching: Vec<SessionRow> = sessions
        .iter()
        .filter(|s| {
            query
                .tenant
                .as_deref()
                .is_none_or(|t| t.is_empty() || s.identity.tenant == t)
        })
        .map(SessionRow::new)
        .filter(|row| needle.is_empty() || row.matches(&needle))
        .collect();
    Page {
        total: matching.len(),
        offset,
        limit,
        items: matching.into_iter().skip(offset).take(limit).collect(),
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
        due.into_iter().take(MAX_DUE).map(SessionRow::new).collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::identity::Identity;

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

    #[test]
    fn search_and_pages() {
        let sessions: Vec<SessionInfo> = (1..=30)
            .map(|i| session(&format!("acme-{i:06}"), "acme", 0, Version::V311))
            .chain([session("beta-000001", "beta", 0, Version::V5)])
            .collect();
        let all = page(&sessions, &PageQuery::default());
        assert_eq!(
            (all.total, all.items.len(), all.limit),
            (31, DEFAULT_PAGE, DEFAULT_PAGE)
        );
        let second = page(
            &sessions,
            &PageQuery {
                offset: Some(25),
                ..PageQuery::default()
            },
        );
        assert_eq!(second.items.len(), 6);
        assert_eq!(second.items[0].device, "acme-000026");
        let found = page(
            &sessions,
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
            &sessions,
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
        let p = page(&sessions, &by_fingerprint);
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
