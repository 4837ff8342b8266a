//! The station's tamper-evident audit log.
//!
//! `DIR/audit.log` holds one JSON record per line; each record carries its sequence number
//! and the SHA-256 of the previous line's exact bytes, so editing, removing or reordering any
//! record breaks the chain. The hash of the newest line is also kept in the registry database
//! (`audit_head` in `DIR/registry.sqlite3`; with a shared PostgreSQL registry, `audit_heads`
//! there, next to a copy of every record: see [`postgres`]), which catches a cut-off tail.
//! At the end of every batch a manifest of the
//! issued certificate fingerprints is written and signed with the issuing CA key; its hash is
//! recorded in the log. `fleet-provision audit verify` checks all of it.

mod postgres;
mod shared;
#[cfg(test)]
mod tests;
mod verify;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

pub(crate) use postgres::insert_log;
pub use shared::{verify_all_stations, StationProblem, StationVerified};
pub use verify::{verify, verify_at, Problem, Verified};

use crate::digest::sha256_hex;
use crate::error::{db as db_err, io as io_err, AuditError, Error};
use crate::registry::PostgresTarget;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    CaInit {
        org: String,
        root_fingerprint: String,
        issuing_fingerprint: String,
    },
    ServerCert {
        hosts: Vec<String>,
        fingerprint: String,
    },
    ServiceCert {
        name: String,
        tenant: String,
        fingerprint: String,
    },
    Issue {
        device_id: String,
        tenant: String,
        serial: String,
        fingerprint: String,
        batch: String,
    },
    Manifest {
        batch: String,
        devices: usize,
        sha256: String,
    },
    Revoke {
        device_id: String,
        serial: String,
        reason: String,
        /// Who asked, when it came through the API: the operator certificate's CN and role
        /// (`ops (service, acme)`, `console (operator)`). Absent from the command line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
    Crl {
        number: u64,
        revoked: usize,
        sha256: String,
    },
    CaImport {
        issuing_fingerprint: String,
        root_fingerprint: String,
    },
    /// A new certificate for an existing device, from its CSR.
    Renew {
        device_id: String,
        serial: String,
        fingerprint: String,
        /// The serial of the certificate that proved the device's identity.
        presented: String,
    },
    /// Certificates superseded by a renewal whose grace period ended.
    ExpireSuperseded { serials: Vec<String> },
    /// The station's SQLite registry and this log's records were moved into a shared
    /// PostgreSQL registry (`fleet-provision registry migrate`).
    Migrated {
        /// The shared registry (`postgres://user@host:port/db`, never a password).
        to: String,
        /// The station's name there.
        station: String,
        devices: usize,
        certs: usize,
        /// The records moved with it (all before this one).
        records: u64,
    },
    /// What a run found after a crash or failure and how it settled it.
    Recovery {
        /// Reserved serials whose certificates were never delivered (now on the CRL).
        aborted: Vec<String>,
        /// Bytes of a torn (half-written) last record that were discarded.
        torn_bytes: usize,
    },
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    pub ts: i64,
    /// SHA-256 (hex) of the previous line; 64 zeros for the first.
    pub prev: String,
    #[serde(flatten)]
    pub event: Event,
}

/// A batch manifest: what one batch issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub batch: String,
    pub tenant: String,
    /// (device id, serial hex, certificate SHA-256 hex)
    pub devices: Vec<(String, String, String)>,
}

/// Where a station's audit log is anchored.
#[derive(Debug, Clone, Copy)]
pub enum AnchorAt<'a> {
    /// `DIR/registry.sqlite3` (table `audit_head`).
    StationDir,
    /// A shared PostgreSQL registry: the anchor and a copy of every record, as `station`.
    Shared {
        target: &'a PostgresTarget,
        station: &'a str,
    },
}

/// One appended line: what the anchor needs of it.
pub(crate) struct Line {
    seq: u64,
    prev: String,
    text: String,
    hash: String,
}

/// A station's whole log, read to be moved into a shared registry (`registry migrate`),
/// with the record that says so.
pub(crate) struct WholeLog {
    path: PathBuf,
    len: u64,
    pub(crate) lines: Vec<Line>,
}

impl WholeLog {
    pub(crate) fn read(dir: &Path) -> Result<WholeLog, Error> {
        let path = dir.join("audit.log");
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        let lines = lines_after(&text, 0, GENESIS.to_owned());
        Ok(WholeLog {
            len: text.len() as u64,
            path,
            lines,
        })
    }

    /// Encodes `event` as the record after the last, and appends it durably to the file
    /// (never anchored here: the caller's transaction holds its anchor).
    pub(crate) fn append_unanchored(&mut self, event: Event) -> Result<(), Error> {
        let (seq, prev) = self
            .lines
            .last()
            .map_or((1, GENESIS.to_owned()), |l| (l.seq + 1, l.hash.clone()));
        let record = Record {
            seq,
            ts: time::OffsetDateTime::now_utc().unix_timestamp(),
            prev: prev.clone(),
            event,
        };
        let text = serde_json::to_string(&record).map_err(AuditError::Encode)?;
        let mut file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        file.write_all(format!("{text}\n").as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(io_err(&self.path))?;
        self.lines.push(Line {
            seq,
            prev,
            hash: line_hash(&text),
            text,
        });
        Ok(())
    }

    /// Takes back what [`WholeLog::append_unanchored`] appended (its transaction failed).
    pub(crate) fn truncate_back(&self) -> Result<(), Error> {
        let f = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        f.set_len(self.len)
            .and_then(|()| f.sync_all())
            .map_err(io_err(&self.path))
    }
}

/// The open anchor.
enum Anchor {
    Sqlite { db: Connection, path: PathBuf },
    Postgres(Box<postgres::PgAnchor>),
}

impl Anchor {
    fn open(dir: &Path, at: AnchorAt<'_>) -> Result<Anchor, Error> {
        match at {
            AnchorAt::StationDir => {
                let path = dir.join("registry.sqlite3");
                let db = Connection::open(&path).map_err(db_err(&path))?;
                Ok(Anchor::Sqlite { db, path })
            }
            AnchorAt::Shared { target, station } => Ok(Anchor::Postgres(Box::new(
                postgres::PgAnchor::open(target, station)?,
            ))),
        }
    }

    /// The anchored record: (seq, hash).
    fn head(&mut self) -> Result<Option<(u64, String)>, Error> {
        match self {
            Anchor::Sqlite { db, path } => anchored(db, path),
            Anchor::Postgres(pg) => pg.head(),
        }
    }

    /// Anchors `lines` (consecutive, following record `after`): SQLite keeps the last one's
    /// hash; PostgreSQL also a copy of each, in one statement.
    fn advance(&mut self, after: u64, lines: &[Line]) -> Result<(), Error> {
        let Some(last) = lines.last() else {
            return Ok(());
        };
        match self {
            Anchor::Sqlite { db, path } => set_anchor(db, path, last.seq, &last.hash),
            Anchor::Postgres(pg) => pg.advance(after, lines),
        }
    }
}

struct State {
    file: File,
    anchor: Anchor,
    seq: u64,
    head: String,
}

/// The open audit log of a station.
pub struct AuditLog {
    path: PathBuf,
    /// The shared registry and this station's name there, when anchored in one.
    shared: Option<(PostgresTarget, String)>,
    state: Mutex<State>,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn line_hash(line: &str) -> String {
    sha256_hex(line.as_bytes())
}

fn anchored(db: &Connection, db_path: &Path) -> Result<Option<(u64, String)>, Error> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS audit_head (
             id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL)",
    )
    .map_err(db_err(db_path))?;
    db.query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
    })
    .optional()
    .map_err(db_err(db_path))
}

impl AuditLog {
    /// Opens (or creates) `dir/audit.log`, anchored in `dir/registry.sqlite3`.
    ///
    /// A half-written last line (a crash during an append; it was never anchored) is cut
    /// off and its length returned, for the caller to record. Complete records after the
    /// anchor (a crash between the append and the anchor update) are anchored now.
    pub fn open(dir: &Path) -> Result<(AuditLog, usize), Error> {
        AuditLog::open_at(dir, AnchorAt::StationDir)
    }

    /// [`AuditLog::open`] with the anchor at `at`. In a shared registry, records past the
    /// anchor are copied into it with the anchor; a log the database has never seen is
    /// refused when `DIR/registry.sqlite3` holds a station registry (it needs
    /// `registry migrate`).
    pub fn open_at(dir: &Path, at: AnchorAt<'_>) -> Result<(AuditLog, usize), Error> {
        let path = dir.join("audit.log");
        let mut anchor = Anchor::open(dir, at)?;
        // Only the end of the log is needed here (a station opens it for every command).
        let (offset, mut text) = read_tail(&path).map_err(io_err(&path))?;
        let torn = cut_torn_line(&path, offset, &mut text)?;
        let (seq, head) = match text.lines().last() {
            Some(last) => {
                let r: Record = serde_json::from_str(last).map_err(|source| {
                    AuditError::LastRecordUnreadable {
                        path: path.clone(),
                        source,
                    }
                })?;
                (r.seq, line_hash(last))
            }
            None => (0, GENESIS.to_owned()),
        };
        reconcile_anchor(&mut anchor, dir, &path, seq, &head)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let shared = match at {
            AnchorAt::StationDir => None,
            AnchorAt::Shared { target, station } => Some((target.clone(), station.to_owned())),
        };
        let log = AuditLog {
            path,
            shared,
            state: Mutex::new(State {
                file,
                anchor,
                seq,
                head,
            }),
        };
        Ok((log, torn))
    }

    /// Appends a record durably (fsync), then anchors its hash in the registry.
    pub fn append(&self, event: Event) -> Result<(), Error> {
        self.append_many(std::iter::once(event))
    }

    /// Appends records with one write and one fsync, then anchors the last one.
    pub fn append_many(&self, events: impl IntoIterator<Item = Event>) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let (mut seq, mut head) = (st.seq, st.head.clone());
        let mut buf = String::new();
        let mut lines = Vec::new();
        for event in events {
            seq += 1;
            let record = Record {
                seq,
                ts,
                prev: head.clone(),
                event,
            };
            let text = serde_json::to_string(&record).map_err(AuditError::Encode)?;
            buf.push_str(&text);
            buf.push('\n');
            let prev = std::mem::replace(&mut head, line_hash(&text));
            lines.push(Line {
                seq,
                prev,
                text,
                hash: head.clone(),
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        st.file
            .write_all(buf.as_bytes())
            .and_then(|()| st.file.sync_data())
            .map_err(io_err(&self.path))?;
        let after = st.seq;
        st.anchor.advance(after, &lines)?;
        st.seq = seq;
        st.head = head;
        Ok(())
    }

    /// Where this log is anchored.
    pub fn anchor_at(&self) -> AnchorAt<'_> {
        match &self.shared {
            None => AnchorAt::StationDir,
            Some((target, station)) => AnchorAt::Shared { target, station },
        }
    }
}

/// Cuts off a half-written last line (a crash during an append; it was never anchored) from
/// the file and from `text`, the log from `offset` on; returns how many bytes it had.
fn cut_torn_line(path: &Path, offset: u64, text: &mut String) -> Result<usize, Error> {
    if text.is_empty() || text.ends_with('\n') {
        return Ok(0);
    }
    let keep = text.rfind('\n').map_or(0, |i| i + 1);
    let torn = text.len() - keep;
    text.truncate(keep);
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(offset + keep as u64)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))?;
    Ok(torn)
}

/// Checks the log's last record (`seq`, hash `head`) against the anchor in the registry:
/// an anchor past the end, or on a record with another hash, means records were cut off or
/// replaced. Records after the anchor (a crash between an append and its anchor update)
/// are anchored now.
fn reconcile_anchor(
    anchor: &mut Anchor,
    dir: &Path,
    path: &Path,
    seq: u64,
    head: &str,
) -> Result<(), Error> {
    match anchor.head()? {
        Some((s, hash)) if s > seq || (s == seq && hash != head) => Err(AuditError::CutOff {
            path: path.to_owned(),
            anchored: s,
            last: seq,
        }
        .into()),
        Some((s, hash)) if s < seq => {
            // After a crash: the anchored record is further back, so read the whole log.
            let full = std::fs::read_to_string(path).map_err(io_err(path))?;
            let at_anchor = (s as usize)
                .checked_sub(1)
                .map_or(Some(GENESIS.to_owned()), |i| {
                    full.lines().nth(i).map(line_hash)
                });
            if at_anchor.as_deref() != Some(hash.as_str()) {
                return Err(AuditError::AnchorMismatch {
                    path: path.to_owned(),
                    seq: s,
                }
                .into());
            }
            let lines = lines_after(&full, s, hash);
            if matches!(anchor, Anchor::Sqlite { .. }) {
                refuse_migrated(path, &lines)?;
            }
            anchor.advance(s, &lines)
        }
        None if seq > 0 => {
            if let Anchor::Postgres(pg) = anchor {
                pg.refuse_unmigrated(dir, path)?;
            }
            let full = std::fs::read_to_string(path).map_err(io_err(path))?;
            anchor.advance(0, &lines_after(&full, 0, GENESIS.to_owned()))
        }
        _ => Ok(()),
    }
}

/// Past the SQLite anchor, a `Migrated` record: the station runs on the shared registry now
/// (its SQLite registry was left behind, stale).
fn refuse_migrated(path: &Path, lines: &[Line]) -> Result<(), Error> {
    for line in lines {
        if let Ok(Record {
            event: Event::Migrated { to, .. },
            ..
        }) = serde_json::from_str(&line.text)
        {
            return Err(AuditError::Migrated {
                path: path.to_owned(),
                to,
            }
            .into());
        }
    }
    Ok(())
}

/// The records of `text` after record `after` (whose hash is `head`), to anchor.
fn lines_after(text: &str, after: u64, mut head: String) -> Vec<Line> {
    let mut lines = Vec::new();
    for (i, text) in text.lines().enumerate().skip(after as usize) {
        let hash = line_hash(text);
        lines.push(Line {
            seq: i as u64 + 1,
            prev: std::mem::replace(&mut head, hash.clone()),
            text: text.to_owned(),
            hash,
        });
    }
    lines
}

/// How much of the log's end `open` reads (records are far smaller).
const TAIL: u64 = 256 * 1024;

/// The end of the log from a line boundary: (its offset in the file, the text). The whole
/// log when it is short, or when the tail holds no complete record.
fn read_tail(path: &Path) -> std::io::Result<(u64, String)> {
    use std::io::{Read, Seek, SeekFrom};
    let invalid = |e| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, String::new())),
        Err(e) => return Err(e),
    };
    let start = f.metadata()?.len().saturating_sub(TAIL);
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    if start == 0 {
        return String::from_utf8(bytes).map(|t| (0, t)).map_err(invalid);
    }
    // Skip the line cut by `start`; what follows must still hold a complete record.
    if let Some(i) = bytes.iter().position(|&b| b == b'\n') {
        if bytes[i + 1..].contains(&b'\n') {
            let text = String::from_utf8(bytes[i + 1..].to_vec()).map_err(invalid)?;
            return Ok((start + i as u64 + 1, text));
        }
    }
    Ok((0, std::fs::read_to_string(path)?))
}

fn set_anchor(db: &Connection, db_path: &Path, seq: u64, hash: &str) -> Result<(), Error> {
    db.prepare_cached(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)
         ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
    )
    .and_then(|mut s| s.execute(params![seq as i64, hash]))
    .map_err(db_err(db_path))?;
    Ok(())
}
