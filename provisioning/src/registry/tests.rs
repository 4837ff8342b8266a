//! The SQLite registry on a real database file: reservation, activation, duplicates,
//! revocation, look-ups, crash leftovers and CRL numbers.

use super::*;
use crate::error::Conflict;

struct Db {
    _dir: tempfile::TempDir,
    path: PathBuf,
    reg: SqliteRegistry,
}

fn db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.sqlite3");
    let reg = SqliteRegistry::open(&path).unwrap();
    Db {
        _dir: dir,
        path,
        reg,
    }
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

fn statuses(reg: &SqliteRegistry, device_id: &str) -> Vec<Status> {
    reg.device(device_id)
        .unwrap()
        .iter()
        .map(|c| c.status)
        .collect()
}

#[test]
fn reservations_allocate_the_tenants_next_ids_and_survive_a_reopen() {
    let mut db = db();
    let ids = db
        .reg
        .reserve(&[
            reservation("01", DeviceId::Next),
            reservation("02", DeviceId::New("acme-000002".into())),
            reservation("03", DeviceId::Next),
        ])
        .unwrap();
    // An id given explicitly is skipped by the counter.
    assert_eq!(ids, ["acme-000001", "acme-000002", "acme-000003"]);
    drop(db.reg);
    let mut reg = SqliteRegistry::open(&db.path).unwrap();
    let next = reg.reserve(&[reservation("04", DeviceId::Next)]).unwrap();
    assert_eq!(next, ["acme-000004"]);
    let row = reg.cert("04").unwrap().unwrap();
    assert_eq!(row.status, Status::Reserved);
    assert_eq!(
        (row.tenant.as_str(), row.batch.as_str()),
        ("acme", "batch-1")
    );
    assert_eq!(row.fingerprint_hex, None);
    assert_eq!(reg.cert_der("04").unwrap(), None, "nothing delivered yet");
}

#[test]
fn a_duplicate_device_is_refused_and_the_whole_reservation_with_it() {
    let mut db = db();
    db.reg
        .reserve(&[reservation("01", DeviceId::New("board-1".into()))])
        .unwrap();
    let taken = db
        .reg
        .reserve(&[
            reservation("02", DeviceId::New("board-2".into())),
            reservation("03", DeviceId::New("board-1".into())),
        ])
        .unwrap_err();
    assert!(
        matches!(taken, Error::DuplicateDevice(ref id) if id == "board-1"),
        "{taken}"
    );
    let twice = db
        .reg
        .reserve(&[
            reservation("04", DeviceId::New("board-3".into())),
            reservation("05", DeviceId::New("board-3".into())),
        ])
        .unwrap_err();
    assert!(matches!(twice, Error::DuplicateDevice(_)), "{twice}");
    let unknown = db
        .reg
        .reserve(&[reservation("06", DeviceId::Existing("board-9".into()))])
        .unwrap_err();
    assert!(
        matches!(unknown, Error::UnknownDevice(ref id) if id == "board-9"),
        "{unknown}"
    );
    // All or nothing: only the first reservation is there.
    let serials: Vec<String> = db
        .reg
        .list()
        .unwrap()
        .into_iter()
        .map(|c| c.serial_hex)
        .collect();
    assert_eq!(serials, ["01"]);
    // A serial is never reserved twice either.
    let again = db
        .reg
        .reserve(&[reservation("01", DeviceId::Next)])
        .unwrap_err();
    assert!(matches!(again, Error::Registry { .. }), "{again}");
}

#[test]
fn activation_commits_a_reservation_and_supersedes_the_previous_certificate() {
    let mut db = db();
    let ids = db
        .reg
        .reserve(&[reservation("01", DeviceId::Next)])
        .unwrap();
    db.reg.activate(&[activation(&ids[0], "01")]).unwrap();
    let row = db.reg.cert("01").unwrap().unwrap();
    assert_eq!(row.status, Status::Active);
    assert_eq!(row.fingerprint_hex.as_deref(), Some("fp-01"));
    assert_eq!(row.not_after, Some(2_000_000_000));
    assert_eq!(db.reg.cert_der("01").unwrap(), Some(vec![0x30, 2]));

    // Renewal: another certificate for the same device.
    db.reg
        .reserve(&[reservation("02", DeviceId::Existing(ids[0].clone()))])
        .unwrap();
    db.reg.activate(&[activation(&ids[0], "02")]).unwrap();
    assert_eq!(
        statuses(&db.reg, &ids[0]),
        [Status::Superseded, Status::Active]
    );
    assert!(db.reg.cert("01").unwrap().unwrap().superseded_at.is_some());

    // Only a reserved certificate can be activated, and only once.
    let err = db.reg.activate(&[activation(&ids[0], "02")]).unwrap_err();
    assert!(
        matches!(err, Error::Conflict(Conflict::NotReserved { ref serial_hex }) if serial_hex == "02"),
        "{err}"
    );
    let err = db.reg.activate(&[activation(&ids[0], "99")]).unwrap_err();
    assert!(
        matches!(err, Error::Conflict(Conflict::NotReserved { .. })),
        "{err}"
    );
}

#[test]
fn revocation_takes_every_live_certificate_of_a_device_once() {
    let mut db = db();
    let ids = db
        .reg
        .reserve(&[reservation("01", DeviceId::Next)])
        .unwrap();
    let id = ids[0].clone();
    db.reg.activate(&[activation(&id, "01")]).unwrap();
    db.reg
        .reserve(&[reservation("02", DeviceId::Existing(id.clone()))])
        .unwrap();
    db.reg.activate(&[activation(&id, "02")]).unwrap();

    let revoked = db.reg.revoke_device(&id, "keyCompromise").unwrap();
    let serials: Vec<&str> = revoked.iter().map(|c| c.serial_hex.as_str()).collect();
    assert_eq!(serials, ["01", "02"]);
    assert!(revoked
        .iter()
        .all(|c| c.status == Status::Revoked
            && c.revocation_reason.as_deref() == Some("keyCompromise")));
    assert_eq!(statuses(&db.reg, &id), [Status::Revoked, Status::Revoked]);
    let crl: Vec<String> = db.reg.revoked().unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(crl, ["01", "02"]);

    let again = db.reg.revoke_device(&id, "unspecified").unwrap_err();
    assert!(
        matches!(again, Error::Conflict(Conflict::NothingToRevoke { ref device_id }) if *device_id == id),
        "{again}"
    );
    let unknown = db
        .reg
        .revoke_device("acme-000404", "unspecified")
        .unwrap_err();
    assert!(matches!(unknown, Error::UnknownDevice(_)), "{unknown}");
}

#[test]
fn look_ups_by_device_by_serial_and_in_full() {
    let mut db = db();
    let ids = db
        .reg
        .reserve(&[
            reservation("0a", DeviceId::New("zeta".into())),
            reservation("0b", DeviceId::New("alpha".into())),
        ])
        .unwrap();
    db.reg
        .activate(&[activation(&ids[0], "0a"), activation(&ids[1], "0b")])
        .unwrap();
    let all: Vec<String> = db
        .reg
        .list()
        .unwrap()
        .into_iter()
        .map(|c| c.device_id)
        .collect();
    assert_eq!(all, ["alpha", "zeta"], "by device id");
    assert_eq!(db.reg.device("zeta").unwrap()[0].serial_hex, "0a");
    assert!(db.reg.device("nobody").unwrap().is_empty());
    assert_eq!(db.reg.cert("0b").unwrap().unwrap().device_id, "alpha");
    assert_eq!(db.reg.cert("ff").unwrap(), None);
    assert_eq!(db.reg.cert_der("ff").unwrap(), None);
}

#[test]
fn reservations_a_crash_left_are_aborted_and_listed_for_the_crl() {
    let mut db = db();
    db.reg.begin_batch("batch-1", Some("/line/out")).unwrap();
    assert_eq!(
        db.reg.batch_out_dir("batch-1").unwrap().as_deref(),
        Some("/line/out")
    );
    assert_eq!(db.reg.batch_out_dir("batch-2").unwrap(), None);
    let ids = db
        .reg
        .reserve(&[
            reservation("01", DeviceId::Next),
            reservation("02", DeviceId::Next),
        ])
        .unwrap();
    db.reg.activate(&[activation(&ids[0], "01")]).unwrap();
    let aborted = db.reg.abort_reserved().unwrap();
    assert_eq!(aborted.len(), 1);
    assert_eq!(aborted[0].serial_hex, "02");
    assert_eq!(db.reg.cert("02").unwrap().unwrap().status, Status::Aborted);
    assert!(db.reg.abort_reserved().unwrap().is_empty(), "settled once");
    let crl = db.reg.revoked().unwrap();
    assert_eq!(crl.len(), 1);
    assert_eq!(
        (crl[0].0.as_str(), crl[0].2.as_str()),
        ("02", "cessationOfOperation")
    );
}

#[test]
fn superseded_certificates_expire_after_the_cutoff_only() {
    let mut db = db();
    let ids = db
        .reg
        .reserve(&[reservation("01", DeviceId::Next)])
        .unwrap();
    let id = ids[0].clone();
    db.reg.activate(&[activation(&id, "01")]).unwrap();
    db.reg
        .reserve(&[reservation("02", DeviceId::Existing(id.clone()))])
        .unwrap();
    db.reg.activate(&[activation(&id, "02")]).unwrap();
    let superseded_at = db.reg.cert("01").unwrap().unwrap().superseded_at.unwrap();
    assert!(db
        .reg
        .expire_superseded(superseded_at - 1)
        .unwrap()
        .is_empty());
    let expired = db.reg.expire_superseded(superseded_at).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].revocation_reason.as_deref(), Some("superseded"));
    assert_eq!(statuses(&db.reg, &id), [Status::Revoked, Status::Active]);
}

#[test]
fn crl_numbers_strictly_increase_across_reopens() {
    let mut db = db();
    assert_eq!(db.reg.next_crl_number().unwrap(), 1);
    assert_eq!(db.reg.next_crl_number().unwrap(), 2);
    drop(db.reg);
    let mut reg = SqliteRegistry::open(&db.path).unwrap();
    assert_eq!(reg.last_crl_number().unwrap(), 2);
    assert_eq!(reg.next_crl_number().unwrap(), 3);
    assert_eq!(reg.last_crl_number().unwrap(), 3);
}

#[test]
fn renewals_are_counted_per_device_and_survive_a_reopen() {
    let mut db = db();
    let id = db
        .reg
        .reserve(&[reservation("01", DeviceId::Next)])
        .unwrap()[0]
        .clone();
    let other = db
        .reg
        .reserve(&[reservation("02", DeviceId::Next)])
        .unwrap()[0]
        .clone();
    // A first issue is not a renewal.
    assert!(db.reg.renewals_since(&id, 0).unwrap().is_empty());
    db.reg
        .reserve(&[
            reservation("03", DeviceId::Existing(id.clone())),
            reservation("04", DeviceId::Existing(id.clone())),
            reservation("05", DeviceId::Existing(other.clone())),
        ])
        .unwrap();
    drop(db.reg);
    let reg = SqliteRegistry::open(&db.path).unwrap();
    let at = reg.renewals_since(&id, 0).unwrap();
    assert_eq!(at.len(), 2);
    assert_eq!(reg.renewals_since(&other, 0).unwrap().len(), 1);
    assert!(reg.renewals_since(&id, at[1] + 1).unwrap().is_empty());
}

#[test]
fn a_write_lock_held_elsewhere_is_reported_as_busy() {
    let mut db = db();
    let holder = Connection::open(&db.path).unwrap();
    holder.busy_timeout(std::time::Duration::ZERO).unwrap();
    db.reg
        .conn
        .busy_timeout(std::time::Duration::from_millis(50))
        .unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let err = db
        .reg
        .reserve(&[reservation("01", DeviceId::Next)])
        .unwrap_err();
    assert!(
        matches!(err, Error::Busy(crate::error::Busy::Registry { ref path }) if *path == db.path),
        "{err}"
    );
    holder.execute_batch("ROLLBACK").unwrap();
    db.reg
        .reserve(&[reservation("01", DeviceId::Next)])
        .unwrap();
}
