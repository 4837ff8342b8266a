//! The gateway's mutual-TLS HTTP client of the station API (`fleet-provision serve`): one
//! request per connection, a bounded answer. The renewal relay (with the gateway's own
//! identity, OU=gateway) and the fleet console (with a fleet operator's, OU=operator) each
//! hold one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::BodyExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Where the station is and who the gateway is towards it (PEM files): `[renewal]` and
/// `[console]` in the config each name one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StationAccess {
    /// The station API, `host:port`.
    pub station: String,
    /// Name in the station's server certificate (default: the host of `station`).
    pub server_name: String,
    /// The client identity, PEM.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// CA the station's server certificate chains to.
    pub station_ca: PathBuf,
}

/// Why the station client cannot be made; `field` names the setting.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{field}: {detail}")]
    Field { field: &'static str, detail: String },
}

/// Why one exchange with the station failed before it answered.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("station {station}: {source}")]
    Connect {
        station: String,
        source: std::io::Error,
    },
    #[error("station {station}: TLS: {source}")]
    Tls {
        station: String,
        source: std::io::Error,
    },
    #[error("station HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("station request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("station answer: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
}

/// A client of the station API.
pub struct StationLink {
    tls: tokio_rustls::TlsConnector,
    station: String,
    server_name: ServerName<'static>,
    max_answer: usize,
}

fn read(path: &Path) -> Result<Vec<u8>, LoadError> {
    std::fs::read(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

impl StationLink {
    /// The client for `access`, reading answers of at most `max_answer` bytes.
    pub fn load(access: &StationAccess, max_answer: usize) -> Result<StationLink, LoadError> {
        let bad = |field: &'static str, e: &dyn std::fmt::Display| LoadError::Field {
            field,
            detail: e.to_string(),
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&read(&access.station_ca)?) {
            roots
                .add(c.map_err(|e| bad("station_ca", &e))?)
                .map_err(|e| bad("station_ca", &e))?;
        }
        let chain = CertificateDer::pem_slice_iter(&read(&access.client_cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("client_cert", &e))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&access.client_key)?)
            .map_err(|e| bad("client_key", &e))?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("client_cert", &e))?;
        let server_name =
            ServerName::try_from(access.server_name.clone()).map_err(|e| bad("server_name", &e))?;
        Ok(StationLink {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            station: access.station.clone(),
            server_name,
            max_answer,
        })
    }

    /// `host:port` of the station.
    pub fn address(&self) -> &str {
        &self.station
    }

    /// One request with a JSON body over a new connection: the status and the answer's bytes.
    pub async fn exchange(
        &self,
        method: hyper::Method,
        path: &str,
        json: Vec<u8>,
    ) -> Result<(u16, bytes::Bytes), ExchangeError> {
        let station = &self.station;
        let tcp = tokio::net::TcpStream::connect(station)
            .await
            .map_err(|source| ExchangeError::Connect {
                station: station.clone(),
                source,
            })?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| ExchangeError::Tls {
                station: station.clone(),
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, station.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(json)))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let answer = http_body_util::Limited::new(response.into_body(), self.max_answer)
            .collect()
            .await
            .map_err(ExchangeError::Body)?
            .to_bytes();
        driver.abort();
        Ok((status, answer))
    }
}
