//! The API's TLS: a server configuration that trusts the station's issuing CA and honours its
//! current CRL, and one connection served over it.

use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::auth::{peer_from_cert, Peer};
use crate::error::{Error, TlsError};
use crate::Station;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS configuration that trusts the issuing CA and honours `crl_der` (the CRL in force).
pub(super) fn tls_config(
    station: &Station,
    crl_der: &[u8],
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(station.issuing_ca().cert_der.clone()))
        .map_err(TlsError::IssuingCa)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider())
            .with_crls([CertificateRevocationListDer::from(crl_der.to_vec())])
            .allow_unauthenticated()
            .build()
            .map_err(TlsError::ClientVerifier)?;
    rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::ProtocolVersions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.to_vec(), key.clone_key())
        .map_err(|e| TlsError::ServerCertificate(e).into())
}

pub(super) async fn serve_connection(
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
