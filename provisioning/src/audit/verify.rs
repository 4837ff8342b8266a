//! `fleet-provision audit verify`: the chain, its anchor in the registry, and every signed
//! batch manifest, each problem found named as what it is.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{anchored, line_hash, Event, Manifest, Record, GENESIS};
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
struct Chain {
    /// Records in the log.
    count: u64,
    /// `hashes[n]`: the hash of record n (`hashes[0]`: the genesis hash).
    hashes: Vec<String>,
    /// (device id, fingerprint) of every issue record.
    issued: HashSet<(String, String)>,
    /// (record, batch, SHA-256) of every manifest record.
    manifests: Vec<(u64, String, String)>,
}

/// Checks the chain, its anchor, and every batch manifest and its signature.
/// `issuing_cert_der`: the CA whose key signs manifests.
pub fn verify(dir: &Path, issuing_cert_der: &[u8]) -> Result<Verified, Vec<Problem>> {
    let path = dir.join("audit.log");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        vec![Problem::Unreadable {
            path,
            reason: e.to_string(),
        }]
    })?;
    let mut problems = Vec::new();
    let chain = walk_chain(&text, &mut problems);
    check_anchor(dir, &chain, &mut problems);
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

fn walk_chain(text: &str, problems: &mut Vec<Problem>) -> Chain {
    let mut chain = Chain {
        count: 0,
        hashes: vec![GENESIS.to_owned()],
        issued: HashSet::new(),
        manifests: Vec::new(),
    };
    let mut head = GENESIS.to_owned();
    for (i, line) in text.lines().enumerate() {
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
        Ok(Some((seq, hash))) => {
            // Records past the anchor are an append interrupted before anchoring (the next
            // station run anchors them); they still have to chain.
            let anchored_here =
                seq <= chain.count && chain.hashes.get(seq as usize).is_some_and(|h| *h == hash);
            if !anchored_here {
                problems.push(Problem::AnchorMismatch {
                    anchored: seq,
                    last: chain.count,
                });
            }
        }
        Ok(None) if chain.count > 0 => problems.push(Problem::NoAnchor),
        Ok(None) => {}
        Err(reason) => problems.push(Problem::Registry {
            path: db_path,
            reason,
        }),
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
