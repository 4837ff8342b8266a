//! `fleet-provision audit verify`: the chain, its anchor in the registry (and, in a shared
//! one, the registry's copy of every record), and every signed batch manifest, each problem
//! found named as what it is.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::postgres::{DbRecord, PgAnchor};
use super::{anchored, line_hash, AnchorAt, Event, Manifest, Record, GENESIS};
use crate::digest::sha256_hex;

/// What `verify` found intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub manifests: usize,
    pub devices: usize,
}

/// One thing `verify` found wrong. Records are numbered from 1, by their line in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The log (or the issuing CA certificate) cannot be read.
    Unreadable { path: PathBuf, reason: String },
    /// A line is not a record.
    NotARecord { record: u64, reason: String },
    /// A record's sequence number is not its position: records removed or reordered.
    Sequence { record: u64, found: u64 },
    /// A record does not carry the hash of the line before it: it or the one before was
    /// edited, removed or reordered.
    BrokenChain { record: u64 },
    /// The registry anchors a record the log does not end with: records cut off or replaced.
    AnchorMismatch { anchored: u64, last: u64 },
    /// The log has records but the registry anchors none.
    NoAnchor,
    /// The registry cannot be read.
    Registry { path: PathBuf, reason: String },
    /// A record's hash in the shared registry is not the SHA-256 of its line there: the
    /// line (or the hash) was edited in the database.
    HashMismatch { record: u64 },
    /// The station's log and the shared registry's copy of a record differ.
    CopyDiffers { record: u64 },
    /// The shared registry anchors a record whose copy (or the copy of one before it) it
    /// does not hold: rows deleted in the database.
    CopyMissing { record: u64 },
    /// A manifest the log records, or its signature, is missing.
    ManifestMissing { record: u64, path: PathBuf },
    /// A manifest does not match the hash the log recorded for it.
    ManifestChanged { record: u64, path: PathBuf },
    /// A manifest is not signed by the issuing CA.
    ManifestUnsigned { record: u64, path: PathBuf },
    /// A manifest file does not parse.
    NotAManifest { path: PathBuf, reason: String },
    /// A manifest lists a device the log has no issue record for.
    UnrecordedDevice { batch: String, device_id: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Unreadable { path, reason } => write!(f, "{}: {reason}", path.display()),
            Problem::NotARecord { record, reason } => {
                write!(f, "record {record}: not a valid record ({reason})")
            }
            Problem::Sequence { record, found } => write!(
                f,
                "record {record}: sequence number {found} (records removed or reordered)"
            ),
            Problem::BrokenChain { record } => write!(
                f,
                "record {record}: does not chain to record {} (it or the one before was edited, removed or reordered)",
                record - 1
            ),
            Problem::AnchorMismatch { anchored, last } => write!(
                f,
                "the registry anchors record {anchored}, but the log ends at record {last} with a different hash (records cut off or replaced)"
            ),
            Problem::NoAnchor => write!(f, "the registry holds no audit anchor"),
            Problem::Registry { path, reason } => write!(f, "{}: {reason}", path.display()),
            Problem::HashMismatch { record } => write!(
                f,
                "record {record}: the registry's hash is not the SHA-256 of its line (edited in the database)"
            ),
            Problem::CopyDiffers { record } => write!(
                f,
                "record {record}: the log's line differs from the registry's copy"
            ),
            Problem::CopyMissing { record } => write!(
                f,
                "record {record}: anchored in the registry, but its copy there is missing (deleted in the database)"
            ),
            Problem::ManifestMissing { record, path } => write!(
                f,
                "record {record}: manifest {} or its signature is missing",
                path.display()
            ),
            Problem::ManifestChanged { record, path } => write!(
                f,
                "record {record}: {} does not match the hash recorded in the log",
                path.display()
            ),
            Problem::ManifestUnsigned { record, path } => write!(
                f,
                "record {record}: {} is not signed by the issuing CA",
                path.display()
            ),
            Problem::NotAManifest { path, reason } => {
                write!(f, "{}: not a manifest ({reason})", path.display())
            }
            Problem::UnrecordedDevice { batch, device_id } => {
                write!(f, "manifest {batch}: {device_id} has no matching issue record")
            }
        }
    }
}

/// What walking the chain collected.
pub(super) struct Chain {
    /// Records in the log.
    pub(super) count: u64,
    /// `hashes[n]`: the hash of record n (`hashes[0]`: the genesis hash).
    hashes: Vec<String>,
    /// (device id, fingerprint) of every issue record.
    issued: HashSet<(String, String)>,
    /// (record, batch, SHA-256) of every manifest record.
    pub(super) manifests: Vec<(u64, String, String)>,
}

/// Checks the chain, its anchor, and every batch manifest and its signature.
/// `issuing_cert_der`: the CA whose key signs manifests.
pub fn verify(dir: &Path, issuing_cert_der: &[u8]) -> Result<Verified, Vec<Problem>> {
    verify_at(dir, issuing_cert_der, AnchorAt::StationDir)
}

/// [`verify`] with the anchor at `at`; in a shared registry the log is also compared with
/// the registry's copy of each record.
pub fn verify_at(
    dir: &Path,
    issuing_cert_der: &[u8],
    at: AnchorAt<'_>,
) -> Result<Verified, Vec<Problem>> {
    let path = dir.join("audit.log");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        vec![Problem::Unreadable {
            path,
            reason: e.to_string(),
        }]
    })?;
    let mut problems = Vec::new();
    let chain = walk_chain(text.lines(), &mut problems);
    match at {
        AnchorAt::StationDir => check_anchor(dir, &chain, &mut problems),
        AnchorAt::Shared { target, station } => {
            let shared = PgAnchor::open(target, station).and_then(|mut pg| pg.all(Some(station)));
            match shared {
                Ok(copy) => {
                    let rows = copy.records;
                    let head = copy
                        .heads
                        .into_iter()
                        .next()
                        .map(|(_, seq, hash)| (seq, hash));
                    let anchored = head.as_ref().map_or(0, |h| h.0);
                    problems.extend(anchor_problem(head, &chain, false));
                    compare_copy(&text, &rows, anchored, &mut problems);
                }
                Err(e) => problems.push(Problem::Registry {
                    path: PathBuf::from(target.to_string()),
                    reason: e.to_string(),
                }),
            }
        }
    }
    let devices = check_manifests(dir, issuing_cert_der, &chain, &mut problems);
    if problems.is_empty() {
        Ok(Verified {
            records: chain.count,
            manifests: chain.manifests.len(),
            devices,
        })
    } else {
        Err(problems)
    }
}

/// Each record both the log and the registry's copy hold must be the same line, and the
/// copy hold every record up to the `anchored` one.
fn compare_copy(text: &str, rows: &[DbRecord], anchored: u64, problems: &mut Vec<Problem>) {
    let held: HashSet<i64> = rows.iter().map(|r| r.seq).collect();
    if let Some(record) = (1..=anchored).find(|n| !held.contains(&(*n as i64))) {
        problems.push(Problem::CopyMissing { record });
    }
    let lines: Vec<&str> = text.lines().collect();
    for row in rows {
        let Some(line) = usize::try_from(row.seq - 1).ok().and_then(|i| lines.get(i)) else {
            continue;
        };
        if *line != row.line {
            problems.push(Problem::CopyDiffers {
                record: row.seq as u64,
            });
        }
    }
}

pub(super) fn walk_chain<'a>(
    lines: impl Iterator<Item = &'a str>,
    problems: &mut Vec<Problem>,
) -> Chain {
    let mut chain = Chain {
        count: 0,
        hashes: vec![GENESIS.to_owned()],
        issued: HashSet::new(),
        manifests: Vec::new(),
    };
    let mut head = GENESIS.to_owned();
    for (i, line) in lines.enumerate() {
        let n = i as u64 + 1;
        match serde_json::from_str::<Record>(line) {
            Err(e) => problems.push(Problem::NotARecord {
                record: n,
                reason: e.to_string(),
            }),
            Ok(r) => {
                if r.seq != n {
                    problems.push(Problem::Sequence {
                        record: n,
                        found: r.seq,
                    });
                }
                if r.prev != head {
                    problems.push(Problem::BrokenChain { record: n });
                }
                match r.event {
                    Event::Issue {
                        device_id,
                        fingerprint,
                        ..
                    } => {
                        chain.issued.insert((device_id, fingerprint));
                    }
                    Event::Manifest { batch, sha256, .. } => {
                        chain.manifests.push((n, batch, sha256))
                    }
                    _ => {}
                }
            }
        }
        head = line_hash(line);
        chain.hashes.push(head.clone());
        chain.count = n;
    }
    chain
}

fn check_anchor(dir: &Path, chain: &Chain, problems: &mut Vec<Problem>) {
    let db_path = dir.join("registry.sqlite3");
    match Connection::open(&db_path)
        .map_err(|e| e.to_string())
        .and_then(|db| anchored(&db, &db_path).map_err(|e| e.to_string()))
    {
        Ok(head) => problems.extend(anchor_problem(head, chain, false)),
        Err(reason) => problems.push(Problem::Registry {
            path: db_path,
            reason,
        }),
    }
}

/// What is wrong with anchor `head` (seq, hash) for `chain`. Unless `exact`, records past
/// the anchor are an append interrupted before anchoring (the next station run anchors
/// them; they still have to chain); `exact`: the anchor must be the last record.
pub(super) fn anchor_problem(
    head: Option<(u64, String)>,
    chain: &Chain,
    exact: bool,
) -> Option<Problem> {
    match head {
        Some((seq, hash)) => {
            let anchored_here = seq <= chain.count
                && (!exact || seq == chain.count)
                && chain.hashes.get(seq as usize).is_some_and(|h| *h == hash);
            (!anchored_here).then_some(Problem::AnchorMismatch {
                anchored: seq,
                last: chain.count,
            })
        }
        None if chain.count > 0 => Some(Problem::NoAnchor),
        None => None,
    }
}

/// Checks every manifest the log records; returns how many devices they list.
fn check_manifests(
    dir: &Path,
    issuing_cert_der: &[u8],
    chain: &Chain,
    problems: &mut Vec<Problem>,
) -> usize {
    let verifying = x509_parser::parse_x509_certificate(issuing_cert_der)
        .ok()
        .and_then(|(_, c)| {
            p256::ecdsa::VerifyingKey::from_sec1_bytes(&c.public_key().subject_public_key.data).ok()
        });
    let mut devices = 0;
    for (n, batch, sha) in &chain.manifests {
        let record = *n;
        let path = dir.join(format!("batches/{batch}.json"));
        let sig_file = dir.join(format!("batches/{batch}.sig"));
        let (Ok(bytes), Ok(sig)) = (std::fs::read(&path), std::fs::read(&sig_file)) else {
            problems.push(Problem::ManifestMissing { record, path });
            continue;
        };
        if sha256_hex(&bytes) != *sha {
            let path = path.clone();
            problems.push(Problem::ManifestChanged { record, path });
        }
        let signed = verifying.as_ref().is_some_and(|key| {
            use p256::ecdsa::signature::Verifier;
            p256::ecdsa::Signature::from_der(&sig).is_ok_and(|s| key.verify(&bytes, &s).is_ok())
        });
        if !signed {
            let path = path.clone();
            problems.push(Problem::ManifestUnsigned { record, path });
        }
        match serde_json::from_slice::<Manifest>(&bytes) {
            Ok(m) => {
                for (id, _, fp) in m.devices {
                    devices += 1;
                    if !chain.issued.contains(&(id.clone(), fp)) {
                        problems.push(Problem::UnrecordedDevice {
                            batch: batch.clone(),
                            device_id: id,
                        });
                    }
                }
            }
            Err(e) => problems.push(Problem::NotAManifest {
                path,
                reason: e.to_string(),
            }),
        }
    }
    devices
}
