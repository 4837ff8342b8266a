//! The registry several stations share, in PostgreSQL, with the same semantics as
//! [`SqliteRegistry`](super::SqliteRegistry).
//!
//! Each station has its own connection and identity: its name (whose reservations a crash
//! of it leaves, so `abort_reserved` touches only its own) and its issuing CA (whose CRL
//! lists only the certificates that CA signed; CRL numbers are per issuing CA). Device ids
//! are claimed by a row of `devices` (primary key) in the reserving transaction, the
//! tenant's counter row locked by `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` until it
//! commits, so stations reserving at once never get the same id; serials are a primary key.
//!
//! The sync `postgres` client runs its own small tokio runtime, which must never be entered
//! from inside another (the station API's): every call is then made on a scoped thread of
//! its own (see [`Conn::run`]).

use std::sync::{Mutex, PoisonError};

use postgres::error::SqlState;
use postgres::{Client, GenericClient, Row, Transaction};

use super::target::PostgresTarget;
use super::{
    live_to_revoke, mark_revoked, now, Activation, CertRecord, Registry, Reservation, Status,
    COLUMNS,
};
use crate::error::{Busy, Error};

mod bulk;

/// The schema, in order: (version, name, SQL). Applied at open, each once, under a lock.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "shared registry",
        include_str!("migrations/0001_shared_registry.sql"),
    ),
    (2, "audit", include_str!("migrations/0002_audit.sql")),
];

/// The advisory lock stations take while migrating (any constant the fleet agrees on).
const MIGRATION_LOCK: i64 = 0x666c_6565_7472_6567; // "fleetreg"

/// How many taken ids a tenant's counter skips at most in one claim.
const MAX_SKIP: usize = 100_000;

/// Who this station is in a shared registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationIdentity {
    /// The station's name (unique in the fleet): its reservations are its own.
    pub station: String,
    /// The SHA-256 (hex) of its issuing CA certificate's DER: the issuer its CRL is for.
    pub issuer: String,
}

/// A station's connection to the shared PostgreSQL registry.
pub struct PostgresRegistry {
    conn: Mutex<Conn>,
    at: String,
    me: StationIdentity,
    target: PostgresTarget,
}

/// The client, used and dropped off any tokio runtime (the audit log's anchor has one too).
pub(crate) struct Conn(pub(crate) Option<Client>);

fn in_runtime() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

impl Conn {
    /// Runs `f` with the client: on this thread, or on a scoped thread of its own when this
    /// one is inside a tokio runtime (the client blocks on a runtime of its own).
    pub(crate) fn run<T: Send>(
        &mut self,
        at: &str,
        f: impl FnOnce(&mut Client) -> Result<T, Error> + Send,
    ) -> Result<T, Error> {
        let Some(client) = self.0.as_mut() else {
            return Err(Error::InvalidInput {
                field: "registry",
                message: format!("{at}: the connection is closed"),
            });
        };
        if !in_runtime() {
            return f(client);
        }
        std::thread::scope(|s| match s.spawn(move || f(client)).join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(client) = self.0.take() {
            if in_runtime() {
                let _ = std::thread::spawn(move || drop(client)).join();
            }
        }
    }
}

/// Maps a database error to [`Error::SharedRegistry`]; a lock or serialization conflict
/// with another station is [`Busy::SharedRegistry`] (try again).
pub(crate) fn pg_err(at: &str) -> impl Fn(postgres::Error) -> Error + '_ {
    move |source| {
        let busy = [
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::LOCK_NOT_AVAILABLE,
        ];
        if source.code().is_some_and(|c| busy.contains(c)) {
            return Error::Busy(Busy::SharedRegistry { at: at.to_owned() });
        }
        Error::SharedRegistry {
            at: at.to_owned(),
            source,
        }
    }
}

impl PostgresRegistry {
    /// Connects as station `me`, applying the schema migrations this build knows that the
    /// database lacks (refusing a database migrated by a newer build).
    pub fn open(target: &PostgresTarget, me: StationIdentity) -> Result<PostgresRegistry, Error> {
        let at = target.to_string();
        let mut conn = Conn(None);
        let client = Conn::connect(target, &at)?;
        conn.0 = Some(client);
        let reg = PostgresRegistry {
            conn: Mutex::new(conn),
            at,
            me,
            target: target.clone(),
        };
        reg.with_tx(migrate)?;
        Ok(reg)
    }

    /// This station's identity.
    pub fn identity(&self) -> &StationIdentity {
        &self.me
    }

    /// Runs `f` in a transaction, committed when it returns `Ok`, rolled back otherwise.
    fn with_tx<T: Send>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>, &Ctx<'_>) -> Result<T, Error> + Send,
    ) -> Result<T, Error> {
        let ctx = Ctx {
            at: &self.at,
            me: &self.me,
        };
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        conn.run(&self.at, |client| {
            let mut tx = client.transaction().map_err(pg_err(ctx.at))?;
            let out = f(&mut tx, &ctx)?;
            tx.commit().map_err(pg_err(ctx.at))?;
            Ok(out)
        })
    }

    /// The certificates a query selects (`sql_where` follows `FROM certs`).
    fn query(
        &self,
        sql_where: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<CertRecord>, Error> {
        self.with_tx(|tx, ctx| select(tx, ctx, sql_where, params))
    }
}

impl Conn {
    pub(crate) fn connect(target: &PostgresTarget, at: &str) -> Result<Client, Error> {
        let connect = || match &target.tls {
            Some(tls) => target.config.connect(tls.clone()),
            None => target.config.connect(postgres::NoTls),
        };
        let client = if in_runtime() {
            std::thread::scope(|s| match s.spawn(connect).join() {
                Ok(out) => out,
                Err(panic) => std::panic::resume_unwind(panic),
            })
        } else {
            connect()
        };
        client.map_err(pg_err(at))
    }
}

/// What a transaction needs to know: where (for messages) and who.
struct Ctx<'a> {
    at: &'a str,
    me: &'a StationIdentity,
}

fn migrate(tx: &mut Transaction<'_>, ctx: &Ctx<'_>) -> Result<(), Error> {
    let err = pg_err(ctx.at);
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(&err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS fleet_schema (
             version INTEGER PRIMARY KEY,
             name TEXT NOT NULL,
             applied_at BIGINT NOT NULL
         )",
    )
    .map_err(&err)?;
    let current: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM fleet_schema", &[])
        .map_err(&err)?
        .get(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > known {
        return Err(Error::InvalidInput {
            field: "registry",
            message: format!(
                "{}: the database schema is at version {current}, newer than this fleet-provision knows ({known}): upgrade fleet-provision",
                ctx.at
            ),
        });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        tx.batch_execute(sql).map_err(&err)?;
        tx.execute(
            "INSERT INTO fleet_schema (version, name, applied_at) VALUES ($1, $2, $3)",
            &[version, name, &now()],
        )
        .map_err(&err)?;
    }
    Ok(())
}

fn select(
    tx: &mut impl GenericClient,
    ctx: &Ctx<'_>,
    sql_where: &str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<CertRecord>, Error> {
    let sql = format!("SELECT {COLUMNS} FROM certs {sql_where}");
    let rows = tx.query(&sql, params).map_err(pg_err(ctx.at))?;
    Ok(rows.iter().map(row_to_record).collect())
}

fn row_to_record(r: &Row) -> CertRecord {
    CertRecord {
        device_id: r.get(0),
        tenant: r.get(1),
        serial_hex: r.get(2),
        fingerprint_hex: r.get(3),
        status: Status::parse(r.get(4)),
        batch: r.get(5),
        created_at: r.get(6),
        not_after: r.get(7),
        superseded_at: r.get(8),
        revoked_at: r.get(9),
        revocation_reason: r.get(10),
    }
}

/// Locks the tenant's counter row until the transaction ends and returns its next number.
fn lock_counter(tx: &mut Transaction<'_>, ctx: &Ctx<'_>, tenant: &str) -> Result<i64, Error> {
    let row = tx
        .query_one(
            "INSERT INTO counters (tenant, next) VALUES ($1, 1)
             ON CONFLICT (tenant) DO UPDATE SET next = counters.next RETURNING next",
            &[&tenant],
        )
        .map_err(pg_err(ctx.at))?;
    Ok(row.get(0))
}

impl Registry for PostgresRegistry {
    fn begin_batch(&mut self, batch: &str, out_dir: Option<&str>) -> Result<(), Error> {
        self.with_tx(|tx, ctx| {
            tx.execute(
                "INSERT INTO batches (station, batch, out_dir, started_at) VALUES ($1, $2, $3, $4)",
                &[&ctx.me.station, &batch, &out_dir, &now()],
            )
            .map_err(pg_err(ctx.at))?;
            Ok(())
        })
    }

    fn batch_out_dir(&self, batch: &str) -> Result<Option<String>, Error> {
        self.with_tx(|tx, ctx| {
            let row = tx
                .query_opt(
                    "SELECT out_dir FROM batches WHERE station = $1 AND batch = $2",
                    &[&ctx.me.station, &batch],
                )
                .map_err(pg_err(ctx.at))?;
            Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
        })
    }

    fn reserve(&mut self, items: &[Reservation]) -> Result<Vec<String>, Error> {
        self.with_tx(|tx, ctx| bulk::reserve_in(tx, ctx, items))
    }

    fn activate(&mut self, items: &[Activation]) -> Result<(), Error> {
        self.with_tx(|tx, ctx| bulk::activate_in(tx, ctx, items))
    }

    fn abort_reserved(&mut self) -> Result<Vec<CertRecord>, Error> {
        self.with_tx(|tx, ctx| {
            let rows = select(
                tx,
                ctx,
                "WHERE status = 'reserved' AND station = $1 ORDER BY serial FOR UPDATE",
                &[&ctx.me.station],
            )?;
            if !rows.is_empty() {
                tx.execute(
                    "UPDATE certs SET status = 'aborted', revoked_at = $2,
                         revocation_reason = 'cessationOfOperation'
                     WHERE status = 'reserved' AND station = $1",
                    &[&ctx.me.station, &now()],
                )
                .map_err(pg_err(ctx.at))?;
            }
            Ok(rows)
        })
    }

    fn list(&self) -> Result<Vec<CertRecord>, Error> {
        self.query("ORDER BY device_id, created_at, seq", &[])
    }

    fn device(&self, device_id: &str) -> Result<Vec<CertRecord>, Error> {
        self.query(
            "WHERE device_id = $1 ORDER BY created_at, seq",
            &[&device_id],
        )
    }

    fn cert(&self, serial_hex: &str) -> Result<Option<CertRecord>, Error> {
        Ok(self.query("WHERE serial = $1", &[&serial_hex])?.pop())
    }

    fn cert_der(&self, serial_hex: &str) -> Result<Option<Vec<u8>>, Error> {
        self.with_tx(|tx, ctx| {
            let row = tx
                .query_opt(
                    "SELECT cert_der FROM certs WHERE serial = $1",
                    &[&serial_hex],
                )
                .map_err(pg_err(ctx.at))?;
            Ok(row.and_then(|r| r.get::<_, Option<Vec<u8>>>(0)))
        })
    }

    fn revocation_watch(&self) -> Option<super::RevocationWatch> {
        Some(super::RevocationWatch {
            target: self.target.clone(),
            me: self.me.clone(),
        })
    }

    fn revoke_device(&mut self, device_id: &str, reason: &str) -> Result<Vec<CertRecord>, Error> {
        self.with_tx(|tx, ctx| {
            let certs = select(
                tx,
                ctx,
                "WHERE device_id = $1 ORDER BY created_at, seq FOR UPDATE",
                &[&device_id],
            )?;
            let live = live_to_revoke(device_id, certs)?;
            let at = now();
            tx.execute(
                "UPDATE certs SET status = 'revoked', revoked_at = $2, revocation_reason = $3
                 WHERE device_id = $1 AND status IN ('active', 'superseded')",
                &[&device_id, &at, &reason],
            )
            .map_err(pg_err(ctx.at))?;
            super::notify::notify_revoked(tx, ctx.at, ctx.me, device_id, at)?;
            Ok(mark_revoked(live, Status::Revoked, at, reason))
        })
    }

    /// Only certificates this station's issuing CA signed: their CRL is this station's.
    fn expire_superseded(&mut self, cutoff: i64) -> Result<Vec<CertRecord>, Error> {
        self.with_tx(|tx, ctx| {
            let rows = select(
                tx,
                ctx,
                "WHERE status = 'superseded' AND superseded_at <= $1 AND issuer = $2
                 ORDER BY serial FOR UPDATE",
                &[&cutoff, &ctx.me.issuer],
            )?;
            if rows.is_empty() {
                return Ok(rows);
            }
            let at = now();
            tx.execute(
                "UPDATE certs SET status = 'revoked', revoked_at = $2,
                     revocation_reason = 'superseded'
                 WHERE status = 'superseded' AND superseded_at <= $1 AND issuer = $3",
                &[&cutoff, &at, &ctx.me.issuer],
            )
            .map_err(pg_err(ctx.at))?;
            Ok(mark_revoked(rows, Status::Revoked, at, "superseded"))
        })
    }

    /// Only certificates this station's issuing CA signed, whichever station revoked them.
    fn revoked(&self) -> Result<Vec<(String, i64, String)>, Error> {
        self.with_tx(|tx, ctx| {
            let rows = tx
                .query(
                    "SELECT serial, revoked_at, revocation_reason FROM certs
                     WHERE issuer = $1 AND status IN ('revoked', 'aborted')
                     ORDER BY revoked_at, serial",
                    &[&ctx.me.issuer],
                )
                .map_err(pg_err(ctx.at))?;
            Ok(rows
                .iter()
                .map(|r| {
                    let at: Option<i64> = r.get(1);
                    let reason: Option<String> = r.get(2);
                    (r.get(0), at.unwrap_or(0), reason.unwrap_or_default())
                })
                .collect())
        })
    }

    /// This station's issuing CA's next number, shared by every station of that CA.
    fn next_crl_number(&mut self) -> Result<u64, Error> {
        self.with_tx(|tx, ctx| {
            let row = tx
                .query_one(
                    "INSERT INTO crl_numbers (issuer, last) VALUES ($1, 1)
                     ON CONFLICT (issuer) DO UPDATE SET last = crl_numbers.last + 1
                     RETURNING last",
                    &[&ctx.me.issuer],
                )
                .map_err(pg_err(ctx.at))?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
    }

    fn last_crl_number(&self) -> Result<u64, Error> {
        self.with_tx(|tx, ctx| {
            let row = tx
                .query_opt(
                    "SELECT last FROM crl_numbers WHERE issuer = $1",
                    &[&ctx.me.issuer],
                )
                .map_err(pg_err(ctx.at))?;
            Ok(row.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
        })
    }

    fn renewals_since(&self, device_id: &str, since: i64) -> Result<Vec<i64>, Error> {
        self.with_tx(|tx, ctx| {
            let rows = tx
                .query(
                    "SELECT at FROM renewals WHERE device_id = $1 AND at >= $2 ORDER BY at",
                    &[&device_id, &since],
                )
                .map_err(pg_err(ctx.at))?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }
}
