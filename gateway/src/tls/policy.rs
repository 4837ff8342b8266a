//! What the gateway asks of a client certificate beyond rustls' WebPKI verification: a key
//! strong enough, and a KeyUsage (when the certificate has one) that allows signing.
//!
//! rustls-webpki ignores the KeyUsage extension of an end-entity certificate (see
//! `verify_cert.rs` in rustls-webpki 0.103: "For cert validation, we ignore the KeyUsage
//! extension"); it only checks cRLSign on CRL issuers. RFC 5280 §4.2.1.3 says a key whose
//! KeyUsage lacks digitalSignature must not be used to verify signatures other than on
//! certificates and CRLs, and in TLS 1.3 the client proves its key with a signature
//! (CertificateVerify, RFC 8446 §4.4.2.2; TLS 1.2 client auth signs too), so such a
//! certificate is refused, as OpenSSL (and so Mosquitto) refuses it.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::DigitallySignedStruct;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a client certificate's key is refused before its chain is even looked at.
#[derive(Debug)]
pub struct WeakKey(pub String);

impl std::fmt::Display for WeakKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client certificate key is too weak: {}", self.0)
    }
}

impl std::error::Error for WeakKey {}

/// Why a client certificate's KeyUsage extension does not allow TLS client authentication.
#[derive(Debug)]
pub struct KeyUsageRefused(pub String);

impl std::fmt::Display for KeyUsageRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client certificate key usage does not allow client authentication: {}",
            self.0
        )
    }
}

impl std::error::Error for KeyUsageRefused {}

/// The keys a client certificate may carry: EC of at least 256 bits, RSA of at least 2048
/// bits, or Ed25519. `Err` says what the key is.
pub fn check_client_key(der: &[u8]) -> Result<(), WeakKey> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| WeakKey(format!("the certificate cannot be parsed ({e})")))?;
    key_strength(&cert)
}

fn key_strength(cert: &X509Certificate<'_>) -> Result<(), WeakKey> {
    use x509_parser::public_key::PublicKey;
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

/// A client certificate without a KeyUsage extension, or with one that has digitalSignature,
/// may sign the handshake; otherwise `Err` says which usages it has.
pub fn check_key_usage(der: &[u8]) -> Result<(), KeyUsageRefused> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| KeyUsageRefused(format!("the certificate cannot be parsed ({e})")))?;
    key_usage(&cert)
}

fn key_usage(cert: &X509Certificate<'_>) -> Result<(), KeyUsageRefused> {
    match cert.key_usage() {
        Ok(None) => Ok(()),
        Ok(Some(ku)) if ku.value.digital_signature() => Ok(()),
        Ok(Some(ku)) => Err(KeyUsageRefused(format!(
            "KeyUsage has {} but not digitalSignature (RFC 5280 4.2.1.3, RFC 8446 4.4.2.2)",
            if ku.value.flags == 0 {
                "no usage".to_owned()
            } else {
                ku.value.to_string()
            }
        ))),
        Err(e) => Err(KeyUsageRefused(format!(
            "the KeyUsage extension cannot be read ({e})"
        ))),
    }
}

fn refusal(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}

/// rustls' WebPKI client verifier behind the gateway's policy: a certificate with a weak key
/// is refused as such ("weak_key") rather than failing later on its signature; a certificate
/// that verifies but whose KeyUsage forbids signing is refused ("bad_key_usage").
#[derive(Debug)]
pub(super) struct ClientPolicy(pub(super) Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for ClientPolicy {
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
        let (_, cert) = X509Certificate::from_der(end_entity)
            .map_err(|e| refusal(WeakKey(format!("the certificate cannot be parsed ({e})"))))?;
        key_strength(&cert).map_err(refusal)?;
        let verdict = self.0.verify_client_cert(end_entity, intermediates, now);
        if let Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) = verdict {
            super::note_revoked(end_entity);
        }
        // After the chain: a certificate from elsewhere is `unknown_ca`, whatever its usage.
        let verified = verdict?;
        key_usage(&cert).map_err(refusal)?;
        Ok(verified)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, KeyUsagePurpose};

    fn cert(usages: &[KeyUsagePurpose]) -> Vec<u8> {
        let mut p = CertificateParams::new(vec!["d1".into()]).unwrap();
        p.key_usages = usages.to_vec();
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn key_usage_must_allow_signing_when_present() {
        assert!(check_key_usage(&cert(&[])).is_ok(), "no extension");
        assert!(check_key_usage(&cert(&[KeyUsagePurpose::DigitalSignature])).is_ok());
        assert!(check_key_usage(&cert(&[
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement
        ]))
        .is_ok());
        let refused = check_key_usage(&cert(&[KeyUsagePurpose::KeyAgreement])).unwrap_err();
        assert!(
            refused.to_string().contains("Key Agreement") && refused.0.contains("digitalSignature"),
            "{refused}"
        );
        assert!(check_key_usage(&cert(&[KeyUsagePurpose::ContentCommitment])).is_err());
        assert!(check_key_usage(&cert(&[KeyUsagePurpose::KeyEncipherment])).is_err());
        assert!(check_key_usage(b"not a certificate").is_err());
    }
}
