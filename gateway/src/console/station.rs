//! The station behind the console: a device's certificate history (`GET /v1/devices/{id}`)
//! and revocation (`POST /v1/devices/{id}/revoke`), over mutual TLS with a fleet operator's
//! identity (`[console]` in the config: station address, station CA, and a client
//! certificate from `fleet-provision operator-cert`, subject OU=operator).
//!
//! Not with the renewal relay's identity (OU=gateway): the station lets a gateway relay
//! renewals only, since its key lives on an internet-facing host. The operator identity may
//! look up and revoke devices of every tenant at the station and nothing else; the station
//! audits each revocation with its name. The station decides who may do what: it answers
//! with its own status and message, which the console shows as they are.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// `[console]` in the config: where the station is and the operator identity to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleStation {
    /// The station API, `host:port`.
    pub station: String,
    /// Name in the station's server certificate (default: the host of `station`).
    pub server_name: String,
    /// A fleet operator's client identity (subject OU=operator), PEM.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// CA the station's server certificate chains to.
    pub station_ca: PathBuf,
}

/// Largest answer read from the station.
const MAX_RESPONSE: usize = 256 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the station answered: its HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

/// Talks to the station for the console.
pub struct Station {
    tls: tokio_rustls::TlsConnector,
    /// `host:port`.
    pub address: String,
    server_name: ServerName<'static>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl Station {
    /// The station client from `[console]`; `Err` says what is unusable.
    pub fn load(r: &ConsoleStation) -> Result<Station, String> {
        let bad = |what: &str, e: &dyn std::fmt::Display| format!("console.{what}: {e}");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&read(&r.station_ca)?) {
            roots
                .add(c.map_err(|e| bad("station_ca", &e))?)
                .map_err(|e| bad("station_ca", &e))?;
        }
        let chain = CertificateDer::pem_slice_iter(&read(&r.client_cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("client_cert", &e))?;
        let key = PrivateKeyDer::from_pem_slice(&read(&r.client_key)?)
            .map_err(|e| bad("client_key", &e))?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("station", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("client_cert", &e))?;
        let server_name =
            ServerName::try_from(r.server_name.clone()).map_err(|e| bad("server_name", &e))?;
        Ok(Station {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            address: r.station.clone(),
            server_name,
        })
    }

    /// `GET /v1/devices/{device}`: the device and all its certificates.
    pub async fn device(&self, device: &str) -> Result<Answer, String> {
        self.call("GET", &format!("/v1/devices/{device}"), None)
            .await
    }

    /// `POST /v1/devices/{device}/revoke` with the reason (e.g. `keyCompromise`).
    pub async fn revoke(&self, device: &str, reason: &str) -> Result<Answer, String> {
        let body = serde_json::json!({ "reason": reason }).to_string();
        self.call("POST", &format!("/v1/devices/{device}/revoke"), Some(body))
            .await
    }

    async fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<Answer, String> {
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, body))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "the station {} did not answer in time",
                    self.address
                ))
            })
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Answer, String> {
        let station = &self.address;
        let tcp = tokio::net::TcpStream::connect(station)
            .await
            .map_err(|e| format!("station {station}: {e}"))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("station {station}: TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("station {station}: HTTP: {e}"))?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, station.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.unwrap_or_default(),
            )))
            .map_err(|e| format!("station request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("station {station}: HTTP: {e}"))?;
        let status = response.status().as_u16();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("station {station}: answer: {e}"))?
            .to_bytes();
        driver.abort();
        let body = serde_json::from_slice(&bytes)
            .map_err(|e| format!("station {station} answered {status} with non-JSON: {e}"))?;
        Ok(Answer { status, body })
    }
}
