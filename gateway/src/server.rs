//! The listener: accepts TCP connections and gives each its own task.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{Notification, Router, RouterConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::acl::Policy;
use crate::config::Config;
use crate::identity::Identity;
use crate::registry::{Kick, Registry};
use crate::{connection, tls, Error};

/// Opens a router link; rumqttd's `LinkError` is large, so its message is carried instead.
type OpenLink =
    dyn Fn(&str, &str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync;

/// The embedded rumqttd router, reached through local links.
#[derive(Clone)]
pub struct RouterHandle {
    open: Arc<OpenLink>,
}

impl RouterHandle {
    /// Starts a router thread.
    pub fn spawn(max_connections: usize) -> RouterHandle {
        let config = RouterConfig {
            max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 256 * 1024,
            max_segment_count: 2,
            ..RouterConfig::default()
        };
        let tx = Router::new(0, config).spawn();
        RouterHandle {
            open: Arc::new(move |client_id, tenant, clean| {
                LinkBuilder::new(client_id, tx.clone())
                    .tenant_id(Some(tenant.to_owned()))
                    .clean_session(clean)
                    .build()
                    .map_err(|e: LinkError| e.to_string())
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
    acceptor: RwLock<TlsAcceptor>,
    pub sessions: Registry,
    pub router: RouterHandle,
}

impl Shared {
    /// The TLS acceptor in force now (reloads replace it; handshakes in flight keep theirs).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A bound gateway, ready to [`run`](Gateway::run).
pub struct Gateway {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// Largest number of concurrent router sessions (the router preallocates per-session slots).
const MAX_SESSIONS: usize = 20_000;

impl Gateway {
    /// Loads the TLS material, starts the router and binds the listener (port 0 picks a free
    /// port: see [`Gateway::local_addr`]).
    pub async fn bind(config: Config) -> Result<Gateway, Error> {
        let tls = tls::server_config(&config.tls)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let shared = Arc::new(Shared {
            policy: Arc::new(config.policy.clone()),
            config,
            acceptor: RwLock::new(TlsAcceptor::from(tls)),
            sessions: Registry::default(),
            router: RouterHandle::spawn(MAX_SESSIONS),
        });
        Ok(Gateway { listener, shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.shared.config.listen)
    }

    /// The live sessions (for admin views and tests).
    pub fn sessions(&self) -> Registry {
        self.shared.sessions.clone()
    }

    /// Serves until `shutdown` resolves, then closes every session and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let next_conn = AtomicU64::new(1);
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                        tasks.spawn(connection::serve(self.shared.clone(), tcp, peer, conn));
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
    }
}
