//! The audit log on real files: appends chain and are anchored, a torn line is cut off, and
//! every edit, removal, reordering, cut and manifest problem is found as what it is.

use std::path::Path;

use super::*;
use crate::error::AuditError;
use crate::pki;

fn issue(n: u32) -> Event {
    Event::Issue {
        device_id: format!("acme-{n:06}"),
        tenant: "acme".into(),
        serial: format!("{n:02x}"),
        fingerprint: format!("fp{n}"),
        batch: "batch-1".into(),
    }
}

/// A log with `n` issue records in `dir`.
fn log_with(dir: &Path, n: u32) -> AuditLog {
    let (log, torn) = AuditLog::open(dir).unwrap();
    assert_eq!(torn, 0);
    log.append_many((1..=n).map(issue)).unwrap();
    log
}

fn set_sqlite_anchor(log: &AuditLog, seq: u64, hash: &str) {
    let Anchor::Sqlite { db, path } = &log.state.lock().unwrap().anchor else {
        panic!("a station-dir log is anchored in SQLite");
    };
    set_anchor(db, path, seq, hash).unwrap();
}

fn read_lines(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("audit.log"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(dir: &Path, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("audit.log"), text).unwrap();
}

/// Verifies without manifests (no CA needed).
fn problems(dir: &Path) -> Vec<Problem> {
    verify(dir, &[]).err().unwrap_or_default()
}

#[test]
fn appends_chain_to_each_other_and_a_reopened_log_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with(dir.path(), 3);
    log.append(Event::Crl {
        number: 1,
        revoked: 0,
        sha256: "00".into(),
    })
    .unwrap();
    drop(log);
    let (log, torn) = AuditLog::open(dir.path()).unwrap();
    assert_eq!(torn, 0);
    log.append(issue(4)).unwrap();
    let lines = read_lines(dir.path());
    let records: Vec<Record> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!(records[0].prev, GENESIS);
    for i in 1..records.len() {
        assert_eq!(
            records[i].prev,
            line_hash(&lines[i - 1]),
            "record {}",
            i + 1
        );
    }
    assert_eq!(
        verify(dir.path(), &[]).unwrap(),
        Verified {
            records: 5,
            manifests: 0,
            devices: 0
        }
    );
}

#[test]
fn a_torn_last_line_is_cut_off_on_open_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    drop(log_with(dir.path(), 2));
    let path = dir.path().join("audit.log");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"seq\":3,\"ts\":");
    std::fs::write(&path, &text).unwrap();
    let (log, torn) = AuditLog::open(dir.path()).unwrap();
    assert_eq!(torn, "{\"seq\":3,\"ts\":".len());
    log.append(issue(3)).unwrap();
    assert_eq!(read_lines(dir.path()).len(), 3);
    assert!(problems(dir.path()).is_empty());
}

#[test]
fn an_edited_record_breaks_the_chain_after_it() {
    let dir = tempfile::tempdir().unwrap();
    drop(log_with(dir.path(), 4));
    let mut lines = read_lines(dir.path());
    lines[1] = lines[1].replacen("acme-000002", "acme-000666", 1);
    write_lines(dir.path(), &lines);
    assert!(problems(dir.path()).contains(&Problem::BrokenChain { record: 3 }));
}

#[test]
fn a_removed_record_breaks_the_sequence_and_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    drop(log_with(dir.path(), 4));
    let mut lines = read_lines(dir.path());
    lines.remove(1);
    write_lines(dir.path(), &lines);
    let found = problems(dir.path());
    assert!(
        found.contains(&Problem::Sequence {
            record: 2,
            found: 3
        }),
        "{found:?}"
    );
    assert!(
        found.contains(&Problem::BrokenChain { record: 2 }),
        "{found:?}"
    );
    // The anchor (record 4) is past the end now.
    assert!(
        found.contains(&Problem::AnchorMismatch {
            anchored: 4,
            last: 3
        }),
        "{found:?}"
    );
}

#[test]
fn reordered_records_are_out_of_sequence() {
    let dir = tempfile::tempdir().unwrap();
    drop(log_with(dir.path(), 4));
    let mut lines = read_lines(dir.path());
    lines.swap(1, 2);
    write_lines(dir.path(), &lines);
    let found = problems(dir.path());
    assert!(
        found.contains(&Problem::Sequence {
            record: 2,
            found: 3
        }),
        "{found:?}"
    );
    assert!(
        found.contains(&Problem::Sequence {
            record: 3,
            found: 2
        }),
        "{found:?}"
    );
    assert!(
        found.contains(&Problem::BrokenChain { record: 2 }),
        "{found:?}"
    );
}

#[test]
fn a_cut_off_tail_is_refused_on_open_and_found_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    drop(log_with(dir.path(), 4));
    let mut lines = read_lines(dir.path());
    lines.truncate(2);
    write_lines(dir.path(), &lines);
    assert_eq!(
        problems(dir.path()),
        [Problem::AnchorMismatch {
            anchored: 4,
            last: 2
        }]
    );
    let err = AuditLog::open(dir.path()).err().expect("refused");
    assert!(
        matches!(
            err,
            Error::Audit(AuditError::CutOff {
                anchored: 4,
                last: 2,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn a_replaced_anchored_record_is_refused_on_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(log_with(dir.path(), 3));
    let mut lines = read_lines(dir.path());
    lines[2] = lines[2].replacen("fp3", "fp9", 1);
    write_lines(dir.path(), &lines);
    let err = AuditLog::open(dir.path()).err().expect("refused");
    assert!(
        matches!(
            err,
            Error::Audit(AuditError::CutOff {
                anchored: 3,
                last: 3,
                ..
            })
        ),
        "{err}"
    );
}

#[test]
fn records_after_the_anchor_are_anchored_on_open_unless_the_anchor_moved() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with(dir.path(), 3);
    // A crash between an append and its anchor update: the anchor is one record behind.
    let hash2 = line_hash(&read_lines(dir.path())[1]);
    set_sqlite_anchor(&log, 2, &hash2);
    drop(log);
    AuditLog::open(dir.path()).unwrap();
    assert!(problems(dir.path()).is_empty());

    // An anchor whose record changed since is refused.
    let log = AuditLog::open(dir.path()).unwrap().0;
    set_sqlite_anchor(&log, 2, GENESIS);
    drop(log);
    let err = AuditLog::open(dir.path()).err().expect("refused");
    assert!(
        matches!(err, Error::Audit(AuditError::AnchorMismatch { seq: 2, .. })),
        "{err}"
    );
}

#[test]
fn a_garbled_line_and_a_missing_anchor_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let log = log_with(dir.path(), 3);
    {
        let st = log.state.lock().unwrap();
        let Anchor::Sqlite { db, .. } = &st.anchor else {
            panic!("a station-dir log is anchored in SQLite");
        };
        db.execute("DELETE FROM audit_head", []).unwrap();
    }
    drop(log);
    let mut lines = read_lines(dir.path());
    lines[0] = "{ not json".into();
    write_lines(dir.path(), &lines);
    let found = problems(dir.path());
    assert!(
        matches!(found[0], Problem::NotARecord { record: 1, .. }),
        "{found:?}"
    );
    assert!(found.contains(&Problem::NoAnchor), "{found:?}");
}

/// Writes a manifest for `devices` into `dir`, signed with `ca`'s key, and logs it.
fn seal(dir: &Path, log: &AuditLog, ca: &pki::Ca, batch: &str, devices: &[u32]) -> Vec<u8> {
    use rcgen::SigningKey;
    let manifest = Manifest {
        batch: batch.into(),
        tenant: "acme".into(),
        devices: devices
            .iter()
            .map(|n| (format!("acme-{n:06}"), format!("{n:02x}"), format!("fp{n}")))
            .collect(),
    };
    let bytes = serde_json::to_vec_pretty(&manifest).unwrap();
    std::fs::create_dir_all(dir.join("batches")).unwrap();
    std::fs::write(dir.join(format!("batches/{batch}.json")), &bytes).unwrap();
    let sig = ca.key.sign(&bytes).unwrap();
    std::fs::write(dir.join(format!("batches/{batch}.sig")), sig).unwrap();
    log.append(Event::Manifest {
        batch: batch.into(),
        devices: devices.len(),
        sha256: sha256_hex(&bytes),
    })
    .unwrap();
    bytes
}

#[test]
fn manifests_must_match_their_hash_be_signed_and_list_only_issued_devices() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = pki::new_root_ca("Acme").unwrap();
    let log = log_with(d, 2);
    let bytes = seal(d, &log, &ca, "batch-1", &[1, 2]);
    let verified = verify(d, &ca.cert_der).unwrap();
    assert_eq!((verified.manifests, verified.devices), (1, 2));

    // Another CA did not sign it.
    let other = pki::new_root_ca("Other").unwrap();
    let found = verify(d, &other.cert_der).unwrap_err();
    assert!(
        matches!(found[..], [Problem::ManifestUnsigned { record: 3, .. }]),
        "{found:?}"
    );
    // Edited after the fact: the hash no longer matches, nor does the signature.
    let json = d.join("batches/batch-1.json");
    let edited = String::from_utf8(bytes.clone())
        .unwrap()
        .replacen("fp2", "fp7", 1);
    std::fs::write(&json, edited).unwrap();
    let found = verify(d, &ca.cert_der).unwrap_err();
    assert!(found.contains(&Problem::ManifestChanged {
        record: 3,
        path: json.clone()
    }));
    assert!(found.contains(&Problem::UnrecordedDevice {
        batch: "batch-1".into(),
        device_id: "acme-000002".into()
    }));
    // Gone.
    std::fs::remove_file(&json).unwrap();
    let found = verify(d, &ca.cert_der).unwrap_err();
    assert_eq!(
        found,
        [Problem::ManifestMissing {
            record: 3,
            path: json
        }]
    );
    // A manifest listing a device the log never issued.
    seal(d, &log, &ca, "batch-2", &[5]);
    let found = verify(d, &ca.cert_der).unwrap_err();
    assert!(found.contains(&Problem::UnrecordedDevice {
        batch: "batch-2".into(),
        device_id: "acme-000005".into()
    }));
}
