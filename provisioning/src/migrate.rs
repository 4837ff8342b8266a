//! `fleet-provision registry migrate`: moves a station's SQLite registry and its audit log
//! into a shared PostgreSQL registry, in one transaction.
//!
//! Devices, counters, certificates (status, issuer, DER), batches, renewals and the CRL
//! number go in as this station's (named by `DIR/station-name`, made when missing); so do
//! every audit record and the anchor, followed by a `Migrated` record. Nothing is written
//! when the station was migrated before or any of its device ids or serials is already
//! there. The record is appended to the file (fsync) just before the commit and taken back
//! if the commit fails. `DIR/registry.sqlite3` is left as it was: from then on the station
//! runs with `--registry`.

use std::path::Path;

use postgres::{GenericClient, Transaction};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::audit::{self, Event, WholeLog};
use crate::digest::sha256_hex;
use crate::error::{db as db_err, AuditError, Conflict, Error};
use crate::fs::{lock_station, read_to_string};
use crate::pki::CaCert;
use crate::registry::{pg_err, Conn, PostgresRegistry, PostgresTarget, StationIdentity};
use crate::station::station_name;

/// What `migrate` moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The station's name in the shared registry.
    pub station: String,
    pub devices: usize,
    pub certs: usize,
    /// Audit records moved, the `Migrated` record included.
    pub records: u64,
}

/// One certificate row of the SQLite registry, every column.
struct Cert {
    serial: String,
    device_id: String,
    tenant: String,
    status: String,
    batch: String,
    created_at: i64,
    fingerprint: Option<String>,
    not_after: Option<i64>,
    cert_der: Option<Vec<u8>>,
    superseded_at: Option<i64>,
    revoked_at: Option<i64>,
    revocation_reason: Option<String>,
}

/// Everything the SQLite registry holds.
struct Sqlite {
    counters: Vec<(String, i64)>,
    certs: Vec<Cert>,
    batches: Vec<(String, Option<String>, i64)>,
    renewals: Vec<(String, String, i64)>,
    crl_last: Option<i64>,
}

/// Moves the station in `dir` (SQLite registry) into the shared registry at `target`.
pub fn migrate(dir: &Path, target: &PostgresTarget) -> Result<Migrated, Error> {
    let db_path = dir.join("registry.sqlite3");
    let cert_path = dir.join("ca/issuing.pem");
    for needed in [&db_path, &cert_path] {
        if !needed.exists() {
            return Err(Error::NotAStation {
                dir: dir.to_owned(),
                what: needed.clone(),
            });
        }
    }
    let issuing =
        CaCert::from_pem(&read_to_string(&cert_path)?).map_err(|message| Error::BadPem {
            path: cert_path.clone(),
            message,
        })?;
    let _lock = lock_station(dir)?;
    // Only an intact log is moved: its chain, its SQLite anchor and its manifests.
    if let Err(problems) = audit::verify(dir, &issuing.cert_der) {
        return Err(AuditError::Tampered {
            path: dir.join("audit.log"),
            problems: problems.len(),
        }
        .into());
    }
    let data = read_sqlite(&db_path)?;
    let me = StationIdentity {
        station: station_name(dir, true)?,
        issuer: sha256_hex(&issuing.cert_der),
    };
    // Connecting as a registry applies the schema (the audit tables included).
    drop(PostgresRegistry::open(target, me.clone())?);
    let mut log = WholeLog::read(dir)?;
    let devices = device_rows(&data.certs);
    let moved = Migrated {
        station: me.station.clone(),
        devices: devices.len(),
        certs: data.certs.len(),
        records: log.lines.len() as u64 + 1,
    };
    let event = Event::Migrated {
        to: target.to_string(),
        station: me.station.clone(),
        devices: moved.devices,
        certs: moved.certs,
        records: log.lines.len() as u64,
    };
    let at = target.to_string();
    let mut conn = Conn(Some(Conn::connect(target, &at)?));
    conn.run(&at, |client| {
        let mut tx = client.transaction().map_err(pg_err(&at))?;
        refuse(&mut tx, &at, &me.station, &data)?;
        insert_registry(&mut tx, &at, &me, &data, &devices)?;
        log.append_unanchored(event)?;
        audit::insert_log(&mut tx, &at, &me.station, &log.lines)
            .and_then(|()| tx.commit().map_err(pg_err(&at)))
            .or_else(|e| {
                log.truncate_back()?;
                Err(e)
            })
    })?;
    Ok(moved)
}

fn read_sqlite(path: &Path) -> Result<Sqlite, Error> {
    let err = db_err(path);
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(&err)?;
    let counters = all(
        &db,
        "SELECT tenant, next FROM counters ORDER BY tenant",
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .map_err(&err)?;
    let certs = all(
        &db,
        "SELECT serial, device_id, tenant, status, batch, created_at, fingerprint, not_after,
                cert_der, superseded_at, revoked_at, revocation_reason
         FROM certs ORDER BY rowid",
        |r| {
            Ok(Cert {
                serial: r.get(0)?,
                device_id: r.get(1)?,
                tenant: r.get(2)?,
                status: r.get(3)?,
                batch: r.get(4)?,
                created_at: r.get(5)?,
                fingerprint: r.get(6)?,
                not_after: r.get(7)?,
                cert_der: r.get(8)?,
                superseded_at: r.get(9)?,
                revoked_at: r.get(10)?,
                revocation_reason: r.get(11)?,
            })
        },
    )
    .map_err(&err)?;
    let batches = all(
        &db,
        "SELECT batch, out_dir, started_at FROM batches ORDER BY rowid",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .map_err(&err)?;
    let renewals = all(
        &db,
        "SELECT serial, device_id, at FROM renewals ORDER BY rowid",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .map_err(&err)?;
    let crl_last = db
        .query_row("SELECT last FROM crl_numbers WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(&err)?;
    Ok(Sqlite {
        counters,
        certs,
        batches,
        renewals,
        crl_last,
    })
}

/// Every row `sql` selects, each made by `f`.
fn all<T>(
    db: &Connection,
    sql: &str,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    db.prepare(sql)?.query_map([], f)?.collect()
}

/// One row per device: (id, tenant, when its first certificate was reserved).
fn device_rows(certs: &[Cert]) -> Vec<(String, String, i64)> {
    let mut devices: Vec<(String, String, i64)> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for c in certs {
        match seen.get(&c.device_id) {
            Some(&i) => {
                let d: &mut (String, String, i64) = &mut devices[i];
                d.2 = d.2.min(c.created_at);
            }
            None => {
                seen.insert(c.device_id.clone(), devices.len());
                devices.push((c.device_id.clone(), c.tenant.clone(), c.created_at));
            }
        }
    }
    devices
}

/// Refuses a station the registry already holds, or ids or serials it already holds.
fn refuse(tx: &mut Transaction<'_>, at: &str, station: &str, data: &Sqlite) -> Result<(), Error> {
    let err = pg_err(at);
    for (what, sql) in [
        (
            "an audit log",
            "SELECT 1 FROM audit_heads WHERE station = $1",
        ),
        (
            "certificates",
            "SELECT 1 FROM certs WHERE station = $1 LIMIT 1",
        ),
        (
            "batches",
            "SELECT 1 FROM batches WHERE station = $1 LIMIT 1",
        ),
        (
            "devices",
            "SELECT 1 FROM devices WHERE station = $1 LIMIT 1",
        ),
    ] {
        if tx.query_opt(sql, &[&station]).map_err(&err)?.is_some() {
            return Err(Conflict::AlreadyMigrated {
                at: at.to_owned(),
                station: station.to_owned(),
                what,
            }
            .into());
        }
    }
    let ids: Vec<&str> = data.certs.iter().map(|c| c.device_id.as_str()).collect();
    let serials: Vec<&str> = data.certs.iter().map(|c| c.serial.as_str()).collect();
    let taken =
        |tx: &mut Transaction<'_>, sql: &str, keys: &[&str]| -> Result<Vec<String>, Error> {
            let rows = tx.query(sql, &[&keys]).map_err(&err)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        };
    let device_ids = taken(
        tx,
        "SELECT device_id FROM devices WHERE device_id = ANY($1) ORDER BY device_id LIMIT 10",
        &ids,
    )?;
    let serials = taken(
        tx,
        "SELECT serial FROM certs WHERE serial = ANY($1) ORDER BY serial LIMIT 10",
        &serials,
    )?;
    if device_ids.is_empty() && serials.is_empty() {
        return Ok(());
    }
    Err(Conflict::MigrateCollides {
        at: at.to_owned(),
        device_ids,
        serials,
    }
    .into())
}

/// Inserts the SQLite registry's rows as station `me`'s: one statement per table.
fn insert_registry(
    tx: &mut impl GenericClient,
    at: &str,
    me: &StationIdentity,
    data: &Sqlite,
    devices: &[(String, String, i64)],
) -> Result<(), Error> {
    let err = pg_err(at);
    let created = col(devices, |d| d.2);
    tx.execute(
        "INSERT INTO devices (device_id, tenant, station, created_at)
         SELECT d.id, d.tenant, $1, d.at FROM unnest($2::text[], $3::text[], $4::bigint[])
             AS d (id, tenant, at)",
        &[
            &me.station,
            &col(devices, |d| d.0.as_str()),
            &col(devices, |d| d.1.as_str()),
            &created,
        ],
    )
    .map_err(&err)?;
    insert_certs(tx, at, me, &data.certs)?;
    let batches = &data.batches;
    let names = col(batches, |b| b.0.as_str());
    let outs = col(batches, |b| b.1.as_deref());
    let started = col(batches, |b| b.2);
    tx.execute(
        "INSERT INTO batches (station, batch, out_dir, started_at)
         SELECT $1, b.batch, b.out_dir, b.at FROM unnest($2::text[], $3::text[], $4::bigint[])
             AS b (batch, out_dir, at)",
        &[&me.station, &names, &outs, &started],
    )
    .map_err(&err)?;
    let renewals = &data.renewals;
    let serials = col(renewals, |r| r.0.as_str());
    let ids = col(renewals, |r| r.1.as_str());
    let ats = col(renewals, |r| r.2);
    tx.execute(
        "INSERT INTO renewals (serial, device_id, at)
         SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])",
        &[&serials, &ids, &ats],
    )
    .map_err(&err)?;
    let tenants = col(&data.counters, |c| c.0.as_str());
    let next = col(&data.counters, |c| c.1);
    tx.execute(
        "INSERT INTO counters (tenant, next) SELECT * FROM unnest($1::text[], $2::bigint[])
         ON CONFLICT (tenant) DO UPDATE SET next = GREATEST(counters.next, excluded.next)",
        &[&tenants, &next],
    )
    .map_err(&err)?;
    if let Some(last) = data.crl_last {
        // The next CRL of this issuer is numbered above every one the station wrote.
        tx.execute(
            "INSERT INTO crl_numbers (issuer, last) VALUES ($1, $2)
             ON CONFLICT (issuer) DO UPDATE SET last = GREATEST(crl_numbers.last, excluded.last)",
            &[&me.issuer, &last],
        )
        .map_err(&err)?;
    }
    Ok(())
}

fn insert_certs(
    tx: &mut impl GenericClient,
    at: &str,
    me: &StationIdentity,
    certs: &[Cert],
) -> Result<(), Error> {
    tx.execute(
        "INSERT INTO certs (serial, issuer, station, device_id, tenant, status, batch,
             created_at, fingerprint, not_after, cert_der, superseded_at, revoked_at,
             revocation_reason)
         SELECT c.serial, $1, $2, c.device_id, c.tenant, c.status, c.batch, c.created_at,
             c.fingerprint, c.not_after, c.der, c.superseded_at, c.revoked_at, c.reason
         FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
             $8::bigint[], $9::text[], $10::bigint[], $11::bytea[], $12::bigint[],
             $13::bigint[], $14::text[]) WITH ORDINALITY
             AS c (serial, device_id, tenant, status, batch, created_at, fingerprint,
                   not_after, der, superseded_at, revoked_at, reason, n)
         ORDER BY c.n",
        &[
            &me.issuer,
            &me.station,
            &col(certs, |c| c.serial.as_str()),
            &col(certs, |c| c.device_id.as_str()),
            &col(certs, |c| c.tenant.as_str()),
            &col(certs, |c| c.status.as_str()),
            &col(certs, |c| c.batch.as_str()),
            &col(certs, |c| c.created_at),
            &col(certs, |c| c.fingerprint.as_deref()),
            &col(certs, |c| c.not_after),
            &col(certs, |c| c.cert_der.as_deref()),
            &col(certs, |c| c.superseded_at),
            &col(certs, |c| c.revoked_at),
            &col(certs, |c| c.revocation_reason.as_deref()),
        ],
    )
    .map_err(pg_err(at))?;
    Ok(())
}

/// One column of `rows`, as an array parameter.
fn col<'a, T, U>(rows: &'a [T], f: impl Fn(&'a T) -> U) -> Vec<U> {
    rows.iter().map(f).collect()
}
