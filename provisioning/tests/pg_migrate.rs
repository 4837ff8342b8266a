//! `fleet-provision registry migrate` (issue 18), through the real binary on the test's own
//! PostgreSQL 15 (see common/pg): a SQLite station that issued a batch and revoked a device
//! moves into the shared registry with the same ids, serials and statuses, its CRL numbers
//! continue above the old one, its audit log verifies there, and its counters continue;
//! a second migrate, a station the registry collides with, and a SQLite station run against
//! the shared registry unmigrated are refused with nothing written.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::pg::{self, PgServer};
use common::{stderr, stdout};

/// `fleet-provision` on `dir`; with the shared registry at `url` when given.
fn cli(pg: &PgServer, dir: &Path, url: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet-provision"));
    cmd.arg("--dir").arg(dir).args(args);
    cmd.env_remove("FLEET_CA_PASSPHRASE")
        .env_remove("FLEET_REGISTRY")
        .env("PGPASSWORD", &pg.password);
    if let Some(url) = url {
        cmd.env("FLEET_REGISTRY", url);
    }
    cmd.output().expect("fleet-provision runs")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// A SQLite station in `dir` that issued `count` devices of tenant acme.
fn sqlite_station(pg: &PgServer, dir: &Path, count: u32) {
    let init = ["ca", "init", "--org", "Acme", "--insecure-plaintext-keys"];
    ok(cli(pg, dir, None, &init), "ca init");
    let count = count.to_string();
    ok(cli(pg, dir, None, &common::batch_args(&count)), "batch");
}

fn migrate(pg: &PgServer, dir: &Path, url: &str) -> Output {
    let from = dir.to_str().unwrap();
    cli(
        pg,
        dir,
        None,
        &["registry", "migrate", "--from", from, "--to", url],
    )
}

/// (device id, status, serial) of every certificate `devices` lists.
fn devices(pg: &PgServer, dir: &Path, url: Option<&str>) -> Vec<(String, String, String)> {
    let out = ok(cli(pg, dir, url, &["devices"]), "devices");
    let mut rows: Vec<_> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[2].to_owned(), f[4].to_owned())
        })
        .collect();
    rows.sort();
    rows
}

/// The station's CRL: (its number, the serials it lists).
fn crl(dir: &Path) -> (u64, Vec<String>) {
    let text = std::fs::read_to_string(dir.join("crl/issuing.crl.pem")).unwrap();
    let der = pem::parse(text).unwrap().into_contents();
    let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
    let number = crl.crl_number().unwrap().to_string().parse().unwrap();
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    (number, serials)
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

fn count(pg: &PgServer, db: &str, sql: &str) -> i64 {
    pg.client(db).unwrap().query_one(sql, &[]).unwrap().get(0)
}

#[test]
fn a_sqlite_station_moves_into_the_shared_registry_once() {
    let Some(pg) = pg::start() else { return };
    let url = pg::database(&pg, "migrate");
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("old");
    sqlite_station(&pg, &old, 5);
    ok(
        cli(
            &pg,
            &old,
            None,
            &["revoke", "acme-000002", "--reason", "keyCompromise"],
        ),
        "revoke",
    );
    let before = devices(&pg, &old, None);
    assert_eq!(before.len(), 5);
    let revoked: Vec<&(String, String, String)> =
        before.iter().filter(|d| d.1 == "revoked").collect();
    assert_eq!(revoked.len(), 1);
    let revoked_serial = revoked[0].2.clone();
    let (old_number, _) = crl(&old);
    let sqlite = read(&old.join("registry.sqlite3"));
    let log_lines = std::fs::read_to_string(old.join("audit.log"))
        .unwrap()
        .lines()
        .count();

    // Run against the shared registry before migrating: refused, it must be migrated.
    let out = cli(&pg, &old, Some(&url), &["crl"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("registry migrate --from"),
        "{}",
        stderr(&out)
    );

    let out = ok(migrate(&pg, &old, &url), "migrate");
    let name = fleet_provision::station_name(&old, false).unwrap();
    assert!(
        out.contains(&format!("as station {name}")) && out.contains("5 devices, 5 certificates"),
        "{out}"
    );
    // The SQLite registry is left as it was.
    assert_eq!(read(&old.join("registry.sqlite3")), sqlite);

    // On the shared registry: the same devices, serials and statuses.
    assert_eq!(devices(&pg, &old, Some(&url)), before);
    // The audit log moved with a record saying so, and verifies there.
    let log = std::fs::read_to_string(old.join("audit.log")).unwrap();
    assert_eq!(log.lines().count(), log_lines + 1);
    assert!(log
        .lines()
        .last()
        .unwrap()
        .contains("\"kind\":\"migrated\""));
    let out = ok(
        cli(&pg, &old, Some(&url), &["audit", "verify"]),
        "audit verify",
    );
    assert!(out.contains("audit log OK"), "{out}");
    ok(
        cli(
            &pg,
            &old,
            Some(&url),
            &["audit", "verify", "--all-stations"],
        ),
        "audit verify --all-stations",
    );
    // Run without the shared registry now: refused, its SQLite registry is stale.
    let out = cli(&pg, &old, None, &["crl"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("was migrated to {url}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(read(&old.join("registry.sqlite3")), sqlite);
    // Its CRL still lists the revoked serial, numbered above the old one.
    ok(cli(&pg, &old, Some(&url), &["crl"]), "crl");
    let (number, serials) = crl(&old);
    assert!(
        number > old_number,
        "CRL number {number} after {old_number}"
    );
    assert!(serials.contains(&revoked_serial), "{serials:?}");
    // The tenant's counter moved too: new ids continue after the old ones.
    let batch = common::batch_args("1");
    ok(cli(&pg, &old, Some(&url), &batch), "batch after migrate");
    let after = devices(&pg, &old, Some(&url));
    assert!(after.iter().any(|d| d.0 == "acme-000006"), "{after:?}");

    // A second migrate is refused, nothing written.
    let records = count(&pg, "migrate", "SELECT count(*) FROM audit_records");
    let log = read(&old.join("audit.log"));
    let out = migrate(&pg, &old, &url);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("station {name} was migrated before")),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        count(&pg, "migrate", "SELECT count(*) FROM audit_records"),
        records
    );
    assert_eq!(read(&old.join("audit.log")), log);

    // Another SQLite station whose ids the registry holds: refused, nothing written.
    let other = tmp.path().join("other");
    sqlite_station(&pg, &other, 2);
    let other_log = read(&other.join("audit.log"));
    let certs = count(&pg, "migrate", "SELECT count(*) FROM certs");
    let out = migrate(&pg, &other, &url);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("device ids [acme-000001, acme-000002]")
            && stderr(&out).contains("nothing was written"),
        "{}",
        stderr(&out)
    );
    assert_eq!(count(&pg, "migrate", "SELECT count(*) FROM certs"), certs);
    assert_eq!(
        count(&pg, "migrate", "SELECT count(*) FROM audit_records"),
        records
    );
    assert_eq!(count(&pg, "migrate", "SELECT count(*) FROM audit_heads"), 1);
    assert_eq!(read(&other.join("audit.log")), other_log);
}
