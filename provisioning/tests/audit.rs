//! The audit log detects every edit, removal, reordering and cut, and bad manifests.

mod common;

use std::path::Path;

use common::request;
use fleet_provision::audit::Problem;
use fleet_provision::{KeyProtection, Reason, Station};

/// A station with some history: CA, server cert, two batches, a revocation.
fn station(dir: &Path) -> Station {
    let mut st = Station::init(dir, "Acme", KeyProtection::InsecurePlaintext).unwrap();
    st.issue_server_cert(&["localhost"]).unwrap();
    st.issue_devices(&request("acme", 3)).unwrap();
    st.issue_devices(&request("acme", 2)).unwrap();
    st.revoke("acme-000002", Reason::KeyCompromise).unwrap();
    st
}

/// Applies `tamper` to a file, checks verification finds a problem of the kind `expected`
/// picks, restores it.
fn expect_detected(
    st: &Station,
    file: &Path,
    expected: impl Fn(&Problem) -> bool,
    tamper: impl FnOnce(&[u8]) -> Vec<u8>,
) {
    let original = std::fs::read(file).unwrap();
    std::fs::write(file, tamper(&original)).unwrap();
    let problems = st.verify_audit().expect_err("tampering must be detected");
    assert!(problems.iter().any(expected), "{problems:?}");
    std::fs::write(file, original).unwrap();
    st.verify_audit().expect("restored log verifies");
}

fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn join(lines: &[String]) -> Vec<u8> {
    lines
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn an_untouched_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let st = station(dir.path());
    let v = st.verify_audit().expect("intact");
    // ca_init, crl, server_cert, 3 issue + manifest, 2 issue + manifest, revoke, crl
    assert_eq!(v.records, 12);
    assert_eq!((v.manifests, v.devices), (2, 5));
    // Reopening continues the same chain.
    drop(st);
    let mut st = Station::open(dir.path(), None).unwrap();
    st.issue_devices(&request("acme", 1)).unwrap();
    assert_eq!(st.verify_audit().unwrap().records, 14);
}

#[test]
fn every_kind_of_tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let st = station(dir.path());
    let log = dir.path().join("audit.log");

    let chain_broken_at = |n| move |p: &Problem| *p == Problem::BrokenChain { record: n };
    expect_detected(&st, &log, chain_broken_at(6), |b| {
        let mut l = lines(b);
        l[4] = l[4].replacen("acme-000002", "acme-000009", 1);
        join(&l)
    });
    let out_of_sequence = |p: &Problem| {
        matches!(
            p,
            Problem::Sequence {
                record: 6,
                found: 7
            }
        )
    };
    expect_detected(&st, &log, out_of_sequence, |b| {
        let mut l = lines(b);
        l.remove(5);
        join(&l)
    });
    expect_detected(&st, &log, chain_broken_at(4), |b| {
        let mut l = lines(b);
        l.swap(3, 4);
        join(&l)
    });
    let cut = |p: &Problem| {
        matches!(
            p,
            Problem::AnchorMismatch {
                anchored: 12,
                last: 10
            }
        )
    };
    expect_detected(&st, &log, cut, |b| {
        let mut l = lines(b);
        l.truncate(l.len() - 2);
        join(&l)
    });
    let garbled = |p: &Problem| matches!(p, Problem::NotARecord { record: 2, .. });
    expect_detected(&st, &log, garbled, |b| {
        let mut l = lines(b);
        l[1] = "{ this is not json".into();
        join(&l)
    });

    let manifest = std::fs::read_dir(dir.path().join("batches"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let changed = |p: &Problem| matches!(p, Problem::ManifestChanged { .. });
    expect_detected(&st, &manifest, changed, |b| {
        String::from_utf8(b.to_vec())
            .unwrap()
            .replacen("\"acme\"", "\"evil\"", 1)
            .into_bytes()
    });
    let sig = manifest.with_extension("sig");
    let unsigned = |p: &Problem| matches!(p, Problem::ManifestUnsigned { .. });
    expect_detected(&st, &sig, unsigned, |b| {
        let mut s = b.to_vec();
        let last = s.len() - 1;
        s[last] ^= 1;
        s
    });
}
