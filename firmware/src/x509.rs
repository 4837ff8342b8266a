//! The gateway's certificate chain as the device checks it: X.509 v3, ECDSA P-256 with
//! SHA-256 throughout, a path from the server certificate through the intermediates the
//! server sent to the bundle's trust anchor, and the gateway host name.
//!
//! Written by hand for flash (see [`crate::asn1`]): the verifier of embedded-tls (the TLS
//! stack the device used before its own), built on the `der` crate, cost ~30 KiB of the
//! device image. It is also stricter than that verifier: an
//! intermediate must be a CA allowed to sign certificates at its depth, the server
//! certificate must not be a CA and, if it restricts its use, must be for TLS servers, and an
//! unknown critical extension refuses the certificate (RFC 5280 §4.2).
//!
//! Not checked: validity times. Boards have no trustworthy clock; the gateway, which knows
//! the time, refuses expired device certificates and tells devices when theirs near expiry.

use crate::asn1::{self, tag, DerError, EcdsaDer, Reader};
use crate::ec;

/// Intermediates at most between the server certificate and the trust anchor.
pub const MAX_INTERMEDIATES: usize = 3;

/// An uncompressed P-256 public key (`04 || x || y`).
pub type PublicKey = [u8; 65];

/// Why the gateway's certificate chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertError {
    /// Not a certificate (or a DER structure in it is broken).
    Malformed,
    /// Not X.509 v3 with a P-256 key and an ECDSA-SHA256 signature.
    Unsupported,
    /// An extension marked critical that the device does not understand.
    UnknownCriticalExtension,
    /// No path from the server certificate to the trust anchor.
    UntrustedIssuer,
    /// A signature in the path does not verify.
    BadSignature,
    /// An intermediate is not a CA, may not sign certificates, or is too deep for its
    /// path length constraint.
    IssuerNotACa,
    /// The server certificate is a CA, or is restricted to other uses than a TLS server.
    NotAServerCertificate,
    /// The server certificate does not name the gateway host.
    HostMismatch,
}

impl core::fmt::Display for CertError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CertError::Malformed => "malformed certificate",
            CertError::Unsupported => "certificate is not X.509 v3 ECDSA P-256/SHA-256",
            CertError::UnknownCriticalExtension => "unknown critical certificate extension",
            CertError::UntrustedIssuer => "certificate not issued by the trust anchor",
            CertError::BadSignature => "certificate signature does not verify",
            CertError::IssuerNotACa => "certificate issuer is not a CA for this path",
            CertError::NotAServerCertificate => "certificate is not for a TLS server",
            CertError::HostMismatch => "certificate does not name the gateway host",
        })
    }
}

impl From<DerError> for CertError {
    fn from(_: DerError) -> Self {
        CertError::Malformed
    }
}

/// `SEQUENCE { OID ecdsa-with-SHA256 }` ([`asn1::oid::ECDSA_SHA256`] with its header): the
/// whole AlgorithmIdentifier, compared as encoded.
const ECDSA_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
/// `SEQUENCE { OID id-ecPublicKey, OID prime256v1 }` ([`asn1::oid::EC_PUBLIC_KEY`],
/// [`asn1::oid::P256`]), compared as encoded.
const EC_P256: &[u8] = &[
    0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
    0xce, 0x3d, 0x03, 0x01, 0x07,
];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const OID_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];

/// keyUsage bits, in the first content byte of the BIT STRING.
const KU_DIGITAL_SIGNATURE: u8 = 0x80;
const KU_KEY_CERT_SIGN: u8 = 0x04;

/// The parts of a certificate the path check needs, borrowed from its DER.
#[derive(Debug, Clone, Copy)]
pub struct Cert<'a> {
    /// `tbsCertificate`, header included: what the issuer signed.
    tbs: &'a [u8],
    /// The issuer and subject `Name`s, compared byte for byte.
    issuer: &'a [u8],
    subject: &'a [u8],
    public_key: &'a [u8],
    signature: &'a [u8],
    ca: bool,
    path_len: Option<u8>,
    key_usage: Option<u8>,
    /// `None` without an extendedKeyUsage extension; else whether it lists serverAuth.
    server_auth: Option<bool>,
    /// The subjectAltName `GeneralNames` content.
    alt_names: Option<&'a [u8]>,
}

impl<'a> Cert<'a> {
    /// Reads a DER certificate.
    pub fn parse(der: &'a [u8]) -> Result<Cert<'a>, CertError> {
        let mut outer = Reader::new(der);
        let mut cert = outer.enter(tag::SEQUENCE)?;
        outer.finish()?;
        let tbs = cert.expect(tag::SEQUENCE)?;
        let algorithm = cert.expect(tag::SEQUENCE)?.raw;
        let signature = asn1::whole_bytes(cert.expect(tag::BIT_STRING)?.value)?;
        cert.finish()?;
        if algorithm != ECDSA_SHA256 {
            return Err(CertError::Unsupported);
        }

        let mut fields = Reader::new(tbs.value);
        let mut version = fields.enter(tag::context(0))?;
        if version.expect(tag::INTEGER)?.value != [2] {
            return Err(CertError::Unsupported);
        }
        version.finish()?;
        fields.expect(tag::INTEGER)?; // serial
        if fields.expect(tag::SEQUENCE)?.raw != algorithm {
            return Err(CertError::Malformed);
        }
        let issuer = fields.expect(tag::SEQUENCE)?.raw;
        fields.expect(tag::SEQUENCE)?; // validity: not checked (no clock)
        let subject = fields.expect(tag::SEQUENCE)?.raw;
        let mut spki = fields.enter(tag::SEQUENCE)?;
        if spki.expect(tag::SEQUENCE)?.raw != EC_P256 {
            return Err(CertError::Unsupported);
        }
        let public_key = asn1::whole_bytes(spki.expect(tag::BIT_STRING)?.value)?;
        spki.finish()?;
        if public_key.len() != 65 || public_key[0] != 0x04 {
            return Err(CertError::Unsupported);
        }
        fields.optional(tag::context_primitive(1))?; // issuerUniqueID
        fields.optional(tag::context_primitive(2))?; // subjectUniqueID
        let mut parsed = Cert {
            tbs: tbs.raw,
            issuer,
            subject,
            public_key,
            signature,
            ca: false,
            path_len: None,
            key_usage: None,
            server_auth: None,
            alt_names: None,
        };
        if let Some(extensions) = fields.optional(tag::context(3))? {
            let mut wrapper = Reader::new(extensions.value);
            let list = wrapper.enter(tag::SEQUENCE)?;
            wrapper.finish()?;
            parsed.read_extensions(list)?;
        }
        fields.finish()?;
        Ok(parsed)
    }

    fn read_extensions(&mut self, mut list: Reader<'a>) -> Result<(), CertError> {
        // One bit per known extension: each may appear once (RFC 5280 §4.2).
        let mut seen = 0u8;
        while !list.is_empty() {
            let mut ext = list.enter(tag::SEQUENCE)?;
            let oid = ext.expect(tag::OID)?.value;
            let critical = match ext.optional(tag::BOOLEAN)? {
                Some(b) if b.value == [0xff] => true,
                // DER never encodes the default FALSE.
                Some(_) => return Err(CertError::Malformed),
                None => false,
            };
            let value = ext.expect(tag::OCTET_STRING)?.value;
            ext.finish()?;
            let bit = match oid {
                OID_BASIC_CONSTRAINTS => {
                    self.basic_constraints(value)?;
                    1
                }
                OID_KEY_USAGE => {
                    let bits = Reader::new(value).expect(tag::BIT_STRING)?.value;
                    // First byte: unused bits; the usages start in the second.
                    self.key_usage = Some(bits.get(1).copied().unwrap_or(0));
                    2
                }
                OID_EXT_KEY_USAGE => {
                    let mut outer = Reader::new(value);
                    let mut purposes = outer.enter(tag::SEQUENCE)?;
                    outer.finish()?;
                    let mut server = false;
                    while !purposes.is_empty() {
                        server |= purposes.expect(tag::OID)?.value == OID_SERVER_AUTH;
                    }
                    self.server_auth = Some(server);
                    4
                }
                OID_SUBJECT_ALT_NAME => {
                    let mut outer = Reader::new(value);
                    self.alt_names = Some(outer.expect(tag::SEQUENCE)?.value);
                    outer.finish()?;
                    8
                }
                _ if critical => return Err(CertError::UnknownCriticalExtension),
                _ => 0,
            };
            if seen & bit != 0 {
                return Err(CertError::Malformed);
            }
            seen |= bit;
        }
        Ok(())
    }

    fn basic_constraints(&mut self, value: &[u8]) -> Result<(), CertError> {
        let mut outer = Reader::new(value);
        let mut fields = outer.enter(tag::SEQUENCE)?;
        outer.finish()?;
        if let Some(ca) = fields.optional(tag::BOOLEAN)? {
            if ca.value != [0xff] {
                return Err(CertError::Malformed);
            }
            self.ca = true;
        }
        if let Some(n) = fields.optional(tag::INTEGER)? {
            self.path_len = Some(asn1::unsigned::<1>(n.value)?[0]);
        }
        fields.finish()?;
        Ok(())
    }

    /// Whether `key` signed this certificate.
    fn signed_by(&self, key: &[u8]) -> Result<(), CertError> {
        let signature = EcdsaDer::decode(self.signature)?;
        if ec::verify(key, &ec::digest(self.tbs), &signature) {
            Ok(())
        } else {
            Err(CertError::BadSignature)
        }
    }

    /// Whether this certificate may issue one with `below` intermediates under it.
    fn may_issue(&self, below: usize) -> bool {
        self.ca
            && self.key_usage.is_none_or(|ku| ku & KU_KEY_CERT_SIGN != 0)
            && self.path_len.is_none_or(|n| usize::from(n) >= below)
    }

    /// Whether this certificate names `host`: an IPv4 address only by an iPAddress of its
    /// subjectAltName; a host name by a dNSName there, or without that extension by its
    /// subject common name (RFC 6125 §6.4.4). IPv6 literals are not supported (no match).
    pub fn names(&self, host: &str) -> Result<bool, CertError> {
        let address = host.parse::<core::net::Ipv4Addr>().ok().map(|a| a.octets());
        let host = host.as_bytes();
        if let Some(alt_names) = self.alt_names {
            let mut names = Reader::new(alt_names);
            while !names.is_empty() {
                let name = names.read()?;
                let matched = match address {
                    Some(octets) => name.tag == tag::context_primitive(7) && name.value == octets,
                    None => name.tag == tag::context_primitive(2) && host_matches(name.value, host),
                };
                if matched {
                    return Ok(true);
                }
            }
            return Ok(false);
        }
        if address.is_some() {
            return Ok(false);
        }
        let mut rdns = Reader::new(self.subject).enter(tag::SEQUENCE)?;
        while !rdns.is_empty() {
            let mut set = rdns.enter(tag::SET)?;
            while !set.is_empty() {
                let mut attribute = set.enter(tag::SEQUENCE)?;
                let oid = attribute.expect(tag::OID)?.value;
                let value = attribute.read()?.value;
                if oid == asn1::oid::COMMON_NAME && host_matches(value, host) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

/// A certificate name against a host name: equal ignoring ASCII case, or a wildcard
/// `*.rest` standing for exactly one leftmost label of a name with at least three labels.
fn host_matches(pattern: &[u8], host: &[u8]) -> bool {
    let label_char = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.';
    if host.is_empty() || !host.iter().all(label_char) {
        return false;
    }
    if let Some(rest) = pattern.strip_prefix(b"*.") {
        let Some(dot) = host.iter().position(|&b| b == b'.') else {
            return false;
        };
        return dot > 0
            && rest.contains(&b'.')
            && rest.iter().all(label_char)
            && rest.eq_ignore_ascii_case(&host[dot + 1..]);
    }
    pattern.iter().all(label_char) && pattern.eq_ignore_ascii_case(host)
}

/// Checks the chain the gateway sent (server certificate first, then any intermediates in
/// any order) against the trust anchor and the host name; returns the server's public key,
/// which must then sign the handshake (TLS `CertificateVerify`).
pub fn verify_server<'a>(
    anchor_der: &[u8],
    chain: impl Iterator<Item = &'a [u8]> + Clone,
    host: &str,
) -> Result<PublicKey, CertError> {
    let anchor = Cert::parse(anchor_der)?;
    let mut entries = chain.clone();
    let leaf = Cert::parse(entries.next().ok_or(CertError::Malformed)?)?;
    if leaf.ca
        || leaf.server_auth == Some(false)
        || leaf
            .key_usage
            .is_some_and(|ku| ku & KU_DIGITAL_SIGNATURE == 0)
    {
        return Err(CertError::NotAServerCertificate);
    }
    if !leaf.names(host)? {
        return Err(CertError::HostMismatch);
    }
    let mut current = leaf;
    for below in 0..=MAX_INTERMEDIATES {
        if current.issuer == anchor.subject {
            if anchor.path_len.is_some_and(|n| usize::from(n) < below) {
                return Err(CertError::IssuerNotACa);
            }
            current.signed_by(anchor.public_key)?;
            let mut key = [0u8; 65];
            key.copy_from_slice(leaf.public_key);
            return Ok(key);
        }
        let issuer = chain
            .clone()
            .skip(1)
            .filter_map(|der| Cert::parse(der).ok())
            .find(|c| c.subject == current.issuer)
            .ok_or(CertError::UntrustedIssuer)?;
        if !issuer.may_issue(below) {
            return Err(CertError::IssuerNotACa);
        }
        current.signed_by(issuer.public_key)?;
        current = issuer;
    }
    Err(CertError::UntrustedIssuer)
}

#[cfg(test)]
pub(crate) mod tests;
