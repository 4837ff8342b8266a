//! Client identities for the benchmark, minted in memory and signed by the issuing CA: each
//! presents a chain of two certificates (its own, then the issuing CA's), so a broker that
//! trusts only the root builds the whole path, as with devices in the field.

use std::path::Path;
use std::sync::Arc;

use fleet_provision::pki::Ca;
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::Error;

/// A client identity minted for the benchmark (never written to disk).
#[derive(Clone)]
pub struct Minted {
    pub id: String,
    pub serial: Vec<u8>,
    pub config: Arc<rustls::ClientConfig>,
}

/// Mints client identities signed by the issuing CA; `service` ones carry OU=service.
pub struct Mint {
    ca: Ca,
    issuing: CertificateDer<'static>,
    roots: rustls::RootCertStore,
    tenant: String,
}

fn tls(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

impl Mint {
    pub fn new(
        issuing_cert: &Path,
        issuing_key: &Path,
        root: &Path,
        tenant: &str,
    ) -> Result<Mint, Error> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| Error::Read {
                path: p.to_owned(),
                source,
            })
        };
        let key = fleet_provision::pki::key_from_pem(&read(issuing_key)?, issuing_key, None)
            .map_err(tls)?;
        let issuing_pem = read(issuing_cert)?;
        let ca = Ca::from_parts(&issuing_pem, &key).map_err(tls)?;
        let issuing = CertificateDer::from_pem_slice(issuing_pem.as_bytes()).map_err(tls)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(read(root)?.as_bytes()) {
            roots.add(c.map_err(tls)?).map_err(tls)?;
        }
        Ok(Mint {
            ca,
            issuing,
            roots,
            tenant: tenant.to_owned(),
        })
    }

    /// A fresh P-256 identity `id` (CN) of the tenant (O); TLS 1.3 only, no session
    /// resumption, so every connection is a full mutual handshake.
    pub fn identity(&self, id: &str, service: bool) -> Result<Minted, Error> {
        let key = KeyPair::generate().map_err(tls)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id);
        dn.push(DnType::OrganizationName, self.tenant.as_str());
        if service {
            dn.push(DnType::OrganizationalUnitName, "service");
        }
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        let serial = fleet_provision::pki::random_serial();
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let cert = p.signed_by(&key, self.ca.issuer()).map_err(tls)?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_root_certificates(self.roots.clone())
        .with_client_auth_cert(
            vec![cert.der().clone(), self.issuing.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(tls)?;
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Minted {
            id: id.to_owned(),
            serial,
            config: Arc::new(config),
        })
    }

    /// Writes a CRL revoking `serials` (signed by the issuing CA) to `path`, atomically.
    pub fn write_crl(&self, serials: &[Vec<u8>], path: &Path) -> Result<(), Error> {
        use rcgen::{
            CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber,
        };
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from_slice(&(serials.len() as u64 + 1).to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now,
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(self.ca.issuer()).map_err(tls)?;
        let pem = crl.pem().map_err(tls)?;
        fleet_provision::write_file(path, pem.as_bytes(), false).map_err(tls)
    }
}
