//! Private keys: CA keys protected by a passphrase (encrypted PKCS#8), and the conversions
//! between PKCS#8 and the SEC1 form identity bundles store.

use rand_core::{OsRng, RngCore};
use rcgen::KeyPair;

use crate::error::{Error, KeyError};

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
