//! `fleet-provision serve`: the station's HTTPS API over mutual TLS.
//!
//! Every client presents a certificate from the station's issuing CA (checked against the
//! station's own CRL, which is reloaded whenever it changes; an older one is refused, see
//! `crl`):
//!
//! - operators use service certificates (subject OU=service) and act on their own tenant's
//!   devices: issue (CSR or key injection, ids only in the tenant's namespace), look up,
//!   revoke; another tenant's device is answered exactly as an absent one;
//! - fleet operators (subject OU=operator, e.g. the gateway's console) look up and revoke
//!   devices of every tenant, nothing else;
//! - devices may only renew themselves: `POST /v1/renew` with a CSR for a new key, proving
//!   their current identity with the certificate they connect with;
//! - gateways (subject OU=gateway) may only relay renewals of devices they authenticated.
//!
//! Either way a renewal follows the station's [`RenewalPolicy`]: only the current
//! certificate, only near its end, at most so many per device and period.
//!
//! `GET /v1/crl` serves the current CRL to any authenticated client; `GET /openapi.json` and
//! `GET /healthz` need no certificate.

mod auth;
mod body;
mod crl;
mod devices;
mod error;
mod issue;
mod openapi;
mod renew;
mod revocations;
mod routes;
mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use auth::{peer_from_cert, Peer};
pub use error::ApiError;
pub use openapi::openapi_document;

use crate::error::{Error, TlsError};
use crate::{RenewalPolicy, Station};

/// How the API server runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    /// Names and addresses in the station's server certificate.
    pub hosts: Vec<String>,
    /// How long a certificate replaced by a renewal keeps working before it is revoked.
    pub grace: time::Duration,
    /// Validity of certificates issued or renewed through the API.
    pub validity_days: u32,
}

/// How often superseded certificates are checked for the end of their grace period.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);

/// What every request handler shares: the station (one operation at a time) and the TLS
/// configuration new connections get.
struct Shared {
    station: Mutex<Station>,
    /// The CRL the TLS configuration honours (changed only with the station locked).
    crl: Mutex<crl::CrlInForce>,
    tls: RwLock<Arc<rustls::ServerConfig>>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    options: Options,
    renewal: RenewalPolicy,
}

/// The state handlers extract.
type SharedState = axum::extract::State<Arc<Shared>>;

/// A bound, not yet running, API server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Shared {
    /// Honours a newer CRL if the file changed (refusing an older one, see [`crl`]).
    fn follow_crl(&self, station: &mut Station) {
        let mut in_force = self.crl.lock().unwrap_or_else(|p| p.into_inner());
        let newer = match crl::after_change(station, &in_force) {
            Ok(Some(newer)) => newer,
            Ok(None) => return,
            Err(e) => {
                tracing::error!("keeping CRL number {} in force: {e}", in_force.info.number);
                return;
            }
        };
        match tls::tls_config(station, &newer.der, &self.server_chain, &self.server_key) {
            Ok(config) => {
                *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                *in_force = newer;
            }
            Err(e) => tracing::error!("keeping the previous TLS configuration: {e}"),
        }
    }

    /// Runs a station operation off the async threads; then honours the CRL if it changed.
    async fn with_station<T: Send + 'static>(
        self: &Arc<Self>,
        op: impl FnOnce(&mut Station) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, ApiError> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut station = shared.station.lock().unwrap_or_else(|p| p.into_inner());
            let out = op(&mut station);
            shared.follow_crl(&mut station);
            out
        })
        .await
        .map_err(|e| ApiError::internal(format!("station task failed: {e}")))?
        .map_err(ApiError::from)
    }
}

impl Server {
    /// [`Server::bind_with`] the default [`RenewalPolicy`].
    pub async fn bind(station: Station, options: Options) -> Result<Server, Error> {
        Server::bind_with(station, options, RenewalPolicy::default()).await
    }

    /// Issues the station's server certificate, binds the listener and settles expired
    /// grace periods; renewals follow `renewal`.
    pub async fn bind_with(
        mut station: Station,
        options: Options,
        renewal: RenewalPolicy,
    ) -> Result<Server, Error> {
        renewal.check()?;
        let hosts: Vec<&str> = options.hosts.iter().map(String::as_str).collect();
        let (chain_pem, key_pem) = station.issue_server_identity(&hosts)?;
        station.expire_superseded(options.grace)?;
        let server_chain: Vec<CertificateDer<'static>> = pem::parse_many(&chain_pem)
            .map_err(TlsError::ServerChain)?
            .into_iter()
            .map(|p| CertificateDer::from(p.into_contents()))
            .collect();
        let server_key = PrivateKeyDer::Pkcs8(
            pem::parse(&key_pem)
                .map_err(TlsError::ServerKey)?
                .into_contents()
                .into(),
        );
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|source| Error::Io {
                path: options.listen.to_string().into(),
                source,
            })?;
        let crl = crl::at_start(&mut station)?;
        let config = tls::tls_config(&station, &crl.der, &server_chain, &server_key)?;
        let shared = Arc::new(Shared {
            station: Mutex::new(station),
            crl: Mutex::new(crl),
            tls: RwLock::new(Arc::new(config)),
            server_chain,
            server_key,
            options,
            renewal,
        });
        Ok(Server { listener, shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.shared.options.listen)
    }

    /// Serves until `shutdown` completes, then lets requests in flight finish (up to 5 s).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), Error> {
        let app = routes::router(self.shared.clone());
        let mut connections = JoinSet::new();
        let mut expiry = tokio::time::interval(EXPIRY_INTERVAL);
        expiry.tick().await;
        // Revocations of this station's certificates by other stations (shared registry).
        let (wake, mut revoked_elsewhere) = tokio::sync::mpsc::unbounded_channel();
        let watch = self
            .shared
            .station
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .revocation_watch();
        let _idle = match watch {
            Some(watch) => {
                revocations::listen(watch, wake);
                None
            }
            None => Some(wake),
        };
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = expiry.tick() => {
                    let grace = self.shared.options.grace;
                    if let Err(e) = self.shared.with_station(move |s| s.expire_superseded(grace)).await {
                        tracing::error!("expiring superseded certificates: {}", e.message);
                    }
                }
                Some(()) = revoked_elsewhere.recv() => {
                    while revoked_elsewhere.try_recv().is_ok() {}
                    if let Err(e) = self.shared.with_station(|s| s.write_crl().map(drop)).await {
                        tracing::error!("a CRL after another station's revocation: {}", e.message);
                    }
                }
                accepted = self.listener.accept() => {
                    let (tcp, peer_addr) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!("accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let config = self.shared.tls.read().unwrap_or_else(|p| p.into_inner()).clone();
                    let app = app.clone();
                    connections.spawn(async move {
                        if let Err(e) = tls::serve_connection(tcp, config, app).await {
                            tracing::debug!("{peer_addr}: {e}");
                        }
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            connections.shutdown().await;
        }
        Ok(())
    }
}
