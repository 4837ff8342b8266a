//! The device registry: which ids, serials and certificates the station has issued.
//!
//! Behind a trait so a shared database can serve many stations later; SQLite by default.
//! Ids and serials are reserved in a committed transaction BEFORE anything is signed, so a
//! crash can never lead to an id or serial being handed out twice.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::Error;

/// Where an issued identity stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Id and serial reserved; the certificate was not (yet) recorded as written.
    Reserved,
    Active,
    Revoked,
    Superseded,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Reserved => "reserved",
            Status::Active => "active",
            Status::Revoked => "revoked",
            Status::Superseded => "superseded",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "active" => Status::Active,
            "revoked" => Status::Revoked,
            "superseded" => Status::Superseded,
            _ => Status::Reserved,
        }
    }
}

/// One registry row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub device_id: String,
    pub tenant: String,
    pub serial_hex: String,
    pub fingerprint_hex: Option<String>,
    pub status: Status,
    pub batch: String,
    pub created_at: i64,
}

/// What the station needs from a registry.
pub trait Registry {
    /// Reserves the next device id of `tenant` with `serial_hex`, durably, and returns the id.
    fn reserve(&mut self, tenant: &str, batch: &str, serial_hex: &str) -> Result<String, Error>;
    /// Marks a reserved device active once its certificate and bundle are written.
    fn activate(&mut self, device_id: &str, fingerprint_hex: &str) -> Result<(), Error>;
    /// Every device, in id order.
    fn list(&self) -> Result<Vec<DeviceRecord>, Error>;
    /// Marks an active (or superseded) device revoked; returns its record as it now is.
    fn revoke(&mut self, device_id: &str, reason: &str) -> Result<DeviceRecord, Error>;
    /// Every revoked certificate: (serial hex, revoked at, reason).
    fn revoked(&self) -> Result<Vec<(String, i64, String)>, Error>;
    /// The next CRL number (strictly increasing, durable).
    fn next_crl_number(&mut self) -> Result<u64, Error>;
}

/// The SQLite registry in the station directory.
pub struct SqliteRegistry {
    conn: Connection,
    path: PathBuf,
}

impl SqliteRegistry {
    pub fn open(path: &Path) -> Result<SqliteRegistry, Error> {
        let err = |source| Error::Registry {
            path: path.to_owned(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS counters (
                 tenant TEXT PRIMARY KEY,
                 next INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS devices (
                 device_id TEXT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 serial TEXT NOT NULL UNIQUE,
                 fingerprint TEXT UNIQUE,
                 status TEXT NOT NULL,
                 batch TEXT NOT NULL,
                 created_at INTEGER NOT NULL,
                 revoked_at INTEGER,
                 revocation_reason TEXT
             );
             CREATE TABLE IF NOT EXISTS crl_numbers (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 last INTEGER NOT NULL
             );",
        )
        .map_err(err)?;
        Ok(SqliteRegistry {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        |source| Error::Registry {
            path: self.path.clone(),
            source,
        }
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl Registry for SqliteRegistry {
    fn reserve(&mut self, tenant: &str, batch: &str, serial_hex: &str) -> Result<String, Error> {
        let path = self.path.clone();
        let err = |source| Error::Registry {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let next: i64 = tx
            .query_row(
                "SELECT next FROM counters WHERE tenant = ?1",
                [tenant],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?
            .unwrap_or(1);
        let device_id = format!("{tenant}-{next:06}");
        tx.execute(
            "INSERT INTO counters (tenant, next) VALUES (?1, ?2)
             ON CONFLICT(tenant) DO UPDATE SET next = excluded.next",
            params![tenant, next + 1],
        )
        .map_err(err)?;
        tx.execute(
            "INSERT INTO devices (device_id, tenant, serial, status, batch, created_at)
             VALUES (?1, ?2, ?3, 'reserved', ?4, ?5)",
            params![device_id, tenant, serial_hex, batch, now()],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(device_id)
    }

    fn activate(&mut self, device_id: &str, fingerprint_hex: &str) -> Result<(), Error> {
        let changed = self
            .conn
            .execute(
                "UPDATE devices SET status = 'active', fingerprint = ?2
                 WHERE device_id = ?1 AND status = 'reserved'",
                params![device_id, fingerprint_hex],
            )
            .map_err(self.err())?;
        if changed != 1 {
            return Err(Error::InvalidInput {
                field: "device id",
                message: format!("{device_id} is not a reserved device"),
            });
        }
        Ok(())
    }

    fn list(&self) -> Result<Vec<DeviceRecord>, Error> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT device_id, tenant, serial, fingerprint, status, batch, created_at
                 FROM devices ORDER BY device_id",
            )
            .map_err(self.err())?;
        let rows = stmt.query_map([], row_to_record).map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    fn revoke(&mut self, device_id: &str, reason: &str) -> Result<DeviceRecord, Error> {
        let record = self.get(device_id)?.ok_or_else(|| Error::InvalidInput {
            field: "device id",
            message: format!("{device_id} is not in the registry"),
        })?;
        match record.status {
            Status::Active | Status::Superseded => {}
            Status::Revoked => {
                return Err(Error::InvalidInput {
                    field: "device id",
                    message: format!("{device_id} is already revoked"),
                })
            }
            Status::Reserved => {
                return Err(Error::InvalidInput {
                    field: "device id",
                    message: format!("{device_id} was reserved but never issued"),
                })
            }
        }
        self.conn
            .execute(
                "UPDATE devices SET status = 'revoked', revoked_at = ?2, revocation_reason = ?3
                 WHERE device_id = ?1",
                params![device_id, now(), reason],
            )
            .map_err(self.err())?;
        Ok(DeviceRecord {
            status: Status::Revoked,
            ..record
        })
    }

    fn revoked(&self) -> Result<Vec<(String, i64, String)>, Error> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT serial, revoked_at, revocation_reason FROM devices
                 WHERE status = 'revoked' ORDER BY revoked_at, serial",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    fn next_crl_number(&mut self) -> Result<u64, Error> {
        let path = self.path.clone();
        let err = |source| Error::Registry {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let last: i64 = tx
            .query_row("SELECT last FROM crl_numbers WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?
            .unwrap_or(0);
        tx.execute(
            "INSERT INTO crl_numbers (id, last) VALUES (1, ?1)
             ON CONFLICT(id) DO UPDATE SET last = excluded.last",
            [last + 1],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(last as u64 + 1)
    }
}

impl SqliteRegistry {
    fn get(&self, device_id: &str) -> Result<Option<DeviceRecord>, Error> {
        self.conn
            .query_row(
                "SELECT device_id, tenant, serial, fingerprint, status, batch, created_at
                 FROM devices WHERE device_id = ?1",
                [device_id],
                row_to_record,
            )
            .optional()
            .map_err(self.err())
    }
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRecord> {
    Ok(DeviceRecord {
        device_id: r.get(0)?,
        tenant: r.get(1)?,
        serial_hex: r.get(2)?,
        fingerprint_hex: r.get(3)?,
        status: Status::parse(&r.get::<_, String>(4)?),
        batch: r.get(5)?,
        created_at: r.get(6)?,
    })
}

impl Status {
    /// Lowercase name, as the CLI prints it.
    pub fn name(self) -> &'static str {
        self.as_str()
    }
}
