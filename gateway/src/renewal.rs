//! Certificate rotation without a device clock: the gateway knows the time and the device's
//! certificate, so it tells the device when to renew and relays its request to the station.
//!
//! Topic protocol, all under the device's own `tenants/{tenant}/devices/{device}/cert/`:
//!
//! | topic | direction | payload |
//! |---|---|---|
//! | `status/get` | device → gateway | empty: "how is my certificate?" |
//! | `status` | gateway → device | `{"now":…,"not_after":…,"renew":true\|false}` (Unix seconds) |
//! | `csr` | device → gateway | PKCS#10 request (DER) for a new P-256 key |
//! | `new` | gateway → device | the new certificate (DER) |
//! | `error` | gateway → device | one line of text: why there is no new certificate |
//!
//! `status/get` and `csr` are answered by the gateway and never reach the broker; `status`,
//! `new` and `error` are written to the device's connection only. The station sees the
//! request from the gateway's own client certificate (subject OU=gateway) together with the
//! serial of the certificate the device authenticated with, and applies the same rules as
//! for a device renewing itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::identity::Identity;
use crate::Error;

/// `[renewal]` in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The station API, `host:port`.
    pub station: String,
    /// Name in the station's server certificate.
    pub server_name: String,
    /// The gateway's client identity (subject OU=gateway), PEM.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// CA the station's server certificate chains to.
    pub station_ca: PathBuf,
    /// Devices whose certificate ends within this are told to renew.
    pub threshold: Duration,
}

/// Largest answer read from the station.
const MAX_RESPONSE: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(15);

/// Talks to the station for the gateway.
pub struct RenewalClient {
    tls: tokio_rustls::TlsConnector,
    station: String,
    server_name: ServerName<'static>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })
}

impl RenewalClient {
    pub fn load(r: &Renewal) -> Result<RenewalClient, Error> {
        let bad = |what: &'static str, e: &dyn std::fmt::Display| Error::Renewal {
            what,
            detail: e.to_string(),
        };
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
        .map_err(|e| bad("protocol versions", &e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad("client identity", &e))?;
        let server_name =
            ServerName::try_from(r.server_name.clone()).map_err(|e| bad("server_name", &e))?;
        Ok(RenewalClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            station: r.station.clone(),
            server_name,
        })
    }

    /// Asks the station for a new certificate; returns its DER, or why not.
    pub async fn renew(&self, who: &Identity, csr_der: &[u8]) -> Result<Vec<u8>, String> {
        tokio::time::timeout(TIMEOUT, self.renew_inner(who, csr_der))
            .await
            .unwrap_or_else(|_| Err("the station did not answer in time".into()))
    }

    async fn renew_inner(&self, who: &Identity, csr_der: &[u8]) -> Result<Vec<u8>, String> {
        use http_body_util::BodyExt;
        let body = serde_json::json!({
            "csr_pem": pem_encode("CERTIFICATE REQUEST", csr_der),
            "presented_serial": hex(&who.serial),
        })
        .to_string();
        let tcp = tokio::net::TcpStream::connect(&self.station)
            .await
            .map_err(|e| format!("station {}: {e}", self.station))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("station TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("station HTTP: {e}"))?;
        let driver = tokio::spawn(conn);
        let request = hyper::Request::post(format!("/v1/devices/{}/renew", who.id))
            .header(hyper::header::HOST, self.station.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| format!("station request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("station HTTP: {e}"))?;
        let status = response.status();
        let bytes = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("station answer: {e}"))?
            .to_bytes();
        driver.abort();
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("station answered {status} with non-JSON: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "station refused ({}): {}",
                status.as_u16(),
                json["error"].as_str().unwrap_or("no reason given")
            ));
        }
        let pem = json["certificate_pem"]
            .as_str()
            .ok_or("station: no certificate_pem in the answer")?;
        CertificateDer::from_pem_slice(pem.as_bytes())
            .map(|c| c.to_vec())
            .map_err(|e| format!("station: certificate PEM: {e}"))
    }
}

/// The `cert/status` JSON.
pub fn status_payload(who: &Identity, now: i64, threshold_secs: i64) -> Vec<u8> {
    let renew = who.not_after - now <= threshold_secs;
    format!(
        "{{\"now\":{now},\"not_after\":{},\"renew\":{renew}}}",
        who.not_after
    )
    .into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(not_after: i64) -> Identity {
        Identity {
            id: "acme-000001".into(),
            tenant: "acme".into(),
            kind: crate::identity::Kind::Device,
            serial: vec![0x01, 0xab],
            issuer: Vec::new(),
            fingerprint: [0; 32],
            not_after,
        }
    }

    #[test]
    fn status_says_renew_within_the_threshold_only() {
        let day = 86_400;
        assert_eq!(
            status_payload(&identity(1000 + 40 * day), 1000, 30 * day),
            br#"{"now":1000,"not_after":3457000,"renew":false}"#
        );
        assert!(
            String::from_utf8(status_payload(&identity(1000 + 29 * day), 1000, 30 * day))
                .unwrap()
                .ends_with("\"renew\":true}")
        );
        // Already expired (the gateway would not have let it in, but the answer is still sane).
        assert!(String::from_utf8(status_payload(&identity(500), 1000, 0))
            .unwrap()
            .ends_with("\"renew\":true}"));
    }
}
