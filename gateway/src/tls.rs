//! The TLS edge: a rustls server config that requires and verifies a client certificate.
//!
//! TLS 1.3 and 1.2 with ECDHE key exchange and AEAD ciphers only (the ring provider's
//! defaults). Client certificates are verified with rustls' `WebPkiClientVerifier` against the
//! configured CA files, behind the gateway's own checks of key strength and KeyUsage
//! ([`policy`]).

use std::cell::RefCell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::TlsFiles;
pub use crate::crl::Revoked;
use crate::crl::{CrlVersions, LoadedCrls};
use crate::error::{PemProblem, TlsSetup};
use crate::Error;
use policy::ClientPolicy;
pub use policy::{check_client_key, check_key_usage, KeyUsageRefused, WeakKey};

mod policy;

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

fn pem_error(path: &Path, problem: PemProblem) -> Error {
    Error::Pem {
        path: path.to_owned(),
        problem,
    }
}

/// Reads every certificate in a PEM file; an empty file is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    parse_certs(path, &read(path)?)
}

fn parse_certs(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, PemProblem::Certificate(e)))?;
    if certs.is_empty() {
        return Err(pem_error(path, PemProblem::NoCertificate));
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    parse_key(path, &read(path)?)
}

fn parse_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| pem_error(path, PemProblem::PrivateKey(e)))
}

/// One file's path and the bytes read from it.
type FileBytes = (PathBuf, Vec<u8>);

/// The bytes of every TLS file, each read once: what a load parses, and what its digest
/// covers, so the digest is always that of the state built from it.
pub struct Material {
    server_cert: FileBytes,
    server_key: FileBytes,
    client_ca: Vec<FileBytes>,
    crl_issuers: Vec<FileBytes>,
    crl: Vec<FileBytes>,
    /// The CRLs taken from the cluster's CRL bucket, as one PEM (see [`Material::with_cluster_crls`]).
    cluster_crls: Option<FileBytes>,
}

impl Material {
    /// Reads every file `files` names.
    pub fn read(files: &TlsFiles) -> Result<Material, Error> {
        let file = |p: &PathBuf| read(p).map(|bytes| (p.clone(), bytes));
        Ok(Material {
            server_cert: file(&files.server_cert)?,
            server_key: file(&files.server_key)?,
            client_ca: files.client_ca.iter().map(file).collect::<Result<_, _>>()?,
            crl_issuers: files
                .crl_issuers
                .iter()
                .map(file)
                .collect::<Result<_, _>>()?,
            crl: files.crl.iter().map(file).collect::<Result<_, _>>()?,
            cluster_crls: None,
        })
    }

    /// Adds the CRLs taken from the cluster's CRL bucket (PEM; `label` names them in
    /// messages): checked like the CRL files, the newest CRL of each issuer wins.
    pub fn with_cluster_crls(mut self, cluster: Option<(PathBuf, Vec<u8>)>) -> Material {
        self.cluster_crls = cluster;
        self
    }

    /// SHA-256 over every file's path, length and content, in configuration order.
    pub fn digest(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        let all = [&self.server_cert, &self.server_key]
            .into_iter()
            .chain(&self.client_ca)
            .chain(&self.crl_issuers)
            .chain(&self.crl)
            .chain(&self.cluster_crls);
        for (path, bytes) in all {
            let path = path.as_os_str().as_encoded_bytes();
            hash.update((path.len() as u64).to_be_bytes());
            hash.update(path);
            hash.update((bytes.len() as u64).to_be_bytes());
            hash.update(bytes);
        }
        hash.finalize().into()
    }
}

/// Everything TLS needs, loaded and checked together so a reload swaps all of it or none.
pub struct TlsState {
    pub server_config: Arc<ServerConfig>,
    pub revoked: Revoked,
    /// The newest CRL of each issuer: a later load must not go back from it.
    pub crls: CrlVersions,
    /// [`Material::digest`] of the files this state was built from.
    pub digest: [u8; 32],
    /// Who may sign a CRL: the client CAs and CRL issuers.
    pub signers: Vec<CertificateDer<'static>>,
}

impl TlsState {
    /// Parses and checks the material: mutual TLS required, trust anchors from every client
    /// CA file, CRL issuers that chain to them, revocation from every CRL file. Any bad file
    /// fails the whole load.
    pub fn from_material(m: &Material) -> Result<TlsState, Error> {
        let crl_files: Vec<FileBytes> = m.crl.iter().chain(&m.cluster_crls).cloned().collect();
        let (verifier, crls, signers) = verifier(&m.client_ca, &m.crl_issuers, &crl_files)?;
        let chain = parse_certs(&m.server_cert.0, &m.server_cert.1)?;
        let key = parse_key(&m.server_key.0, &m.server_key.1)?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::Tls(TlsSetup::ProtocolVersions(e)))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| Error::Tls(TlsSetup::ServerCertificate(e)))?;
        // Small records, so a device needs a 4 KiB TLS read buffer instead of 16 KiB.
        config.max_fragment_size = Some(fleet_protocol::limits::MAX_RECORD);
        Ok(TlsState {
            server_config: Arc::new(config),
            revoked: crls.revoked,
            crls: crls.versions,
            digest: m.digest(),
            signers,
        })
    }
}

/// The client-certificate verifier the gateway uses, from CA, CRL issuer and CRL files, with
/// the index of revoked certificates.
pub fn client_verifier(
    client_ca: &[PathBuf],
    crl_issuers: &[PathBuf],
    crl_files: &[PathBuf],
) -> Result<(Arc<dyn ClientCertVerifier>, Revoked), Error> {
    let file = |p: &PathBuf| read(p).map(|bytes| (p.clone(), bytes));
    let cas = client_ca.iter().map(file).collect::<Result<Vec<_>, _>>()?;
    let issuers = crl_issuers
        .iter()
        .map(file)
        .collect::<Result<Vec<_>, _>>()?;
    let crls = crl_files.iter().map(file).collect::<Result<Vec<_>, _>>()?;
    let (verifier, loaded, _) = verifier(&cas, &issuers, &crls)?;
    Ok((verifier, loaded.revoked))
}

/// The certificates of every CRL issuer file, each checked: a CA allowed to sign CRLs that
/// chains to a client CA (`anchors`). An error comes with the index of its file.
fn crl_issuers(
    anchors: &[CertificateDer<'_>],
    files: &[FileBytes],
) -> Result<Vec<CertificateDer<'static>>, (usize, Error)> {
    let mut per_file = Vec::with_capacity(files.len());
    for (i, (path, bytes)) in files.iter().enumerate() {
        per_file.push(parse_certs(path, bytes).map_err(|e| (i, e))?);
    }
    let all: Vec<CertificateDer<'static>> = per_file.iter().flatten().cloned().collect();
    for (i, ((path, _), certs)) in files.iter().zip(&per_file).enumerate() {
        crate::crl::issuers::check(anchors, &all, certs)
            .map_err(|p| (i, pem_error(path, PemProblem::CrlIssuer(p))))?;
    }
    Ok(all)
}

/// Checks the `tls.crl_issuers` files of a configuration against its client CA files, as a
/// load does. The error comes with the index in `crl_issuers` of the file that fails, or
/// `None` when a client CA file does.
pub fn check_crl_issuers(
    client_ca: &[PathBuf],
    crl_issuers_files: &[PathBuf],
) -> Result<(), (Option<usize>, Error)> {
    let mut anchors = Vec::new();
    for path in client_ca {
        anchors.extend(load_certs(path).map_err(|e| (None, e))?);
    }
    let mut files = Vec::with_capacity(crl_issuers_files.len());
    for (i, path) in crl_issuers_files.iter().enumerate() {
        files.push((path.clone(), read(path).map_err(|e| (Some(i), e))?));
    }
    crl_issuers(&anchors, &files)
        .map(drop)
        .map_err(|(i, e)| (Some(i), e))
}

/// The verifier, the CRLs loaded, and who may sign CRLs.
type Verifier = (
    Arc<dyn ClientCertVerifier>,
    LoadedCrls,
    Vec<CertificateDer<'static>>,
);

fn verifier(
    client_ca: &[FileBytes],
    crl_issuer_files: &[FileBytes],
    crl_files: &[FileBytes],
) -> Result<Verifier, Error> {
    let mut roots = RootCertStore::empty();
    let mut cas = Vec::new();
    for (path, bytes) in client_ca {
        for cert in parse_certs(path, bytes)? {
            roots
                .add(cert.clone())
                .map_err(|e| pem_error(path, PemProblem::NotACa(e)))?;
            cas.push(cert);
        }
    }
    let issuers = crl_issuers(&cas, crl_issuer_files).map_err(|(_, e)| e)?;
    // Who may sign a CRL: a client CA, or a CRL issuer (checked above: it chains to one).
    let signers: Vec<CertificateDer<'static>> = cas.iter().chain(&issuers).cloned().collect();
    let mut crls = LoadedCrls::new(&signers);
    for (path, bytes) in crl_files {
        crls.add_file(path, bytes, &signers)?;
    }
    crls.note_revoked_cas(&issuers, &signers);
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls(crls.der())
        // Every certificate of the chain is checked against its issuer's CRL (a root's CRL
        // revokes intermediates); a CA without a CRL file is not a reason to refuse.
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| Error::Tls(TlsSetup::ClientVerifier(e)))?;
    Ok((Arc::new(ClientPolicy(verifier)), crls, signers))
}

/// Loads the TLS material (see [`TlsState::from_material`]).
pub fn load(files: &TlsFiles) -> Result<TlsState, Error> {
    TlsState::from_material(&Material::read(files)?)
}

/// Builds just the server config (see [`load`]).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, Error> {
    Ok(load(files)?.server_config)
}

tokio::task_local! {
    /// The client certificate the verifier refused as revoked, in this connection's task.
    static REFUSED_AS_REVOKED: RefCell<Option<Vec<u8>>>;
}

/// Runs a connection's future with a place where the verifier notes the certificate it
/// refuses as revoked: the handshake fails without giving it back, yet who was refused is
/// known and verified (only the revocation failed), and the audit record names them.
pub fn noting_revoked_certificates<F: Future>(connection: F) -> impl Future<Output = F::Output> {
    REFUSED_AS_REVOKED.scope(RefCell::new(None), connection)
}

/// The certificate this connection's handshake refused as revoked, if any; taken, so it is
/// given out once. `None` outside [`noting_revoked_certificates`].
pub fn refused_as_revoked() -> Option<Vec<u8>> {
    REFUSED_AS_REVOKED
        .try_with(|slot| slot.borrow_mut().take())
        .ok()
        .flatten()
}

/// Notes, in this connection's task, the certificate the verifier refused as revoked.
/// Outside a connection's task (`doctor`) there is nowhere to note it: fine.
fn note_revoked(end_entity: &CertificateDer<'_>) {
    let _ = REFUSED_AS_REVOKED.try_with(|slot| *slot.borrow_mut() = Some(end_entity.to_vec()));
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
            } else if o.0.downcast_ref::<KeyUsageRefused>().is_some() {
                "bad_key_usage"
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
