//! The CRL the API's TLS honours, and what may replace it: only a CRL of the issuing CA that
//! is not older than the one in force (number and thisUpdate). An older one on disk (a
//! restored backup, a stale copy) is refused, logged, and overwritten with a fresh CRL from
//! the registry, so the newest revocations stay in force for the station and the gateway.

use std::path::Path;
use std::time::SystemTime;

use crate::error::{io, CrlError, Error, TlsError};
use crate::pki::{crl_info, CrlInfo};
use crate::Station;

/// The CRL in force: its DER, what it is, and the file as it was read.
#[derive(Debug, Clone)]
pub(super) struct CrlInForce {
    pub(super) der: Vec<u8>,
    pub(super) info: CrlInfo,
    /// The file's modification time and length when read (to notice a change cheaply).
    stamp: Option<(SystemTime, u64)>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// The station's CRL file, read and checked against the issuing CA.
fn read(station: &Station) -> Result<CrlInForce, Error> {
    let path = station.crl_path();
    let stamp = stamp(&path);
    let pem_bytes = std::fs::read(&path).map_err(io(&path))?;
    let der = pem::parse(&pem_bytes)
        .map_err(TlsError::Crl)?
        .into_contents();
    let info = crl_info(&der, &station.issuing_ca().cert_der)
        .map_err(|reason| Error::Crl { path, reason })?;
    Ok(CrlInForce { der, info, stamp })
}

/// A fresh CRL from the registry, written over the refused one and read back.
fn rewrite(station: &mut Station) -> Result<CrlInForce, Error> {
    station.write_crl()?;
    read(station)
}

/// At start: the CRL on disk, unless it is older than the last one the station wrote (it
/// was rolled back while the station was down) or unusable; then a fresh one.
pub(super) fn at_start(station: &mut Station) -> Result<CrlInForce, Error> {
    let last = station.last_crl_number()?;
    let refused = match read(station) {
        Ok(crl) if crl.info.number >= last => return Ok(crl),
        Ok(crl) => Error::Crl {
            path: station.crl_path(),
            reason: CrlError::LowerNumber {
                number: crl.info.number,
                in_force: last,
            },
        },
        Err(e) => e,
    };
    let fresh = rewrite(station)?;
    tracing::warn!(
        "{refused}; wrote a fresh CRL from the registry (number {})",
        fresh.info.number
    );
    Ok(fresh)
}

/// After an operation: `Some` new CRL to honour when the file changed. One that is older
/// than `in_force`, not the issuing CA's, or unreadable is refused (logged) and a fresh
/// one is written over it.
pub(super) fn after_change(
    station: &mut Station,
    in_force: &CrlInForce,
) -> Result<Option<CrlInForce>, Error> {
    let path = station.crl_path();
    let now = stamp(&path);
    if now.is_some() && now == in_force.stamp {
        return Ok(None);
    }
    let refused = match read(station) {
        Ok(crl) if crl.der == in_force.der => return Ok(Some(crl)),
        Ok(crl) => match crl.info.may_replace(&in_force.info) {
            Ok(()) => return Ok(Some(crl)),
            Err(reason) => Error::Crl { path, reason },
        },
        Err(e) => e,
    };
    let fresh = rewrite(station)?;
    tracing::warn!(
        "{refused}; keeping number {} in force and writing a fresh CRL from the registry (number {})",
        in_force.info.number,
        fresh.info.number
    );
    Ok(Some(fresh))
}
