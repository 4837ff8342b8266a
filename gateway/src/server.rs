//! The listener: accepts TCP connections and gives each its own task.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{Notification, Router, RouterConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::acl::Policy;
use crate::audit::{AuditEvent, AuditLimits, AuditLog};
use crate::config::Config;
use crate::identity::Identity;
use crate::limits::PerIp;
use crate::metrics::Metrics;
use crate::registry::{Kick, Registry};
use crate::reload::{watch_tls_files, Live, Trigger};
use crate::{admin, connection, tls, Error};

/// Opens a router link; rumqttd's `LinkError` is large, so it is boxed.
type OpenLink = dyn Fn(&str, &str, bool) -> Result<(LinkTx, LinkRx, Notification), Box<LinkError>>
    + Send
    + Sync;

/// The embedded rumqttd router, reached through local links.
#[derive(Clone)]
pub struct RouterHandle {
    open: Arc<OpenLink>,
}

impl RouterHandle {
    /// Starts a router thread sized by `limits`.
    pub fn spawn(limits: &crate::config::Limits) -> RouterHandle {
        let config = RouterConfig {
            max_connections: limits.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: limits.router_segment_bytes,
            max_segment_count: limits.router_segments,
            ..RouterConfig::default()
        };
        let tx = Router::new(0, config).spawn();
        RouterHandle {
            open: Arc::new(move |client_id, tenant, clean| {
                LinkBuilder::new(client_id, tx.clone())
                    .tenant_id(Some(tenant.to_owned()))
                    .clean_session(clean)
                    .build()
                    .map_err(Box::new)
            }),
        }
    }

    /// Opens a router session for an authenticated identity. Returns the link and whether the
    /// router had a stored session for it; `None` if the router refused.
    pub async fn open(&self, who: &Identity, clean: bool) -> Option<(LinkTx, LinkRx, bool)> {
        let open = self.open.clone();
        let (id, tenant) = (who.id.clone(), who.tenant.clone());
        // Building a link waits on the router thread's reply: keep that off the async workers.
        let built = tokio::task::spawn_blocking(move || open(&id, &tenant, clean)).await;
        let (tx, rx, ack) = match built {
            Ok(Ok(link)) => link,
            Ok(Err(e)) => {
                tracing::error!(error = %e, device = %who.id, "router refused a session");
                return None;
            }
            Err(e) => {
                tracing::error!(error = %e, "router link task failed");
                return None;
            }
        };
        let ack: Option<rumqttd::protocol::Packet> = ack.into();
        let present =
            matches!(ack, Some(rumqttd::protocol::Packet::ConnAck(a, _)) if a.session_present);
        Some((tx, rx, present))
    }
}

/// State every connection task shares.
pub struct Shared {
    pub config: Config,
    pub policy: Arc<Policy>,
    pub(crate) live: RwLock<Live>,
    /// Held while a reload runs: reloads happen one at a time.
    pub(crate) reloading: Mutex<()>,
    pub sessions: Registry,
    pub router: RouterHandle,
    /// Certificate rotation through the station, when configured.
    pub renewal: Option<Arc<crate::renewal::RenewalClient>>,
    pub metrics: Metrics,
    pub audit: AuditLog,
    /// Slots for TLS handshakes in progress.
    pub handshakes: tokio::sync::Semaphore,
    per_ip: PerIp,
}

impl Shared {
    /// The TLS acceptor in force now (reloads replace it; handshakes in flight keep theirs).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .acceptor
            .clone()
    }

    /// Whether the CRLs in force revoke this identity's certificate.
    pub fn is_revoked(&self, who: &Identity) -> bool {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revoked
            .contains(&who.issuer, &who.serial)
    }

    /// Whether a new connection from `peer` may proceed, given `open` connections; the
    /// refusal reason if not.
    fn admit(&self, peer: SocketAddr, open: usize) -> Option<&'static str> {
        if open >= self.config.limits.max_connections {
            Some("too_many_connections")
        } else if !self.per_ip.allow(peer.ip(), std::time::Instant::now()) {
            Some("ip_rate_limited")
        } else {
            None
        }
    }

    fn refuse_at_accept(&self, peer: SocketAddr, reason: &'static str) {
        self.metrics.connect(Some(reason));
        self.audit_refusal(&AuditEvent::new(
            "refused",
            reason,
            "connection closed at accept".into(),
            peer,
            None,
        ));
    }

    /// Audits a refusal (rate limited per source; see [`crate::audit`]). A handshake refused
    /// because the client's certificate is revoked is recorded with the device, tenant and
    /// serial of that certificate (see [`tls::noting_revoked_certificates`]).
    pub fn audit_refusal(&self, event: &AuditEvent<'_>) {
        let revoked = (event.reason == "revoked" && event.device.is_none())
            .then(tls::refused_as_revoked)
            .flatten()
            .and_then(|der| Identity::from_cert_der(&der, &self.config.service_ou).ok());
        let written = match &revoked {
            Some(who) => self.audit.refusal(&event.clone().with_identity(Some(who))),
            None => self.audit.refusal(event),
        };
        if !written {
            self.metrics.audit_suppressed.inc();
        }
    }
}

/// A bound gateway, ready to [`run`](Gateway::run).
pub struct Gateway {
    listener: TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
}

impl Gateway {
    /// Loads the TLS material, starts the router and binds the listener (port 0 picks a free
    /// port: see [`Gateway::local_addr`]).
    pub async fn bind(config: Config) -> Result<Gateway, Error> {
        let tls = tls::load(&config.tls)?;
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
            sessions: Registry::default(),
            router: RouterHandle::spawn(&limits),
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
        let mut hangup = hangup_signal();
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
        self.shared.audit.flush_suppressed();
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
