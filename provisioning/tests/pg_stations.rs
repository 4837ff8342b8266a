//! Three stations on one PostgreSQL registry, through the real `fleet-provision` binary:
//! each with its own issuing CA under one root (`ca import`), batches and CSRs issued at once, a
//! station killed (SIGKILL) mid-batch and restarted, and a fleet-wide revocation reaching
//! the CRL of the CA that signed the device. The server is the test's own (see common/pg).

mod common;

#[path = "common/pg_fleet.rs"]
mod pg_fleet;

use std::collections::{HashMap, HashSet};
use std::process::Child;

use common::pg;
use common::{stderr, stdout};
use pg_fleet::{finish, wait_mid_batch, Fleet};

#[test]
fn three_stations_issue_at_once_and_a_revocation_reaches_the_signing_cas_crl() {
    let Some(pg) = pg::start() else { return };
    let fleet = Fleet::new(&pg, "lines");
    let names: HashSet<String> = (1..=3).map(|n| fleet.station_name(n)).collect();
    assert_eq!(names.len(), 3, "each station has its own name");

    let children: Vec<Child> = (1..=3).map(|n| fleet.batch(n, 300)).collect();
    for (n, child) in children.into_iter().enumerate() {
        let out = finish(child, &format!("batch on station {}", n + 1));
        assert!(
            stdout(&out).contains("300 devices issued"),
            "{}",
            stdout(&out)
        );
    }

    // Station 2 lists every station's devices: 900, each id and serial once, all active.
    let listed = fleet.devices(2);
    assert_eq!(listed.len(), 900);
    assert!(
        listed.iter().all(|(_, status, _)| status == "active"),
        "{listed:?}"
    );
    let ids: HashSet<&str> = listed.iter().map(|d| d.0.as_str()).collect();
    let serials: HashSet<&str> = listed.iter().map(|d| d.2.as_str()).collect();
    assert_eq!(
        (ids.len(), serials.len()),
        (900, 900),
        "an id or serial twice"
    );
    for n in 1..=900 {
        assert!(
            ids.contains(format!("acme-{n:06}").as_str()),
            "acme-{n:06} missing"
        );
    }
    // Every certificate verifies with its own station's issuing CA, and the registry has
    // the serial each station's file holds.
    let by_serial: HashMap<&str, &str> = listed
        .iter()
        .map(|d| (d.2.as_str(), d.0.as_str()))
        .collect();
    let mut made_by_one = Vec::new();
    for n in 1..=3 {
        let made = fleet.verified_devices(n);
        assert_eq!(made.len(), 300, "station {n}");
        for (id, serial) in &made {
            assert_eq!(
                by_serial.get(serial.as_str()),
                Some(&id.as_str()),
                "{serial}"
            );
        }
        if n == 1 {
            made_by_one = made;
        }
        fleet.audit_ok(n);
    }

    // Station 2 revokes a device station 1 made: the registry is shared, the CRL is per CA.
    let (victim, victim_serial) = made_by_one[0].clone();
    let out = fleet.cli(
        fleet.station(2),
        &["revoke", &victim, "--reason", "keyCompromise"],
    );
    assert!(out.status.success(), "revoke: {}", stderr(&out));
    assert!(
        !fleet.crl_serials(2).contains(&victim_serial),
        "not station 2's CA's certificate"
    );
    let on_three = fleet.cli(fleet.station(3), &["devices", "--device", &victim]);
    assert!(
        stdout(&on_three).contains("revoked"),
        "{}",
        stdout(&on_three)
    );
    assert!(
        !fleet.crl_serials(1).contains(&victim_serial),
        "station 1 has not written its CRL yet"
    );
    let out = fleet.cli(fleet.station(1), &["crl"]);
    assert!(out.status.success(), "crl: {}", stderr(&out));
    assert_eq!(fleet.crl_serials(1), HashSet::from([victim_serial]));
    fleet.audit_ok(1);
    fleet.audit_ok(2);
}

#[test]
fn a_station_killed_mid_batch_aborts_only_its_own_reservations_on_restart() {
    let Some(pg) = pg::start() else { return };
    let fleet = Fleet::new(&pg, "crash");
    // Station 3 issues a long batch throughout.
    let mut three = fleet.batch(3, 3000);
    // Station 1 is killed with reservations outstanding (retried if the kill landed just
    // after a chunk was delivered, at most 5 times).
    let mut reserved_at_kill = 0;
    for _ in 0..5 {
        let mut one = fleet.batch(1, 3000);
        wait_mid_batch(&fleet, 1, &mut one);
        one.kill().unwrap();
        one.wait().unwrap();
        reserved_at_kill = fleet.counts(1).get("reserved").copied().unwrap_or(0);
        if reserved_at_kill > 0 {
            break;
        }
    }
    assert!(
        reserved_at_kill > 0,
        "never killed with reservations outstanding"
    );
    assert!(
        three.try_wait().unwrap().is_none(),
        "station 3 must still be issuing: raise its count"
    );
    // Restart station 1 (earlier tries' leftovers were aborted when the next try opened it).
    fleet.recover(1, reserved_at_kill);
    // Station 3's reservations were left alone, and its batch completes.
    assert!(
        three.try_wait().unwrap().is_none(),
        "station 3 finished during the recovery"
    );
    let out = finish(three, "batch on station 3");
    assert!(
        stdout(&out).contains("3000 devices issued"),
        "{}",
        stdout(&out)
    );
    let three = fleet.counts(3);
    assert_eq!(
        (three.get("active"), three.get("aborted")),
        (Some(&3000), None),
        "{three:?}"
    );

    // Station 1's aborted serials are on its CRL, nowhere else.
    let mut db = pg.client("crash").unwrap();
    let aborted: HashSet<String> = db
        .query(
            "SELECT serial FROM certs WHERE station = $1 AND status = 'aborted'",
            &[&fleet.station_name(1)],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(aborted.is_subset(&fleet.crl_serials(1)));
    assert!(fleet.crl_serials(3).is_empty());

    // Station 1 issues again: no id or serial is reused.
    finish(fleet.batch(1, 20), "batch on station 1 after the crash");
    let listed = fleet.devices(2);
    let ids: HashSet<&str> = listed.iter().map(|d| d.0.as_str()).collect();
    let serials: HashSet<&str> = listed.iter().map(|d| d.2.as_str()).collect();
    assert_eq!(ids.len(), listed.len(), "an id reused");
    assert_eq!(serials.len(), listed.len(), "a serial reused");
    assert!(fleet.verified_devices(1).len() >= 20);
    fleet.audit_ok(1);
    fleet.audit_ok(3);
}

#[test]
fn registry_errors_name_the_database_and_never_show_the_password() {
    let dir = tempfile::tempdir().unwrap();
    common::init_cli(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = |registry: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["--registry", registry];
        args.extend_from_slice(extra);
        args.push("devices");
        common::cli_env(dir.path(), &args, env)
    };
    let secret = "s3cret-registry-password";
    // A password in the URL is refused, and not repeated.
    let out = run(
        &format!("postgres://fleet:{secret}@127.0.0.1:{port}/reg"),
        &[],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("holds a password"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains(secret), "{}", stderr(&out));
    // Nothing listens there: the error names the database, without the password.
    let url = format!("postgres://fleet@127.0.0.1:{port}/reg");
    let out = run(&url, &[], &[("PGPASSWORD", secret)]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&format!("registry {url}: ")), "{err}");
    assert!(!err.contains(secret), "{err}");
    // TLS options without a shared registry are a mistake, not ignored.
    let out = common::cli(dir.path(), &["--registry-ca-file", "db-ca.pem", "devices"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("need --registry"), "{}", stderr(&out));
}

/// Issue 18: "three stations on one PostgreSQL issuing concurrently (CSR flow …)": each
/// station signs devices' CSRs (`sign --csr …`) at the same time as the others. Every
/// device gets one id and one serial fleet-wide, its certificate chains to its own
/// station's CA, and it carries the key of the CSR it was made from.
#[test]
fn three_stations_sign_csrs_at_once_without_sharing_an_id_or_serial() {
    let Some(pg) = pg::start() else { return };
    let fleet = Fleet::new(&pg, "csrs");
    let requests = tempfile::tempdir().unwrap();
    let mut keys = HashSet::new();
    let mut children = Vec::new();
    for n in 1..=3 {
        let mut paths = Vec::new();
        for i in 0..40 {
            let (key, csr) = common::api::new_csr_pem();
            keys.insert(key.public_key_raw().to_vec());
            let path = requests.path().join(format!("station-{n}-{i}.csr"));
            std::fs::write(&path, csr).unwrap();
            paths.push(path);
        }
        let mut args = vec!["sign".to_owned(), "--tenant".into(), "acme".into()];
        for p in &paths {
            args.extend(["--csr".to_owned(), p.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        children.push(
            fleet
                .command(fleet.station(n), &args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("fleet-provision sign starts"),
        );
    }
    for (n, child) in children.into_iter().enumerate() {
        finish(child, &format!("sign on station {}", n + 1));
    }

    let listed = fleet.devices(1);
    assert_eq!(listed.len(), 120, "{listed:?}");
    assert!(listed.iter().all(|(_, status, _)| status == "active"));
    let ids: HashSet<&str> = listed.iter().map(|d| d.0.as_str()).collect();
    let serials: HashSet<&str> = listed.iter().map(|d| d.2.as_str()).collect();
    assert_eq!(
        (ids.len(), serials.len()),
        (120, 120),
        "an id or serial twice"
    );
    let mut signed_keys = HashSet::new();
    for n in 1..=3 {
        let made = fleet.verified_devices(n);
        assert_eq!(made.len(), 40, "station {n}");
        for entry in std::fs::read_dir(fleet.station(n).join("devices")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "pem") {
                let der = pem::parse(std::fs::read_to_string(&path).unwrap())
                    .unwrap()
                    .into_contents();
                let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
                signed_keys.insert(cert.public_key().subject_public_key.data.to_vec());
            }
        }
    }
    assert_eq!(signed_keys, keys, "each certificate carries its CSR's key");
}
