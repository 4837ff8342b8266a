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

use crate::error::{CsrError, Error, KeyError};

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

/// A passphrase that protects CA private keys (zeroed when dropped).
#[derive(Clone)]
pub struct Passphrase(zeroize::Zeroizing<String>);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

impl Passphrase {
    /// Shortest passphrase accepted for new keys.
    pub const MIN_LEN: usize = 12;

    /// A passphrase; trailing newlines (from a file or `echo`) are not part of it.
    pub fn new(text: &str) -> Passphrase {
        Passphrase(zeroize::Zeroizing::new(
            text.trim_end_matches(['\n', '\r']).to_owned(),
        ))
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A private key as PEM: PKCS#8 encrypted with `passphrase` (scrypt + AES-256-CBC, which
/// OpenSSL reads too), or plain PKCS#8 when `None`.
pub fn key_to_pem(key: &KeyPair, passphrase: Option<&Passphrase>) -> Result<String, Error> {
    let Some(pass) = passphrase else {
        return Ok(key.serialize_pem());
    };
    if pass.0.chars().count() < Passphrase::MIN_LEN {
        return Err(Error::InvalidInput {
            field: "passphrase",
            message: format!("must be at least {} characters", Passphrase::MIN_LEN),
        });
    }
    let der = zeroize::Zeroizing::new(key.serialize_der());
    let info = pkcs8::PrivateKeyInfo::try_from(der.as_slice()).map_err(KeyError::Pkcs8)?;
    // scrypt with N = 2^14, r = 8 (16 MiB, ~50 ms): strong, and within OpenSSL's 32 MiB
    // scrypt limit so `openssl pkey` opens the key too (pkcs8's default N = 2^15 is not).
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    OsRng.fill_bytes(&mut iv);
    let kdf = pkcs8::pkcs5::scrypt::Params::new(14, 8, 1, 32).map_err(KeyError::Scrypt)?;
    let params = pkcs8::pkcs5::pbes2::Parameters::scrypt_aes256cbc(kdf, &salt, &iv)
        .map_err(KeyError::Pbes2)?;
    let doc = info
        .encrypt_with_params(params, pass.bytes())
        .map_err(KeyError::Pkcs8)?;
    let pem = doc
        .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
        .map_err(KeyError::Der)?;
    Ok(pem.to_string())
}

/// Reads a private key PEM into PKCS#8 DER: `ENCRYPTED PRIVATE KEY` (needs the passphrase),
/// `PRIVATE KEY`, or a P-256 `EC PRIVATE KEY` (SEC1, as `openssl ecparam -genkey` writes).
pub fn key_from_pem(
    text: &str,
    path: &std::path::Path,
    passphrase: Option<&Passphrase>,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Error> {
    use p256::pkcs8::EncodePrivateKey;
    let bad = |message: String| Error::BadPem {
        path: path.to_owned(),
        message,
    };
    let block = pem::parse_many(text)
        .map_err(|e| bad(format!("not PEM: {e}")))?
        .into_iter()
        .find(|p| p.tag().ends_with("PRIVATE KEY"))
        .ok_or_else(|| bad("no PRIVATE KEY block".into()))?;
    let der = zeroize::Zeroizing::new(block.contents().to_vec());
    match block.tag() {
        "ENCRYPTED PRIVATE KEY" => {
            let pass = passphrase.ok_or_else(|| Error::PassphraseRequired {
                path: path.to_owned(),
            })?;
            let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
                .map_err(|e| bad(format!("not an encrypted PKCS#8 key: {e}")))?;
            let doc = info
                .decrypt(pass.bytes())
                .map_err(|_| Error::WrongPassphrase {
                    path: path.to_owned(),
                })?;
            Ok(zeroize::Zeroizing::new(doc.as_bytes().to_vec()))
        }
        "PRIVATE KEY" => Ok(der),
        "EC PRIVATE KEY" => {
            let secret = p256::SecretKey::from_sec1_der(&der)
                .map_err(|_| bad("not a P-256 EC PRIVATE KEY (only P-256 is supported)".into()))?;
            let doc = secret
                .to_pkcs8_der()
                .map_err(|e| bad(format!("PKCS#8 encoding: {e}")))?;
            Ok(zeroize::Zeroizing::new(doc.as_bytes().to_vec()))
        }
        other => Err(bad(format!(
            "{other} keys are not supported; use a P-256 key"
        ))),
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

/// Converts a P-256 PKCS#8 DER key to SEC1 DER.
pub fn sec1_from_pkcs8(pkcs8: &[u8]) -> Result<Vec<u8>, Error> {
    use p256::pkcs8::DecodePrivateKey;
    let secret = p256::SecretKey::from_pkcs8_der(pkcs8).map_err(KeyError::Pkcs8)?;
    let der = secret.to_sec1_der().map_err(KeyError::Der)?;
    Ok(der.to_vec())
}

/// Converts a bundle's SEC1 DER key (curve parameters may be absent, as RFC 5915 allows)
/// to PKCS#8 PEM, which every TLS tool reads.
pub fn pkcs8_pem_from_sec1(sec1: &[u8]) -> Result<String, Error> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let secret = p256::SecretKey::from_sec1_der(sec1).map_err(|_| KeyError::NotSec1)?;
    let pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(KeyError::Pkcs8)?;
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

/// Whether a public key is an EC key on P-256 (the only kind fleet devices use).
fn is_p256(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> bool {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && curve == Some(OID_EC_P256)
}

/// A PKCS#10 request that passed [`check_csr`]: only its public key is used.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    spki: rcgen::SubjectPublicKeyInfo,
    /// The uncompressed P-256 point.
    pub public_key: Vec<u8>,
}

/// Checks a PKCS#10 request (DER): it parses with nothing trailing, its signature verifies
/// with its own key, the key is P-256, and it asks for nothing the station refuses: CA:true
/// or subject alternative names. Every other requested attribute is ignored: the station
/// decides subject, key usage, extended key usage and validity itself.
pub fn check_csr(der: &[u8]) -> Result<CheckedCsr, Error> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::FromDer;
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::NotPkcs10(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingBytes(rest.len()).into());
    }
    let spki = &csr.certification_request_info.subject_pki;
    if !is_p256(spki) {
        return Err(CsrError::NotP256.into());
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    if let Some(extensions) = csr.requested_extensions() {
        for ext in extensions {
            match ext {
                ParsedExtension::BasicConstraints(bc) if bc.ca => {
                    return Err(CsrError::RequestsCa.into())
                }
                ParsedExtension::SubjectAlternativeName(_) => {
                    return Err(CsrError::RequestsNames.into())
                }
                _ => {}
            }
        }
    }
    let public_key = spki.subject_public_key.data.to_vec();
    let spki = rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| CsrError::PublicKey(e.to_string()))?;
    Ok(CheckedCsr { spki, public_key })
}

/// A PKCS#10 request as DER, from PEM (`CERTIFICATE REQUEST`) or DER input.
pub fn csr_der(input: &[u8]) -> Result<Vec<u8>, Error> {
    if input.starts_with(b"-----BEGIN") || input.trim_ascii_start().starts_with(b"-----BEGIN") {
        let block = pem::parse(input).map_err(CsrError::NotPem)?;
        if !matches!(
            block.tag(),
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST"
        ) {
            return Err(CsrError::NotARequestBlock(block.tag().to_owned()).into());
        }
        Ok(block.into_contents())
    } else {
        Ok(input.to_vec())
    }
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

/// Checks that an issuing CA from another PKI can serve fleet devices: a CA certificate
/// (basicConstraints CA:true; keyCertSign if key usage is present), currently valid, with a
/// P-256 key that matches `ca.key`, signed by `root` (or self-signed when `root` is itself).
pub fn check_importable(ca: &Ca, root: &CaCert) -> Result<(), Error> {
    let refuse = |m: String| Error::InvalidInput {
        field: "issuing CA",
        message: m,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&ca.cert_der)
        .map_err(|e| refuse(format!("not an X.509 certificate: {e}")))?;
    let (_, root_cert) = x509_parser::parse_x509_certificate(&root.cert_der)
        .map_err(|e| refuse(format!("root: not an X.509 certificate: {e}")))?;
    if !cert.is_ca() {
        return Err(refuse(
            "the certificate is not a CA (basicConstraints CA:true missing)".into(),
        ));
    }
    if let Ok(Some(ku)) = cert.key_usage() {
        if !ku.value.key_cert_sign() {
            return Err(refuse(
                "its key usage does not allow signing certificates".into(),
            ));
        }
    }
    let now = x509_parser::time::ASN1Time::now();
    let validity = cert.validity();
    if validity.not_after <= now {
        return Err(Error::CaExpired {
            not_after: validity.not_after.to_string(),
        });
    }
    if validity.not_before > now {
        return Err(refuse(format!(
            "it is not valid before {}",
            validity.not_before
        )));
    }
    let spki = cert.public_key();
    if !is_p256(spki) {
        return Err(refuse(
            "its key is not P-256 (fleet devices verify ECDSA P-256 chains only)".into(),
        ));
    }
    if spki.subject_public_key.data.as_ref() != ca.key.public_key_raw() {
        return Err(refuse(
            "the private key does not belong to the certificate".into(),
        ));
    }
    if !root_cert.is_ca() {
        return Err(refuse("the root is not a CA certificate".into()));
    }
    cert.verify_signature(Some(root_cert.public_key()))
        .map_err(|_| refuse("it is not signed by the given root".into()))?;
    Ok(())
}
