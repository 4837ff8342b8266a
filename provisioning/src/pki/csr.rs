//! Certificate signing requests from devices: what the station accepts, and the one thing
//! it takes from them (the public key).

use crate::error::{CsrError, Error};

/// Whether a public key is an EC key on P-256 (the only kind fleet devices use).
pub(super) fn is_p256(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> bool {
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
    pub(super) spki: rcgen::SubjectPublicKeyInfo,
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
