//! The client's side of a TLS 1.3 handshake with a client certificate, without I/O: it
//! writes the ClientHello, takes the gateway's handshake messages one at a time, and answers
//! with the keys to install and, at the end, the device's flight (Certificate,
//! CertificateVerify, Finished). [`super::Connection`] moves the bytes.

use p256::SecretKey;
use sha2::{Digest, Sha256};

use super::keys::{self, Hash};
use super::wire::{self, Message};
use super::{ChainCache, TlsError, VerifiedChain};
use crate::asn1::EcdsaDer;
use crate::ec;
use crate::x509::{self, CertError, PublicKey};

/// Longest certificate_request_context the device keeps (servers send an empty one on the
/// first handshake).
const CONTEXT_MAX: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ServerHello,
    EncryptedExtensions,
    /// CertificateRequest, or the Certificate when the gateway asks for none.
    CertificateRequest,
    Certificate,
    CertificateVerify,
    Finished,
    Done,
}

/// What the caller does after a message.
pub enum Step {
    /// Nothing: wait for the next message.
    Wait,
    /// The key exchange is done: read the gateway's next records with keys from the `server`
    /// handshake traffic secret, and write the device's (its flight, or an alert) with keys
    /// from the `client` one.
    HandshakeKeys { server: Hash, client: Hash },
    /// The gateway's side is done and checked. Send the `flight` bytes written into the
    /// caller's buffer under the client handshake keys, then use these application secrets.
    Done {
        flight: usize,
        client: Hash,
        server: Hash,
    },
}

/// The device's identity and what it checks the gateway against.
pub struct Peer<'a> {
    /// The device certificate (DER) and its key.
    pub cert_der: &'a [u8],
    pub key: &'a SecretKey,
    /// The trust anchor the gateway's chain must lead to, and the name it must carry.
    pub anchor_der: &'a [u8],
    pub host: &'a str,
    /// The chain that passed last time (see [`ChainCache`]).
    pub cache: &'a ChainCache,
}

pub struct Handshake<'a> {
    peer: Peer<'a>,
    state: State,
    ephemeral: SecretKey,
    transcript: Sha256,
    handshake_secret: Hash,
    client_secret: Hash,
    server_secret: Hash,
    server_key: Option<PublicKey>,
    /// Set by a CertificateRequest: the device must send its certificate with this context.
    requested: Option<heapless::Vec<u8, CONTEXT_MAX>>,
}

impl<'a> Handshake<'a> {
    /// A handshake with a fresh ephemeral key (the only use of `rng` apart from `random`).
    pub fn new(peer: Peer<'a>, rng: &mut impl rand_core::CryptoRngCore) -> Self {
        Handshake {
            peer,
            state: State::ServerHello,
            ephemeral: SecretKey::random(rng),
            transcript: Sha256::new(),
            handshake_secret: [0; 32],
            client_secret: [0; 32],
            server_secret: [0; 32],
            server_key: None,
            requested: None,
        }
    }

    /// Writes the ClientHello handshake message into `out`; returns its length.
    pub fn client_hello(&mut self, random: &[u8; 32], out: &mut [u8]) -> Result<usize, TlsError> {
        let share = ec::public_key(&self.ephemeral);
        let n = wire::emit_client_hello(out, random, self.peer.host, &share)?;
        self.transcript.update(&out[..n]);
        Ok(n)
    }

    fn hash(&self) -> Hash {
        self.transcript.clone().finalize().into()
    }

    /// Takes the gateway's next handshake message, `raw` (header included). The device's
    /// flight, if it is time for it, is written into `out`.
    pub fn receive(&mut self, raw: &[u8], out: &mut [u8]) -> Result<Step, TlsError> {
        let (Message { kind, body }, len) =
            wire::parse_handshake(raw).ok_or(TlsError::Decode("handshake message truncated"))?;
        if len != raw.len() {
            return Err(TlsError::Decode("handshake message length"));
        }
        let step = match (self.state, kind) {
            (State::ServerHello, wire::SERVER_HELLO) => {
                let hello = wire::parse_server_hello(body)?;
                let shared = ec::ecdh(&self.ephemeral, hello.key_share)
                    .ok_or(TlsError::Decode("gateway key share is not a P-256 point"))?;
                self.transcript.update(raw);
                let th = self.hash();
                self.handshake_secret = keys::handshake_secret(&shared);
                self.client_secret =
                    keys::derive_secret(&self.handshake_secret, b"c hs traffic", &th);
                self.server_secret =
                    keys::derive_secret(&self.handshake_secret, b"s hs traffic", &th);
                self.state = State::EncryptedExtensions;
                return Ok(Step::HandshakeKeys {
                    server: self.server_secret,
                    client: self.client_secret,
                });
            }
            (State::EncryptedExtensions, wire::ENCRYPTED_EXTENSIONS) => {
                let mut c = wire::Cursor::new(body, "EncryptedExtensions malformed");
                c.vec(2)?;
                c.end()?;
                self.state = State::CertificateRequest;
                Step::Wait
            }
            (State::CertificateRequest, wire::CERTIFICATE_REQUEST) => {
                let context = wire::parse_certificate_request(body)?;
                self.requested = Some(
                    heapless::Vec::from_slice(context)
                        .map_err(|_| TlsError::Decode("certificate request context too long"))?,
                );
                self.state = State::Certificate;
                Step::Wait
            }
            (State::CertificateRequest | State::Certificate, wire::CERTIFICATE) => {
                self.server_key = Some(self.check_chain(body)?);
                self.state = State::CertificateVerify;
                Step::Wait
            }
            (State::CertificateVerify, wire::CERTIFICATE_VERIFY) => {
                let der = wire::parse_certificate_verify(body)?;
                let signature = EcdsaDer::decode(der)
                    .map_err(|_| TlsError::Decode("CertificateVerify signature is not DER"))?;
                let key = self.server_key.ok_or(TlsError::BadSignature)?;
                let content = wire::signed_content(true, &self.hash());
                if !ec::verify(&key, &ec::digest(&content), &signature) {
                    return Err(TlsError::BadSignature);
                }
                self.state = State::Finished;
                Step::Wait
            }
            (State::Finished, wire::FINISHED) => {
                let expected = keys::finished(&self.server_secret, &self.hash());
                // Compared in full, whatever differs first.
                let diff = expected
                    .iter()
                    .zip(body)
                    .fold(body.len() ^ 32, |d, (a, b)| d | usize::from(a ^ b));
                if diff != 0 {
                    return Err(TlsError::BadFinished);
                }
                self.transcript.update(raw);
                let step = self.finish(out)?;
                self.state = State::Done;
                return Ok(step);
            }
            _ => return Err(TlsError::Decode("handshake message out of order")),
        };
        self.transcript.update(raw);
        Ok(step)
    }

    /// The gateway's chain: from the cache when the same bytes passed before for the same
    /// anchor and host, checked otherwise. The cache keeps the last chain that passed.
    fn check_chain(&self, body: &[u8]) -> Result<PublicKey, TlsError> {
        let chain = wire::parse_certificate(body)?;
        let digest = chain_digest(self.peer.anchor_der, self.peer.host, chain.clone());
        let key = match self.peer.cache.get() {
            Some(hit) if hit.digest == digest => hit.key,
            _ => {
                if self.peer.host.is_empty() {
                    return Err(TlsError::Certificate(CertError::HostMismatch));
                }
                x509::verify_server(self.peer.anchor_der, chain, self.peer.host)
                    .map_err(TlsError::Certificate)?
            }
        };
        self.peer.cache.set(Some(VerifiedChain { digest, key }));
        Ok(key)
    }

    /// After the gateway's Finished: the application secrets, and the device's flight.
    fn finish(&mut self, out: &mut [u8]) -> Result<Step, TlsError> {
        let master = keys::master_secret(&self.handshake_secret);
        let th = self.hash();
        let client = keys::derive_secret(&master, b"c ap traffic", &th);
        let server = keys::derive_secret(&master, b"s ap traffic", &th);
        let mut n = 0;
        if let Some(context) = &self.requested {
            let m = wire::emit_certificate(out, context, self.peer.cert_der)?;
            self.transcript.update(&out[..m]);
            n += m;
            let content = wire::signed_content(false, &self.hash());
            let signature =
                ec::sign(self.peer.key, &ec::digest(&content)).map_err(|_| TlsError::Key)?;
            let der = EcdsaDer::encode(&signature);
            let m = wire::emit_certificate_verify(&mut out[n..], der.as_ref())?;
            self.transcript.update(&out[n..n + m]);
            n += m;
        }
        let verify_data = keys::finished(&self.client_secret, &self.hash());
        n += wire::emit_handshake(&mut out[n..], wire::FINISHED, |w| w.put(&verify_data))?;
        Ok(Step::Done {
            flight: n,
            client,
            server,
        })
    }
}

/// What [`ChainCache`] compares: SHA-256 over the anchor, the host name and each certificate,
/// each preceded by its length.
pub(super) fn chain_digest<'c>(
    anchor: &'c [u8],
    host: &'c str,
    chain: impl Iterator<Item = &'c [u8]>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [anchor, host.as_bytes()].into_iter().chain(chain) {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.finalize().into()
}
