//! Settling what a crash or a failed operation left behind: reservations never delivered
//! are aborted (their serials go on the CRL), their files removed, and it is recorded.

use std::path::PathBuf;

use super::Station;
use crate::audit::Event;
use crate::error::Error;
use crate::fs::remove_if_present;
use crate::registry::Status;

/// What opening a station found after a crash and settled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Serials reserved but never delivered: now aborted and on the CRL.
    pub aborted: Vec<String>,
    /// Bytes of a half-written audit record that were cut off.
    pub torn_bytes: usize,
}

impl Station {
    /// Settles reservations a crash or failure left: aborts them (their serials go on the
    /// CRL in case they were signed), removes files written for them, and records it.
    pub(super) fn recover(&mut self, torn_bytes: usize) -> Result<Recovered, Error> {
        let aborted = self.registry.abort_reserved()?;
        if aborted.is_empty() && torn_bytes == 0 {
            return Ok(Recovered::default());
        }
        for cert in &aborted {
            let delivered = self
                .registry
                .device(&cert.device_id)?
                .iter()
                .any(|c| c.status != Status::Aborted);
            if delivered {
                continue;
            }
            let out = self.registry.batch_out_dir(&cert.batch)?;
            let out = out.map_or_else(|| self.dir.join("devices"), PathBuf::from);
            for ext in ["bin", "pem", "hex"] {
                remove_if_present(&out.join(format!("{}.{ext}", cert.device_id)))?;
            }
        }
        let recovered = Recovered {
            aborted: aborted.into_iter().map(|c| c.serial_hex).collect(),
            torn_bytes,
        };
        self.audit.append(Event::Recovery {
            aborted: recovered.aborted.clone(),
            torn_bytes,
        })?;
        if !recovered.aborted.is_empty() {
            self.write_crl()?;
        }
        Ok(recovered)
    }

    /// After a failed operation: settle its reservations now rather than at the next run.
    pub(super) fn settle<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        if result.is_err() {
            // Best effort: the original error is what the caller needs to see; whatever is
            // left is settled by the next `open`.
            let _ = self.recover(0);
        }
        result
    }

    /// What opening this station found after a crash and settled.
    pub fn recovered(&self) -> &Recovered {
        &self.recovered
    }
}
