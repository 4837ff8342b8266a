//! The TLS 1.3 key schedule for TLS_AES_128_GCM_SHA256 (RFC 8446 §7) and record protection.
//!
//! HKDF (and through it HMAC) is RustCrypto's `hkdf`, AES-GCM is `aes-gcm`; what is here is the
//! schedule's labels and the record nonce, which no crate offers without a whole TLS stack.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;

use super::TlsError;

/// A SHA-256 output: secrets, transcript hashes, Finished values.
pub type Hash = [u8; 32];

/// AES-GCM's tag length.
pub const TAG_LEN: usize = 16;

/// HKDF-Extract.
pub fn extract(salt: &[u8], ikm: &[u8]) -> Hash {
    Hkdf::<Sha256>::extract(Some(salt), ikm).0.into()
}

/// HKDF-Expand-Label (§7.1), for outputs of at most one hash length.
pub fn expand_label(secret: &Hash, label: &[u8], context: &[u8], out: &mut [u8]) {
    // Labels here are at most 12 bytes, contexts at most 32.
    let mut info = [0u8; 2 + 1 + 6 + 12 + 1 + 32];
    let n = 2 + 1 + 6 + label.len() + 1 + context.len();
    info[..2].copy_from_slice(&(out.len() as u16).to_be_bytes());
    info[2] = (6 + label.len()) as u8;
    info[3..9].copy_from_slice(b"tls13 ");
    info[9..9 + label.len()].copy_from_slice(label);
    info[9 + label.len()] = context.len() as u8;
    info[10 + label.len()..n].copy_from_slice(context);
    // A 32-byte PRK is always long enough and one block is never too long: cannot fail.
    if let Ok(hkdf) = Hkdf::<Sha256>::from_prk(secret) {
        let _ = hkdf.expand(&info[..n], out);
    }
}

/// Derive-Secret (§7.1) from a transcript hash.
pub fn derive_secret(secret: &Hash, label: &[u8], transcript: &Hash) -> Hash {
    let mut out = [0u8; 32];
    expand_label(secret, label, transcript, &mut out);
    out
}

/// SHA-256 of nothing: the transcript of the "derived" steps.
fn empty_hash() -> Hash {
    use sha2::Digest;
    Sha256::digest([]).into()
}

/// The handshake secret from the ECDHE shared secret (no PSK).
pub fn handshake_secret(shared: &[u8; 32]) -> Hash {
    let early = extract(&[0u8; 32], &[0u8; 32]);
    extract(&derive_secret(&early, b"derived", &empty_hash()), shared)
}

/// The master secret that follows `handshake_secret`.
pub fn master_secret(handshake_secret: &Hash) -> Hash {
    extract(
        &derive_secret(handshake_secret, b"derived", &empty_hash()),
        &[0u8; 32],
    )
}

/// The Finished value for `transcript` under `base_key`, a handshake traffic secret (§4.4.4):
/// HMAC(finished_key, transcript), which is what HKDF-Extract computes.
pub fn finished(base_key: &Hash, transcript: &Hash) -> Hash {
    let mut key = [0u8; 32];
    expand_label(base_key, b"finished", &[], &mut key);
    extract(&key, transcript)
}

/// One direction of record protection: a traffic secret, its key and IV, and the sequence
/// number of the next record.
pub struct Protection {
    secret: Hash,
    aead: Aes128Gcm,
    iv: [u8; 12],
    seq: u64,
}

impl Protection {
    pub fn new(secret: Hash) -> Self {
        let mut key = [0u8; 16];
        let mut iv = [0u8; 12];
        expand_label(&secret, b"key", &[], &mut key);
        expand_label(&secret, b"iv", &[], &mut iv);
        Protection {
            secret,
            aead: Aes128Gcm::new(&key.into()),
            iv,
            seq: 0,
        }
    }

    /// The next generation of this direction's keys (KeyUpdate, §7.2).
    pub fn update(&mut self) {
        let mut next = [0u8; 32];
        expand_label(&self.secret, b"traffic upd", &[], &mut next);
        *self = Protection::new(next);
    }

    /// The per-record nonce (§5.3), and the sequence number moves on.
    fn nonce(&mut self) -> Result<Nonce<aes_gcm::aead::consts::U12>, TlsError> {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        // 2^64 records never happen; wrapping would reuse a nonce, so refuse instead.
        self.seq = self.seq.checked_add(1).ok_or(TlsError::Exhausted)?;
        Ok(nonce.into())
    }

    /// Encrypts `record[5..5 + len]` (the plaintext with its content type byte already
    /// appended) in place, writes the record header in front and the tag behind, and returns
    /// the whole record's length. `record` must have room for the tag.
    pub fn seal(&mut self, record: &mut [u8], len: usize) -> Result<usize, TlsError> {
        let total = 5 + len + TAG_LEN;
        if record.len() < total || len + TAG_LEN > super::wire::MAX_CIPHERTEXT {
            return Err(TlsError::TooLarge);
        }
        record[..3].copy_from_slice(&[super::wire::APPLICATION_DATA, 3, 3]);
        record[3..5].copy_from_slice(&((len + TAG_LEN) as u16).to_be_bytes());
        let nonce = self.nonce()?;
        let (header, rest) = record.split_at_mut(5);
        let (body, tag) = rest.split_at_mut(len);
        let t = self
            .aead
            .encrypt_in_place_detached(&nonce, header, body)
            .map_err(|_| TlsError::TooLarge)?;
        tag[..TAG_LEN].copy_from_slice(&t);
        Ok(total)
    }

    /// Decrypts the protected record `record` (header included) in place. Returns the inner
    /// content type and the length of its content, which starts at `record[5]`.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(u8, usize), TlsError> {
        if record.len() < 5 + TAG_LEN + 1 {
            return Err(TlsError::Decode("protected record shorter than its tag"));
        }
        let nonce = self.nonce()?;
        let (header, rest) = record.split_at_mut(5);
        let (body, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
        let tag = Tag::clone_from_slice(tag);
        self.aead
            .decrypt_in_place_detached(&nonce, header, body, &tag)
            .map_err(|_| TlsError::BadRecordMac)?;
        // TLSInnerPlaintext: content, the type, then zero padding (§5.2).
        let end = body
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(TlsError::Decode("protected record without a content type"))?;
        Ok((body[end], end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> std::vec::Vec<u8> {
        let text: std::string::String = text.split_whitespace().collect();
        (0..text.len() / 2)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    extern crate std;

    /// RFC 8448 §3 (simple 1-RTT handshake): from the shared secret to the server's
    /// handshake traffic key and IV, and its Finished key.
    #[test]
    fn rfc8448_handshake_keys() {
        let shared = hex("8b d4 05 4f b5 5b 9d 63 fd fb ac f9 f0 4b 9f 0d
                          35 e6 d6 3f 53 75 63 ef d4 62 72 90 0f 89 49 2d");
        let hs = handshake_secret(&shared.try_into().unwrap());
        assert_eq!(
            hs.to_vec(),
            hex("1d c8 26 e9 36 06 aa 6f dc 0a ad c1 2f 74 1b 01
                 04 6a a6 b9 9f 69 1e d2 21 a9 f0 ca 04 3f be ac")
        );
        // Transcript hash of ClientHello..ServerHello, from the RFC.
        let transcript: Hash = hex("86 0c 06 ed c0 78 58 ee 8e 78 f0 e7 42 8c 58 ed
                                    d6 b4 3f 2c a3 e6 e9 5f 02 ed 06 3c f0 e1 ca d8")
        .try_into()
        .unwrap();
        let s_hs = derive_secret(&hs, b"s hs traffic", &transcript);
        assert_eq!(
            s_hs.to_vec(),
            hex("b6 7b 7d 69 0c c1 6c 4e 75 e5 42 13 cb 2d 37 b4
                 e9 c9 12 bc de d9 10 5d 42 be fd 59 d3 91 ad 38")
        );
        let mut key = [0u8; 16];
        let mut iv = [0u8; 12];
        expand_label(&s_hs, b"key", &[], &mut key);
        expand_label(&s_hs, b"iv", &[], &mut iv);
        assert_eq!(
            key.to_vec(),
            hex("3f ce 51 60 09 c2 17 27 d0 f2 e4 e8 6e e4 03 bc")
        );
        assert_eq!(iv.to_vec(), hex("5d 31 3e b2 67 12 76 ee 13 00 0b 30"));
        assert_eq!(
            master_secret(&hs).to_vec(),
            hex("18 df 06 84 3d 13 a0 8b f2 a4 49 84 4c 5f 8a 47
                 80 01 bc 4d 4c 62 79 84 d5 a4 1d a8 d0 40 29 19")
        );
    }

    #[test]
    fn a_sealed_record_opens_once_and_not_after_a_flipped_bit() {
        let secret = [5u8; 32];
        let (mut tx, mut rx) = (Protection::new(secret), Protection::new(secret));
        let mut record = [0u8; 64];
        record[5..10].copy_from_slice(b"hello");
        record[10] = super::super::wire::APPLICATION_DATA;
        let n = tx.seal(&mut record, 6).unwrap();
        assert_eq!(n, 5 + 6 + TAG_LEN);
        let mut copy = record;
        assert_eq!(rx.open(&mut record[..n]).unwrap(), (23, 5));
        assert_eq!(&record[5..10], b"hello");
        // The same record again has the wrong sequence number; a flipped bit fails too.
        let mut again = copy;
        assert_eq!(rx.open(&mut again[..n]), Err(TlsError::BadRecordMac));
        let mut rx2 = Protection::new(secret);
        copy[7] ^= 1;
        assert_eq!(rx2.open(&mut copy[..n]), Err(TlsError::BadRecordMac));
    }

    #[test]
    fn key_update_changes_the_keys_on_both_sides_alike() {
        let (mut tx, mut rx) = (Protection::new([1u8; 32]), Protection::new([1u8; 32]));
        tx.update();
        let mut record = [0u8; 64];
        record[5] = 23;
        let n = tx.seal(&mut record, 1).unwrap();
        let mut stale = record;
        assert_eq!(rx.open(&mut stale[..n]), Err(TlsError::BadRecordMac));
        let mut rx = Protection::new([1u8; 32]);
        rx.update();
        assert_eq!(rx.open(&mut record[..n]).unwrap(), (23, 0));
    }
}
