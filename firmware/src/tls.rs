//! The device side of mutual TLS (embedded-tls, TLS 1.3, P-256).
//!
//! [`DeviceCrypto`] hands embedded-tls the device certificate and key from the identity bundle
//! and a verifier that checks the gateway's chain against the bundle's trust anchor and the
//! gateway host name. There is no way to build it without verification.

use core::cell::Cell;

use embedded_tls::{
    Aes128GcmSha256, Certificate, CertificateEntryRef, CertificateRef, CertificateVerifyRef,
    CryptoProvider, CryptoRngCore, SignatureScheme, TlsCipherSuite, TlsError, TlsVerifier,
};
use p256::ecdsa::signature::{Error as SignatureError, SignerMut};
use p256::SecretKey;
use sha2::Digest;

use crate::asn1::{self, EcdsaDer};
use crate::bundle::Bundle;
use crate::ec;
use crate::x509::{self, CertError, PublicKey};

/// Longest gateway host name (DNS: 253).
pub const HOST_MAX: usize = 253;

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
    verifier: ServerVerifier<'a>,
    key: SecretKey,
    cert_der: &'a [u8],
}

impl<'a, R: CryptoRngCore> DeviceCrypto<'a, R> {
    /// Fails with [`TlsError::InvalidPrivateKey`] when the bundle has no key (a secure
    /// element holds it; that path needs a board-specific signer).
    /// Why the gateway's chain was refused goes to `refused`.
    /// `cache` outlives connections: see [`ChainCache`].
    pub fn new(
        bundle: &Bundle<'a>,
        rng: R,
        refused: &'a Cell<Option<CertError>>,
        cache: &'a ChainCache,
    ) -> Result<Self, TlsError> {
        let key_der = bundle.private_key_der.ok_or(TlsError::InvalidPrivateKey)?;
        let key = asn1::sec1_private_key(key_der).map_err(|_| TlsError::InvalidPrivateKey)?;
        Ok(DeviceCrypto {
            rng,
            verifier: ServerVerifier::new(bundle.trust_anchor_der, refused, cache),
            key,
            cert_der: bundle.cert_der,
        })
    }
}

impl<R: CryptoRngCore> CryptoProvider for DeviceCrypto<'_, R> {
    type CipherSuite = Suite;
    type Signature = EcdsaDer;

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Self::CipherSuite>, TlsError> {
        Ok(&mut self.verifier)
    }

    fn signer(&mut self) -> Result<(impl SignerMut<Self::Signature>, SignatureScheme), TlsError> {
        Ok((DerSigner(&self.key), SignatureScheme::EcdsaSecp256r1Sha256))
    }

    fn client_cert(&mut self) -> Option<Certificate<impl AsRef<[u8]>>> {
        Some(Certificate::X509(self.cert_der))
    }
}

/// ECDSA P-256 signatures ([`ec::sign`]) in the DER form TLS carries.
struct DerSigner<'k>(&'k SecretKey);

impl SignerMut<EcdsaDer> for DerSigner<'_> {
    fn try_sign(&mut self, msg: &[u8]) -> Result<EcdsaDer, SignatureError> {
        let signature = ec::sign(self.0, &ec::digest(msg))?;
        Ok(EcdsaDer::encode(&signature))
    }
}

/// The gateway chain that last passed [`x509::verify_server`]: a digest of everything that
/// check read (trust anchor, host name, every certificate) and the server key it gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedChain {
    digest: [u8; 32],
    key: PublicKey,
}

/// Kept across connections (in [`crate::device::Buffers`]): a gateway that presents the very
/// same certificates as last time, for the same anchor and host name, is not checked again.
/// The check is deterministic (no clock), so the answer would be the same; its two chain
/// signatures are most of a reconnect's cost with RustCrypto's P-256. The gateway's
/// `CertificateVerify` is checked on every handshake: it proves the key is the gateway's.
pub type ChainCache = Cell<Option<VerifiedChain>>;

/// What [`ChainCache`] compares: SHA-256 over the anchor, the host name and each certificate,
/// each preceded by its length.
fn chain_digest<'c>(
    anchor: &'c [u8],
    host: &'c str,
    chain: impl Iterator<Item = &'c [u8]>,
) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    for part in [anchor, host.as_bytes()].into_iter().chain(chain) {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}

/// The gateway's side of the handshake, checked: its chain against the bundle's trust
/// anchor and host name ([`x509::verify_server`], or [`ChainCache`]), then its
/// `CertificateVerify` signature over the handshake with the key of the certificate that
/// passed.
pub struct ServerVerifier<'a> {
    anchor_der: &'a [u8],
    host: heapless::String<HOST_MAX>,
    /// Set once the chain passed: the server's key and the transcript up to its Certificate.
    verified: Option<(PublicKey, <Suite as TlsCipherSuite>::Hash)>,
    /// Why the last chain was refused (embedded-tls reports only `InvalidCertificate`).
    refused: &'a Cell<Option<CertError>>,
    cache: &'a ChainCache,
}

impl<'a> ServerVerifier<'a> {
    pub fn new(
        anchor_der: &'a [u8],
        refused: &'a Cell<Option<CertError>>,
        cache: &'a ChainCache,
    ) -> Self {
        ServerVerifier {
            anchor_der,
            host: heapless::String::new(),
            verified: None,
            refused,
            cache,
        }
    }
}

impl TlsVerifier<Suite> for ServerVerifier<'_> {
    fn set_hostname_verification(&mut self, hostname: &str) -> Result<(), TlsError> {
        self.host.clear();
        self.host
            .push_str(hostname)
            .map_err(|_| TlsError::InsufficientSpace)
    }

    fn verify_certificate(
        &mut self,
        transcript: &<Suite as TlsCipherSuite>::Hash,
        cert: CertificateRef,
    ) -> Result<(), TlsError> {
        self.verified = None;
        // No host name, no connection: a certificate is only ever checked against one.
        if self.host.is_empty() {
            self.refused.set(Some(CertError::HostMismatch));
            return Err(TlsError::InvalidCertificate);
        }
        let chain = || {
            cert.entries.iter().filter_map(|e| match e {
                CertificateEntryRef::X509(der) => Some(*der),
                CertificateEntryRef::RawPublicKey(_) => None,
            })
        };
        let digest = chain_digest(self.anchor_der, &self.host, chain());
        let checked = match self.cache.get() {
            Some(hit) if hit.digest == digest => Ok(hit.key),
            _ => x509::verify_server(self.anchor_der, chain(), &self.host),
        };
        match checked {
            Ok(key) => {
                self.cache.set(Some(VerifiedChain { digest, key }));
                self.refused.set(None);
                self.verified = Some((key, transcript.clone()));
                Ok(())
            }
            Err(e) => {
                self.refused.set(Some(e));
                Err(TlsError::InvalidCertificate)
            }
        }
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef) -> Result<(), TlsError> {
        let (key, transcript) = self.verified.take().ok_or(TlsError::InvalidCertificate)?;
        if verify.signature_scheme != SignatureScheme::EcdsaSecp256r1Sha256 {
            return Err(TlsError::InvalidSignatureScheme);
        }
        // RFC 8446 §4.4.3: 64 spaces, the context string, a zero byte, the transcript hash.
        let mut message = [0x20u8; 64 + 34 + 32];
        message[64..98].copy_from_slice(b"TLS 1.3, server CertificateVerify\0");
        message[98..].copy_from_slice(&transcript.finalize());
        let signature = EcdsaDer::decode(verify.signature).map_err(|_| TlsError::DecodeError)?;
        if ec::verify(&key, &ec::digest(&message), &signature) {
            Ok(())
        } else {
            Err(TlsError::InvalidSignature)
        }
    }
}

#[cfg(test)]
mod tests;
