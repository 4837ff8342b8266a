//! Certificates, all P-256 ECDSA with SHA-256, made with rcgen.
//!
//! root CA (self-signed, CA:true) → issuing CA (CA:true, pathlen 0) → device, service and
//! gateway server certificates.

use rand_core::{OsRng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::Error;

/// A CA: its certificate and the key that signs with it.
pub struct Ca {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub key: KeyPair,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Rebuilds a CA from its PEM certificate and PKCS#8 PEM key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, Error> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, KeyPair::from_pem(key_pem)?)?;
        let cert_der = pem::parse(cert_pem)
            .map_err(|e| Error::Bundle(format!("CA certificate PEM: {e}")))?
            .into_contents();
        Ok(Ca {
            cert_der,
            cert_pem: cert_pem.to_owned(),
            key,
            issuer,
        })
    }

    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

/// A certificate and its freshly generated key.
pub struct Issued {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub key: KeyPair,
    pub serial: Vec<u8>,
}

impl Issued {
    /// The private key as SEC1 DER (what the identity bundle stores).
    pub fn key_sec1_der(&self) -> Result<Vec<u8>, Error> {
        sec1_from_pkcs8(&self.key.serialize_der())
    }
}

/// Converts a P-256 PKCS#8 DER key to SEC1 DER.
pub fn sec1_from_pkcs8(pkcs8: &[u8]) -> Result<Vec<u8>, Error> {
    use p256::pkcs8::DecodePrivateKey;
    let secret = p256::SecretKey::from_pkcs8_der(pkcs8)
        .map_err(|e| Error::Bundle(format!("not a P-256 PKCS#8 key: {e}")))?;
    let der = secret
        .to_sec1_der()
        .map_err(|e| Error::Bundle(format!("SEC1 encoding: {e}")))?;
    Ok(der.to_vec())
}

/// Converts a bundle's SEC1 DER key (curve parameters may be absent, as RFC 5915 allows)
/// to PKCS#8 PEM, which every TLS tool reads.
pub fn pkcs8_pem_from_sec1(sec1: &[u8]) -> Result<String, Error> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let secret = p256::SecretKey::from_sec1_der(sec1)
        .map_err(|e| Error::Bundle(format!("not a P-256 SEC1 key: {e}")))?;
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| Error::Bundle(format!("PKCS#8 encoding: {e}")))?;
    Ok(pem.to_string())
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

fn leaf(
    ca: &Ca,
    dn: &[(DnType, &str)],
    sans: Vec<SanType>,
    eku: ExtendedKeyUsagePurpose,
    days: i64,
    serial: &[u8],
) -> Result<Issued, Error> {
    let key = KeyPair::generate()?;
    let serial = serial.to_vec();
    let mut p = CertificateParams::default();
    p.distinguished_name = name(dn);
    p.subject_alt_names = sans;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, days);
    let cert = p.signed_by(&key, ca.issuer())?;
    Ok(Issued {
        cert_der: cert.der().to_vec(),
        cert_pem: cert.pem(),
        key,
        serial,
    })
}

/// A device certificate: CN = device id, O = tenant, EKU clientAuth.
pub fn sign_device(ca: &Ca, device_id: &str, tenant: &str, days: i64) -> Result<Issued, Error> {
    sign_device_with_serial(ca, device_id, tenant, days, &random_serial())
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
        &[
            (DnType::CommonName, device_id),
            (DnType::OrganizationName, tenant),
        ],
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
        days,
        serial,
    )
}

/// A backend service certificate: CN = name, O = tenant, OU = service, EKU clientAuth.
pub fn sign_service(ca: &Ca, name: &str, tenant: &str, days: i64) -> Result<Issued, Error> {
    leaf(
        ca,
        &[
            (DnType::CommonName, name),
            (DnType::OrganizationName, tenant),
            (DnType::OrganizationalUnitName, "service"),
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
