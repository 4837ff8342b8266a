//! The registry's semantics, one body per case, run on both backends: the SQLite registry
//! (provisioning/src/registry/tests.rs includes this file) and the shared PostgreSQL one
//! (provisioning/tests/pg_registry.rs). Reservation, duplicates, all or nothing, activation
//! and supersession, revocation, look-ups, crash leftovers, expiry, CRL numbers, renewals.
//!
//! Names come from the including module (`super`): the registry types, `Error`, `Conflict`.

use super::{Activation, Conflict, DeviceId, Error, Registry, Reservation, Status};

/// A fresh registry to run one case on.
pub trait Backend {
    type Reg: Registry;
    /// Opens the registry (again: reopening keeps everything) as the one station.
    fn open(&self) -> Self::Reg;
    /// Whether `err` is the database refusing a serial reserved a second time.
    fn duplicate_serial(&self, err: &Error) -> bool;
}

/// Runs every case, each on a fresh registry from `fresh(case name)`.
pub fn run_all<B: Backend>(fresh: impl Fn(&str) -> B) {
    reservations_allocate_the_tenants_next_ids_and_survive_a_reopen(&fresh("next_ids"));
    a_duplicate_device_is_refused_and_the_whole_reservation_with_it(&fresh("duplicates"));
    activation_commits_a_reservation_and_supersedes_the_previous_certificate(&fresh("activation"));
    a_group_activating_one_device_twice_keeps_the_later_certificate(&fresh("activation_twice"));
    revocation_takes_every_live_certificate_of_a_device_once(&fresh("revocation"));
    look_ups_by_device_by_serial_and_in_full(&fresh("look_ups"));
    reservations_a_crash_left_are_aborted_and_listed_for_the_crl(&fresh("abort"));
    superseded_certificates_expire_after_the_cutoff_only(&fresh("expiry"));
    crl_numbers_strictly_increase_across_reopens(&fresh("crl_numbers"));
    renewals_are_counted_per_device_and_survive_a_reopen(&fresh("renewals"));
}

pub fn reservation(serial: &str, device: DeviceId) -> Reservation {
    Reservation {
        tenant: "acme".into(),
        batch: "batch-1".into(),
        serial_hex: serial.into(),
        device,
    }
}

pub fn activation(device_id: &str, serial: &str) -> Activation {
    Activation {
        device_id: device_id.into(),
        serial_hex: serial.into(),
        fingerprint_hex: format!("fp-{serial}"),
        not_after: 2_000_000_000,
        cert_der: vec![0x30, serial.len() as u8],
    }
}

/// Asserts that `result` is the refusal of device `id`, taken already.
pub fn assert_duplicate(result: Result<Vec<String>, Error>, id: &str) {
    match result {
        Err(Error::DuplicateDevice(ref taken)) if taken == id => {}
        other => panic!("expected {id} refused as taken, got {other:?}"),
    }
}

/// Asserts that `result` is the refusal to activate `serial`, not reserved (by this station).
pub fn assert_not_reserved(result: Result<(), Error>, serial: &str) {
    match result {
        Err(Error::Conflict(Conflict::NotReserved { ref serial_hex })) if serial_hex == serial => {}
        other => panic!("expected {serial} not reserved, got {other:?}"),
    }
}

pub fn statuses(reg: &impl Registry, device_id: &str) -> Vec<Status> {
    reg.device(device_id)
        .unwrap()
        .iter()
        .map(|c| c.status)
        .collect()
}

pub fn serials(reg: &impl Registry) -> Vec<String> {
    reg.list()
        .unwrap()
        .into_iter()
        .map(|c| c.serial_hex)
        .collect()
}

pub fn reservations_allocate_the_tenants_next_ids_and_survive_a_reopen(b: &impl Backend) {
    let mut reg = b.open();
    let ids = reg
        .reserve(&[
            reservation("01", DeviceId::Next),
            reservation("02", DeviceId::New("acme-000002".into())),
            reservation("03", DeviceId::Next),
        ])
        .unwrap();
    // An id given explicitly is skipped by the counter.
    assert_eq!(ids, ["acme-000001", "acme-000002", "acme-000003"]);
    // ... and one given explicitly after the counter handed it out is a duplicate.
    let err = reg
        .reserve(&[
            reservation("05", DeviceId::Next),
            reservation("06", DeviceId::New("acme-000004".into())),
        ])
        .unwrap_err();
    assert!(
        matches!(err, Error::DuplicateDevice(ref id) if id == "acme-000004"),
        "{err}"
    );
    drop(reg);
    let mut reg = b.open();
    let next = reg.reserve(&[reservation("04", DeviceId::Next)]).unwrap();
    assert_eq!(next, ["acme-000004"], "the failed reservation took no id");
    let row = reg.cert("04").unwrap().unwrap();
    assert_eq!(row.status, Status::Reserved);
    assert_eq!(
        (row.tenant.as_str(), row.batch.as_str()),
        ("acme", "batch-1")
    );
    assert_eq!(row.fingerprint_hex, None);
    assert_eq!(reg.cert_der("04").unwrap(), None, "nothing delivered yet");
}

pub fn a_duplicate_device_is_refused_and_the_whole_reservation_with_it(b: &impl Backend) {
    let mut reg = b.open();
    reg.reserve(&[reservation("01", DeviceId::New("board-1".into()))])
        .unwrap();
    let taken = reg.reserve(&[
        reservation("02", DeviceId::New("board-2".into())),
        reservation("03", DeviceId::New("board-1".into())),
    ]);
    assert_duplicate(taken, "board-1");
    let twice = reg.reserve(&[
        reservation("04", DeviceId::New("board-3".into())),
        reservation("05", DeviceId::New("board-3".into())),
    ]);
    assert_duplicate(twice, "board-3");
    let unknown = reg
        .reserve(&[reservation("06", DeviceId::Existing("board-9".into()))])
        .unwrap_err();
    assert!(
        matches!(unknown, Error::UnknownDevice(ref id) if id == "board-9"),
        "{unknown}"
    );
    // A renewal of a device made earlier in the same reservation is fine; before it, not.
    let early = reg
        .reserve(&[
            reservation("07", DeviceId::Existing("board-4".into())),
            reservation("08", DeviceId::New("board-4".into())),
        ])
        .unwrap_err();
    assert!(matches!(early, Error::UnknownDevice(_)), "{early}");
    // All or nothing: only the first reservation is there.
    assert_eq!(serials(&reg), ["01"]);
    let ids = reg
        .reserve(&[
            reservation("09", DeviceId::New("board-4".into())),
            reservation("0a", DeviceId::Existing("board-4".into())),
        ])
        .unwrap();
    assert_eq!(ids, ["board-4", "board-4"]);
    // A serial is never reserved twice either.
    let again = reg
        .reserve(&[reservation("01", DeviceId::Next)])
        .unwrap_err();
    assert!(b.duplicate_serial(&again), "{again}");
    assert_eq!(serials(&reg), ["01", "09", "0a"]);
}

pub fn activation_commits_a_reservation_and_supersedes_the_previous_certificate(b: &impl Backend) {
    let mut reg = b.open();
    let ids = reg.reserve(&[reservation("01", DeviceId::Next)]).unwrap();
    reg.activate(&[activation(&ids[0], "01")]).unwrap();
    let row = reg.cert("01").unwrap().unwrap();
    assert_eq!(row.status, Status::Active);
    assert_eq!(row.fingerprint_hex.as_deref(), Some("fp-01"));
    assert_eq!(row.not_after, Some(2_000_000_000));
    assert_eq!(reg.cert_der("01").unwrap(), Some(vec![0x30, 2]));

    // Renewal: another certificate for the same device.
    reg.reserve(&[reservation("02", DeviceId::Existing(ids[0].clone()))])
        .unwrap();
    reg.activate(&[activation(&ids[0], "02")]).unwrap();
    assert_eq!(
        statuses(&reg, &ids[0]),
        [Status::Superseded, Status::Active]
    );
    assert!(reg.cert("01").unwrap().unwrap().superseded_at.is_some());

    // Only a reserved certificate can be activated, and only once.
    assert_not_reserved(reg.activate(&[activation(&ids[0], "02")]), "02");
    assert_not_reserved(reg.activate(&[activation(&ids[0], "99")]), "99");
    // All or nothing: a group with one bad activation activates none.
    let more = reg
        .reserve(&[
            reservation("03", DeviceId::Next),
            reservation("04", DeviceId::Next),
        ])
        .unwrap();
    assert_not_reserved(
        reg.activate(&[
            activation(&more[0], "03"),
            activation(&more[0], "04"),
            activation(&more[1], "04"),
        ]),
        "04",
    );
    assert_not_reserved(
        reg.activate(&[activation(&more[0], "03"), activation(&more[1], "05")]),
        "05",
    );
    assert_eq!(statuses(&reg, &more[0]), [Status::Reserved]);
    reg.activate(&[activation(&more[0], "03"), activation(&more[1], "04")])
        .unwrap();
    assert_eq!(statuses(&reg, &more[1]), [Status::Active]);
}

pub fn a_group_activating_one_device_twice_keeps_the_later_certificate(b: &impl Backend) {
    let mut reg = b.open();
    let id = reg.reserve(&[reservation("01", DeviceId::Next)]).unwrap()[0].clone();
    reg.reserve(&[reservation("02", DeviceId::Existing(id.clone()))])
        .unwrap();
    reg.activate(&[activation(&id, "01"), activation(&id, "02")])
        .unwrap();
    assert_eq!(statuses(&reg, &id), [Status::Superseded, Status::Active]);
}

pub fn revocation_takes_every_live_certificate_of_a_device_once(b: &impl Backend) {
    let mut reg = b.open();
    let id = renewed_device(&mut reg);

    let revoked = reg.revoke_device(&id, "keyCompromise").unwrap();
    let serials: Vec<&str> = revoked.iter().map(|c| c.serial_hex.as_str()).collect();
    assert_eq!(serials, ["01", "02"]);
    assert!(revoked
        .iter()
        .all(|c| c.status == Status::Revoked
            && c.revocation_reason.as_deref() == Some("keyCompromise")));
    assert_eq!(statuses(&reg, &id), [Status::Revoked, Status::Revoked]);
    let crl: Vec<String> = reg.revoked().unwrap().into_iter().map(|r| r.0).collect();
    assert_eq!(crl, ["01", "02"]);

    let again = reg.revoke_device(&id, "unspecified").unwrap_err();
    assert!(
        matches!(again, Error::Conflict(Conflict::NothingToRevoke { ref device_id }) if *device_id == id),
        "{again}"
    );
    let unknown = reg.revoke_device("acme-000404", "unspecified").unwrap_err();
    assert!(matches!(unknown, Error::UnknownDevice(_)), "{unknown}");
}

pub fn look_ups_by_device_by_serial_and_in_full(b: &impl Backend) {
    let mut reg = b.open();
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
}

pub fn reservations_a_crash_left_are_aborted_and_listed_for_the_crl(b: &impl Backend) {
    let mut reg = b.open();
    reg.begin_batch("batch-1", Some("/line/out")).unwrap();
    assert_eq!(
        reg.batch_out_dir("batch-1").unwrap().as_deref(),
        Some("/line/out")
    );
    assert_eq!(reg.batch_out_dir("batch-2").unwrap(), None);
    let ids = reg
        .reserve(&[
            reservation("01", DeviceId::Next),
            reservation("02", DeviceId::Next),
        ])
        .unwrap();
    reg.activate(&[activation(&ids[0], "01")]).unwrap();
    drop(reg);
    let mut reg = b.open();
    let aborted = reg.abort_reserved().unwrap();
    assert_eq!(aborted.len(), 1);
    assert_eq!(aborted[0].serial_hex, "02");
    assert_eq!(reg.cert("02").unwrap().unwrap().status, Status::Aborted);
    assert!(reg.abort_reserved().unwrap().is_empty(), "settled once");
    let crl = reg.revoked().unwrap();
    assert_eq!(crl.len(), 1);
    assert_eq!(
        (crl[0].0.as_str(), crl[0].2.as_str()),
        ("02", "cessationOfOperation")
    );
}

pub fn superseded_certificates_expire_after_the_cutoff_only(b: &impl Backend) {
    let mut reg = b.open();
    let id = renewed_device(&mut reg);
    let superseded_at = reg.cert("01").unwrap().unwrap().superseded_at.unwrap();
    assert!(reg.expire_superseded(superseded_at - 1).unwrap().is_empty());
    let expired = reg.expire_superseded(superseded_at).unwrap();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].revocation_reason.as_deref(), Some("superseded"));
    assert_eq!(statuses(&reg, &id), [Status::Revoked, Status::Active]);
}

pub fn crl_numbers_strictly_increase_across_reopens(b: &impl Backend) {
    let mut reg = b.open();
    assert_eq!(reg.last_crl_number().unwrap(), 0);
    assert_eq!(reg.next_crl_number().unwrap(), 1);
    assert_eq!(reg.next_crl_number().unwrap(), 2);
    drop(reg);
    let mut reg = b.open();
    assert_eq!(reg.last_crl_number().unwrap(), 2);
    assert_eq!(reg.next_crl_number().unwrap(), 3);
    assert_eq!(reg.last_crl_number().unwrap(), 3);
}

pub fn renewals_are_counted_per_device_and_survive_a_reopen(b: &impl Backend) {
    let mut reg = b.open();
    let id = reg.reserve(&[reservation("01", DeviceId::Next)]).unwrap()[0].clone();
    let other = reg.reserve(&[reservation("02", DeviceId::Next)]).unwrap()[0].clone();
    // A first issue is not a renewal.
    assert!(reg.renewals_since(&id, 0).unwrap().is_empty());
    reg.reserve(&[
        reservation("03", DeviceId::Existing(id.clone())),
        reservation("04", DeviceId::Existing(id.clone())),
        reservation("05", DeviceId::Existing(other.clone())),
    ])
    .unwrap();
    drop(reg);
    let reg = b.open();
    let at = reg.renewals_since(&id, 0).unwrap();
    assert_eq!(at.len(), 2);
    assert_eq!(reg.renewals_since(&other, 0).unwrap().len(), 1);
    assert!(reg.renewals_since(&id, at[1] + 1).unwrap().is_empty());
}

/// A new device with serial 01, renewed once: 01 superseded by 02, both issued.
fn renewed_device(reg: &mut impl Registry) -> String {
    let id = reg.reserve(&[reservation("01", DeviceId::Next)]).unwrap()[0].clone();
    reg.activate(&[activation(&id, "01")]).unwrap();
    reg.reserve(&[reservation("02", DeviceId::Existing(id.clone()))])
        .unwrap();
    reg.activate(&[activation(&id, "02")]).unwrap();
    id
}
