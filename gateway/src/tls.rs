//! The TLS edge: a rustls server config that requires and verifies a client certificate.
//!
//! TLS 1.3 and 1.2 with ECDHE key exchange and AEAD ciphers only (the ring provider's
//! defaults). Client certificates are verified with rustls' `WebPkiClientVerifier` against the
//! configured CA files.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::config::TlsFiles;
use crate::Error;

/// The crypto provider every TLS object in the gateway uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path) -> impl Fn(String) -> Error + '_ {
    move |message| Error::Pem {
        path: path.to_owned(),
        message,
    }
}

/// Reads every certificate in a PEM file; an empty file is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem_err = pem_error(path);
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(pem_err("no CERTIFICATE block found".into()));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| Error::Pem {
        path: path.to_owned(),
        message: format!("no usable private key: {e}"),
    })
}

/// Certificates revoked by the loaded CRLs, as (issuer name DER, serial without leading
/// zeros): the index that finds live sessions to close when a CRL changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked(HashSet<(Vec<u8>, Vec<u8>)>);

impl Revoked {
    pub fn contains(&self, issuer: &[u8], serial: &[u8]) -> bool {
        self.0
            .contains(&(issuer.to_vec(), strip_zeros(serial).to_vec()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub(crate) fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// Everything TLS needs, loaded and checked together so a reload swaps all of it or none.
pub struct TlsState {
    pub server_config: Arc<ServerConfig>,
    pub revoked: Revoked,
}

/// Reads every CRL in a PEM file and checks each is signed by one of `cas`.
fn load_crls(
    path: &Path,
    cas: &[CertificateDer<'static>],
) -> Result<(Vec<CertificateRevocationListDer<'static>>, Revoked), Error> {
    let pem_err = pem_error(path);
    let bytes = read(path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(format!("bad PEM CRL: {e}")))?;
    if crls.is_empty() {
        return Err(pem_err("no X509 CRL block found".into()));
    }
    let mut revoked = Revoked::default();
    for (i, der) in crls.iter().enumerate() {
        let (_, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| pem_err(format!("CRL {} cannot be parsed: {e}", i + 1)))?;
        let issuer = crl.issuer().as_raw();
        let signed_by_known_ca = cas.iter().any(|ca| {
            X509Certificate::from_der(ca).is_ok_and(|(_, ca)| {
                ca.subject().as_raw() == issuer && crl.verify_signature(ca.public_key()).is_ok()
            })
        });
        if !signed_by_known_ca {
            return Err(pem_err(format!(
                "CRL {} ({}) is not signed by any configured client CA",
                i + 1,
                crl.issuer()
            )));
        }
        for entry in crl.iter_revoked_certificates() {
            revoked
                .0
                .insert((issuer.to_vec(), strip_zeros(entry.raw_serial()).to_vec()));
        }
    }
    Ok((crls, revoked))
}

/// The client-certificate verifier the gateway uses, from CA and CRL files, with the index of
/// revoked certificates.
pub fn client_verifier(
    client_ca: &[std::path::PathBuf],
    crl_files: &[std::path::PathBuf],
) -> Result<(Arc<dyn rustls::server::danger::ClientCertVerifier>, Revoked), Error> {
    let mut roots = RootCertStore::empty();
    let mut cas = Vec::new();
    for path in client_ca {
        for cert in load_certs(path)? {
            roots.add(cert.clone()).map_err(|e| Error::Pem {
                path: path.clone(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
            cas.push(cert);
        }
    }
    let mut crls = Vec::new();
    let mut revoked = Revoked::default();
    for path in crl_files {
        let (mut c, r) = load_crls(path, &cas)?;
        crls.append(&mut c);
        revoked.0.extend(r.0);
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls(crls)
        // CRLs list device certificates; a CA without a CRL file is not a reason to refuse.
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| Error::Tls(format!("client verifier: {e}")))?;
    Ok((Arc::new(KeyPolicy(verifier)), revoked))
}

/// Loads the TLS material: mutual TLS required, trust anchors from every client CA file,
/// revocation from every CRL file. Any bad file fails the whole load.
pub fn load(files: &TlsFiles) -> Result<TlsState, Error> {
    let (verifier, revoked) = client_verifier(&files.client_ca, &files.crl)?;
    let chain = load_certs(&files.server_cert)?;
    let key = load_key(&files.server_key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(format!("server certificate and key: {e}")))?;
    // Small records, so a device needs a 4 KiB TLS read buffer instead of 16 KiB.
    config.max_fragment_size = Some(fleet_protocol::limits::MAX_RECORD);
    Ok(TlsState {
        server_config: Arc::new(config),
        revoked,
    })
}

/// Builds just the server config (see [`load`]).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, Error> {
    Ok(load(files)?.server_config)
}

/// Short machine-readable reason for a failed handshake, for logs and metrics.
pub fn failure_reason(err: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as E};
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<E>()) else {
        return match err.kind() {
            std::io::ErrorKind::UnexpectedEof => "eof_during_handshake",
            _ => "io_error",
        };
    };
    match tls {
        E::NoCertificatesPresented => "no_client_certificate",
        E::InvalidCertificate(rustls::CertificateError::Other(o)) => {
            if o.0.downcast_ref::<WeakKey>().is_some() {
                "weak_key"
            } else if matches!(
                o.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::EndEntityUsedAsCa)
            ) {
                "issuer_not_a_ca"
            } else {
                "bad_certificate"
            }
        }
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "bad_eku"
            }
            CertificateError::BadSignature => "bad_signature",
            _ => "bad_certificate",
        },
        E::PeerIncompatible(p) => match p {
            rustls::PeerIncompatible::NoCipherSuitesInCommon => "no_shared_cipher_suite",
            rustls::PeerIncompatible::Tls12NotOffered
            | rustls::PeerIncompatible::Tls12NotOfferedOrEnabled
            | rustls::PeerIncompatible::SupportedVersionsExtensionRequired => {
                "unsupported_tls_version"
            }
            _ => "incompatible_client",
        },
        E::InvalidMessage(_) => "malformed_handshake",
        // The client aborted: fleet devices say so when our chain fails their check.
        E::AlertReceived(alert) => match alert {
            rustls::AlertDescription::BadCertificate
            | rustls::AlertDescription::UnknownCA
            | rustls::AlertDescription::CertificateUnknown
            | rustls::AlertDescription::UnsupportedCertificate => {
                "client_refused_server_certificate"
            }
            _ => "client_alert",
        },
        _ => "tls_error",
    }
}

/// Why a client certificate's key is refused before its chain is even looked at.
#[derive(Debug)]
pub struct WeakKey(pub String);

impl std::fmt::Display for WeakKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client certificate key is too weak: {}", self.0)
    }
}

impl std::error::Error for WeakKey {}

/// The keys a client certificate may carry: EC of at least 256 bits, RSA of at least 2048
/// bits, or Ed25519. `Err` says what the key is.
pub fn check_client_key(der: &[u8]) -> Result<(), WeakKey> {
    use x509_parser::public_key::PublicKey;
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| WeakKey(format!("the certificate cannot be parsed ({e})")))?;
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::EC(point)) if point.key_size() >= 256 => Ok(()),
        Ok(PublicKey::EC(point)) => Err(WeakKey(format!("EC key of {} bits", point.key_size()))),
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => Ok(()),
        Ok(PublicKey::RSA(rsa)) => Err(WeakKey(format!("RSA key of {} bits", rsa.key_size()))),
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => Ok(()),
        _ => Err(WeakKey(format!(
            "key algorithm {} is not accepted",
            spki.algorithm.algorithm.to_id_string()
        ))),
    }
}

/// rustls' WebPKI client verifier behind a key policy: a certificate with a weak key is
/// refused as such ("weak_key") rather than failing later on its signature.
#[derive(Debug)]
struct KeyPolicy(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for KeyPolicy {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_client_key(end_entity).map_err(|weak| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(weak),
            )))
        })?;
        self.0.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
