//! The listener: accepts TCP connections and gives each its own task.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::audit::{AuditLimits, AuditLog};
use crate::broker::{BrokerConfig, QueueLimits};
use crate::config::{Config, Limits};
use crate::hub::Hub;
use crate::limits::PerIp;
use crate::metrics::Metrics;
use crate::registry::{Kick, Registry};
use crate::reload::{watch_tls_files, Live, Trigger};
// Re-exported where embedders (the test harness) have always found it.
pub use crate::state::Shared;
use crate::{admin, connection, tls, Error};

/// A bound gateway, ready to [`run`](Gateway::run).
pub struct Gateway {
    listener: TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
}

impl Gateway {
    /// Loads the TLS material, makes the broker core and binds the listener (port 0 picks a free
    /// port: see [`Gateway::local_addr`]).
    pub async fn bind(config: Config) -> Result<Gateway, Error> {
        let crls = config.cluster.as_ref().map(|c| {
            Arc::new(crate::cluster::CrlSource::open(
                &c.crl_bucket,
                c.crl_cache.as_deref(),
            ))
        });
        let tls = crate::crl::from_cluster::load_at_start(&config.tls, crls.as_deref())?;
        let listener = listen(config.listen).map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let admin = match &config.admin {
            Some(a) => Some(
                TcpListener::bind(a.listen)
                    .await
                    .map_err(|source| Error::Bind {
                        addr: a.listen,
                        source,
                    })?,
            ),
            None => None,
        };
        let audit_limits = AuditLimits::from_limits(&config.limits);
        let audit = match &config.audit_log {
            Some(path) => AuditLog::open(path, audit_limits)?,
            None => AuditLog::without_file(audit_limits),
        };
        let limits = config.limits;
        let sessions = Registry::default();
        let (hub, cluster) = match &config.cluster {
            Some(c) => {
                let crls = crls.unwrap_or_else(|| {
                    Arc::new(crate::cluster::CrlSource::open(&c.crl_bucket, None))
                });
                let (hub, cluster) = crate::cluster::Cluster::start(
                    c,
                    broker_config(&limits),
                    sessions.clone(),
                    crls,
                )
                .await?;
                (hub, Some(cluster))
            }
            None => (Arc::new(Hub::new(broker_config(&limits))), None),
        };
        let renewal = config
            .renewal
            .as_ref()
            .map(crate::renewal::RenewalClient::load)
            .transpose()?
            .map(Arc::new);
        let shared = Arc::new(Shared {
            renewal,
            handshakes: tokio::sync::Semaphore::new(limits.max_handshakes),
            per_ip: PerIp::new(limits.ip_connect_rate, limits.ip_connect_burst),
            metrics: Metrics::default(),
            audit,
            policy: Arc::new(config.policy.clone()),
            config,
            live: RwLock::new(Live::from(tls)),
            reloading: Mutex::new(()),
            sessions,
            hub,
            cluster,
        });
        Ok(Gateway {
            listener,
            admin,
            shared,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.shared.config.listen)
    }

    /// Where the admin API listens, if it is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The live sessions (for admin views and tests).
    pub fn sessions(&self) -> Registry {
        self.shared.sessions.clone()
    }

    /// A handle to reload TLS files and inspect sessions while the gateway runs.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` resolves, then closes every session and returns. TLS files
    /// are watched for changes, and SIGHUP reloads them too.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let next_conn = AtomicU64::new(1);
        let mut tasks = JoinSet::new();
        let _watcher = watch_tls_files(self.shared.clone())
            .inspect_err(
                |e| tracing::error!(error = %e, "TLS files are not watched; use SIGHUP to reload"),
            )
            .ok();
        // The CRLs the stations publish to the cluster, applied as they arrive.
        let crl_follower = self
            .shared
            .cluster
            .as_ref()
            .and_then(|c| c.take_crl_entries())
            .map(|entries| {
                tokio::spawn(crate::crl::from_cluster::follow(
                    self.shared.clone(),
                    entries,
                ))
            });
        let mut hangup = hangup_signal();
        let timer = tokio::spawn(self.shared.hub.clone().run_timer());
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = self.admin.map(|listener| {
            let token = self
                .shared
                .config
                .admin
                .as_ref()
                .and_then(|a| a.token.clone());
            let app = crate::console::with_shell(admin::router(self.shared.clone(), token));
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = admin_stopped.await;
                    })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "admin listener failed");
                }
            })
        });
        tokio::pin!(shutdown);
        let mut summaries = tokio::time::interval(crate::audit::SUMMARY_INTERVAL);
        summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(()) = hangup.recv() => self.shared.reload_logged(Trigger::Sighup),
                _ = summaries.tick() => {
                    self.shared.audit.flush_suppressed();
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        if let Some(reason) = self.shared.admit(peer, tasks.len()) {
                            drop(tcp);
                            self.shared.refuse_at_accept(peer, reason);
                            continue;
                        }
                        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                        let serve = connection::serve(self.shared.clone(), tcp, peer, conn);
                        tasks.spawn(tls::noting_revoked_certificates(serve));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        drop(self.listener);
        let kicked = self.shared.sessions.kick_where(Kick::Shutdown, |_| true);
        tracing::info!(sessions = kicked, "shutting down");
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            tasks.abort_all();
        }
        let _ = admin_stop.send(());
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        timer.abort();
        if let Some(task) = crl_follower {
            task.abort();
        }
        if let Some(cluster) = &self.shared.cluster {
            cluster.stop();
        }
        self.shared.audit.flush_suppressed();
    }
}

/// The broker core's configuration from the gateway's limits.
fn broker_config(limits: &Limits) -> BrokerConfig {
    BrokerConfig {
        queue: QueueLimits {
            max_messages: limits.queue_messages,
            max_bytes: limits.queue_bytes,
            overflow: limits.queue_overflow,
            drop_qos0_first: true,
        },
        ..BrokerConfig::default()
    }
}

/// The MQTT listener, with a deep accept queue: a burst of connections (a fleet reconnecting,
/// or a flood) waits in the kernel instead of having its handshakes dropped and retried a
/// second later. The kernel caps the depth at `net.core.somaxconn`.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}

/// SIGHUP as a stream of `()` (never yields where signals are unavailable).
fn hangup_signal() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                if tx.send(()).await.is_err() {
                    return;
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}
