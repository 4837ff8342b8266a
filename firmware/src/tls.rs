//! The device side of mutual TLS (embedded-tls, TLS 1.3, P-256).
//!
//! [`DeviceCrypto`] hands embedded-tls the device certificate and key from the identity bundle
//! and a verifier that checks the gateway's chain against the bundle's trust anchor and the
//! gateway host name. There is no way to build it without verification.

use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CryptoProvider, CryptoRngCore, NoClock, SignatureScheme,
    TlsError, TlsVerifier,
};
use p256::ecdsa::SigningKey;
use p256::SecretKey;

use crate::bundle::Bundle;

/// Largest server certificate chain (all certificates' DER together) the verifier keeps.
pub const SERVER_CHAIN_MAX: usize = 2048;

/// Largest TLS record payload the gateway sends to devices (`fleet-gateway` sets rustls'
/// `max_fragment_size` to this). TLS allows 16 KiB records;
/// a device that had to buffer one would need 12 KiB more RAM than the MQTT packets it
/// accepts (at most [`crate::device::MAX_PACKET`]) ever call for.
pub const MAX_RECORD: usize = 4096;

/// TLS record buffer sizes. The read buffer holds one whole record from the gateway
/// ([`MAX_RECORD`] plus the AEAD tag and content type); the write buffer the largest MQTT
/// packet the device sends plus record overhead, and the handshake's client certificate.
pub const READ_BUFFER: usize = MAX_RECORD + 64;
pub const WRITE_BUFFER: usize = 4096;

/// The cipher suite the device offers.
pub type Suite = Aes128GcmSha256;

/// Crypto for one TLS connection of a device, built from its identity bundle.
///
/// Boards have no reliable clock, so certificate validity times are not checked here: the
/// gateway, which knows the time, tells the device when its certificate nears expiry.
pub struct DeviceCrypto<'a, R> {
    rng: R,
    verifier: CertVerifier<'a, Suite, NoClock, SERVER_CHAIN_MAX>,
    key_der: &'a [u8],
    cert_der: &'a [u8],
}

impl<'a, R: CryptoRngCore> DeviceCrypto<'a, R> {
    /// Fails with [`TlsError::InvalidPrivateKey`] when the bundle has no key (a secure
    /// element holds it; that path needs a board-specific signer).
    pub fn new(bundle: &Bundle<'a>, rng: R) -> Result<Self, TlsError> {
        let key_der = bundle.private_key_der.ok_or(TlsError::InvalidPrivateKey)?;
        SecretKey::from_sec1_der(key_der).map_err(|_| TlsError::InvalidPrivateKey)?;
        Ok(DeviceCrypto {
            rng,
            verifier: CertVerifier::new(Certificate::X509(bundle.trust_anchor_der)),
            key_der,
            cert_der: bundle.cert_der,
        })
    }
}

impl<R: CryptoRngCore> CryptoProvider for DeviceCrypto<'_, R> {
    type CipherSuite = Suite;
    type Signature = p256::ecdsa::DerSignature;

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Self::CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(
        &mut self,
    ) -> Result<
        (
            impl p256::ecdsa::signature::SignerMut<Self::Signature>,
            SignatureScheme,
        ),
        TlsError,
    > {
        let secret =
            SecretKey::from_sec1_der(self.key_der).map_err(|_| TlsError::InvalidPrivateKey)?;
        Ok((
            SigningKey::from(&secret),
            SignatureScheme::EcdsaSecp256r1Sha256,
        ))
    }

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        Some(Certificate::X509(self.cert_der))
    }
}
