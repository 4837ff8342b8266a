//! Certificates, all P-256 ECDSA with SHA-256, made with rcgen.
//!
//! root CA (self-signed, CA:true) → issuing CA (CA:true, pathlen 0) → device, service and
//! gateway server certificates.

mod crl;
mod csr;
mod import;
mod keys;
#[cfg(test)]
mod tests;

use rand_core::{OsRng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

pub use crl::{crl_info, sign_crl, CrlEntry, CrlInfo};
pub use csr::{check_csr, csr_der, CheckedCsr};
pub use import::check_importable;
pub use keys::{key_from_pem, key_to_pem, pkcs8_pem_from_sec1, sec1_from_pkcs8, Passphrase};

use crate::error::{Error, KeyError};

/// A certificate as PEM with LF line endings (the `pem` crate defaults to CRLF).
pub fn cert_to_pem(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// A CA certificate without its key (the root, kept offline; or any trust anchor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCert {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
}

impl CaCert {
    /// The first certificate of a PEM file.
    pub fn from_pem(cert_pem: &str) -> Result<CaCert, String> {
        let cert_der = pem::parse_many(cert_pem)
            .map_err(|e| format!("not PEM: {e}"))?
            .into_iter()
            .find(|p| p.tag() == "CERTIFICATE")
            .ok_or("no CERTIFICATE block")?
            .into_contents();
        let cert_pem = cert_to_pem(&cert_der);
        Ok(CaCert { cert_der, cert_pem })
    }
}

/// A CA: its certificate and the key that signs with it.
pub struct Ca {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub key: KeyPair,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Rebuilds a CA from its PEM certificate and its key (PKCS#8 DER).
    pub fn from_parts(cert_pem: &str, key_pkcs8_der: &[u8]) -> Result<Ca, Error> {
        let cert = CaCert::from_pem(cert_pem).map_err(|message| Error::InvalidInput {
            field: "CA certificate",
            message,
        })?;
        let key = KeyPair::try_from(key_pkcs8_der)?;
        let issuer = Issuer::from_ca_cert_der(
            &cert.cert_der.as_slice().into(),
            KeyPair::try_from(key_pkcs8_der)?,
        )?;
        Ok(Ca {
            cert_der: cert.cert_der,
            cert_pem: cert.cert_pem,
            key,
            issuer,
        })
    }

    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The certificate alone.
    pub fn cert(&self) -> CaCert {
        CaCert {
            cert_der: self.cert_der.clone(),
            cert_pem: self.cert_pem.clone(),
        }
    }
}

/// A certificate and its freshly generated key.
pub struct Issued {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub key: KeyPair,
    pub serial: Vec<u8>,
    /// Unix seconds.
    pub not_after: i64,
}

impl Issued {
    /// The private key as SEC1 DER (what the identity bundle stores): the ECPrivateKey that
    /// PKCS#8 wraps, taken out as it is (no curve arithmetic).
    pub fn key_sec1_der(&self) -> Result<Vec<u8>, Error> {
        let der = zeroize::Zeroizing::new(self.key.serialize_der());
        let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).map_err(KeyError::Pkcs8)?;
        Ok(info.private_key.to_vec())
    }
}

/// A signed certificate.
pub struct Signed {
    pub der: Vec<u8>,
    /// Unix seconds.
    pub not_after: i64,
}

/// A random positive 127-bit serial number.
pub fn random_serial() -> Vec<u8> {
    let mut s = [0u8; 16];
    OsRng.fill_bytes(&mut s);
    s[0] &= 0x7F;
    s[0] |= 0x01;
    s.to_vec()
}

fn name(pairs: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (t, v) in pairs {
        dn.push(t.clone(), *v);
    }
    dn
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A minute of slack for devices and gateways whose clocks run slightly behind.
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::days(days);
}

fn ca_params(cn: &str, org: &str, constraint: BasicConstraints, days: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(&[(DnType::CommonName, cn), (DnType::OrganizationName, org)]);
    p.is_ca = IsCa::Ca(constraint);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    validity(&mut p, days);
    p
}

/// A self-signed root CA, valid 20 years.
pub fn new_root_ca(org: &str) -> Result<Ca, Error> {
    let key = KeyPair::generate()?;
    let params = ca_params(
        &format!("{org} Root CA"),
        org,
        BasicConstraints::Unconstrained,
        20 * 365,
    );
    let cert = params.self_signed(&key)?;
    let issuer = Issuer::new(params, KeyPair::from_pem(&key.serialize_pem())?);
    Ok(Ca {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key,
        issuer,
    })
}

/// An issuing CA (path length 0) signed by `root`, valid 10 years.
pub fn new_issuing_ca(root: &Ca, org: &str) -> Result<Ca, Error> {
    let key = KeyPair::generate()?;
    let params = ca_params(
        &format!("{org} Issuing CA"),
        org,
        BasicConstraints::Constrained(0),
        10 * 365,
    );
    let cert = params.signed_by(&key, root.issuer())?;
    let issuer = Issuer::new(params, KeyPair::from_pem(&key.serialize_pem())?);
    Ok(Ca {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key,
        issuer,
    })
}

/// The fields of a leaf certificate; the public key comes separately.
fn leaf_params(
    dn: &[(DnType, &str)],
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
    days: i64,
    serial: &[u8],
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = name(dn);
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    p.serial_number = Some(SerialNumber::from_slice(serial));
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, days);
    p
}

fn leaf(
    ca: &Ca,
    dn: &[(DnType, &str)],
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
    days: i64,
    serial: &[u8],
) -> Result<Issued, Error> {
    let key = KeyPair::generate()?;
    let params = leaf_params(dn, sans, eku, days, serial);
    let cert = params.signed_by(&key, ca.issuer())?;
    Ok(Issued {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key,
        serial: serial.to_vec(),
        not_after: params.not_after.unix_timestamp(),
    })
}

/// A device certificate: CN = device id, O = tenant, EKU clientAuth.
pub fn sign_device(ca: &Ca, device_id: &str, tenant: &str, days: i64) -> Result<Issued, Error> {
    sign_device_with_serial(ca, device_id, tenant, days, &random_serial())
}

fn device_dn<'a>(device_id: &'a str, tenant: &'a str) -> [(DnType, &'a str); 2] {
    [
        (DnType::CommonName, device_id),
        (DnType::OrganizationName, tenant),
    ]
}

/// A device certificate with a serial the registry has already reserved.
pub fn sign_device_with_serial(
    ca: &Ca,
    device_id: &str,
    tenant: &str,
    days: i64,
    serial: &[u8],
) -> Result<Issued, Error> {
    leaf(
        ca,
        &device_dn(device_id, tenant),
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        days,
        serial,
    )
}

/// A device certificate for a public key the device generated (CSR flow): the station sets
/// every field; nothing but the key comes from the request.
pub fn sign_device_key(
    ca: &Ca,
    key: &CheckedCsr,
    device_id: &str,
    tenant: &str,
    days: i64,
    serial: &[u8],
) -> Result<Signed, Error> {
    let params = leaf_params(
        &device_dn(device_id, tenant),
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        days,
        serial,
    );
    Ok(Signed {
        der: params.signed_by(&key.spki, ca.issuer())?.der().to_vec(),
        not_after: params.not_after.unix_timestamp(),
    })
}

/// A backend service certificate: CN = name, O = tenant, OU = service, EKU clientAuth.
pub fn sign_service(ca: &Ca, name: &str, tenant: &str, days: i64) -> Result<Issued, Error> {
    sign_role(ca, name, tenant, "service", days)
}

/// A client certificate with a role in its OU (`service`, `gateway`), EKU clientAuth.
pub fn sign_role(
    ca: &Ca,
    name: &str,
    tenant: &str,
    role: &str,
    days: i64,
) -> Result<Issued, Error> {
    leaf(
        ca,
        &[
            (DnType::CommonName, name),
            (DnType::OrganizationName, tenant),
            (DnType::OrganizationalUnitName, role),
        ],
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        days,
        &random_serial(),
    )
}

/// A gateway server certificate for these DNS names and IP addresses, EKU serverAuth.
pub fn sign_server(ca: &Ca, hosts: &[&str], days: i64) -> Result<Issued, Error> {
    let first = hosts.first().ok_or(Error::InvalidInput {
        field: "host",
        message: "at least one host name or IP address is required".into(),
    })?;
    let sans = hosts
        .iter()
        .map(|h| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName((*h).try_into().map_err(|_| {
                Error::InvalidInput {
                    field: "host",
                    message: format!("{h:?} is not a DNS name or IP address"),
                }
            })?)),
        })
        .collect::<Result<Vec<_>, Error>>()?;
    leaf(
        ca,
        &[(DnType::CommonName, first)],
        sans,
        ExtendedKeyUsagePurpose::ServerAuth,
        days,
        &random_serial(),
    )
}
