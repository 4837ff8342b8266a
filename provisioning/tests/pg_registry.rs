//! The shared registry on a real PostgreSQL 15 server of the test's own: the registry's
//! semantics (the same case bodies as the SQLite registry, common/registry_cases.rs), then
//! what sharing adds: devices, serials and renewals fleet-wide, a station activating and
//! aborting only its own reservations, revocation from any station, expiry, CRLs and their
//! numbers per issuing CA, stations reserving at once, and the schema migrations. One
//! server for the file, one database per case.

mod common;

#[path = "common/registry_cases.rs"]
mod cases;

use std::collections::HashSet;

use cases::{
    activation, assert_duplicate, assert_not_reserved, reservation, serials, statuses, Backend,
};
use common::pg::{self, PgServer};
use fleet_provision::registry::{
    Activation, DeviceId, PostgresRegistry, Registry, Reservation, StationIdentity, Status,
};
use fleet_provision::Conflict;
use fleet_provision::{Error, PostgresTarget};

fn me(station: &str, issuer: &str) -> StationIdentity {
    StationIdentity {
        station: station.into(),
        issuer: issuer.into(),
    }
}

fn open(target: &PostgresTarget, station: &str, issuer: &str) -> PostgresRegistry {
    PostgresRegistry::open(target, me(station, issuer)).expect("open the shared registry")
}

/// A database of its own; `open` connects as station s1 of issuing CA ca1.
struct Pg(PostgresTarget);

impl Backend for Pg {
    type Reg = PostgresRegistry;

    fn open(&self) -> PostgresRegistry {
        open(&self.0, "s1", "ca1")
    }

    /// A database constraint: the serial is the primary key.
    fn duplicate_serial(&self, err: &Error) -> bool {
        matches!(err, Error::SharedRegistry { .. }) && err.to_string().contains("certs_pkey")
    }
}

#[test]
fn the_shared_registry_keeps_the_registry_semantics() {
    let Some(pg) = pg::start() else { return };
    cases::run_all(|case| Pg(pg::target(&pg, case)));
}

#[test]
fn the_shared_registry_is_one_fleet_wide_with_its_stations_and_issuing_cas() {
    let Some(pg) = pg::start() else { return };
    devices_and_serials_are_fleet_wide(&pg::target(&pg, "fleet_wide"));
    a_station_activates_its_own_and_any_station_revokes(&pg::target(&pg, "lifecycle"));
    expiry_is_per_issuing_ca_and_renewals_fleet_wide(&pg::target(&pg, "expiry"));
    stations_reserving_at_once_never_share_an_id(&pg::target(&pg, "concurrent"));
    a_station_aborts_only_its_own_reservations(&pg::target(&pg, "abort"));
    crls_and_their_numbers_are_per_issuing_ca(&pg::target(&pg, "crl"));
    migrations_apply_once_and_a_newer_schema_is_refused(&pg, &pg::target(&pg, "schema"));
}

fn devices_and_serials_are_fleet_wide(t: &PostgresTarget) {
    let mut reg = open(t, "s1", "ca1");
    reg.reserve(&[reservation("01", DeviceId::New("board-1".into()))])
        .unwrap();
    let taken = reg.reserve(&[
        reservation("02", DeviceId::New("board-2".into())),
        reservation("03", DeviceId::New("board-1".into())),
    ]);
    assert_duplicate(taken, "board-1");
    // Another station sees the same devices: board-1 is taken fleet-wide.
    let mut other = open(t, "s2", "ca2");
    let elsewhere = other.reserve(&[reservation("07", DeviceId::New("board-1".into()))]);
    assert_duplicate(elsewhere, "board-1");
    // All or nothing: board-2 is still free, for any station; the tenant's counter too.
    assert_eq!(serials(&reg), ["01"]);
    other
        .reserve(&[reservation("08", DeviceId::New("board-2".into()))])
        .unwrap();
    assert_eq!(
        other.reserve(&[reservation("09", DeviceId::Next)]).unwrap(),
        ["acme-000001"]
    );
    assert_eq!(
        reg.reserve(&[reservation("0a", DeviceId::Next)]).unwrap(),
        ["acme-000002"]
    );
    // A serial is never reserved twice, by any station: a database constraint.
    let again = other
        .reserve(&[reservation("01", DeviceId::Next)])
        .unwrap_err();
    assert!(matches!(again, Error::SharedRegistry { .. }), "{again}");
    assert!(again.to_string().contains("certs_pkey"), "{again}");
}

fn a_station_activates_its_own_and_any_station_revokes(t: &PostgresTarget) {
    let mut reg = open(t, "s1", "ca1");
    let id = reg.reserve(&[reservation("01", DeviceId::Next)]).unwrap()[0].clone();
    reg.activate(&[activation(&id, "01")]).unwrap();
    reg.reserve(&[reservation("02", DeviceId::Existing(id.clone()))])
        .unwrap();
    reg.activate(&[activation(&id, "02")]).unwrap();
    // A station activates only what it reserved.
    let mut other = open(t, "s2", "ca2");
    other
        .reserve(&[reservation("03", DeviceId::Existing(id.clone()))])
        .unwrap();
    assert_not_reserved(reg.activate(&[activation(&id, "03")]), "03");
    other.abort_reserved().unwrap();

    // Station 2 revokes what station 1 made.
    let revoked = other.revoke_device(&id, "keyCompromise").unwrap();
    let serials: Vec<&str> = revoked.iter().map(|c| c.serial_hex.as_str()).collect();
    assert_eq!(serials, ["01", "02"]);
    assert!(revoked
        .iter()
        .all(|c| c.status == Status::Revoked
            && c.revocation_reason.as_deref() == Some("keyCompromise")));
    assert_eq!(
        statuses(&reg, &id),
        [Status::Revoked, Status::Revoked, Status::Aborted]
    );
    let again = reg.revoke_device(&id, "unspecified").unwrap_err();
    assert!(
        matches!(again, Error::Conflict(Conflict::NothingToRevoke { ref device_id }) if *device_id == id),
        "{again}"
    );
}

fn expiry_is_per_issuing_ca_and_renewals_fleet_wide(t: &PostgresTarget) {
    let mut reg = open(t, "s1", "ca1");
    let id = reg.reserve(&[reservation("01", DeviceId::Next)]).unwrap()[0].clone();
    reg.activate(&[activation(&id, "01")]).unwrap();
    reg.reserve(&[reservation("02", DeviceId::Existing(id.clone()))])
        .unwrap();
    reg.activate(&[activation(&id, "02")]).unwrap();
    let superseded_at = reg.cert("01").unwrap().unwrap().superseded_at.unwrap();
    // Another issuing CA's station leaves this CA's superseded certificates alone.
    let mut other = open(t, "s2", "ca2");
    assert!(other.expire_superseded(superseded_at).unwrap().is_empty());
    assert_eq!(statuses(&reg, &id), [Status::Superseded, Status::Active]);
    // Renewals are counted fleet-wide: another station sees them.
    assert_eq!(other.renewals_since(&id, 0).unwrap().len(), 1);
    let expired = reg.expire_superseded(superseded_at).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(statuses(&reg, &id), [Status::Revoked, Status::Active]);
}

fn stations_reserving_at_once_never_share_an_id(t: &PostgresTarget) {
    // Four stations, 25 reservations of 20 each, at once, on the same tenant's counter.
    let ids: Vec<Vec<String>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|n| {
                s.spawn(move || {
                    let mut reg = open(t, &format!("s{n}"), &format!("ca{n}"));
                    let mut mine = Vec::new();
                    for round in 0..25 {
                        let items: Vec<Reservation> = (0..20)
                            .map(|i| {
                                reservation(&format!("{n:02x}{round:02x}{i:02x}"), DeviceId::Next)
                            })
                            .collect();
                        mine.extend(reg.reserve(&items).expect("reserve"));
                    }
                    mine
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let all: Vec<&String> = ids.iter().flatten().collect();
    let unique: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), 2000);
    assert_eq!(unique.len(), 2000, "an id handed out twice");
    // The counter hands out a dense range: acme-000001 .. acme-002000.
    for n in 1..=2000 {
        assert!(
            unique.contains(&format!("acme-{n:06}")),
            "acme-{n:06} missing"
        );
    }
}

fn a_station_aborts_only_its_own_reservations(t: &PostgresTarget) {
    let mut one = open(t, "s1", "ca1");
    let mut two = open(t, "s2", "ca2");
    one.begin_batch("batch-1", Some("/line/out")).unwrap();
    two.begin_batch("batch-1", None).unwrap();
    assert_eq!(
        one.batch_out_dir("batch-1").unwrap().as_deref(),
        Some("/line/out")
    );
    assert_eq!(
        two.batch_out_dir("batch-1").unwrap(),
        None,
        "batches are per station"
    );
    let a = one
        .reserve(&[
            reservation("a1", DeviceId::Next),
            reservation("a2", DeviceId::Next),
        ])
        .unwrap();
    let b = two.reserve(&[reservation("b1", DeviceId::Next)]).unwrap();
    one.activate(&[activation(&a[0], "a1")]).unwrap();
    let aborted = one.abort_reserved().unwrap();
    assert_eq!(aborted.len(), 1);
    assert_eq!(aborted[0].serial_hex, "a2");
    assert_eq!(one.cert("a2").unwrap().unwrap().status, Status::Aborted);
    assert_eq!(
        one.cert("b1").unwrap().unwrap().status,
        Status::Reserved,
        "not station 1's"
    );
    assert!(one.abort_reserved().unwrap().is_empty(), "settled once");
    // Station 2 still delivers its reservation.
    two.activate(&[activation(&b[0], "b1")]).unwrap();
    let crl = one.revoked().unwrap();
    assert_eq!(crl.len(), 1);
    assert_eq!(
        (crl[0].0.as_str(), crl[0].2.as_str()),
        ("a2", "cessationOfOperation")
    );
    assert!(two.revoked().unwrap().is_empty());
}

fn crls_and_their_numbers_are_per_issuing_ca(t: &PostgresTarget) {
    let mut one = open(t, "s1", "ca1");
    let mut two = open(t, "s2", "ca2");
    // A third station shares station 1's issuing CA, and so its CRL numbers.
    let mut three = open(t, "s3", "ca1");
    let id = one.reserve(&[reservation("01", DeviceId::Next)]).unwrap()[0].clone();
    one.activate(&[activation(&id, "01")]).unwrap();
    // Station 2 revokes a device station 1 made: station 1's CA's CRL lists it.
    two.revoke_device(&id, "keyCompromise").unwrap();
    let on = |reg: &PostgresRegistry| -> Vec<String> {
        reg.revoked().unwrap().into_iter().map(|r| r.0).collect()
    };
    assert_eq!(on(&one), ["01"]);
    assert_eq!(on(&three), ["01"]);
    assert!(on(&two).is_empty(), "station 2's CA never signed serial 01");
    assert_eq!(one.next_crl_number().unwrap(), 1);
    assert_eq!(three.next_crl_number().unwrap(), 2);
    assert_eq!(one.next_crl_number().unwrap(), 3);
    assert_eq!(
        two.next_crl_number().unwrap(),
        1,
        "another CA counts on its own"
    );
    drop(one);
    let mut one = open(t, "s1", "ca1");
    assert_eq!(one.last_crl_number().unwrap(), 3);
    assert_eq!(one.next_crl_number().unwrap(), 4);
    assert_eq!(three.last_crl_number().unwrap(), 4);
}

fn migrations_apply_once_and_a_newer_schema_is_refused(pg: &PgServer, t: &PostgresTarget) {
    // Stations opening a fresh database at once: one migrates, the others wait for it.
    std::thread::scope(|s| {
        let opens: Vec<_> = (0..4)
            .map(|n| {
                s.spawn(move || PostgresRegistry::open(t, me(&format!("s{n}"), "ca")).map(drop))
            })
            .collect();
        for o in opens {
            o.join().unwrap().expect("concurrent open");
        }
    });
    let mut c = pg.client("schema").unwrap();
    let versions: Vec<i32> = c
        .query("SELECT version FROM fleet_schema ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2]);
    c.execute(
        "INSERT INTO fleet_schema (version, name, applied_at) VALUES (99, 'from the future', 0)",
        &[],
    )
    .unwrap();
    let err = PostgresRegistry::open(t, me("s1", "ca"))
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("schema is at version 99") && err.to_string().contains("upgrade"),
        "{err}"
    );
    // A wrong password is an error naming the registry, never showing the password.
    let wrong = PostgresTarget::new(&t.to_string(), Some("not-the-password"), None).unwrap();
    let err = PostgresRegistry::open(&wrong, me("s1", "ca"))
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains(&t.to_string()) && text.contains("password"),
        "{text}"
    );
    assert!(!text.contains("not-the-password"), "{text}");
}

#[test]
fn the_registry_connects_over_tls_and_verifies_the_server() {
    let db_ca = fleet_provision::pki::new_root_ca("Database CA").unwrap();
    let Some(pg) = pg::start_tls(&db_ca) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("db-ca.pem");
    std::fs::write(&ca_file, &db_ca.cert_pem).unwrap();
    let url = format!("postgres://fleet@127.0.0.1:{}/postgres", pg.port);

    let tls = PostgresTarget::new(&url, Some(&pg.password), Some(&ca_file)).unwrap();
    assert!(tls.is_tls());
    let mut reg = open(&tls, "s1", "ca1");
    assert_eq!(
        reg.reserve(&[reservation("01", DeviceId::Next)]).unwrap(),
        ["acme-000001"]
    );
    // The server takes TLS only: a plain connection is turned away.
    let plain = PostgresTarget::new(&url, Some(&pg.password), None).unwrap();
    let err = PostgresRegistry::open(&plain, me("s1", "ca1"))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("no encryption"), "{err}");
    // A server whose certificate another CA signed is refused.
    let other = fleet_provision::pki::new_root_ca("Another CA").unwrap();
    let other_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_file, &other.cert_pem).unwrap();
    let wrong = PostgresTarget::new(&url, Some(&pg.password), Some(&other_file)).unwrap();
    let err = PostgresRegistry::open(&wrong, me("s1", "ca1"))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("certificate"), "{err}");
    // A CA file that holds no certificate is refused before connecting.
    let err = PostgresTarget::new(&url, None, Some(&dir.path().join("missing.pem"))).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
