//! A cluster of gateways over NATS JetStream (the `[cluster]` table; without it the gateway
//! runs alone with the in-process backend, unchanged).
//!
//! ```text
//! device ─TLS─► gateway A: session rules ─► Broker ─► JetStreamBackend ─► link ─► NATS
//!                                                                           │
//! backend ─TLS─► gateway B: session rules ◄─ Broker ◄── hub.deliver ◄─ link ◄┘
//! ```
//!
//! The gateway stays the MQTT front end and owns every MQTT rule (its [`crate::broker`]);
//! NATS is the backbone, and the gateways hold no JetStream state of their own:
//!
//! - topics map to NATS subjects reversibly ([`subject`]): QoS 0 travels on core NATS
//!   (`<prefix>.v.<topic>`), QoS 1/2 through the JetStream stream (`<prefix>.d.<topic>`),
//!   acknowledged to the publisher only after JetStream stored it (`Nats-Msg-Id` for
//!   de-duplication); a message is an [`envelope`] (origin, QoS, retain, expiry,
//!   v5 properties, payload);
//! - every gateway receives the messages for the filters its sessions hold through one core
//!   NATS subscription per filter, shared by its sessions — no JetStream consumer per
//!   session or subscription — and hands them to its broker, which fans them out;
//! - retained messages live in a KV bucket (key = topic tokens) that every gateway watches
//!   into its local [`RetainedStore`] copy;
//! - revocations, admin kicks and session locations ([`control`]) go through the control
//!   bucket and a subject every gateway watches;
//! - the CRLs the stations publish arrive through the CRL bucket ([`crls`]).

mod backend;
mod config;
pub mod control;
pub mod crls;
pub mod envelope;
mod link;
pub mod subject;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc::unbounded_channel;
use tokio::task::JoinHandle;

pub use backend::{Interest, JetStreamBackend, Outbound};
pub use config::ClusterConfig;
pub(crate) use config::FileCluster;
pub use control::{Control, Located, Order};
pub use crls::{BucketEntry, CrlSource};
pub use link::Status;

use crate::broker::{BrokerConfig, InProcess, RetainedStore};
use crate::hub::Hub;
use crate::registry::Registry;
use crate::Error;

/// The longest a SUBACK waits for its subscription to reach NATS.
const SETTLE_WITHIN: Duration = Duration::from_secs(2);
/// How long the start waits for the first connection to NATS.
const CONNECT_WAIT: Duration = Duration::from_secs(2);

/// A gateway's membership in the cluster: its NATS connection and the tasks of its link.
pub struct Cluster {
    /// This gateway's name in the cluster.
    pub name: String,
    pub status: Arc<Status>,
    /// Revocations and session locations from the whole cluster.
    pub control: Arc<Control>,
    link: Arc<link::Link>,
    /// Interest changes queued by the backend, and those in effect at the NATS server.
    queued: Arc<std::sync::atomic::AtomicU64>,
    done: tokio::sync::watch::Receiver<u64>,
    /// The publish queue to NATS.
    queue: Arc<backend::Queue>,
    /// The CRLs taken from the CRL bucket.
    pub crls: Arc<CrlSource>,
    /// The CRL bucket's values as they arrive, until the gateway takes them to apply them.
    crl_entries: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<BucketEntry>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn setup_error(what: &'static str, detail: impl std::fmt::Display) -> Error {
    Error::Cluster {
        what,
        detail: detail.to_string(),
    }
}

/// The rustls client config for NATS: ring, like every TLS object of the gateway, the
/// configured CA (else none: then NATS must not ask for TLS) and the client identity.
fn tls_config(c: &ClusterConfig) -> Result<Option<rustls::ClientConfig>, Error> {
    if c.ca.is_none() && c.client_auth.is_none() {
        return Ok(None);
    }
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|e| setup_error(what, format!("{}: {e}", path.display())))
    };
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = &c.ca {
        for cert in CertificateDer::pem_slice_iter(&read("ca", ca)?) {
            let cert = cert.map_err(|e| setup_error("ca", e))?;
            roots.add(cert).map_err(|e| setup_error("ca", e))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| setup_error("TLS protocol versions", e))?
        .with_root_certificates(roots);
    let config = match &c.client_auth {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&read("client_cert", cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| setup_error("client_cert", e))?;
            let key = PrivateKeyDer::from_pem_slice(&read("client_key", key)?)
                .map_err(|e| setup_error("client_key", e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| setup_error("client identity", e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Some(config))
}

/// A name unique enough for a gateway that was given none: its host's process id and start
/// time.
fn default_name() -> String {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("gw-{}-{started:x}", std::process::id())
}

impl Cluster {
    /// Connects to NATS (in the background: an unreachable NATS is retried, reported by
    /// [`Status::ready`] and logged, never fatal) and starts the link; returns the hub whose
    /// broker distributes through the cluster. Only unusable settings (TLS files) fail.
    /// `registry`: the gateway's live sessions (revocations and kicks from other gateways
    /// close them; their locations are published); `crls`: where the CRL bucket's values go
    /// (see [`crls`]).
    pub async fn start(
        config: &ClusterConfig,
        broker: BrokerConfig,
        registry: Registry,
        crls: Arc<CrlSource>,
    ) -> Result<(Arc<Hub>, Arc<Cluster>), Error> {
        let name = config.name.clone().unwrap_or_else(default_name);
        let status = Arc::new(Status::default());
        let events = status.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("fleet-gateway {name}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(CONNECT_WAIT)
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((100 * attempt as u64).min(1000))
            })
            .event_callback(move |event| {
                let status = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            status.set_connected(true);
                            tracing::info!("cluster: connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            status.set_connected(false);
                            tracing::error!("cluster: disconnected from NATS; reconnecting");
                        }
                        other => tracing::warn!("cluster: NATS: {other}"),
                    }
                }
            });
        if let Some(tls) = tls_config(config)? {
            options = options.tls_client_config(tls).require_tls(true);
        }
        let client = options
            .connect(config.servers.as_slice())
            .await
            .map_err(|e| setup_error("connect", e))?;
        // The connection is made in the background: give it the connection timeout before
        // saying NATS is unreachable.
        let waited = Instant::now();
        while client.connection_state() != async_nats::connection::State::Connected
            && waited.elapsed() < CONNECT_WAIT
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if client.connection_state() == async_nats::connection::State::Connected {
            status.set_connected(true);
        } else {
            tracing::error!(servers = ?config.servers, "cluster: NATS is unreachable; not ready until it is (retrying)");
            status.set_problem(Some(format!(
                "NATS at {} is unreachable",
                config.servers.join(", ")
            )));
        }
        let (out_tx, out_rx) = unbounded_channel();
        let (int_tx, int_rx) = unbounded_channel();
        let retained = Arc::new(Mutex::new(RetainedStore::new(
            InProcess::DEFAULT_RETAINED_LIMIT,
        )));
        let backend = JetStreamBackend::new(out_tx, int_tx, retained.clone());
        let queued = backend.queued();
        let queue = backend.queue();
        let (done_tx, done) = tokio::sync::watch::channel(0u64);
        let hub = Arc::new(Hub::with_backend(broker, Box::new(backend)));
        let link = Arc::new(link::Link::new(
            config.clone(),
            client,
            hub.clone(),
            status.clone(),
            retained,
            &name,
        ));
        let control = Arc::new(Control::default());
        let (crl_tx, crl_rx) = unbounded_channel();
        let tasks = vec![
            tokio::spawn(link.clone().watch_crls(crls.clone(), crl_tx)),
            tokio::spawn(link.clone().setup()),
            tokio::spawn(link.clone().publish(out_rx, queue.clone())),
            tokio::spawn(link.clone().interest(int_rx, done_tx)),
            tokio::spawn(link.clone().replay_after_reconnect()),
            tokio::spawn(
                link.clone()
                    .watch_control(control.clone(), registry.clone()),
            ),
            tokio::spawn(link.clone().obey_kicks(registry.clone())),
            tokio::spawn(link.clone().publish_locations(registry)),
        ];
        let cluster = Arc::new(Cluster {
            name,
            status,
            control,
            link,
            queued,
            queue,
            done,
            crls,
            crl_entries: Mutex::new(Some(crl_rx)),
            tasks: Mutex::new(tasks),
        });
        Ok((hub, cluster))
    }

    /// `Ok` when this gateway can distribute messages; else what is wrong (for `/readyz`).
    pub fn ready(&self) -> Result<(), String> {
        self.status.ready()
    }

    /// Resolves once the subscriptions queued so far are in effect at the NATS server (at
    /// once when none is pending; at most [`SETTLE_WITHIN`]): a connection awaits it before
    /// writing a SUBACK, so a message published anywhere after the SUBACK reaches it.
    pub async fn settled(&self) {
        let target = self.queued.load(std::sync::atomic::Ordering::Acquire);
        if *self.done.borrow() >= target {
            return;
        }
        let mut done = self.done.clone();
        let _ = tokio::time::timeout(SETTLE_WITHIN, done.wait_for(|d| *d >= target)).await;
    }

    /// Whether another gateway announced this certificate as revoked.
    pub fn is_revoked(&self, issuer: &[u8], serial: &[u8]) -> bool {
        self.control.is_revoked(issuer, serial)
    }

    /// Tells every gateway about certificates this gateway's CRLs now revoke (in the
    /// background; a failure is logged: each gateway still has its own CRL files).
    pub fn announce_revoked(&self, revoked: Vec<(Vec<u8>, Vec<u8>)>) {
        if revoked.is_empty() {
            return;
        }
        let link = self.link.clone();
        tokio::spawn(async move {
            if let Err(e) = link.write_revoked(&revoked).await {
                tracing::error!(error = %e, "cluster: revocations not announced to the other gateways");
            }
        });
    }

    /// Asks the other gateways to close `device`'s session (of `tenant`, if given).
    pub async fn kick(&self, device: &str, tenant: Option<&str>) -> Result<(), String> {
        let order = Order {
            origin: self.name.clone(),
            device: device.to_owned(),
            tenant: tenant.map(str::to_owned),
        };
        self.link.send_kick(&order).await
    }

    /// Adds what the cluster counted since the last report to the metrics:
    /// `dropped_messages_total{reason="cluster_unavailable"}` (QoS 0 while NATS was not
    /// ready, or while [`backend::MAX_QUEUED_VOLATILE`] waited for it) and `broker_events_total{event="store_refused"}` (QoS 1/2 publishes refused
    /// because JetStream did not store them).
    pub fn report(&self, metrics: &crate::metrics::Metrics) {
        use std::sync::atomic::Ordering;
        let dropped = self.status.dropped_volatile.swap(0, Ordering::Relaxed)
            + self.queue.dropped.swap(0, Ordering::Relaxed);
        let refused = self.status.store_failures.swap(0, Ordering::Relaxed);
        metrics.dropped("cluster_unavailable", dropped);
        metrics.broker_event("store_refused", refused);
    }

    /// The CRL bucket's values as they arrive: given once, to the task that applies them.
    pub fn take_crl_entries(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<BucketEntry>> {
        self.crl_entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Stops the link's tasks (the gateway is shutting down).
    pub fn stop(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}
