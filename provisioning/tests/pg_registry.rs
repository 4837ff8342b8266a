//! The shared registry on a real PostgreSQL 15 server of the test's own: the semantics of
//! the SQLite registry (reservation, duplicates, all or nothing, activation, revocation,
//! look-ups, crash leftovers, CRL numbers, renewals), then what sharing adds: stations
//! reserving at once, each aborting only its own leftovers, CRLs and their numbers per
//! issuing CA, and the schema migrations. One server for the file, one database per case.

mod common;

use std::collections::HashSet;

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

fn reservation(serial: &str, device: DeviceId) -> Reservation {
    Reservation {
        tenant: "acme".into(),
        batch: "batch-1".into(),
        serial_hex: serial.into(),
        device,
    }
}

fn activation(device_id: &str, serial: &str) -> Activation {
    Activation {
        device_id: device_id.into(),
        serial_hex: serial.into(),
        fingerprint_hex: format!("fp-{serial}"),
        not_after: 2_000_000_000,
        cert_der: vec![0x30, serial.len() as u8],
    }
}

fn statuses(reg: &PostgresRegistry, device_id: &str) -> Vec<Status> {
    reg.device(device_id)
        .unwrap()
        .iter()
        .map(|c| c.status)
        .collect()
}

#[test]
fn the_shared_registry_keeps_the_registry_semantics_across_stations() {
    let Some(pg) = pg::start() else { return };
    reservations_allocate_next_ids_and_survive_a_reopen(&pg::target(&pg, "next_ids"));
    duplicates_are_refused_all_or_nothing(&pg::target(&pg, "duplicates"));
    activation_supersedes_and_revocation_takes_every_live_certificate(&pg::target(
        &pg,
        "lifecycle",
    ));
    look_ups_and_expiry(&pg::target(&pg, "look_ups"));
    renewals_are_counted_per_device(&pg::target(&pg, "renewals"));
    stations_reserving_at_once_never_share_an_id(&pg::target(&pg, "concurrent"));
    a_station_aborts_only_its_own_reservations(&pg::target(&pg, "abort"));
    crls_and_their_numbers_are_per_issuing_ca(&pg::target(&pg, "crl"));
    migrations_apply_once_and_a_newer_schema_is_refused(&pg, &pg::target(&pg, "schema"));
}

fn reservations_allocate_next_ids_and_survive_a_reopen(t: &PostgresTarget) {
    let mut reg = open(t, "s1", "ca1");
    let ids = reg
        .reserve(&[
            reservation("01", DeviceId::Next),
            reservation("02", DeviceId::New("acme-000002".into())),
            reservation("03", DeviceId::Next),
        ])
        .unwrap();
    // An id given explicitly is skipped by the counter.
    assert_eq!(ids, ["acme-000001", "acme-000002", "acme-000003"]);
    drop(reg);
    let mut reg = open(t, "s1", "ca1");
    assert_eq!(
        reg.reserve(&[reservation("04", DeviceId::Next)]).unwrap(),
        ["acme-000004"]
    );
    let row = reg.cert("04").unwrap().unwrap();
    assert_eq!(row.status, Status::Reserved);
    assert_eq!(
        (row.tenant.as_str(), row.batch.as_str()),
        ("acme", "batch-1")
    );
    assert_eq!(row.fingerprint_hex, None);
    assert_eq!(reg.cert_der("04").unwrap(), None, "nothing delivered yet");
}

fn duplicates_are_refused_all_or_nothing(t: &PostgresTarget) {
    let mut reg = open(t, "s1", "ca1");
    reg.reserve(&[reservation("01", DeviceId::New("board-1".into()))])
        .unwrap();
    let taken = reg
        .reserve(&[
            reservation("02", DeviceId::New("board-2".into())),
            reservation("03", DeviceId::New("board-1".into())),
        ])
        .unwrap_err();
    assert!(
        matches!(taken, Error::DuplicateDevice(ref id) if id == "board-1"),
        "{taken}"
    );
    let twice = reg
        .reserve(&[
            reservation("04", DeviceId::New("board-3".into())),
            reservation("05", DeviceId::New("board-3".into())),
        ])
        .unwrap_err();
    assert!(matches!(twice, Error::DuplicateDevice(_)), "{twice}");
    let unknown = reg
        .reserve(&[reservation("06", DeviceId::Existing("board-9".into()))])
        .unwrap_err();
    assert!(
        matches!(unknown, Error::UnknownDevice(ref id) if id == "board-9"),
        "{unknown}"
    );
    // Another station sees the same devices: board-1 is taken fleet-wide.
    let mut other = open(t, "s2", "ca2");
    let elsewhere = other
        .reserve(&[reservation("07", DeviceId::New("board-1".into()))])
        .unwrap_err();
    assert!(
        matches!(elsewhere, Error::DuplicateDevice(_)),
        "{elsewhere}"
    );
    // All or nothing: only the first reservation is there, and board-2 is still free.
    let serials: Vec<String> = reg
        .list()
        .unwrap()
        .into_iter()
        .map(|c| c.serial_hex)
        .collect();
    assert_eq!(serials, ["01"]);
    other
        .reserve(&[reservation("08", DeviceId::New("board-2".into()))])
        .unwrap();
    // A serial is never reserved twice, by any station: a database constraint.
    let again = other
        .reserve(&[reservation("01", DeviceId::Next)])
        .unwrap_err();
    assert!(matches!(again, Error::SharedRegistry { .. }), "{again}");
    assert!(again.to_string().contains("certs_pkey"), "{again}");
}

fn activation_supersedes_and_revocation_takes_every_live_certificate(t: &PostgresTarget) {
    let mut reg = open(t, "s1", "ca1");
    let id = reg.reserve(&[reservation("01", DeviceId::Next)]).unwrap()[0].clone();
    reg.activate(&[activation(&id, "01")]).unwrap();
    let row = reg.cert("01").unwrap().unwrap();
    assert_eq!(row.status, Status::Active);
    assert_eq!(row.fingerprint_hex.as_deref(), Some("fp-01"));
    assert_eq!(row.not_after, Some(2_000_000_000));
    assert_eq!(reg.cert_der("01").unwrap(), Some(vec![0x30, 2]));
    reg.reserve(&[reservation("02", DeviceId::Existing(id.clone()))])
        .unwrap();
    reg.activate(&[activation(&id, "02")]).unwrap();
    assert_eq!(statuses(&reg, &id), [Status::Superseded, Status::Active]);
    assert!(reg.cert("01").unwrap().unwrap().superseded_at.is_some());
    let err = reg.activate(&[activation(&id, "02")]).unwrap_err();
    assert!(
        matches!(err, Error::Conflict(Conflict::NotReserved { ref serial_hex }) if serial_hex == "02"),
        "{err}"
    );
    // A station activates only what it reserved.
    let mut other = open(t, "s2", "ca2");
    other
        .reserve(&[reservation("03", DeviceId::Existing(id.clone()))])
        .unwrap();
    let err = reg.activate(&[activation(&id, "03")]).unwrap_err();
    assert!(
        matches!(err, Error::Conflict(Conflict::NotReserved { .. })),
        "{err}"
    );
    other.abort_reserved().unwrap();

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
    let unknown = reg.revoke_device("acme-000404", "unspecified").unwrap_err();
    assert!(matches!(unknown, Error::UnknownDevice(_)), "{unknown}");
}

fn look_ups_and_expiry(t: &PostgresTarget) {
    let mut reg = open(t, "s1", "ca1");
    let ids = reg
        .reserve(&[
            reservation("0a", DeviceId::New("zeta".into())),
            reservation("0b", DeviceId::New("alpha".into())),
        ])
        .unwrap();
    reg.activate(&[activation(&ids[0], "0a"), activation(&ids[1], "0b")])
        .unwrap();
    let all: Vec<String> = reg
        .list()
        .unwrap()
        .into_iter()
        .map(|c| c.device_id)
        .collect();
    assert_eq!(all, ["alpha", "zeta"], "by device id");
    assert_eq!(reg.device("zeta").unwrap()[0].serial_hex, "0a");
    assert!(reg.device("nobody").unwrap().is_empty());
    assert_eq!(reg.cert("0b").unwrap().unwrap().device_id, "alpha");
    assert_eq!(reg.cert("ff").unwrap(), None);
    assert_eq!(reg.cert_der("ff").unwrap(), None);

    reg.reserve(&[reservation("0c", DeviceId::Existing("zeta".into()))])
        .unwrap();
    reg.activate(&[activation("zeta", "0c")]).unwrap();
    let superseded_at = reg.cert("0a").unwrap().unwrap().superseded_at.unwrap();
    assert!(reg.expire_superseded(superseded_at - 1).unwrap().is_empty());
    // Another issuing CA's station leaves this CA's superseded certificates alone.
    let mut other = open(t, "s2", "ca2");
    assert!(other.expire_superseded(superseded_at).unwrap().is_empty());
    let expired = reg.expire_superseded(superseded_at).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].revocation_reason.as_deref(), Some("superseded"));
    assert_eq!(statuses(&reg, "zeta"), [Status::Revoked, Status::Active]);
}

fn renewals_are_counted_per_device(t: &PostgresTarget) {
    let mut reg = open(t, "s1", "ca1");
    let id = reg.reserve(&[reservation("01", DeviceId::Next)]).unwrap()[0].clone();
    let other = reg.reserve(&[reservation("02", DeviceId::Next)]).unwrap()[0].clone();
    assert!(reg.renewals_since(&id, 0).unwrap().is_empty());
    reg.reserve(&[
        reservation("03", DeviceId::Existing(id.clone())),
        reservation("04", DeviceId::Existing(id.clone())),
        reservation("05", DeviceId::Existing(other.clone())),
    ])
    .unwrap();
    drop(reg);
    // Counted fleet-wide: another station sees them.
    let reg = open(t, "s2", "ca2");
    let at = reg.renewals_since(&id, 0).unwrap();
    assert_eq!(at.len(), 2);
    assert_eq!(reg.renewals_since(&other, 0).unwrap().len(), 1);
    assert!(reg.renewals_since(&id, at[1] + 1).unwrap().is_empty());
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
