#![allow(dead_code)]

//! Three stations on one PostgreSQL registry, for the tests that run them through the real
//! `fleet-provision` binary (pg_stations.rs, pg_restart.rs include this file): each with its
//! own issuing CA under one root (`ca import`), the URL and password from the environment.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::pg::{self, PgServer};
use crate::common::{stderr, stdout};
use fleet_provision::pki;

/// Three station directories, their issuing CAs under one root, on database `db`.
pub struct Fleet {
    port: u16,
    password: String,
    db: String,
    pub url: String,
    _dir: tempfile::TempDir,
    stations: Vec<PathBuf>,
    root_der: Vec<u8>,
}

impl Fleet {
    /// Creates database `db` on `pg` and three stations for it (the fleet keeps no borrow
    /// of the server: a test may restart it).
    pub fn new(pg: &PgServer, db: &str) -> Fleet {
        let url = pg::database(pg, db);
        let dir = tempfile::tempdir().unwrap();
        let root = pki::new_root_ca("Acme").unwrap();
        std::fs::write(dir.path().join("root.pem"), &root.cert_pem).unwrap();
        let mut fleet = Fleet {
            port: pg.port,
            password: pg.password.clone(),
            db: db.into(),
            url,
            stations: Vec::new(),
            root_der: root.cert_der.clone(),
            _dir: dir,
        };
        for n in 1..=3 {
            let base = fleet._dir.path();
            let issuing = pki::new_issuing_ca(&root, &format!("Acme Line {n}")).unwrap();
            let cert = base.join(format!("issuing-{n}.pem"));
            let key = base.join(format!("issuing-{n}.key"));
            std::fs::write(&cert, &issuing.cert_pem).unwrap();
            std::fs::write(&key, pki::key_to_pem(&issuing.key, None).unwrap()).unwrap();
            let station = base.join(format!("station-{n}"));
            let out = fleet.cli(
                &station,
                &[
                    "ca",
                    "import",
                    "--cert",
                    cert.to_str().unwrap(),
                    "--key",
                    key.to_str().unwrap(),
                    "--root",
                    base.join("root.pem").to_str().unwrap(),
                    "--insecure-plaintext-keys",
                ],
            );
            assert!(out.status.success(), "ca import {n}: {}", stderr(&out));
            fleet.stations.push(station);
        }
        fleet
    }

    pub fn station(&self, n: usize) -> &Path {
        &self.stations[n - 1]
    }

    /// `fleet-provision` on `dir` with the shared registry (URL and password from the
    /// environment, as a factory line would set them).
    pub fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet-provision"));
        cmd.arg("--dir").arg(dir).args(args);
        cmd.env_remove("FLEET_CA_PASSPHRASE")
            .env("FLEET_REGISTRY", &self.url)
            .env("PGPASSWORD", &self.password);
        cmd
    }

    pub fn cli(&self, dir: &Path, args: &[&str]) -> Output {
        self.command(dir, args)
            .output()
            .expect("fleet-provision runs")
    }

    pub fn batch(&self, n: usize, count: u32) -> Child {
        self.command(
            self.station(n),
            &[
                "batch",
                "--count",
                &count.to_string(),
                "--tenant",
                "acme",
                "--gateway-host",
                "gw.test",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fleet-provision batch starts")
    }

    /// `devices` on station `n`: (device id, status, serial) per certificate.
    pub fn devices(&self, n: usize) -> Vec<(String, String, String)> {
        let out = self.cli(self.station(n), &["devices"]);
        assert!(out.status.success(), "devices: {}", stderr(&out));
        stdout(&out)
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f[0].to_owned(), f[2].to_owned(), f[4].to_owned())
            })
            .collect()
    }

    pub fn station_name(&self, n: usize) -> String {
        fleet_provision::station_name(self.station(n), false).unwrap()
    }

    /// A direct connection to the fleet's database.
    pub fn client(&self) -> postgres::Client {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user(fleet_pgserver::USER)
            .password(&self.password)
            .dbname(&self.db)
            .connect_timeout(Duration::from_secs(5));
        c.connect(postgres::NoTls)
            .expect("connect to the fleet's database")
    }

    /// (status, count) of station `n`'s certificates, straight from the database.
    pub fn counts(&self, n: usize) -> HashMap<String, i64> {
        let mut c = self.client();
        c.query(
            "SELECT status, count(*) FROM certs WHERE station = $1 GROUP BY status",
            &[&self.station_name(n)],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }

    /// The serials station `n`'s CRL lists, after checking its signature by station `n`'s
    /// issuing CA.
    pub fn crl_serials(&self, n: usize) -> HashSet<String> {
        let pem_text =
            std::fs::read_to_string(self.station(n).join("crl/issuing.crl.pem")).unwrap();
        let der = pem::parse(pem_text).unwrap().into_contents();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let issuing = self.issuing_der(n);
        let (_, ca) = x509_parser::parse_x509_certificate(&issuing).unwrap();
        crl.verify_signature(ca.public_key())
            .expect("the CRL is signed by the station's issuing CA");
        crl.iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect()
    }

    pub fn issuing_der(&self, n: usize) -> Vec<u8> {
        let text = std::fs::read_to_string(self.station(n).join("ca/issuing.pem")).unwrap();
        pem::parse(text).unwrap().into_contents()
    }

    /// Checks every device certificate station `n` wrote against its issuing CA and the
    /// root; returns (device id, serial hex) of each.
    pub fn verified_devices(&self, n: usize) -> Vec<(String, String)> {
        let issuing_der = self.issuing_der(n);
        let (_, issuing) = x509_parser::parse_x509_certificate(&issuing_der).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(&self.root_der).unwrap();
        issuing
            .verify_signature(Some(root.public_key()))
            .expect("the issuing CA chains to the root");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.station(n).join("devices")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "pem") {
                continue;
            }
            let der = pem::parse(std::fs::read_to_string(&path).unwrap())
                .unwrap()
                .into_contents();
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            cert.verify_signature(Some(issuing.public_key()))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(cert.issuer(), issuing.subject(), "{}", path.display());
            let cn = cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|c| c.as_str().ok())
                .unwrap()
                .to_owned();
            assert_eq!(Some(cn.as_str()), path.file_stem().and_then(|s| s.to_str()));
            out.push((cn, hex::encode(cert.raw_serial())));
        }
        out
    }

    /// Restarts station `n` after a crash (`crl`: any command that opens it settles what
    /// the crash left) and checks that exactly the `reserved` reservations it had
    /// outstanding were aborted, and that none are left.
    pub fn recover(&self, n: usize, reserved: i64) {
        let aborted_before = self.counts(n).get("aborted").copied().unwrap_or(0);
        let out = self.cli(self.station(n), &["crl"]);
        assert!(out.status.success(), "crl: {}", stderr(&out));
        let said = format!("{reserved} undelivered certificate(s) aborted");
        assert!(stderr(&out).contains(&said), "{}", stderr(&out));
        let now = self.counts(n);
        assert_eq!(now.get("reserved"), None, "{now:?}");
        assert_eq!(
            now.get("aborted"),
            Some(&(aborted_before + reserved)),
            "{now:?}"
        );
    }

    pub fn audit_ok(&self, n: usize) {
        let out = self.cli(self.station(n), &["audit", "verify"]);
        assert!(
            out.status.success() && stdout(&out).contains("audit log OK"),
            "audit verify on station {n}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

pub fn finish(child: Child, what: &str) -> Output {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{what}: {}", stderr(&out));
    out
}

/// Waits (at most 60 s) until station `n` has both delivered and reserved certificates.
pub fn wait_mid_batch(fleet: &Fleet, n: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the batch ended before it was interrupted"
        );
        let c = fleet.counts(n);
        if c.get("active").is_some_and(|&a| a > 0) && c.get("reserved").is_some_and(|&r| r > 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "station {n} never got mid-batch: {c:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}
