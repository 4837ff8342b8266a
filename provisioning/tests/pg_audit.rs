//! The audit log anchored in the shared PostgreSQL registry (issue 18), through the real
//! `fleet-provision` binary on the test's own PostgreSQL 15 (see common/pg):
//!
//! - every record is copied into `audit_records` and the anchor kept in `audit_heads`;
//! - two stations issuing into one database each pass `audit verify --all-stations`;
//! - a line edited or a row deleted in the database, or a line edited in a station's file,
//!   is named by station and record;
//! - at open, records a crash left past the anchor are copied in, and an anchor past the
//!   end of the file is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::pg::{self, PgServer};
use common::{stderr, stdout};

/// Station directories on one database.
struct Shared<'a> {
    pg: &'a PgServer,
    db: String,
    url: String,
    _dir: tempfile::TempDir,
    stations: Vec<PathBuf>,
}

impl<'a> Shared<'a> {
    fn new(pg: &'a PgServer, db: &str, count: usize) -> Shared<'a> {
        let url = pg::database(pg, db);
        let dir = tempfile::tempdir().unwrap();
        let stations = (1..=count)
            .map(|n| dir.path().join(format!("line-{n}")))
            .collect();
        let shared = Shared {
            pg,
            db: db.into(),
            url,
            _dir: dir,
            stations,
        };
        for n in 1..=count {
            let args = ["ca", "init", "--org", "Acme", "--insecure-plaintext-keys"];
            let out = shared.cli(n, &args);
            assert!(out.status.success(), "ca init {n}: {}", stderr(&out));
        }
        shared
    }

    fn dir(&self, n: usize) -> &Path {
        &self.stations[n - 1]
    }

    fn command(&self, n: usize, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet-provision"));
        cmd.arg("--dir").arg(self.dir(n)).args(args);
        cmd.env_remove("FLEET_CA_PASSPHRASE")
            .env("FLEET_REGISTRY", &self.url)
            .env("PGPASSWORD", &self.pg.password);
        cmd
    }

    fn cli(&self, n: usize, args: &[&str]) -> Output {
        self.command(n, args)
            .output()
            .expect("fleet-provision runs")
    }

    fn batch(&self, n: usize, count: u32) -> Child {
        let count = count.to_string();
        self.command(n, &common::batch_args(&count))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fleet-provision batch starts")
    }

    fn name(&self, n: usize) -> String {
        fleet_provision::station_name(self.dir(n), false).unwrap()
    }

    fn sql(&self, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]) -> u64 {
        let mut c = self.pg.client(&self.db).unwrap();
        c.execute(sql, params).unwrap()
    }

    fn lines(&self, n: usize) -> Vec<String> {
        std::fs::read_to_string(self.dir(n).join("audit.log"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `audit verify` (with `--all-stations` when `all`) on station `n`: (passed, stdout).
    fn verify(&self, n: usize, all: bool) -> (bool, String) {
        let mut args = vec!["audit", "verify"];
        if all {
            args.push("--all-stations");
        }
        let out = self.cli(n, &args);
        (out.status.success(), stdout(&out) + &stderr(&out))
    }
}

fn sha256(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn finish(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what}: {}", stderr(&out));
}

#[test]
fn two_stations_issue_into_one_database_and_each_verifies_every_chain() {
    let Some(pg) = pg::start() else { return };
    let shared = Shared::new(&pg, "audit_two", 2);
    let batches: Vec<Child> = (1..=2).map(|n| shared.batch(n, 300)).collect();
    for (n, child) in batches.into_iter().enumerate() {
        finish(child, &format!("batch on station {}", n + 1));
    }
    let mut c = pg.client(&shared.db).unwrap();
    for n in 1..=2 {
        // The database holds each station's log line for line, and anchors its last one.
        let lines = shared.lines(n);
        let rows = c
            .query(
                "SELECT seq, line, hash FROM audit_records WHERE station = $1 ORDER BY seq",
                &[&shared.name(n)],
            )
            .unwrap();
        assert_eq!(rows.len(), lines.len(), "station {n}");
        for (i, (row, line)) in rows.iter().zip(&lines).enumerate() {
            assert_eq!(row.get::<_, i64>(0), i as i64 + 1);
            assert_eq!(&row.get::<_, String>(1), line);
            assert_eq!(row.get::<_, String>(2), sha256(line));
        }
        let head = c
            .query_one(
                "SELECT seq, hash FROM audit_heads WHERE station = $1",
                &[&shared.name(n)],
            )
            .unwrap();
        assert_eq!(head.get::<_, i64>(0), lines.len() as i64);
        assert_eq!(head.get::<_, String>(1), sha256(lines.last().unwrap()));
    }
    for n in 1..=2 {
        let (ok, out) = shared.verify(n, true);
        assert!(ok, "audit verify --all-stations on station {n}: {out}");
        assert!(out.contains("2 stations verified"), "{out}");
        for m in 1..=2 {
            assert!(out.contains(&format!("station {}: audit log OK", shared.name(m))));
        }
        let (ok, out) = shared.verify(n, false);
        assert!(ok && out.contains("audit log OK"), "audit verify: {out}");
    }
    // Without a shared registry there is nothing to verify every station in.
    let out = Command::new(env!("CARGO_BIN_EXE_fleet-provision"))
        .arg("--dir")
        .arg(shared.dir(1))
        .args(["audit", "verify", "--all-stations"])
        .env_remove("FLEET_REGISTRY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--all-stations needs --registry"));
}

#[test]
fn tampering_in_the_database_or_a_file_is_named_by_station_and_record() {
    let Some(pg) = pg::start() else { return };
    let shared = Shared::new(&pg, "audit_tamper", 2);
    for n in 1..=2 {
        finish(shared.batch(n, 5), "batch");
    }
    let (one, two) = (shared.name(1), shared.name(2));

    // A line edited in the database: station 2's first issue record, named from station 1.
    let lines = shared.lines(2);
    let i = lines
        .iter()
        .position(|l| l.contains("\"kind\":\"issue\""))
        .unwrap();
    let seq = i as i64 + 1;
    let original = lines[i].clone();
    let edited = original.replace("acme", "evil");
    assert_ne!(edited, original);
    let set_line = "UPDATE audit_records SET line = $3 WHERE station = $1 AND seq = $2";
    assert_eq!(shared.sql(set_line, &[&two, &seq, &edited]), 1);
    let (ok, out) = shared.verify(1, true);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "TAMPERED: station {two}: record {seq}: the registry's hash is not the SHA-256"
        )),
        "{out}"
    );
    assert!(!out.contains(&format!("station {one}: record")), "{out}");
    // Station 2's own check finds its file and the copy differ there.
    let (ok, out) = shared.verify(2, false);
    let differs = format!("record {seq}: the log's line differs");
    assert!(!ok && out.contains(&differs), "{out}");
    shared.sql(set_line, &[&two, &seq, &original]);
    assert!(shared.verify(1, true).0, "restored");

    // The last row of station 1 deleted: its anchor no longer matches its last row.
    let last = shared.lines(1).len() as i64;
    let row = pg
        .client(&shared.db)
        .unwrap()
        .query_one(
            "DELETE FROM audit_records WHERE station = $1 AND seq = $2
             RETURNING prev, line, hash",
            &[&one, &last],
        )
        .unwrap();
    let (ok, out) = shared.verify(2, true);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "TAMPERED: station {one}: the registry anchors record {last}, but the log ends at record {}",
            last - 1
        )),
        "{out}"
    );
    let (ok, out) = shared.verify(1, false);
    assert!(
        !ok && out.contains(&format!(
            "record {last}: anchored in the registry, but its copy"
        )),
        "{out}"
    );
    let (prev, line, hash): (String, String, String) = (row.get(0), row.get(1), row.get(2));
    shared.sql(
        "INSERT INTO audit_records (station, seq, prev, line, hash) VALUES ($1, $2, $3, $4, $5)",
        &[&one, &last, &prev, &line, &hash],
    );
    assert!(shared.verify(2, true).0, "restored");

    // A line edited in station 1's file: station 1 names it, alone and with --all-stations.
    // (Record 1 is `ca init`'s, with the organisation's name.)
    let mut lines = shared.lines(1);
    let edited = lines[0].replace("Acme", "Evil");
    assert_ne!(edited, lines[0]);
    lines[0] = edited;
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(shared.dir(1).join("audit.log"), text).unwrap();
    let (ok, out) = shared.verify(1, false);
    assert!(!ok, "{out}");
    assert!(
        out.contains("TAMPERED: record 1: the log's line differs"),
        "{out}"
    );
    assert!(out.contains("TAMPERED: record 2: does not chain"), "{out}");
    let (ok, out) = shared.verify(1, true);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("TAMPERED: station {one}: record 1:")),
        "{out}"
    );
    // Station 2 has no copy of station 1's files: the database copy is intact.
    let (ok, out) = shared.verify(2, true);
    assert!(ok, "{out}");
}

#[test]
fn a_crash_between_the_file_and_the_database_is_settled_at_open() {
    let Some(pg) = pg::start() else { return };
    let shared = Shared::new(&pg, "audit_crash", 1);
    finish(shared.batch(1, 3), "batch");
    let name = shared.name(1);
    let lines = shared.lines(1);
    let n = lines.len() as i64;

    // As if the last append reached the file but not the database: the anchor one back.
    shared.sql(
        "DELETE FROM audit_records WHERE station = $1 AND seq = $2",
        &[&name, &n],
    );
    let back = sha256(&lines[lines.len() - 2]);
    shared.sql(
        "UPDATE audit_heads SET seq = $2, hash = $3 WHERE station = $1",
        &[&name, &(n - 1), &back],
    );
    // And a torn half line after it.
    let mut text = lines.join("\n") + "\n";
    text.push_str("{\"seq\":99,\"ts\":");
    std::fs::write(shared.dir(1).join("audit.log"), &text).unwrap();

    // The next run cuts the torn line, copies the record in and anchors it, and records
    // that it recovered.
    let out = shared.cli(1, &["crl"]);
    assert!(out.status.success(), "crl: {}", stderr(&out));
    assert!(stderr(&out).contains("byte(s) of a torn audit record discarded"));
    let after = shared.lines(1);
    assert_eq!(after[..lines.len()], lines[..]);
    assert!(after[lines.len()].contains("\"kind\":\"recovery\""));
    let (ok, out) = shared.verify(1, true);
    assert!(ok, "{out}");

    // An anchor past the end of the file (records cut off) is refused at open.
    let total = shared.lines(1).len() as i64;
    shared.sql(
        "UPDATE audit_heads SET seq = $2 WHERE station = $1",
        &[&name, &(total + 1)],
    );
    let out = shared.cli(1, &["crl"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("records were cut off or replaced"),
        "{}",
        stderr(&out)
    );
}
