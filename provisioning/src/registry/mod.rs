//! The device registry: which device ids, serials and certificates the station has issued.
//!
//! One row per certificate (a device has several over its life: renewal supersedes the old
//! one). Behind a trait: SQLite in the station directory by default ([`SqliteRegistry`]), or
//! a PostgreSQL database several stations share ([`PostgresRegistry`]).
//!
//! Crash safety: ids and serials are reserved in a committed transaction BEFORE anything is
//! signed, so a crash can never lead to an id or serial being handed out twice. A row becomes
//! `active` only after its files and audit record are durable; rows a crash left `reserved`
//! are turned `aborted` by the next run (their serials go on the CRL, in case the certificate
//! was signed before the crash).

mod notify;
mod postgres;
mod target;
#[cfg(test)]
mod tests;

pub use notify::{RevocationFeed, RevocationWatch};
pub(crate) use postgres::{pg_err, Conn};
pub use postgres::{PostgresRegistry, StationIdentity};
pub use target::{PostgresTarget, RegistryLocation};

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::error::{db as db_err, Conflict, Error};

/// Where a certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Id and serial reserved; the certificate is not (yet) recorded as delivered.
    Reserved,
    /// The device's current certificate.
    Active,
    /// Replaced by a renewal; still accepted until its grace period ends, then revoked.
    Superseded,
    Revoked,
    /// Reserved by a run that crashed or failed before delivering the certificate.
    Aborted,
}

impl Status {
    /// Lowercase name, as the CLI, the API and the database spell it.
    pub fn name(self) -> &'static str {
        match self {
            Status::Reserved => "reserved",
            Status::Active => "active",
            Status::Superseded => "superseded",
            Status::Revoked => "revoked",
            Status::Aborted => "aborted",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "active" => Status::Active,
            "superseded" => Status::Superseded,
            "revoked" => Status::Revoked,
            "aborted" => Status::Aborted,
            _ => Status::Reserved,
        }
    }
}

/// One certificate in the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRecord {
    pub device_id: String,
    pub tenant: String,
    pub serial_hex: String,
    pub fingerprint_hex: Option<String>,
    pub status: Status,
    pub batch: String,
    pub created_at: i64,
    pub not_after: Option<i64>,
    pub superseded_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub revocation_reason: Option<String>,
}

/// What to reserve for one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub tenant: String,
    pub batch: String,
    pub serial_hex: String,
    pub device: DeviceId,
}

/// Which device a reservation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceId {
    /// The tenant's next free id (`{tenant}-000001`, …).
    Next,
    /// A new device with this id (e.g. from the board's serial number); refused if taken.
    New(String),
    /// Another certificate for this existing device (renewal).
    Existing(String),
}

/// A reserved certificate that has been signed and delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Activation {
    pub device_id: String,
    pub serial_hex: String,
    pub fingerprint_hex: String,
    pub not_after: i64,
    pub cert_der: Vec<u8>,
}

/// What the station needs from a registry.
pub trait Registry {
    /// Records a new batch and where its device files go (`None`: the station directory).
    fn begin_batch(&mut self, batch: &str, out_dir: Option<&str>) -> Result<(), Error>;
    /// Where a batch wrote its device files, if not the station directory.
    fn batch_out_dir(&self, batch: &str) -> Result<Option<String>, Error>;
    /// Reserves ids and serials durably, all or nothing; returns the device ids in order.
    fn reserve(&mut self, items: &[Reservation]) -> Result<Vec<String>, Error>;
    /// Marks reserved certificates active, all or nothing. Any other active certificate of
    /// the same device becomes superseded.
    fn activate(&mut self, items: &[Activation]) -> Result<(), Error>;
    /// Turns every reserved row (in a shared registry: this station's) into aborted and
    /// returns them.
    fn abort_reserved(&mut self) -> Result<Vec<CertRecord>, Error>;
    /// Every certificate, by device id then age.
    fn list(&self) -> Result<Vec<CertRecord>, Error>;
    /// A device's certificates, oldest first (empty when unknown).
    fn device(&self, device_id: &str) -> Result<Vec<CertRecord>, Error>;
    /// A certificate by serial.
    fn cert(&self, serial_hex: &str) -> Result<Option<CertRecord>, Error>;
    /// The DER of a delivered certificate.
    fn cert_der(&self, serial_hex: &str) -> Result<Option<Vec<u8>>, Error>;
    /// Revokes every active and superseded certificate of a device; returns them.
    fn revoke_device(&mut self, device_id: &str, reason: &str) -> Result<Vec<CertRecord>, Error>;
    /// Where to hear of revocations other stations make of this station's certificates (a
    /// shared registry only; see [`notify`]).
    fn revocation_watch(&self) -> Option<RevocationWatch> {
        None
    }
    /// Revokes (reason superseded) certificates superseded at or before `cutoff` (in a
    /// shared registry: those of this station's issuing CA).
    fn expire_superseded(&mut self, cutoff: i64) -> Result<Vec<CertRecord>, Error>;
    /// Every serial the station's CRL must list: (serial hex, revoked at, reason). In a
    /// shared registry: those its issuing CA signed, whichever station revoked them.
    fn revoked(&self) -> Result<Vec<(String, i64, String)>, Error>;
    /// The next CRL number (strictly increasing, durable; per issuing CA when shared).
    fn next_crl_number(&mut self) -> Result<u64, Error>;
    /// The last CRL number handed out (0 before the first CRL).
    fn last_crl_number(&self) -> Result<u64, Error>;
    /// When a device's renewals (reservations for an existing device) at or after `since`
    /// were made, Unix seconds, oldest first.
    fn renewals_since(&self, device_id: &str, since: i64) -> Result<Vec<i64>, Error>;
}

/// The SQLite registry in the station directory.
pub struct SqliteRegistry {
    conn: Connection,
    path: PathBuf,
}

const COLUMNS: &str = "device_id, tenant, serial, fingerprint, status, batch, created_at, \
                       not_after, superseded_at, revoked_at, revocation_reason";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl SqliteRegistry {
    pub fn open(path: &Path) -> Result<SqliteRegistry, Error> {
        let err = db_err(path);
        let conn = Connection::open(path).map_err(&err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS counters (
                 tenant TEXT PRIMARY KEY,
                 next INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS certs (
                 serial TEXT PRIMARY KEY,
                 device_id TEXT NOT NULL,
                 tenant TEXT NOT NULL,
                 status TEXT NOT NULL,
                 batch TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 fingerprint TEXT UNIQUE,
                 not_after INTEGER,
                 cert_der BLOB,
                 superseded_at INTEGER,
                 revoked_at INTEGER,
                 revocation_reason TEXT
             );
             CREATE INDEX IF NOT EXISTS certs_device ON certs (device_id);
             CREATE INDEX IF NOT EXISTS certs_pending ON certs (status)
                 WHERE status IN ('reserved', 'superseded');
             CREATE TABLE IF NOT EXISTS batches (
                 batch TEXT PRIMARY KEY,
                 out_dir TEXT,
                 started_at INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS renewals (
                 serial TEXT PRIMARY KEY,
                 device_id TEXT NOT NULL,
                 at INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS renewals_device ON renewals (device_id, at);
             CREATE TABLE IF NOT EXISTS crl_numbers (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 last INTEGER NOT NULL
             );",
        )
        .map_err(&err)?;
        Ok(SqliteRegistry {
            conn,
            path: path.to_owned(),
        })
    }

    fn query(&self, sql_where: &str, p: impl rusqlite::Params) -> Result<Vec<CertRecord>, Error> {
        let sql = format!("SELECT {COLUMNS} FROM certs {sql_where}");
        let mut stmt = self.conn.prepare_cached(&sql).map_err(db_err(&self.path))?;
        let rows = stmt
            .query_map(p, row_to_record)
            .map_err(db_err(&self.path))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(db_err(&self.path))
    }
}

fn device_exists(tx: &Transaction<'_>, device_id: &str) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT 1 FROM certs WHERE device_id = ?1 LIMIT 1")?
        .exists([device_id])
}

/// Allocates the tenant's next free id (skipping ids given explicitly earlier).
fn next_id(tx: &Transaction<'_>, tenant: &str) -> rusqlite::Result<String> {
    let mut next: i64 = tx
        .prepare_cached("SELECT next FROM counters WHERE tenant = ?1")?
        .query_row([tenant], |r| r.get(0))
        .optional()?
        .unwrap_or(1);
    let id = loop {
        let id = format!("{tenant}-{next:06}");
        next += 1;
        if !device_exists(tx, &id)? {
            break id;
        }
    };
    tx.prepare_cached(
        "INSERT INTO counters (tenant, next) VALUES (?1, ?2)
         ON CONFLICT(tenant) DO UPDATE SET next = excluded.next",
    )?
    .execute(params![tenant, next])?;
    Ok(id)
}

impl Registry for SqliteRegistry {
    fn begin_batch(&mut self, batch: &str, out_dir: Option<&str>) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT INTO batches (batch, out_dir, started_at) VALUES (?1, ?2, ?3)",
                params![batch, out_dir, now()],
            )
            .map_err(db_err(&self.path))?;
        Ok(())
    }

    fn batch_out_dir(&self, batch: &str) -> Result<Option<String>, Error> {
        self.conn
            .query_row(
                "SELECT out_dir FROM batches WHERE batch = ?1",
                [batch],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(db_err(&self.path))
    }

    fn reserve(&mut self, items: &[Reservation]) -> Result<Vec<String>, Error> {
        let path = self.path.clone();
        let err = db_err(&path);
        let tx = self.conn.transaction().map_err(&err)?;
        let mut ids = Vec::with_capacity(items.len());
        let created = now();
        for item in items {
            let id = match &item.device {
                DeviceId::Next => next_id(&tx, &item.tenant).map_err(&err)?,
                DeviceId::New(id) => {
                    if device_exists(&tx, id).map_err(&err)? || ids.contains(id) {
                        return Err(Error::DuplicateDevice(id.clone()));
                    }
                    id.clone()
                }
                DeviceId::Existing(id) => {
                    if !device_exists(&tx, id).map_err(&err)? {
                        return Err(Error::UnknownDevice(id.clone()));
                    }
                    // Counted for the renewal rate in the same transaction as the reservation.
                    tx.prepare_cached(
                        "INSERT INTO renewals (serial, device_id, at) VALUES (?1, ?2, ?3)",
                    )
                    .and_then(|mut s| s.execute(params![item.serial_hex, id, created]))
                    .map_err(&err)?;
                    id.clone()
                }
            };
            tx.prepare_cached(
                "INSERT INTO certs (serial, device_id, tenant, status, batch, created_at)
                 VALUES (?1, ?2, ?3, 'reserved', ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    item.serial_hex,
                    id,
                    item.tenant,
                    item.batch,
                    created
                ])
            })
            .map_err(&err)?;
            ids.push(id);
        }
        tx.commit().map_err(&err)?;
        Ok(ids)
    }

    fn activate(&mut self, items: &[Activation]) -> Result<(), Error> {
        let path = self.path.clone();
        let err = db_err(&path);
        let tx = self.conn.transaction().map_err(&err)?;
        let at = now();
        for a in items {
            // `+status`: look rows up by device id, never by scanning every active one.
            tx.prepare_cached(
                "UPDATE certs SET status = 'superseded', superseded_at = ?2
                 WHERE device_id = ?1 AND +status = 'active'",
            )
            .and_then(|mut s| s.execute(params![a.device_id, at]))
            .map_err(&err)?;
            let changed = tx
                .prepare_cached(
                    "UPDATE certs SET status = 'active', fingerprint = ?2, not_after = ?3,
                         cert_der = ?4
                     WHERE serial = ?1 AND device_id = ?5 AND status = 'reserved'",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        a.serial_hex,
                        a.fingerprint_hex,
                        a.not_after,
                        a.cert_der,
                        a.device_id
                    ])
                })
                .map_err(&err)?;
            if changed != 1 {
                return Err(Conflict::NotReserved {
                    serial_hex: a.serial_hex.clone(),
                }
                .into());
            }
        }
        tx.commit().map_err(&err)
    }

    fn abort_reserved(&mut self) -> Result<Vec<CertRecord>, Error> {
        let rows = self.query("WHERE status = 'reserved' ORDER BY serial", [])?;
        if !rows.is_empty() {
            self.conn
                .execute(
                    "UPDATE certs SET status = 'aborted', revoked_at = ?1,
                         revocation_reason = 'cessationOfOperation'
                     WHERE status = 'reserved'",
                    [now()],
                )
                .map_err(db_err(&self.path))?;
        }
        Ok(rows)
    }

    fn list(&self) -> Result<Vec<CertRecord>, Error> {
        let sql = format!("SELECT {COLUMNS} FROM certs ORDER BY device_id, created_at, rowid");
        let mut stmt = self.conn.prepare(&sql).map_err(db_err(&self.path))?;
        let rows = stmt
            .query_map([], row_to_record)
            .map_err(db_err(&self.path))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(db_err(&self.path))
    }

    fn device(&self, device_id: &str) -> Result<Vec<CertRecord>, Error> {
        self.query(
            "WHERE device_id = ?1 ORDER BY created_at, rowid",
            [device_id],
        )
    }

    fn cert(&self, serial_hex: &str) -> Result<Option<CertRecord>, Error> {
        Ok(self.query("WHERE serial = ?1", [serial_hex])?.pop())
    }

    fn cert_der(&self, serial_hex: &str) -> Result<Option<Vec<u8>>, Error> {
        self.conn
            .query_row(
                "SELECT cert_der FROM certs WHERE serial = ?1",
                [serial_hex],
                |r| r.get::<_, Option<Vec<u8>>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(db_err(&self.path))
    }

    fn revoke_device(&mut self, device_id: &str, reason: &str) -> Result<Vec<CertRecord>, Error> {
        let live = live_to_revoke(device_id, self.device(device_id)?)?;
        let at = now();
        let path = self.path.clone();
        let err = db_err(&path);
        let tx = self.conn.transaction().map_err(&err)?;
        tx.execute(
            "UPDATE certs SET status = 'revoked', revoked_at = ?2, revocation_reason = ?3
             WHERE device_id = ?1 AND status IN ('active', 'superseded')",
            params![device_id, at, reason],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(mark_revoked(live, Status::Revoked, at, reason))
    }

    fn expire_superseded(&mut self, cutoff: i64) -> Result<Vec<CertRecord>, Error> {
        let rows = self.query(
            "WHERE status = 'superseded' AND superseded_at <= ?1 ORDER BY serial",
            [cutoff],
        )?;
        if rows.is_empty() {
            return Ok(rows);
        }
        let at = now();
        self.conn
            .execute(
                "UPDATE certs SET status = 'revoked', revoked_at = ?2,
                     revocation_reason = 'superseded'
                 WHERE status = 'superseded' AND superseded_at <= ?1",
                params![cutoff, at],
            )
            .map_err(db_err(&self.path))?;
        Ok(mark_revoked(rows, Status::Revoked, at, "superseded"))
    }

    fn revoked(&self) -> Result<Vec<(String, i64, String)>, Error> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT serial, revoked_at, revocation_reason FROM certs
                 WHERE status IN ('revoked', 'aborted') ORDER BY revoked_at, serial",
            )
            .map_err(db_err(&self.path))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db_err(&self.path))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(db_err(&self.path))
    }

    fn next_crl_number(&mut self) -> Result<u64, Error> {
        let path = self.path.clone();
        let err = db_err(&path);
        let tx = self.conn.transaction().map_err(&err)?;
        let last: i64 = tx
            .query_row("SELECT last FROM crl_numbers WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(&err)?
            .unwrap_or(0);
        tx.execute(
            "INSERT INTO crl_numbers (id, last) VALUES (1, ?1)
             ON CONFLICT(id) DO UPDATE SET last = excluded.last",
            [last + 1],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(last as u64 + 1)
    }

    fn last_crl_number(&self) -> Result<u64, Error> {
        self.conn
            .query_row("SELECT last FROM crl_numbers WHERE id = 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|n| n.map_or(0, |n| n.max(0) as u64))
            .map_err(db_err(&self.path))
    }

    fn renewals_since(&self, device_id: &str, since: i64) -> Result<Vec<i64>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT at FROM renewals WHERE device_id = ?1 AND at >= ?2 ORDER BY at")
            .map_err(db_err(&self.path))?;
        let rows = stmt
            .query_map(params![device_id, since], |r| r.get(0))
            .map_err(db_err(&self.path))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(db_err(&self.path))
    }
}

/// What revoking `device_id` takes, from all its certificates: the live ones (active and
/// superseded). An unknown device, or one with nothing live, is an error (both registries).
fn live_to_revoke(device_id: &str, certs: Vec<CertRecord>) -> Result<Vec<CertRecord>, Error> {
    if certs.is_empty() {
        return Err(Error::UnknownDevice(device_id.to_owned()));
    }
    let live: Vec<CertRecord> = certs
        .into_iter()
        .filter(|c| matches!(c.status, Status::Active | Status::Superseded))
        .collect();
    if live.is_empty() {
        return Err(Conflict::NothingToRevoke {
            device_id: device_id.to_owned(),
        }
        .into());
    }
    Ok(live)
}

/// Sets `status`, `revoked_at` and the reason of the selected rows; returns them as they
/// are now.
fn mark_revoked(rows: Vec<CertRecord>, status: Status, at: i64, reason: &str) -> Vec<CertRecord> {
    rows.into_iter()
        .map(|c| CertRecord {
            status,
            revoked_at: Some(at),
            revocation_reason: Some(reason.to_owned()),
            ..c
        })
        .collect()
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<CertRecord> {
    Ok(CertRecord {
        device_id: r.get(0)?,
        tenant: r.get(1)?,
        serial_hex: r.get(2)?,
        fingerprint_hex: r.get(3)?,
        status: Status::parse(&r.get::<_, String>(4)?),
        batch: r.get(5)?,
        created_at: r.get(6)?,
        not_after: r.get(7)?,
        superseded_at: r.get(8)?,
        revoked_at: r.get(9)?,
        revocation_reason: r.get(10)?,
    })
}
