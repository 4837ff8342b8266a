//! The tests' PostgreSQL 15 server (crate `fleet-pgserver`: a private server on loopback,
//! stopped by PID), with what the station tests add: a registry target per database and a
//! TLS-only server whose certificate a test CA signs.

use fleet_pgserver::Options;
pub use fleet_pgserver::PgServer;
use fleet_provision::PostgresTarget;

/// A fresh server (`None`: the test skips, PostgreSQL missing and not required).
pub fn start() -> Option<PgServer> {
    PgServer::for_test(Options::default())
}

/// [`start`] with TLS only (plain TCP connections are rejected): its server certificate (for
/// 127.0.0.1 and localhost) comes from `ca`.
pub fn start_tls(ca: &fleet_provision::pki::Ca) -> Option<PgServer> {
    let server = fleet_provision::pki::sign_server(ca, &["127.0.0.1", "localhost"], 30)
        .expect("database server certificate");
    PgServer::for_test(Options {
        tls: Some((server.cert_pem.clone(), server.key.serialize_pem())),
        ..Options::default()
    })
}

/// Database `db`, created on `pg`: its URL (without the password).
pub fn database(pg: &PgServer, db: &str) -> String {
    pg.database(db).expect("create database")
}

/// The registry target for database `db` (created first).
pub fn target(pg: &PgServer, db: &str) -> PostgresTarget {
    PostgresTarget::new(&database(pg, db), Some(&pg.password), None).expect("target")
}
