//! `fleet-provision serve`: the station's HTTPS API over mutual TLS.
//!
//! Every client presents a certificate from the station's issuing CA (checked against the
//! station's own CRL, which is reloaded whenever the station writes a new one):
//!
//! - operators use service certificates (subject OU=service) and act on their own tenant's
//!   devices: issue (CSR or key injection), look up, revoke;
//! - devices may only renew themselves: `POST /v1/renew` with a CSR for a new key, proving
//!   their current identity with the certificate they connect with.
//!
//! `GET /v1/crl` serves the current CRL to any authenticated client; `GET /openapi.json` and
//! `GET /healthz` need no certificate.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path as UrlPath, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::{BatchRequest, CertRecord, Certified, CsrInput, CsrRequest, Error, Reason, Station};

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
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body (a CSR is well under 1 KiB).
const BODY_LIMIT: usize = 64 * 1024;

struct Shared {
    station: Mutex<Station>,
    tls: RwLock<Arc<rustls::ServerConfig>>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    options: Options,
}

/// A bound, not yet running, API server.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// Who is calling, from the verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Anonymous,
    Operator {
        name: String,
        tenant: String,
    },
    Device {
        id: String,
        serial_hex: String,
    },
    /// A gateway (subject OU=gateway): relays renewals of devices it authenticated.
    Gateway {
        name: String,
    },
}

fn tls_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::State(format!("station TLS: {what}: {e}"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS configuration that trusts the issuing CA and honours the station's current CRL.
fn tls_config(
    station: &Station,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(station.issuing_ca().cert_der.clone()))
        .map_err(|e| tls_error("issuing CA", e))?;
    let crl_path = station.crl_path();
    let crl_pem = std::fs::read(&crl_path).map_err(crate::error::io(&crl_path))?;
    let crl = pem::parse(&crl_pem)
        .map_err(|e| tls_error("CRL", e))?
        .into_contents();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
            .with_crls([CertificateRevocationListDer::from(crl)])
            .allow_unauthenticated()
            .build()
            .map_err(|e| tls_error("client verifier", e))?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("protocol versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.to_vec(), key.clone_key())
        .map_err(|e| tls_error("server certificate", e))
}

impl Shared {
    fn tls_config(&self, station: &Station) -> Result<rustls::ServerConfig, Error> {
        tls_config(station, &self.server_chain, &self.server_key)
    }

    /// Runs a station operation off the async threads; reloads TLS if the CRL changed.
    async fn with_station<T: Send + 'static>(
        self: &Arc<Self>,
        op: impl FnOnce(&mut Station) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, ApiError> {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut station = shared.station.lock().unwrap_or_else(|p| p.into_inner());
            let crl_before = std::fs::metadata(station.crl_path()).and_then(|m| m.modified());
            let out = op(&mut station);
            let crl_after = std::fs::metadata(station.crl_path()).and_then(|m| m.modified());
            if crl_before.ok() != crl_after.ok() {
                match shared.tls_config(&station) {
                    Ok(config) => {
                        *shared.tls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config)
                    }
                    Err(e) => tracing::error!("keeping the previous TLS configuration: {e}"),
                }
            }
            out
        })
        .await
        .map_err(|e| ApiError::internal(format!("station task failed: {e}")))?
        .map_err(ApiError::from)
    }
}

impl Server {
    /// Issues the station's server certificate, binds the listener and settles expired
    /// grace periods.
    pub async fn bind(mut station: Station, options: Options) -> Result<Server, Error> {
        let hosts: Vec<&str> = options.hosts.iter().map(String::as_str).collect();
        let (chain_pem, key_pem) = station.issue_server_identity(&hosts)?;
        station.expire_superseded(options.grace)?;
        let server_chain: Vec<CertificateDer<'static>> = pem::parse_many(&chain_pem)
            .map_err(|e| tls_error("server chain", e))?
            .into_iter()
            .map(|p| CertificateDer::from(p.into_contents()))
            .collect();
        let server_key = PrivateKeyDer::Pkcs8(
            pem::parse(&key_pem)
                .map_err(|e| tls_error("server key", e))?
                .into_contents()
                .into(),
        );
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|source| Error::Io {
                path: options.listen.to_string().into(),
                source,
            })?;
        let config = tls_config(&station, &server_chain, &server_key)?;
        let shared = Arc::new(Shared {
            station: Mutex::new(station),
            tls: RwLock::new(Arc::new(config)),
            server_chain,
            server_key,
            options,
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
        let app = router(self.shared.clone());
        let mut connections = JoinSet::new();
        let mut expiry = tokio::time::interval(EXPIRY_INTERVAL);
        expiry.tick().await;
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
                        if let Err(e) = serve_connection(tcp, config, app).await {
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

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    app: Router,
) -> Result<(), String> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let peer = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map_or(Peer::Anonymous, |c| peer_from_cert(c));
    let service = hyper_util::service::TowerToHyperService::new(app.layer(Extension(peer)));
    hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await
        .map_err(|e| format!("HTTP: {e}"))
}

/// The caller's role from its (already verified) certificate.
pub fn peer_from_cert(der: &[u8]) -> Peer {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Peer::Anonymous;
    };
    let subject = cert.subject();
    let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_owned)
    };
    let cn = first(&mut subject.iter_common_name());
    let org = first(&mut subject.iter_organization());
    let has_ou = |want: &str| {
        subject
            .iter_organizational_unit()
            .any(|ou| ou.as_str() == Ok(want))
    };
    match (cn, org) {
        (Some(name), Some(_)) if has_ou("gateway") => Peer::Gateway { name },
        (Some(name), Some(tenant)) if has_ou("service") => Peer::Operator { name, tenant },
        (Some(id), Some(_)) => Peer::Device {
            id,
            serial_hex: crate::hex(cert.raw_serial()),
        },
        _ => Peer::Anonymous,
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/openapi.json", get(openapi))
        .route("/v1/devices", post(create_device))
        .route("/v1/devices/{id}", get(get_device))
        .route("/v1/devices/{id}/revoke", post(revoke_device))
        .route("/v1/renew", post(renew))
        .route("/v1/devices/{id}/renew", post(relayed_renew))
        .route("/v1/crl", get(crl))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

/// An API error: a status and a one-line message, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn internal(message: String) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = match &e {
            Error::InvalidInput { .. } | Error::Csr(_) | Error::Bundle(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::UnknownDevice(_) => StatusCode::NOT_FOUND,
            Error::DuplicateDevice(_) | Error::State(_) => StatusCode::CONFLICT,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::CaExpired { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

type Shared_ = AxState<Arc<Shared>>;

fn operator(peer: &Peer) -> Result<(&str, &str), ApiError> {
    match peer {
        Peer::Operator { name, tenant } => Ok((name, tenant)),
        Peer::Device { .. } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "devices may only renew themselves (POST /v1/renew)",
        )),
        Peer::Gateway { .. } => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "gateways may only relay device renewals (POST /v1/devices/{id}/renew)",
        )),
        Peer::Anonymous => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a client certificate from the station's CA is required",
        )),
    }
}

/// `POST /v1/devices`: a new device in the operator's tenant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDevice {
    /// CSR flow: the device's PKCS#10 request, PEM.
    csr_pem: Option<String>,
    /// Device id for the CSR flow (default: the tenant's next id).
    device_id: Option<String>,
    /// Key injection: the station generates the key and returns the identity bundle.
    generate: Option<Generate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Generate {
    gateway_host: String,
    #[serde(default = "default_port")]
    gateway_port: u16,
}

fn default_port() -> u16 {
    8883
}

#[derive(Debug, Serialize)]
struct Issued {
    device_id: String,
    tenant: String,
    serial: String,
    fingerprint: String,
    not_after: i64,
    certificate_pem: String,
    issuing_ca_pem: String,
    /// Key injection only: the identity bundle to flash (it holds the private key).
    #[serde(skip_serializing_if = "Option::is_none")]
    bundle_base64: Option<String>,
}

fn issued(c: &Certified, issuing_ca_pem: String, bundle: Option<Vec<u8>>) -> Issued {
    use base64::Engine;
    Issued {
        device_id: c.device_id.clone(),
        tenant: c.tenant.clone(),
        serial: c.serial_hex.clone(),
        fingerprint: c.fingerprint_hex.clone(),
        not_after: c.not_after,
        certificate_pem: c.cert_pem(),
        issuing_ca_pem,
        bundle_base64: bundle.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

async fn create_device(
    AxState(shared): Shared_,
    Extension(peer): Extension<Peer>,
    body: Result<Json<CreateDevice>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Issued>), ApiError> {
    let (_, tenant) = operator(&peer)?;
    let tenant = tenant.to_owned();
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let validity_days = shared.options.validity_days;
    let out = match (req.csr_pem, req.generate) {
        (Some(csr), None) => {
            let der = crate::pki::csr_der(csr.as_bytes())?;
            let input = CsrInput {
                der,
                device_id: req.device_id,
            };
            shared
                .with_station(move |s| {
                    let ca = s.issuing_ca().cert_pem.clone();
                    let req = CsrRequest {
                        tenant,
                        validity_days,
                    };
                    let mut c = s.certify_csrs(&req, &[input], |_| {})?;
                    let c = c
                        .pop()
                        .ok_or_else(|| Error::State("nothing was certified".into()))?;
                    Ok(issued(&c, ca, None))
                })
                .await?
        }
        (None, Some(generate)) => {
            if req.device_id.is_some() {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "device_id is for the CSR flow; generated devices get the tenant's next id",
                ));
            }
            shared
                .with_station(move |s| {
                    let ca = s.issuing_ca().cert_pem.clone();
                    let req = BatchRequest {
                        tenant,
                        count: 1,
                        gateway_host: generate.gateway_host,
                        gateway_port: generate.gateway_port,
                        validity_days,
                    };
                    let d = s
                        .issue_devices(&req)?
                        .pop()
                        .ok_or_else(|| Error::State("nothing was issued".into()))?;
                    let bundle =
                        std::fs::read(&d.bundle_path).map_err(crate::error::io(&d.bundle_path))?;
                    let record = s
                        .device(&d.device_id)?
                        .pop()
                        .ok_or_else(|| Error::UnknownDevice(d.device_id.clone()))?;
                    let der = s.cert_der(&d.serial_hex)?.unwrap_or_default();
                    let c = Certified {
                        device_id: d.device_id,
                        tenant: record.tenant,
                        serial_hex: d.serial_hex,
                        fingerprint_hex: record.fingerprint_hex.unwrap_or_default(),
                        not_after: record.not_after.unwrap_or_default(),
                        cert_der: der,
                    };
                    Ok(issued(&c, ca, Some(bundle)))
                })
                .await?
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give exactly one of csr_pem (CSR flow) or generate (key injection)",
            ))
        }
    };
    Ok((StatusCode::CREATED, Json(out)))
}

#[derive(Debug, Serialize)]
struct CertView {
    serial: String,
    status: &'static str,
    fingerprint: Option<String>,
    created_at: i64,
    not_after: Option<i64>,
    superseded_at: Option<i64>,
    revoked_at: Option<i64>,
    revocation_reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct DeviceView {
    device_id: String,
    tenant: String,
    /// The device's current state: its newest certificate's status.
    status: &'static str,
    certificates: Vec<CertView>,
}

fn device_view(certs: Vec<CertRecord>) -> Option<DeviceView> {
    let last = certs.last()?.clone();
    Some(DeviceView {
        device_id: last.device_id,
        tenant: last.tenant,
        status: last.status.name(),
        certificates: certs
            .into_iter()
            .map(|c| CertView {
                serial: c.serial_hex,
                status: c.status.name(),
                fingerprint: c.fingerprint_hex,
                created_at: c.created_at,
                not_after: c.not_after,
                superseded_at: c.superseded_at,
                revoked_at: c.revoked_at,
                revocation_reason: c.revocation_reason,
            })
            .collect(),
    })
}

/// A device of the operator's tenant (another tenant's device is "not found").
async fn tenant_device(
    shared: &Arc<Shared>,
    tenant: &str,
    id: String,
) -> Result<Vec<CertRecord>, ApiError> {
    let certs = shared.with_station(move |s| s.device(&id)).await?;
    if certs.first().is_some_and(|c| c.tenant == tenant) {
        Ok(certs)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no such device in your tenant",
        ))
    }
}

async fn get_device(
    AxState(shared): Shared_,
    Extension(peer): Extension<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<DeviceView>, ApiError> {
    let (_, tenant) = operator(&peer)?;
    let certs = tenant_device(&shared, tenant, id).await?;
    device_view(certs)
        .map(Json)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "no such device in your tenant"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct RevokeResponse {
    device_id: String,
    revoked_serials: Vec<String>,
    reason: &'static str,
}

async fn revoke_device(
    AxState(shared): Shared_,
    Extension(peer): Extension<Peer>,
    UrlPath(id): UrlPath<String>,
    body: Option<Json<RevokeRequest>>,
) -> Result<Json<RevokeResponse>, ApiError> {
    let (operator_name, tenant) = operator(&peer)?;
    let reason = body
        .and_then(|Json(b)| b.reason)
        .map_or(Ok(Reason::Unspecified), |r| Reason::parse(&r))?;
    tenant_device(&shared, tenant, id.clone()).await?;
    tracing::info!("{operator_name} revokes {id} ({})", reason.name());
    let revoked = shared.with_station(move |s| s.revoke(&id, reason)).await?;
    Ok(Json(RevokeResponse {
        device_id: revoked
            .records
            .first()
            .map(|r| r.device_id.clone())
            .unwrap_or_default(),
        revoked_serials: revoked.records.into_iter().map(|r| r.serial_hex).collect(),
        reason: reason.name(),
    }))
}

async fn renew(
    AxState(shared): Shared_,
    Extension(peer): Extension<Peer>,
    body: axum::body::Bytes,
) -> Result<Json<Issued>, ApiError> {
    let Peer::Device { id, serial_hex } = peer else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "renewal is for devices, authenticated with their current certificate",
        ));
    };
    let der = crate::pki::csr_der(&body)?;
    let validity_days = shared.options.validity_days;
    let grace = shared.options.grace;
    let out = shared
        .with_station(move |s| {
            let c = s.renew(&id, &serial_hex, &der, validity_days)?;
            // A renewal is also a good moment to retire certificates whose grace ended.
            s.expire_superseded(grace)?;
            Ok(issued(&c, s.issuing_ca().cert_pem.clone(), None))
        })
        .await?;
    tracing::info!("{} renewed: serial {}", out.device_id, out.serial);
    Ok(Json(out))
}

/// `POST /v1/devices/{id}/renew` by a gateway, for a device connected to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayedRenewal {
    csr_pem: String,
    /// Serial (hex) of the certificate the device authenticated with at the gateway.
    presented_serial: String,
}

async fn relayed_renew(
    AxState(shared): Shared_,
    Extension(peer): Extension<Peer>,
    UrlPath(id): UrlPath<String>,
    body: Result<Json<RelayedRenewal>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Issued>, ApiError> {
    let Peer::Gateway { name } = peer else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only a gateway (OU=gateway) relays renewals; devices use POST /v1/renew",
        ));
    };
    let Json(req) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let der = crate::pki::csr_der(req.csr_pem.as_bytes())?;
    let validity_days = shared.options.validity_days;
    let grace = shared.options.grace;
    let out = shared
        .with_station(move |s| {
            let c = s.renew(&id, &req.presented_serial, &der, validity_days)?;
            s.expire_superseded(grace)?;
            Ok(issued(&c, s.issuing_ca().cert_pem.clone(), None))
        })
        .await?;
    tracing::info!(
        "{} renewed through gateway {name}: serial {}",
        out.device_id,
        out.serial
    );
    Ok(Json(out))
}

async fn crl(
    AxState(shared): Shared_,
    Extension(peer): Extension<Peer>,
) -> Result<Response, ApiError> {
    if peer == Peer::Anonymous {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a client certificate from the station's CA is required",
        ));
    }
    let pem = shared
        .with_station(|s| {
            let path = s.crl_path();
            std::fs::read(&path).map_err(crate::error::io(&path))
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}

/// The API description served at `/openapi.json`.
pub fn openapi_document() -> serde_json::Value {
    let error = serde_json::json!({"$ref": "#/components/schemas/Error"});
    let errors = |codes: &[&str]| -> serde_json::Value {
        codes
            .iter()
            .map(|c| {
                (
                    (*c).to_owned(),
                    serde_json::json!({"description": "error", "content": {"application/json": {"schema": error}}}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let with = |mut ok: serde_json::Value, codes: &[&str]| {
        if let (Some(o), serde_json::Value::Object(e)) = (ok.as_object_mut(), errors(codes)) {
            o.extend(e);
        }
        ok
    };
    let issued = serde_json::json!({"$ref": "#/components/schemas/Issued"});
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {
            "title": "fleet-provision station API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Mutual TLS only. Operators: service certificates (OU=service) of the station's CA, acting on their own tenant. Devices: their own certificate, for POST /v1/renew only."
        },
        "paths": {
            "/v1/devices": {"post": {
                "summary": "Issue a device: CSR flow (csr_pem, optional device_id) or key injection (generate)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateDevice"}}}},
                "responses": with(serde_json::json!({"201": {"description": "issued", "content": {"application/json": {"schema": issued}}}}), &["400", "401", "403", "409", "503"])
            }},
            "/v1/devices/{id}": {"get": {
                "summary": "A device and all its certificates",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": with(serde_json::json!({"200": {"description": "the device", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Device"}}}}}), &["401", "403", "404"])
            }},
            "/v1/devices/{id}/revoke": {"post": {
                "summary": "Revoke a device (active and superseded certificates); writes a new CRL",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {"reason": {"type": "string", "enum": Reason::ALL.map(|(_, n)| n)}}}}}},
                "responses": with(serde_json::json!({"200": {"description": "revoked", "content": {"application/json": {"schema": {"type": "object", "properties": {"device_id": {"type": "string"}, "revoked_serials": {"type": "array", "items": {"type": "string"}}, "reason": {"type": "string"}}}}}}}), &["400", "401", "403", "404", "409"])
            }},
            "/v1/renew": {"post": {
                "summary": "A device renews itself: PKCS#10 request (PEM or DER) for a new P-256 key; the old certificate is superseded and revoked after the grace period",
                "requestBody": {"required": true, "content": {"application/pkcs10": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": with(serde_json::json!({"200": {"description": "renewed", "content": {"application/json": {"schema": issued}}}}), &["400", "403", "409", "503"])
            }},
            "/v1/devices/{id}/renew": {"post": {
                "summary": "A gateway (OU=gateway) relays the renewal of a device it authenticated: the CSR and the serial of the certificate the device connected with",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"csr_pem": {"type": "string"}, "presented_serial": {"type": "string"}}, "required": ["csr_pem", "presented_serial"]}}}},
                "responses": with(serde_json::json!({"200": {"description": "renewed", "content": {"application/json": {"schema": issued}}}}), &["400", "403", "409", "503"])
            }},
            "/v1/crl": {"get": {
                "summary": "The current CRL (PEM)",
                "responses": with(serde_json::json!({"200": {"description": "CRL", "content": {"application/x-pem-file": {"schema": {"type": "string"}}}}}), &["401"])
            }},
            "/healthz": {"get": {"summary": "Liveness (no certificate needed)", "responses": {"200": {"description": "ok"}}}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
            "CreateDevice": {"type": "object", "properties": {
                "csr_pem": {"type": "string"},
                "device_id": {"type": "string"},
                "generate": {"type": "object", "properties": {"gateway_host": {"type": "string"}, "gateway_port": {"type": "integer"}}, "required": ["gateway_host"]}
            }},
            "Issued": {"type": "object", "properties": {
                "device_id": {"type": "string"}, "tenant": {"type": "string"}, "serial": {"type": "string"},
                "fingerprint": {"type": "string"}, "not_after": {"type": "integer", "description": "Unix seconds"},
                "certificate_pem": {"type": "string"}, "issuing_ca_pem": {"type": "string"},
                "bundle_base64": {"type": "string", "description": "key injection only"}
            }},
            "Device": {"type": "object", "properties": {
                "device_id": {"type": "string"}, "tenant": {"type": "string"}, "status": {"type": "string"},
                "certificates": {"type": "array", "items": {"type": "object", "properties": {
                    "serial": {"type": "string"}, "status": {"type": "string", "enum": ["reserved", "active", "superseded", "revoked", "aborted"]},
                    "fingerprint": {"type": "string"}, "created_at": {"type": "integer"}, "not_after": {"type": "integer"},
                    "superseded_at": {"type": "integer"}, "revoked_at": {"type": "integer"}, "revocation_reason": {"type": "string"}
                }}}
            }}
        }}
    })
}
