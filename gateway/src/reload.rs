//! Reloading the TLS state: on request (admin API, SIGHUP) and when a TLS file's content
//! changes.
//!
//! The watcher reacts only to events that mean new content — a write, a close after writing,
//! a rename onto the file, a create — never to a read (reading the files, `check-config` or a
//! reload of our own used to trigger reloads forever). It waits for a write in progress to be
//! closed and for a burst of events to settle, then compares a digest of the files on disk
//! with the digest of what was loaded, and reloads only if they differ. A reload is refused as a whole if any file is bad or a CRL is older than
//! the one in force (see [`crate::crl`]); the state in force stays.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_rustls::TlsAcceptor;

use crate::audit::AuditEvent;
use crate::crl::CrlVersions;
use crate::metrics::ReloadLabels;
use crate::registry::Kick;
use crate::state::Shared;
use crate::tls::{Material, Revoked, TlsState};
use crate::Error;

/// The TLS state in force: swapped whole on reload.
pub(crate) struct Live {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) revoked: Revoked,
    pub(crate) crls: CrlVersions,
    digest: [u8; 32],
    /// Who may sign a CRL (client CAs and CRL issuers): what a CRL from the cluster is
    /// checked against.
    pub(crate) signers: Vec<rustls_pki_types::CertificateDer<'static>>,
}

impl From<TlsState> for Live {
    fn from(state: TlsState) -> Live {
        Live {
            acceptor: TlsAcceptor::from(state.server_config),
            revoked: state.revoked,
            crls: state.crls,
            digest: state.digest,
            signers: state.signers,
        }
    }
}

/// What asked for a reload (the `trigger` label of `fleet_gateway_tls_reloads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A watched file's content changed.
    FileChange,
    /// `POST /v1/reload`.
    Admin,
    Sighup,
    /// A direct call of [`Shared::reload`] by code embedding the gateway.
    Api,
    /// A new CRL in the cluster's CRL bucket.
    ClusterCrl,
}

impl Trigger {
    pub fn label(self) -> &'static str {
        match self {
            Trigger::FileChange => "file_change",
            Trigger::Admin => "admin",
            Trigger::Sighup => "sighup",
            Trigger::Api => "api",
            Trigger::ClusterCrl => "cluster_crl",
        }
    }
}

impl Shared {
    /// Reloads every TLS file. On success the new state is in force for new handshakes and
    /// every live session whose certificate is now revoked is closed; returns how many. On
    /// failure nothing changes: the previous good state stays in force. Counted by trigger
    /// and result; a refused CRL rollback is also logged, audited and counted by reason.
    pub fn reload(&self, trigger: Trigger) -> Result<usize, Error> {
        // One reload at a time: two racing reloads must not swap in their states out of order.
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let result = self.swap_in(self.material().and_then(|m| TlsState::from_material(&m)));
        let labels = ReloadLabels {
            trigger: trigger.label(),
            result: if result.is_ok() { "ok" } else { "refused" },
        };
        self.metrics.reloads.get_or_create(&labels).inc();
        if let Err(Error::CrlRollback { path, rollback }) = &result {
            self.metrics.crl_rollback(rollback.label());
            self.audit.record(&AuditEvent::gateway(
                "crl_refused",
                rollback.label(),
                format!(
                    "{}: {rollback}; the newer CRL stays in force",
                    path.display()
                ),
            ));
        }
        result
    }

    /// The TLS files, and the CRLs taken from the cluster's CRL bucket.
    pub(crate) fn material(&self) -> Result<Material, Error> {
        let cluster_crls = self.cluster.as_ref().and_then(|c| c.crls.material());
        Ok(Material::read(&self.config.tls)?.with_cluster_crls(cluster_crls))
    }

    pub(crate) fn swap_in(&self, loaded: Result<TlsState, Error>) -> Result<usize, Error> {
        let state = loaded?;
        let revoked = state.revoked.clone();
        let before = {
            let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
            state.crls.check_replaces(&live.crls)?;
            std::mem::replace(&mut *live, Live::from(state)).revoked
        };
        if let Some(cluster) = &self.cluster {
            cluster.announce_revoked(revoked.added_since(&before));
        }
        let kicked = self
            .sessions
            .kick_where(Kick::Revoked, |s| revoked.revokes(&s.identity));
        self.metrics.revocation_kicks.inc_by(kicked as u64);
        Ok(kicked)
    }

    /// Reloads and logs the outcome (for the watcher and SIGHUP).
    pub fn reload_logged(&self, trigger: Trigger) {
        match self.reload(trigger) {
            Ok(kicked) => tracing::info!(trigger = trigger.label(), kicked, "TLS files reloaded"),
            Err(e) => tracing::error!(
                trigger = trigger.label(),
                error = %e,
                "reload refused; the previous TLS state stays in force"
            ),
        }
    }

    /// Whether the TLS files on disk differ from what the state in force was built from (an
    /// unreadable file counts as a difference: the reload will say what is wrong).
    pub fn files_changed(&self) -> bool {
        let on_disk = self.material().map(|m| m.digest());
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        on_disk.map_or(true, |digest| digest != live.digest)
    }
}

/// What an event on a watched file says about its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Data written, the file still open: more may follow.
    Writing,
    /// Closed after writing, renamed onto, created; or events were lost (the queue
    /// overflowed).
    Written,
}

/// Whether an event on a watched file can mean new content, and which kind. Opening and
/// reading the file, attribute changes, renames away and removals cannot.
fn content_change(event: &notify::Event) -> Option<Change> {
    if event.need_rescan() {
        return Some(Change::Written);
    }
    match event.kind {
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => Some(Change::Writing),
        EventKind::Create(_)
        | EventKind::Modify(ModifyKind::Name(
            RenameMode::To | RenameMode::Both | RenameMode::Any,
        ))
        | EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(Change::Written),
        _ => None,
    }
}

/// How long the files must be quiet after a write is finished before they are compared, and
/// how long a writer that never stops (or never closes the file) may put that off.
const QUIET: Duration = Duration::from_millis(30);
const MOST: Duration = Duration::from_millis(500);

/// Watches the directories of every TLS file; reloads when one of the files' content changed.
/// The returned watcher must be kept alive.
pub(crate) fn watch_tls_files(shared: Arc<Shared>) -> Result<notify::RecommendedWatcher, Error> {
    use notify::Watcher;
    let files: HashSet<PathBuf> = shared
        .config
        .tls
        .all()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let dirs: HashSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(PathBuf::from))
        .collect();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let ours = event.need_rescan() || event.paths.iter().any(|p| files.contains(p));
        if let Some(change) = content_change(&event).filter(|_| ours) {
            let _ = tx.send(change);
        }
    })
    .map_err(|source| Error::Watch { path: None, source })?;
    for dir in &dirs {
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .map_err(|source| Error::Watch {
                path: Some(dir.clone()),
                source,
            })?;
    }
    tokio::spawn(reload_on_change(shared, rx));
    Ok(watcher)
}

async fn reload_on_change(shared: Arc<Shared>, mut events: UnboundedReceiver<Change>) {
    while let Some(first) = events.recv().await {
        if !settle(first, &mut events).await {
            return;
        }
        if shared.files_changed() {
            shared.reload_logged(Trigger::FileChange);
        } else {
            tracing::debug!("TLS files touched, content unchanged: no reload");
        }
    }
}

/// After `first`, waits until the writing is finished and no event came for [`QUIET`], or
/// [`MOST`] passed; false if the watcher is gone.
async fn settle(first: Change, events: &mut UnboundedReceiver<Change>) -> bool {
    let deadline = tokio::time::Instant::now() + MOST;
    let mut last = first;
    loop {
        let until = match last {
            Change::Writing => deadline,
            Change::Written => (tokio::time::Instant::now() + QUIET).min(deadline),
        };
        match tokio::time::timeout_at(until, events.recv()).await {
            Err(_) => return true,
            Ok(None) => return false,
            Ok(Some(_)) if tokio::time::Instant::now() >= deadline => return true,
            Ok(Some(change)) => last = change,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, RemoveKind};

    #[test]
    fn only_events_that_can_bring_new_content_count() {
        let event = |kind| notify::Event::new(kind);
        let writing = [EventKind::Modify(ModifyKind::Data(DataChange::Any))];
        let written = [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ];
        let not_content = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
            EventKind::Modify(ModifyKind::Name(RenameMode::From)),
            EventKind::Remove(RemoveKind::File),
            EventKind::Other,
        ];
        for (kinds, expected) in [
            (&writing[..], Some(Change::Writing)),
            (&written[..], Some(Change::Written)),
            (&not_content[..], None),
        ] {
            for kind in kinds {
                assert_eq!(content_change(&event(*kind)), expected, "{kind:?}");
            }
        }
        let overflow = event(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(content_change(&overflow), Some(Change::Written));
    }

    #[tokio::test]
    async fn a_burst_settles_once_and_a_stream_is_cut_off() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let started = std::time::Instant::now();
        for _ in 0..5 {
            tx.send(Change::Written).unwrap();
        }
        assert!(settle(Change::Written, &mut rx).await);
        let took = started.elapsed();
        assert!(
            took >= QUIET && took < MOST,
            "a burst: one quiet period, took {took:?}"
        );
        assert!(rx.try_recv().is_err(), "the burst was drained");

        // A write in progress is waited for, however slow, until it is finished.
        let slow = tx.clone();
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(QUIET * 3).await;
            slow.send(Change::Written).unwrap();
        });
        let started = std::time::Instant::now();
        assert!(settle(Change::Writing, &mut rx).await);
        let took = started.elapsed();
        assert!(took >= QUIET * 4 && took < MOST, "took {took:?}");
        finisher.await.unwrap();

        // A writer that never pauses for QUIET: cut off at MOST.
        let writer = tokio::spawn(async move {
            while tx.send(Change::Written).is_ok() {
                tokio::time::sleep(QUIET / 5).await;
            }
        });
        let started = std::time::Instant::now();
        assert!(settle(Change::Written, &mut rx).await);
        let took = started.elapsed();
        assert!(took >= MOST && took < MOST * 2, "took {took:?}");
        writer.abort();
        let _ = writer.await;
        while rx.try_recv().is_ok() {}
        assert!(
            !settle(Change::Written, &mut rx).await,
            "the sender is gone"
        );
    }
}
