//! `fleet-provision audit verify --all-stations`: every station's chain, from the shared
//! registry's copy of its records. Each row's hash must be the SHA-256 of its line, each
//! line (and row) carry the hash of the one before, the seqs run from 1 without a gap, and
//! the station's anchor be its last row. The local station is also checked from its own
//! files: its log against the copy, and its signed batch manifests.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use super::postgres::{DbRecord, PgAnchor};
use super::verify::{anchor_problem, verify_at, walk_chain};
use super::{line_hash, AnchorAt, Problem, GENESIS};
use crate::registry::PostgresTarget;

/// A problem in one station's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationProblem {
    pub station: String,
    pub problem: Problem,
}

impl fmt::Display for StationProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "station {}: {}", self.station, self.problem)
    }
}

/// One station's chain found intact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationVerified {
    pub station: String,
    pub records: u64,
    /// Manifests checked against their files: the local station's only.
    pub manifests: usize,
    pub devices: usize,
}

/// One station's rows and anchor, as the database holds them.
#[derive(Default)]
struct Copy {
    rows: Vec<DbRecord>,
    head: Option<(u64, String)>,
}

/// Verifies every station's chain in the shared registry at `target`; `local` names the
/// station of `dir` (whose log and manifests are checked too, with `issuing_cert_der`).
pub fn verify_all_stations(
    dir: &Path,
    issuing_cert_der: &[u8],
    target: &PostgresTarget,
    local: &str,
) -> Result<Vec<StationVerified>, Vec<StationProblem>> {
    let copy = PgAnchor::open(target, local)
        .and_then(|mut pg| pg.all(None))
        .map_err(|e| {
            vec![StationProblem {
                station: local.to_owned(),
                problem: Problem::Registry {
                    path: PathBuf::from(target.to_string()),
                    reason: e.to_string(),
                },
            }]
        })?;
    let mut stations: BTreeMap<String, Copy> = BTreeMap::new();
    stations.entry(local.to_owned()).or_default();
    for row in copy.records {
        stations
            .entry(row.station.clone())
            .or_default()
            .rows
            .push(row);
    }
    for (station, seq, hash) in copy.heads {
        stations.entry(station).or_default().head = Some((seq, hash));
    }
    let mut verified = Vec::new();
    let mut problems = Vec::new();
    for (station, copy) in stations {
        let mut found = Vec::new();
        check_rows(&copy.rows, &mut found);
        let chain = walk_chain(copy.rows.iter().map(|r| r.line.as_str()), &mut found);
        found.extend(anchor_problem(copy.head, &chain, true));
        let mut v = StationVerified {
            station: station.clone(),
            records: chain.count,
            manifests: 0,
            devices: 0,
        };
        if station == local {
            let at = AnchorAt::Shared {
                target,
                station: local,
            };
            match verify_at(dir, issuing_cert_der, at) {
                Ok(local) => (v.manifests, v.devices) = (local.manifests, local.devices),
                Err(more) => found.extend(more),
            }
        }
        let mut seen = Vec::new();
        for problem in found {
            if !seen.contains(&problem) {
                seen.push(problem);
            }
        }
        if seen.is_empty() {
            verified.push(v);
        }
        problems.extend(seen.into_iter().map(|problem| StationProblem {
            station: station.clone(),
            problem,
        }));
    }
    if problems.is_empty() {
        Ok(verified)
    } else {
        Err(problems)
    }
}

/// The columns of each row: its seq (contiguous from 1), its hash (of its line) and its
/// `prev` (the hash of the row before).
fn check_rows(rows: &[DbRecord], problems: &mut Vec<Problem>) {
    let mut prev = GENESIS;
    for (i, row) in rows.iter().enumerate() {
        let n = i as u64 + 1;
        if row.seq != n as i64 {
            problems.push(Problem::Sequence {
                record: n,
                found: row.seq.max(0) as u64,
            });
        }
        if row.hash != line_hash(&row.line) {
            problems.push(Problem::HashMismatch { record: n });
        }
        if row.prev != prev {
            problems.push(Problem::BrokenChain { record: n });
        }
        prev = &row.hash;
    }
}
