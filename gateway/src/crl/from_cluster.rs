//! Applying the CRLs of the cluster's CRL bucket (see [`crate::cluster::crls`]): each value
//! is checked on its own — a DER CRL, signed by a configured client CA or CRL issuer, not
//! older than the CRL of its issuer in force — then merged with the CRL files into a new TLS
//! state through the same swap as a reload (new handshakes refused, live sessions of revoked
//! certificates closed). A refused value changes nothing: it is logged, audited
//! (`crl_refused`) and counted (`fleet_gateway_crl_refused_total{reason}`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use super::CrlRefused;
use crate::audit::AuditEvent;
use crate::cluster::{BucketEntry, CrlSource};
use crate::config::TlsFiles;
use crate::metrics::ReloadLabels;
use crate::reload::Trigger;
use crate::state::Shared;
use crate::tls::{Material, TlsState};
use crate::Error;

/// What became of one value of the bucket.
#[derive(Debug)]
pub enum Applied {
    /// In force; this many live sessions closed.
    InForce { kicked: usize },
    /// The CRL in force already (a replay after a reconnect).
    Unchanged,
}

/// Why a value was not applied.
#[derive(Debug, thiserror::Error)]
pub enum NotApplied {
    #[error(transparent)]
    Refused(#[from] CrlRefused),
    #[error("the TLS state could not be rebuilt: {0}")]
    Load(Error),
}

impl NotApplied {
    fn label(&self) -> &'static str {
        match self {
            NotApplied::Refused(r) => r.label(),
            NotApplied::Load(Error::CrlRollback { rollback, .. }) => rollback.label(),
            NotApplied::Load(_) => "load_failed",
        }
    }
}

/// The TLS state at start: the files and the CRLs of the cluster's cache. A cache that does
/// not load (a CRL not signed by a configured CA, an unreadable file) is left out, loudly:
/// the files alone decide then.
pub(crate) fn load_at_start(
    files: &TlsFiles,
    source: Option<&CrlSource>,
) -> Result<TlsState, Error> {
    let material = Material::read(files)?;
    let cached = source.and_then(CrlSource::material);
    let Some(cached) = cached else {
        return TlsState::from_material(&material);
    };
    let label = cached.0.clone();
    match TlsState::from_material(&material.with_cluster_crls(Some(cached))) {
        Ok(state) => Ok(state),
        Err(e) => {
            tracing::error!(cache = %label.display(), error = %e, "the cluster CRL cache is refused; starting with the CRL files only");
            if let Some(s) = source {
                s.clear();
            }
            TlsState::from_material(&Material::read(files)?)
        }
    }
}

/// Applies the bucket's values as they arrive, until the cluster stops.
pub(crate) async fn follow(shared: Arc<Shared>, mut entries: UnboundedReceiver<BucketEntry>) {
    while let Some(entry) = entries.recv().await {
        let s = shared.clone();
        let key = entry.key.clone();
        let done = tokio::task::spawn_blocking(move || s.apply_cluster_crl(&entry)).await;
        match done {
            Ok(Ok(Applied::InForce { kicked })) => {
                tracing::info!(key, kicked, "cluster: CRL from the CRL bucket in force")
            }
            Ok(Ok(Applied::Unchanged)) => {
                tracing::debug!(key, "cluster: CRL from the bucket already in force")
            }
            Ok(Err(_)) => {}
            Err(e) => tracing::error!(key, error = %e, "cluster: applying a CRL failed"),
        }
    }
}

impl Shared {
    /// Checks one value of the CRL bucket and, if it passes, puts it in force with the CRL
    /// files (see the module documentation). A refusal is logged, audited and counted here.
    pub fn apply_cluster_crl(&self, entry: &BucketEntry) -> Result<Applied, NotApplied> {
        let Some(cluster) = &self.cluster else {
            return Ok(Applied::Unchanged);
        };
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.merge(&cluster.crls, entry);
        match &result {
            Ok(Applied::InForce { .. }) => {
                let labels = ReloadLabels {
                    trigger: Trigger::ClusterCrl.label(),
                    result: "ok",
                };
                self.metrics.reloads.get_or_create(&labels).inc();
                if let Err(e) = cluster.crls.write_cache() {
                    tracing::error!(cache = ?cluster.crls.cache, error = %e, "cluster: the CRL cache not written");
                }
            }
            Ok(Applied::Unchanged) => {}
            Err(e) => {
                self.metrics.crl_refused(e.label());
                let detail = format!(
                    "{}/{}: {e}; the CRLs in force stay",
                    cluster.crls.bucket, entry.key
                );
                tracing::error!("cluster: CRL refused: {detail}");
                self.audit
                    .record(&AuditEvent::gateway("crl_refused", e.label(), detail));
            }
        }
        result
    }

    /// What `/readyz` says of the CRL bucket while it is not watched: "crl source
    /// unreachable; keeping CRL #N of <issuer> from <thisUpdate>" for each CRL taken from it
    /// (or that none was). `None` while it is watched, or without a cluster.
    pub fn crl_source_down(&self) -> Option<String> {
        let cluster = self.cluster.as_ref()?;
        if cluster.crls.up() {
            return None;
        }
        let kept: Vec<String> = cluster
            .crls
            .versions()
            .iter()
            .map(|v| {
                let number = v
                    .number
                    .as_ref()
                    .map_or_else(|| "without number".into(), |n| format!("#{n}"));
                format!("CRL {number} of {} from {}", v.issuer, v.this_update)
            })
            .collect();
        Some(if kept.is_empty() {
            "crl source unreachable; no CRL from it yet (the CRL files stay in force)".into()
        } else {
            format!("crl source unreachable; keeping {}", kept.join(", "))
        })
    }

    fn merge(&self, source: &CrlSource, entry: &BucketEntry) -> Result<Applied, NotApplied> {
        let label = PathBuf::from(format!("{}/{}", source.bucket, entry.key));
        let (issuer, version) = {
            let live = self.live.read().unwrap_or_else(|p| p.into_inner());
            let (issuer, version) = super::check_one(&entry.der, &label, &live.signers)?;
            if let Some(in_force) = live.crls.get(&issuer) {
                version
                    .may_replace(in_force)
                    .map_err(CrlRefused::Rollback)?;
                let same = source.get(&issuer).is_some_and(|(der, _)| der == entry.der);
                if same && version.same_as(in_force) {
                    return Ok(Applied::Unchanged);
                }
            }
            (issuer, version)
        };
        let previous = source.set(&issuer, Some((entry.der.clone(), version)));
        let loaded = self.material().and_then(|m| TlsState::from_material(&m));
        match self.swap_in(loaded) {
            Ok(kicked) => Ok(Applied::InForce { kicked }),
            Err(e) => {
                source.set(&issuer, previous);
                Err(NotApplied::Load(e))
            }
        }
    }
}
