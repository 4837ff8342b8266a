//! Who is on the other end of a connection, read from its verified client certificate.
//!
//! Nothing the client sends after the handshake can change its identity: the device id is the
//! certificate subject CN, the tenant is the subject O, and a certificate whose subject OU is
//! the configured service OU belongs to a backend service.

use std::fmt;

// The rule the identity bundle applies to device ids and tenants: one rule everywhere.
use fleet_protocol::bundle::valid_name;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

/// What kind of principal a certificate names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A field device: may only use its own topics.
    Device,
    /// A backend service of a tenant (subject OU = the service OU): wider ACLs.
    Service,
}

/// The identity bound to a session for its whole life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Subject CN: the device id (or the service name).
    pub id: String,
    /// Subject O: the tenant.
    pub tenant: String,
    pub kind: Kind,
    /// Certificate serial number, big-endian bytes as encoded.
    pub serial: Vec<u8>,
    /// The issuer name, DER: with the serial, what a CRL entry names.
    pub issuer: Vec<u8>,
    /// SHA-256 of the certificate DER.
    pub fingerprint: [u8; 32],
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Why a verified certificate still cannot be used as an identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityError {
    Unparsable,
    MissingCommonName,
    MissingOrganization,
    /// CN or O contains characters that cannot appear in a topic level safely.
    BadName(String),
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Unparsable => write!(f, "client certificate cannot be parsed"),
            IdentityError::MissingCommonName => {
                write!(f, "client certificate subject has no CN (device id)")
            }
            IdentityError::MissingOrganization => {
                write!(f, "client certificate subject has no O (tenant)")
            }
            IdentityError::BadName(n) => write!(
                f,
                "client certificate subject name {n:?} is not a valid id (1-64 of A-Z a-z 0-9 . _ -)"
            ),
        }
    }
}

impl Identity {
    /// Reads the identity from a client certificate that TLS has already verified.
    pub fn from_cert_der(der: &[u8], service_ou: &str) -> Result<Identity, IdentityError> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparsable)?;
        let subject = cert.subject();
        let first = |mut it: std::vec::IntoIter<&x509_parser::x509::AttributeTypeAndValue>| {
            it.next().and_then(|a| a.as_str().ok()).map(str::to_owned)
        };
        let id = first(subject.iter_common_name().collect::<Vec<_>>().into_iter())
            .ok_or(IdentityError::MissingCommonName)?;
        let tenant = first(subject.iter_organization().collect::<Vec<_>>().into_iter())
            .ok_or(IdentityError::MissingOrganization)?;
        for name in [&id, &tenant] {
            if !valid_name(name) {
                return Err(IdentityError::BadName(name.clone()));
            }
        }
        let kind = if subject
            .iter_organizational_unit()
            .any(|ou| ou.as_str() == Ok(service_ou))
        {
            Kind::Service
        } else {
            Kind::Device
        };
        Ok(Identity {
            id,
            tenant,
            kind,
            serial: cert.tbs_certificate.raw_serial().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            fingerprint: Sha256::digest(der).into(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Serial as lowercase hex, as CRL tools and the registry print it.
    pub fn serial_hex(&self) -> String {
        fleet_host::hex(strip_leading_zeros(&self.serial))
    }

    /// Fingerprint as lowercase hex.
    pub fn fingerprint_hex(&self) -> String {
        fleet_host::hex(self.fingerprint)
    }
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|&x| x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert(dn: &[(DnType, &str)]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        for (t, v) in dn {
            name.push(t.clone(), *v);
        }
        params.distinguished_name = name;
        params.serial_number = Some(vec![0x00, 0x12, 0xab].into());
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn device_and_service_identities() {
        let der = cert(&[
            (DnType::CommonName, "acme-000001"),
            (DnType::OrganizationName, "acme"),
        ]);
        let id = Identity::from_cert_der(&der, "service").unwrap();
        assert_eq!(
            (id.id.as_str(), id.tenant.as_str()),
            ("acme-000001", "acme")
        );
        assert_eq!(id.kind, Kind::Device);
        assert_eq!(id.serial_hex(), "12ab");
        assert_eq!(id.fingerprint_hex().len(), 64);

        let der = cert(&[
            (DnType::CommonName, "backend"),
            (DnType::OrganizationName, "acme"),
            (DnType::OrganizationalUnitName, "service"),
        ]);
        assert_eq!(
            Identity::from_cert_der(&der, "service").unwrap().kind,
            Kind::Service
        );
        assert_eq!(
            Identity::from_cert_der(&der, "ops").unwrap().kind,
            Kind::Device
        );
    }

    #[test]
    fn refusals() {
        let no_o = cert(&[(DnType::CommonName, "d1")]);
        assert_eq!(
            Identity::from_cert_der(&no_o, "service"),
            Err(IdentityError::MissingOrganization)
        );
        let no_cn = cert(&[(DnType::OrganizationName, "acme")]);
        assert_eq!(
            Identity::from_cert_der(&no_cn, "service"),
            Err(IdentityError::MissingCommonName)
        );
        let wild = cert(&[
            (DnType::CommonName, "dev/+"),
            (DnType::OrganizationName, "acme"),
        ]);
        assert!(matches!(
            Identity::from_cert_der(&wild, "service"),
            Err(IdentityError::BadName(_))
        ));
        assert_eq!(
            Identity::from_cert_der(b"garbage", "service"),
            Err(IdentityError::Unparsable)
        );
    }
}
