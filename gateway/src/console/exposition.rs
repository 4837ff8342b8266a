//! Reads the gateway's own metrics back from their text exposition ([`Metrics::render`]), so
//! the console shows exactly what `/metrics` says and counts nothing itself.
//!
//! [`Metrics::render`]: crate::metrics::Metrics::render

use std::collections::BTreeMap;

/// One sample line: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Line<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, String)>,
    pub value: f64,
}

impl Line<'_> {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses one sample line (`name{k="v",…} value [timestamp]`); `None` for comments, blank
/// lines and anything malformed.
pub fn parse_line(line: &str) -> Option<Line<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find(['{', ' ']) {
        Some(i) if line.as_bytes()[i] == b'{' => {
            let (labels, rest) = parse_labels(&line[i + 1..])?;
            (&line[..i], labels, rest)
        }
        Some(i) => (&line[..i], Vec::new(), &line[i..]),
        None => return None,
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Line {
        name,
        labels,
        value,
    })
}

/// Parses `k="v",…}` and returns the labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(Vec<(&str, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        let mut chars = s[eq + 1..].strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key, value));
        s = &s[eq + 1..][end + 2..];
    }
}

/// The gateway's counters and gauges at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Accepted CONNECTs since start.
    pub connects: u64,
    /// Refused handshakes and CONNECTs since start, by reason.
    pub refused: BTreeMap<String, u64>,
    pub messages_in: u64,
    pub messages_out: u64,
    /// Live sessions by tenant.
    pub sessions: BTreeMap<String, u64>,
    /// Cumulative certificate-expiry histogram of connected clients: (upper bound in days,
    /// clients at or below it); the last bound is infinite.
    pub expiry_buckets: Vec<(f64, u64)>,
}

impl Counters {
    /// Reads the counters from a text exposition.
    pub fn read(text: &str) -> Counters {
        let mut c = Counters::default();
        for line in text.lines().filter_map(parse_line) {
            let n = line.value.max(0.0) as u64;
            match line.name {
                "fleet_gateway_connects_total" => match line.label("result") {
                    Some("ok") => c.connects += n,
                    Some(_) => {
                        let reason = line.label("reason").unwrap_or("unknown");
                        *c.refused.entry(reason.to_owned()).or_default() += n;
                    }
                    None => {}
                },
                "fleet_gateway_messages_total" => match line.label("direction") {
                    Some("in") => c.messages_in += n,
                    Some("out") => c.messages_out += n,
                    _ => {}
                },
                "fleet_gateway_sessions" => {
                    if let Some(tenant) = line.label("tenant") {
                        c.sessions.insert(tenant.to_owned(), n);
                    }
                }
                "fleet_gateway_cert_expiry_days_bucket" => {
                    let le = match line.label("le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => match v.parse() {
                            Ok(v) => v,
                            Err(_) => continue,
                        },
                        None => continue,
                    };
                    c.expiry_buckets.push((le, n));
                }
                _ => {}
            }
        }
        c.expiry_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        c
    }

    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, TenantLabels};

    #[test]
    fn lines_with_and_without_labels() {
        let l =
            parse_line(r#"fleet_gateway_connects_total{result="refused",reason="unknown_ca"} 2"#)
                .unwrap();
        assert_eq!(l.name, "fleet_gateway_connects_total");
        assert_eq!(l.label("reason"), Some("unknown_ca"));
        assert_eq!(l.value, 2.0);
        let l = parse_line("fleet_gateway_acl_denials_total 7 1700000000").unwrap();
        assert_eq!(
            (l.name, l.labels.len(), l.value),
            ("fleet_gateway_acl_denials_total", 0, 7.0)
        );
        let l = parse_line(r#"m{a="x\"y\\z",b="q"} +Inf"#).unwrap();
        assert_eq!(l.label("a"), Some("x\"y\\z"));
        assert_eq!(l.label("b"), Some("q"));
        assert!(l.value.is_infinite());
        for bad in [
            "# HELP x y",
            "",
            "m{a=\"x} 1",
            "m{a=x} 1",
            "m",
            "m{a=\"1\"} x",
        ] {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn counters_from_the_gateways_own_metrics() {
        let m = Metrics::default();
        m.connect(None);
        m.connect(None);
        m.connect(Some("unknown_ca"));
        m.connect(Some("revoked"));
        m.connect(Some("unknown_ca"));
        m.traffic("in", 5, 100);
        m.traffic("out", 3, 60);
        m.sessions
            .get_or_create(&TenantLabels {
                tenant: "acme".into(),
            })
            .inc();
        let c = Counters::read(&m.render(&[]));
        assert_eq!(c.connects, 2);
        assert_eq!(c.refused["unknown_ca"], 2);
        assert_eq!(c.refused["revoked"], 1);
        assert_eq!(c.refused_total(), 3);
        assert_eq!((c.messages_in, c.messages_out), (5, 3));
        assert_eq!(c.sessions["acme"], 1);
        let bounds: Vec<f64> = c.expiry_buckets.iter().map(|b| b.0).collect();
        assert_eq!(
            bounds,
            [1.0, 7.0, 14.0, 30.0, 90.0, 180.0, 365.0, f64::INFINITY]
        );
        assert!(c.expiry_buckets.iter().all(|b| b.1 == 0));
    }
}
