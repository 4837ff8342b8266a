//! Publishing the station's CRLs to the gateway cluster's NATS, where every gateway watches
//! them (`fleet-gateway`'s `[cluster] crl_bucket`).
//!
//! Every CRL the station writes (a revocation from the command line or the API, `crl`, the
//! end of a renewal's grace period, and in `serve` a revocation another station made of a
//! certificate this station's issuing CA signed) is also put into a JetStream KV bucket
//! (default `fleet-crl`, created when missing, history 1) under the key
//! [`issuer_key`]: the SHA-256 hex of the issuing CA certificate's DER (the same digest that
//! names the station's issuer in the shared registry), value = the CRL's DER.
//!
//! A KV value, not an object: see the gateway's `cluster::crls` for why, and for what the
//! server's `max_payload` (1 MiB by default: about 19,000 revoked certificates) means. A
//! CRL that does not fit is refused by NATS and reported as a publishing failure.
//!
//! The station is synchronous; each publication connects, puts and closes on a runtime of
//! its own, on a thread of its own when called inside another runtime (the API's). A failure
//! does not undo anything: the revocation is in the registry and the CRL file; the caller
//! reports it (the command line exits non-zero).

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// How long one publication may take (connecting included).
const WITHIN: Duration = Duration::from_secs(5);

/// Where and how the station publishes its CRLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    /// NATS server URL (`nats://` or `tls://host:port`).
    pub server: String,
    /// The KV bucket (default `fleet-crl`).
    pub bucket: String,
    /// The CA of the NATS server's certificate (TLS when set).
    pub ca: Option<PathBuf>,
    /// Client certificate and key for mutual TLS to NATS.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

/// Why a CRL was not published.
#[derive(Debug, thiserror::Error)]
#[error("CRL not published to NATS at {server} (bucket {bucket}): {detail}")]
pub struct PublishError {
    pub server: String,
    pub bucket: String,
    pub detail: String,
}

/// The key of an issuing CA's CRL in the bucket: SHA-256 hex of its certificate's DER.
pub fn issuer_key(issuing_ca_der: &[u8]) -> String {
    hex::encode(Sha256::digest(issuing_ca_der))
}

impl Publisher {
    /// A publisher to `server`, bucket `fleet-crl`, without TLS.
    pub fn new(server: &str) -> Publisher {
        Publisher {
            server: server.to_owned(),
            bucket: "fleet-crl".into(),
            ca: None,
            client_auth: None,
        }
    }

    fn error(&self, detail: impl std::fmt::Display) -> PublishError {
        PublishError {
            server: self.server.clone(),
            bucket: self.bucket.clone(),
            detail: detail.to_string(),
        }
    }

    /// Puts `crl_der` under `key`, within [`WITHIN`].
    pub fn publish(&self, key: &str, crl_der: &[u8]) -> Result<(), PublishError> {
        let run = || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| self.error(format!("runtime: {e}")))?;
            rt.block_on(async {
                tokio::time::timeout(WITHIN, self.put(key, crl_der))
                    .await
                    .map_err(|_| self.error(format!("no answer within {WITHIN:?}")))?
            })
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return run();
        }
        std::thread::scope(|s| match s.spawn(run).join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        })
    }

    async fn put(&self, key: &str, crl_der: &[u8]) -> Result<(), PublishError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("fleet-provision")
            .connection_timeout(WITHIN);
        if let Some(tls) = self.tls_config()? {
            options = options.tls_client_config(tls).require_tls(true);
        }
        let client = options
            .connect(self.server.as_str())
            .await
            .map_err(|e| self.error(format!("connect: {e}")))?;
        let js = jetstream::new(client.clone());
        let store = match js.get_key_value(&self.bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: self.bucket.clone(),
                    history: 1,
                    ..Default::default()
                })
                .await
                .map_err(|e| self.error(format!("create the bucket: {e}")))?,
        };
        store
            .put(key, crl_der.to_vec().into())
            .await
            .map_err(|e| self.error(format!("put {key} ({} bytes): {e}", crl_der.len())))?;
        client
            .flush()
            .await
            .map_err(|e| self.error(format!("flush: {e}")))?;
        Ok(())
    }

    /// The rustls client config for NATS (ring, like the rest of the station), if TLS is
    /// configured.
    fn tls_config(&self) -> Result<Option<rustls::ClientConfig>, PublishError> {
        if self.ca.is_none() && self.client_auth.is_none() {
            return Ok(None);
        }
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| self.error(format!("{}: {e}", path.display())))
        };
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &self.ca {
            for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
                let cert = cert.map_err(|e| self.error(format!("{}: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| self.error(format!("{}: {e}", ca.display())))?;
            }
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| self.error(e))?
            .with_root_certificates(roots);
        let config = match &self.client_auth {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| self.error(format!("{}: {e}", cert.display())))?;
                let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
                    .map_err(|e| self.error(format!("{}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| self.error(format!("client identity: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(Some(config))
    }
}
