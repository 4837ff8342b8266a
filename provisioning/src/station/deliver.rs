//! Making signed certificates durable and live, in order: their files (one filesystem
//! sync), their audit records (one fsync), then the registry (one transaction). Batches and
//! their signed manifests.

use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};

use super::Station;
use crate::audit::{Event, Manifest};
use crate::digest::sha256_hex;
use crate::error::{AuditError, Error};
use crate::fs::{sync_filesystem, write_file, write_file_unsynced};
use crate::pki;
use crate::registry::Activation;

/// A file to write with a certificate: path, bytes, secret (mode 0600).
pub(super) type File = (PathBuf, Vec<u8>, bool);

/// A certificate signed in this run, not yet committed.
pub(super) struct Signed {
    pub activation: Activation,
    pub event: Event,
    pub files: Vec<File>,
}

impl Signed {
    /// `event` gets the certificate's fingerprint.
    pub fn new(
        device_id: &str,
        serial_hex: String,
        cert: pki::Signed,
        event: impl FnOnce(String) -> Event,
    ) -> Signed {
        let fingerprint_hex = sha256_hex(&cert.der);
        Signed {
            event: event(fingerprint_hex.clone()),
            activation: Activation {
                device_id: device_id.to_owned(),
                not_after: cert.not_after,
                cert_der: cert.der,
                serial_hex,
                fingerprint_hex,
            },
            files: Vec::new(),
        }
    }
}

/// Writes the files and makes them durable with one sync per directory.
fn write_files<'a>(files: impl IntoIterator<Item = &'a File>) -> Result<(), Error> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (path, bytes, secret) in files {
        write_file_unsynced(path, bytes, *secret)?;
        let parent = path.parent().unwrap_or(Path::new(".")).to_owned();
        if !dirs.contains(&parent) {
            dirs.push(parent);
        }
    }
    dirs.iter().try_for_each(|dir| sync_filesystem(dir))
}

impl Station {
    /// Makes a chunk of signed certificates durable and live.
    pub(super) fn deliver(&mut self, chunk: Vec<Signed>) -> Result<Vec<Activation>, Error> {
        write_files(chunk.iter().flat_map(|s| &s.files))?;
        let (activations, events): (Vec<_>, Vec<_>) =
            chunk.into_iter().map(|s| (s.activation, s.event)).unzip();
        self.audit.append_many(events)?;
        self.registry.activate(&activations)?;
        Ok(activations)
    }

    /// Makes one signed certificate durable and live.
    pub(super) fn deliver_one(&mut self, signed: Signed) -> Result<Activation, Error> {
        write_files(&signed.files)?;
        self.audit.append(signed.event)?;
        self.registry
            .activate(std::slice::from_ref(&signed.activation))?;
        Ok(signed.activation)
    }

    /// Records a new batch (and where its files go, if not `DIR/devices`); returns its name.
    pub(super) fn new_batch(&mut self, out_dir: Option<&Path>) -> Result<String, Error> {
        let batch = format!(
            "batch-{}-{:08x}",
            time::OffsetDateTime::now_utc().unix_timestamp(),
            OsRng.next_u32()
        );
        let out = out_dir.map(|p| p.to_string_lossy().into_owned());
        self.registry.begin_batch(&batch, out.as_deref())?;
        Ok(batch)
    }

    /// Writes the batch manifest and its signature by the issuing CA key, and logs its hash.
    pub(super) fn seal_batch(&self, manifest: &Manifest) -> Result<(), Error> {
        use rcgen::SigningKey;
        let bytes = serde_json::to_vec_pretty(manifest).map_err(AuditError::Encode)?;
        let signature = self.issuing.key.sign(&bytes)?;
        let base = self.dir.join(format!("batches/{}", manifest.batch));
        write_file(&base.with_extension("json"), &bytes, false)?;
        write_file(&base.with_extension("sig"), &signature, false)?;
        self.audit.append(Event::Manifest {
            batch: manifest.batch.clone(),
            devices: manifest.devices.len(),
            sha256: sha256_hex(&bytes),
        })
    }
}
