//! The CRLs the stations publish to the cluster's CRL bucket, as this gateway holds them.
//!
//! The stations put each CRL they write into the JetStream KV bucket `[cluster] crl_bucket`
//! (default `fleet-crl`), one key per issuing CA (the SHA-256 hex of its certificate's DER),
//! value = the CRL's DER. Every gateway of the cluster watches the bucket with its history
//! (the current value of every key, then each change), so a gateway that starts, or comes
//! back after NATS was unreachable, catches up at once.
//!
//! A KV bucket rather than the object store: a KV watch delivers the value itself, in one
//! message, and replays the last value of every key to a new watcher; the object store
//! watch only announces metadata, to be followed by a chunked download. The price is the
//! server's `max_payload` (1 MiB by default) per CRL: about 19,000 revoked certificates (an
//! entry of the stations' CRLs takes ~53 bytes: a 20-byte serial, the revocation time and
//! the reason code). A station whose CRL does not fit says so and exits non-zero; raise
//! `max_payload` (up to 64 MiB) on the NATS servers for larger fleets.
//!
//! Each entry is checked before it counts ([`crate::crl::check_one`]: a DER CRL signed by a
//! configured client CA or CRL issuer, not older than the CRL of its issuer in force), then
//! merged with the CRL files into a new TLS state (see `crate::crl::from_cluster`). The CRLs
//! accepted are kept on disk (`[cluster] crl_cache`, written atomically) and loaded at start,
//! so a gateway that starts while NATS is down still refuses what was revoked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateRevocationListDer;
use tokio::sync::mpsc::UnboundedSender;

use super::link::Link;
use crate::crl::CrlVersion;

const RETRY: Duration = Duration::from_secs(1);

/// One value of the CRL bucket.
#[derive(Debug, Clone)]
pub struct BucketEntry {
    pub key: String,
    pub der: Vec<u8>,
}

/// An accepted CRL: its DER and its version.
pub type Accepted = (Vec<u8>, CrlVersion);

/// The CRLs taken from the bucket, and whether the bucket is watched now.
#[derive(Debug)]
pub struct CrlSource {
    /// The bucket's name (for messages).
    pub bucket: String,
    /// Where the accepted CRLs are kept (PEM), if anywhere.
    pub cache: Option<PathBuf>,
    /// By issuer name DER: the newest accepted CRL (DER) and its version.
    accepted: Mutex<BTreeMap<Vec<u8>, Accepted>>,
    watching: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each update is one insert or remove: a poisoned lock holds a consistent value.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CrlSource {
    /// The source of `bucket`, with the CRLs of the cache file if there is one. They are
    /// not trusted here: the TLS load checks their signatures like any CRL file's.
    pub fn open(bucket: &str, cache: Option<&Path>) -> CrlSource {
        let source = CrlSource {
            bucket: bucket.to_owned(),
            cache: cache.map(Path::to_owned),
            accepted: Mutex::new(BTreeMap::new()),
            watching: AtomicBool::new(false),
        };
        let Some(path) = cache else { return source };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return source,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cluster CRL cache unreadable; starting without it");
                return source;
            }
        };
        for der in CertificateRevocationListDer::pem_slice_iter(&bytes).flatten() {
            match crate::crl::parse_one(&der, path) {
                Ok((issuer, version)) => {
                    lock(&source.accepted).insert(issuer, (der.to_vec(), version));
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "a CRL of the cache ignored")
                }
            }
        }
        source
    }

    /// The accepted CRLs as one PEM, labelled for messages; `None` when there are none.
    pub fn material(&self) -> Option<(PathBuf, Vec<u8>)> {
        let accepted = lock(&self.accepted);
        if accepted.is_empty() {
            return None;
        }
        let pem: String = accepted
            .values()
            .map(|(der, _)| pem::encode(&pem::Pem::new("X509 CRL", der.clone())))
            .collect();
        let label = self
            .cache
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("cluster CRL bucket {}", self.bucket)));
        Some((label, pem.into_bytes()))
    }

    /// The accepted CRL of an issuer (name DER), if any.
    pub fn get(&self, issuer: &[u8]) -> Option<Accepted> {
        lock(&self.accepted).get(issuer).cloned()
    }

    /// Sets (or with `None` removes) the accepted CRL of an issuer; returns what was there.
    pub fn set(&self, issuer: &[u8], crl: Option<Accepted>) -> Option<Accepted> {
        let mut accepted = lock(&self.accepted);
        match crl {
            Some(c) => accepted.insert(issuer.to_vec(), c),
            None => accepted.remove(issuer),
        }
    }

    /// Forgets every CRL (the cache was refused at start).
    pub fn clear(&self) {
        lock(&self.accepted).clear();
    }

    /// The versions of the accepted CRLs (for `/readyz`).
    pub fn versions(&self) -> Vec<CrlVersion> {
        lock(&self.accepted)
            .values()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Writes the accepted CRLs to the cache file, atomically (a temporary file renamed
    /// over it).
    pub fn write_cache(&self) -> std::io::Result<()> {
        let (Some(path), Some((_, pem))) = (&self.cache, self.material()) else {
            return Ok(());
        };
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&pem)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }

    /// Whether the bucket is being watched now.
    pub fn up(&self) -> bool {
        self.watching.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool) {
        self.watching.store(up, Ordering::Relaxed);
    }
}

impl Link {
    /// Watches the CRL bucket (its current values, then every change) and hands each value
    /// to `entries`; marks `source` up while the watch runs. Retries while NATS is away; a
    /// new watch starts with every key's current value, so nothing is missed.
    pub(super) async fn watch_crls(
        self: Arc<Self>,
        source: Arc<CrlSource>,
        entries: UnboundedSender<BucketEntry>,
    ) {
        loop {
            if self.status.connected() {
                match self.watch_crls_once(&source, &entries).await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(bucket = source.bucket, error = %e, "cluster: CRL bucket watch ended")
                    }
                }
                source.set_up(false);
            }
            if entries.is_closed() {
                return;
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    async fn watch_crls_once(
        &self,
        source: &CrlSource,
        entries: &UnboundedSender<BucketEntry>,
    ) -> Result<(), String> {
        let bucket = self.bucket(&source.bucket).await?;
        let mut watch = bucket
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        source.set_up(true);
        tracing::info!(bucket = source.bucket, "cluster: watching the CRL bucket");
        loop {
            // The watch does not end when NATS goes away: the connection's state does.
            let next = tokio::time::timeout(Duration::from_millis(200), watch.next()).await;
            if !self.status.connected() {
                return Err("NATS unreachable".into());
            }
            let entry = match next {
                Err(_) => continue,
                Ok(None) => return Err("the watch ended".into()),
                Ok(Some(entry)) => entry.map_err(|e| e.to_string())?,
            };
            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                continue;
            }
            let sent = entries.send(BucketEntry {
                key: entry.key,
                der: entry.value.to_vec(),
            });
            if sent.is_err() {
                return Ok(());
            }
        }
    }
}
