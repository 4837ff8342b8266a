//! Reloading the TLS state: on request (admin API, SIGHUP) and when a TLS file's content
//! changes.
//!
//! The watcher reacts only to events that mean new content — a write, a close after writing,
//! a rename onto the file, a create — never to a read (reading the files, `check-config` or a
//! reload of our own used to trigger reloads forever). It lets a burst of events settle, then
//! compares a digest of the files on disk with the digest of what was loaded, and reloads only
//! if they differ. A reload is refused as a whole if any file is bad or a CRL is older than
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
use crate::server::Shared;
use crate::tls::{self, Material, Revoked, TlsState};
use crate::Error;

/// The TLS state in force: swapped whole on reload.
pub(crate) struct Live {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) revoked: Revoked,
    crls: CrlVersions,
    digest: [u8; 32],
}

impl From<TlsState> for Live {
    fn from(state: TlsState) -> Live {
        Live {
            acceptor: TlsAcceptor::from(state.server_config),
            revoked: state.revoked,
            crls: state.crls,
            digest: state.digest,
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
}

impl Trigger {
    pub fn label(self) -> &'static str {
        match self {
            Trigger::FileChange => "file_change",
            Trigger::Admin => "admin",
            Trigger::Sighup => "sighup",
            Trigger::Api => "api",
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
        let result = self.swap_in(tls::load(&self.config.tls));
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

    fn swap_in(&self, loaded: Result<TlsState, Error>) -> Result<usize, Error> {
        let state = loaded?;
        let revoked = state.revoked.clone();
        {
            let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
            state.crls.check_replaces(&live.crls)?;
            *live = Live::from(state);
        }
        let kicked = self.sessions.kick_where(Kick::Revoked, |s| {
            revoked.contains(&s.identity.issuer, &s.identity.serial)
        });
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
        let on_disk = Material::read(&self.config.tls).map(|m| m.digest());
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        on_disk.map_or(true, |digest| digest != live.digest)
    }
}

/// Whether an event on a watched file can mean new content: data written, a close after
/// writing, a rename onto it, a create; or lost events (the queue overflowed). Opening and
/// reading the file, attribute changes, renames away and removals cannot.
fn may_change_content(event: &notify::Event) -> bool {
    event.need_rescan()
        || matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(
                    ModifyKind::Data(_)
                        | ModifyKind::Any
                        | ModifyKind::Name(RenameMode::To | RenameMode::Both | RenameMode::Any)
                )
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        )
}

/// How long the files must be quiet before they are compared, and how long a writer that
/// never stops may put that off.
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
        if ours && may_change_content(&event) {
            let _ = tx.send(());
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

async fn reload_on_change(shared: Arc<Shared>, mut events: UnboundedReceiver<()>) {
    while events.recv().await.is_some() {
        if !settle(&mut events).await {
            return;
        }
        if shared.files_changed() {
            shared.reload_logged(Trigger::FileChange);
        } else {
            tracing::debug!("TLS files touched, content unchanged: no reload");
        }
    }
}

/// Waits until no event came for [`QUIET`] (or [`MOST`] passed); false if the watcher is gone.
async fn settle(events: &mut UnboundedReceiver<()>) -> bool {
    let deadline = tokio::time::Instant::now() + MOST;
    loop {
        let quiet_until = (tokio::time::Instant::now() + QUIET).min(deadline);
        match tokio::time::timeout_at(quiet_until, events.recv()).await {
            Err(_) => return true,
            Ok(None) => return false,
            Ok(Some(())) if tokio::time::Instant::now() >= deadline => return true,
            Ok(Some(())) => {}
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
        let content = [
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
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
        assert!(content.into_iter().all(|k| may_change_content(&event(k))));
        assert!(!not_content
            .into_iter()
            .any(|k| may_change_content(&event(k))));
        let overflow = event(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(may_change_content(&overflow));
    }

    #[tokio::test]
    async fn a_burst_settles_once_and_a_stream_is_cut_off() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let started = std::time::Instant::now();
        for _ in 0..5 {
            tx.send(()).unwrap();
        }
        assert!(settle(&mut rx).await);
        let took = started.elapsed();
        assert!(
            took >= QUIET && took < MOST,
            "a burst: one quiet period, took {took:?}"
        );
        assert!(rx.try_recv().is_err(), "the burst was drained");

        // A writer that never pauses for QUIET: cut off at MOST.
        let writer = tokio::spawn(async move {
            while tx.send(()).is_ok() {
                tokio::time::sleep(QUIET / 5).await;
            }
        });
        let started = std::time::Instant::now();
        assert!(settle(&mut rx).await);
        let took = started.elapsed();
        assert!(took >= MOST && took < MOST * 2, "took {took:?}");
        writer.abort();
        let _ = writer.await;
        while rx.try_recv().is_ok() {}
        assert!(!settle(&mut rx).await, "the sender is gone");
    }
}
