//! Reading the audit log back: the newest records, filtered by device, tenant, event or
//! reason, each with its plain-words explanation. The file is read from its end and never
//! more than a bounded number of bytes and lines, however large it has grown.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::explain::explain;

/// Bytes read from the end of the file by default, and at most.
pub const DEFAULT_BYTES: u64 = 4 << 20;
pub const MAX_BYTES: u64 = 16 << 20;
/// Lines looked at, at most.
pub const MAX_LINES: usize = 200_000;
/// Records returned by default, and at most.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// One audit record as the gateway wrote it (see [`crate::audit::AuditEvent`]).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Record {
    pub ts: f64,
    pub event: String,
    pub reason: String,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub peer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<BTreeMap<String, u64>>,
}

/// A record and what its reason means.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Explained {
    #[serde(flatten)]
    pub record: Record,
    /// The plain words `fleet-gateway doctor` uses for this reason (`null` if unknown).
    pub explanation: Option<&'static str>,
}

/// Which records to return.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    pub device: Option<String>,
    pub tenant: Option<String>,
    pub reason: Option<String>,
    /// `refused`, `ended` or `suppressed`.
    pub event: Option<String>,
    /// Records returned (newest first), at most [`MAX_LIMIT`].
    pub limit: Option<usize>,
    /// Bytes read from the end of the file, at most [`MAX_BYTES`].
    pub max_bytes: Option<u64>,
}

impl Filter {
    fn keeps(&self, r: &Record) -> bool {
        let is = |want: &Option<String>, have: Option<&str>| {
            want.as_deref()
                .is_none_or(|w| w.is_empty() || have == Some(w))
        };
        is(&self.device, r.device.as_deref())
            && is(&self.tenant, r.tenant.as_deref())
            && is(&self.reason, Some(&r.reason))
            && is(&self.event, Some(&r.event))
    }
}

/// What a read found.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Feed {
    /// Whether the gateway writes an audit file (`audit_log` in its config).
    pub file: bool,
    /// Matching records, newest first.
    pub records: Vec<Explained>,
    /// Bytes and lines looked at.
    pub scanned_bytes: u64,
    pub scanned_lines: usize,
    /// Lines that were not audit records (e.g. cut off by a full disk).
    pub unreadable_lines: usize,
    /// Whether the whole file was looked at; if not, older records may match too.
    pub complete: bool,
}

impl Feed {
    pub fn no_file() -> Feed {
        Feed {
            file: false,
            records: Vec::new(),
            scanned_bytes: 0,
            scanned_lines: 0,
            unreadable_lines: 0,
            complete: true,
        }
    }
}

/// Reads the newest matching records of the audit file at `path`.
pub fn read(path: &Path, filter: &Filter) -> std::io::Result<Feed> {
    let limit = filter.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let max_bytes = filter
        .max_bytes
        .unwrap_or(DEFAULT_BYTES)
        .clamp(1, MAX_BYTES);
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(max_bytes);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(max_bytes).read_to_end(&mut bytes)?;
    let mut text = String::from_utf8_lossy(&bytes);
    if start > 0 {
        // The first line is probably cut: start at the next whole one.
        let whole = text.find('\n').map_or(text.len(), |i| i + 1);
        text = std::borrow::Cow::Owned(text[whole..].to_owned());
    }
    let mut feed = Feed {
        file: true,
        records: Vec::new(),
        scanned_bytes: bytes.len() as u64,
        scanned_lines: 0,
        unreadable_lines: 0,
        complete: start == 0,
    };
    for line in text.lines().rev() {
        if feed.records.len() == limit {
            break;
        }
        if feed.scanned_lines == MAX_LINES {
            feed.complete = false;
            break;
        }
        feed.scanned_lines += 1;
        let Ok(record) = serde_json::from_str::<Record>(line) else {
            feed.unreadable_lines += usize::from(!line.trim().is_empty());
            continue;
        };
        if filter.keeps(&record) {
            feed.records.push(Explained {
                explanation: explain(&record.reason),
                record,
            });
        }
    }
    Ok(feed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditEvent, AuditLimits, AuditLog};

    fn write_log(path: &Path) {
        let log = AuditLog::open(path, AuditLimits::default()).unwrap();
        for i in 0..30 {
            let reason = if i % 3 == 0 {
                "unknown_ca"
            } else {
                "handshake_timeout"
            };
            log.record(&AuditEvent::new(
                "refused",
                reason,
                format!("attempt {i}"),
                format!("10.0.0.{i}:4000").parse().unwrap(),
                None,
            ));
        }
        let mut kicked = AuditEvent::new(
            "ended",
            "admin_kick",
            "session closed by the gateway: admin_kick".into(),
            "127.0.0.1:5000".parse().unwrap(),
            None,
        );
        kicked.device = Some("acme-000002");
        kicked.tenant = Some("acme");
        log.record(&kicked);
    }

    #[test]
    fn newest_first_filtered_and_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write_log(&path);
        let all = read(&path, &Filter::default()).unwrap();
        assert_eq!(all.records.len(), 31);
        assert!(all.complete);
        assert_eq!(all.records[0].record.reason, "admin_kick");
        assert_eq!(all.records[1].record.detail, "attempt 29");

        let unknown = read(
            &path,
            &Filter {
                reason: Some("unknown_ca".into()),
                limit: Some(3),
                ..Filter::default()
            },
        )
        .unwrap();
        let details: Vec<&str> = unknown
            .records
            .iter()
            .map(|r| r.record.detail.as_str())
            .collect();
        assert_eq!(details, ["attempt 27", "attempt 24", "attempt 21"]);
        assert_eq!(unknown.records[0].explanation, explain("unknown_ca"));
        assert!(unknown.records[0]
            .explanation
            .unwrap()
            .contains("client CAs"));

        let device = read(
            &path,
            &Filter {
                device: Some("acme-000002".into()),
                ..Filter::default()
            },
        )
        .unwrap();
        assert_eq!(device.records.len(), 1);
        assert_eq!(device.records[0].record.tenant.as_deref(), Some("acme"));
        let other = Filter {
            device: Some("acme-000003".into()),
            ..Filter::default()
        };
        assert!(read(&path, &other).unwrap().records.is_empty());
    }

    #[test]
    fn reads_only_the_end_of_a_large_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write_log(&path);
        // A torn line in the middle (a full disk) is skipped and counted.
        let mut text = std::fs::read_to_string(&path).unwrap();
        let at = text[..text.len() / 2].rfind('\n').unwrap() + 1;
        text.insert_str(at, "{\"ts\":1,\"ev\n");
        std::fs::write(&path, &text).unwrap();
        let bounded = Filter {
            max_bytes: Some(1000),
            ..Filter::default()
        };
        let feed = read(&path, &bounded).unwrap();
        assert!(!feed.complete);
        assert_eq!(feed.scanned_bytes, 1000);
        assert!(!feed.records.is_empty() && feed.records.len() < 31);
        assert_eq!(feed.records[0].record.reason, "admin_kick");
        let whole = read(&path, &Filter::default()).unwrap();
        assert_eq!(whole.records.len(), 31);
        assert_eq!(whole.unreadable_lines, 1);
    }
}
