//! The audit log's anchor in a shared PostgreSQL registry (migration 2): `audit_heads` holds
//! each station's newest record, `audit_records` a copy of every record. An append (a group
//! of records) is one statement, so one round trip and one transaction: the head moves from
//! the record the group follows, and the group's rows are inserted only if it did.

use std::path::Path;

use postgres::types::ToSql;
use postgres::{GenericClient, Statement};

use super::Line;
use crate::error::{AuditError, Error};
use crate::registry::{pg_err, Conn, PostgresTarget};

/// Moves the head of station `$1` from record `$8` to `$6` (hash `$7`) and inserts the rows;
/// inserts nothing when the head was elsewhere (the join with `head` is then empty).
const ADVANCE: &str = "
WITH head AS (
    INSERT INTO audit_heads (station, seq, hash) VALUES ($1, $6, $7)
    ON CONFLICT (station) DO UPDATE SET seq = excluded.seq, hash = excluded.hash
        WHERE audit_heads.seq = $8
    RETURNING seq
)
INSERT INTO audit_records (station, seq, prev, line, hash)
SELECT $1, r.seq, r.prev, r.line, r.hash
FROM head, unnest($2::bigint[], $3::text[], $4::text[], $5::text[]) AS r (seq, prev, line, hash)";

/// [`ADVANCE`]'s arrays: one element per line.
struct Columns<'a> {
    seqs: Vec<i64>,
    prevs: Vec<&'a str>,
    texts: Vec<&'a str>,
    hashes: Vec<&'a str>,
    last_seq: i64,
    last_hash: &'a str,
    after: i64,
}

impl<'a> Columns<'a> {
    /// `None` when there are no lines.
    fn of(lines: &'a [Line]) -> Option<Columns<'a>> {
        let last = lines.last()?;
        Some(Columns {
            seqs: lines.iter().map(|l| l.seq as i64).collect(),
            prevs: lines.iter().map(|l| l.prev.as_str()).collect(),
            texts: lines.iter().map(|l| l.text.as_str()).collect(),
            hashes: lines.iter().map(|l| l.hash.as_str()).collect(),
            last_seq: last.seq as i64,
            last_hash: &last.hash,
            after: 0,
        })
    }

    /// [`ADVANCE`]'s parameters for `station`, the lines following record `after`.
    fn params<'p>(&'p mut self, station: &'p String, after: u64) -> [&'p (dyn ToSql + Sync); 8] {
        self.after = after as i64;
        [
            station,
            &self.seqs,
            &self.prevs,
            &self.texts,
            &self.hashes,
            &self.last_seq,
            &self.last_hash,
            &self.after,
        ]
    }
}

/// A station's connection for its audit anchor.
pub(super) struct PgAnchor {
    conn: Conn,
    at: String,
    station: String,
    /// [`ADVANCE`], prepared on first use.
    advance: Option<Statement>,
}

/// What the database holds of the stations' logs.
pub(super) struct DbCopy {
    /// By station, then seq.
    pub records: Vec<DbRecord>,
    /// (station, seq, hash) of each anchor.
    pub heads: Vec<(String, u64, String)>,
}

/// One station's copy of its log in the database.
pub(super) struct DbRecord {
    pub station: String,
    pub seq: i64,
    pub prev: String,
    pub line: String,
    pub hash: String,
}

impl PgAnchor {
    /// Connects as `station` (the registry's own connection applied the schema).
    pub(super) fn open(target: &PostgresTarget, station: &str) -> Result<PgAnchor, Error> {
        let at = target.to_string();
        let client = Conn::connect(target, &at)?;
        Ok(PgAnchor {
            conn: Conn(Some(client)),
            at,
            station: station.to_owned(),
            advance: None,
        })
    }

    /// The station's anchored record: (seq, hash).
    pub(super) fn head(&mut self) -> Result<Option<(u64, String)>, Error> {
        let (at, station) = (&self.at, &self.station);
        self.conn.run(at, |client| {
            let row = client
                .query_opt(
                    "SELECT seq, hash FROM audit_heads WHERE station = $1",
                    &[station],
                )
                .map_err(pg_err(at))?;
            Ok(row.map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get(1))))
        })
    }

    /// Anchors `lines`, which follow record `after`: one statement, all or nothing.
    pub(super) fn advance(&mut self, after: u64, lines: &[Line]) -> Result<(), Error> {
        let Some(mut c) = Columns::of(lines) else {
            return Ok(());
        };
        let (at, station, cached) = (&self.at, &self.station, &mut self.advance);
        let inserted = self.conn.run(at, |client| {
            let stmt = match cached {
                Some(s) => s.clone(),
                None => cached
                    .insert(client.prepare(ADVANCE).map_err(pg_err(at))?)
                    .clone(),
            };
            client
                .execute(&stmt, &c.params(station, after))
                .map_err(pg_err(at))
        })?;
        if inserted != lines.len() as u64 {
            return Err(AuditError::AnchorMoved {
                at: self.at.clone(),
                station: self.station.clone(),
                expected: after,
            }
            .into());
        }
        Ok(())
    }

    /// A log the database has never anchored, in a station whose `registry.sqlite3` holds a
    /// registry of its own (a `certs` table): its devices and records belong in the shared
    /// registry only through `registry migrate`.
    pub(super) fn refuse_unmigrated(&self, dir: &Path, log: &Path) -> Result<(), Error> {
        let db = dir.join("registry.sqlite3");
        if !db.exists() {
            return Ok(());
        }
        let has_registry = rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'certs'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
            })
            .map_err(crate::error::db(&db))?;
        if has_registry > 0 {
            return Err(AuditError::NotMigrated {
                path: log.to_owned(),
                at: self.at.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// Every station's records (or only `station`'s), by station and seq, and every head.
    pub(super) fn all(&mut self, station: Option<&str>) -> Result<DbCopy, Error> {
        let at = &self.at;
        self.conn.run(at, |client| {
            let mut tx = client.transaction().map_err(pg_err(at))?;
            // One snapshot for both: a station appending meanwhile moves rows and head together.
            tx.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .map_err(pg_err(at))?;
            let rows = tx
                .query(
                    "SELECT station, seq, prev, line, hash FROM audit_records
                     WHERE $1::text IS NULL OR station = $1 ORDER BY station, seq",
                    &[&station],
                )
                .map_err(pg_err(at))?;
            let heads = tx
                .query(
                    "SELECT station, seq, hash FROM audit_heads
                     WHERE $1::text IS NULL OR station = $1 ORDER BY station",
                    &[&station],
                )
                .map_err(pg_err(at))?;
            tx.commit().map_err(pg_err(at))?;
            let records = rows
                .iter()
                .map(|r| DbRecord {
                    station: r.get(0),
                    seq: r.get(1),
                    prev: r.get(2),
                    line: r.get(3),
                    hash: r.get(4),
                })
                .collect();
            let heads = heads
                .iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64, r.get(2)))
                .collect();
            Ok(DbCopy { records, heads })
        })
    }
}

/// Inserts a whole log as `station`'s and anchors its last record (`registry migrate`);
/// nothing of the station may be there yet.
pub(crate) fn insert_log(
    tx: &mut impl GenericClient,
    at: &str,
    station: &str,
    lines: &[Line],
) -> Result<(), Error> {
    let Some(mut c) = Columns::of(lines) else {
        return Ok(());
    };
    let station = station.to_owned();
    let n = tx
        .execute(ADVANCE, &c.params(&station, 0))
        .map_err(pg_err(at))?;
    if n != lines.len() as u64 {
        return Err(AuditError::AnchorMoved {
            at: at.to_owned(),
            station: station.to_owned(),
            expected: 0,
        }
        .into());
    }
    Ok(())
}
