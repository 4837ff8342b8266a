//! Taking over an issuing CA made by another PKI: what it must be to serve fleet devices.

use super::csr::is_p256;
use super::{Ca, CaCert};
use crate::error::Error;

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
