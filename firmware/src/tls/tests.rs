//! The gateway verifier as embedded-tls drives it, with rcgen chains: what the chain cache
//! may and may not skip.

extern crate std;

use embedded_tls::{CertificateEntryRef, CertificateRef, TlsVerifier};
use sha2::Digest;

use super::*;
use crate::x509::tests::{pki, server_params, sign};

fn certificate<'a>(chain: &[&'a [u8]]) -> CertificateRef<'a> {
    let mut c = CertificateRef::with_context(&[]);
    for der in chain {
        c.entries.push(CertificateEntryRef::X509(der)).unwrap();
    }
    c
}

fn check(v: &mut ServerVerifier<'_>, host: &str, chain: &[&[u8]]) -> Result<(), TlsError> {
    v.set_hostname_verification(host)?;
    v.verify_certificate(&sha2::Sha256::new(), certificate(chain))
}

#[test]
fn the_same_chain_is_taken_from_the_cache_and_anything_else_is_checked() {
    let p = pki();
    let (server, key) = sign(&server_params(&["gateway.test"]), &p.issuing);
    let refused = Cell::new(None);
    let cache = ChainCache::new(None);

    let mut v = ServerVerifier::new(&p.root.der, &refused, &cache);
    check(&mut v, "gateway.test", &[&server, &p.issuing.der]).unwrap();
    let cached = cache.get().expect("a verified chain is remembered");
    assert_eq!(cached.key[..], key[..]);

    // The next connection, same bytes: the key comes from the cache, not from a new check.
    // (A marker key stands in for the cached one to tell the two apart.)
    let marker = [9u8; 65];
    cache.set(Some(VerifiedChain {
        digest: cached.digest,
        key: marker,
    }));
    let mut v = ServerVerifier::new(&p.root.der, &refused, &cache);
    check(&mut v, "gateway.test", &[&server, &p.issuing.der]).unwrap();
    assert_eq!(v.verified.as_ref().map(|(k, _)| *k), Some(marker));
    cache.set(Some(cached));

    // One flipped bit in the server certificate's signature: checked again, refused, and the
    // good chain stays cached.
    let mut forged = server.clone();
    *forged.last_mut().unwrap() ^= 1;
    let mut v = ServerVerifier::new(&p.root.der, &refused, &cache);
    assert!(matches!(
        check(&mut v, "gateway.test", &[&forged, &p.issuing.der]),
        Err(TlsError::InvalidCertificate)
    ));
    assert!(refused.get().is_some());
    assert_eq!(cache.get(), Some(cached));

    // The same certificates for another host name, or under another anchor, are checked too.
    let mut v = ServerVerifier::new(&p.root.der, &refused, &cache);
    assert!(matches!(
        check(&mut v, "other.test", &[&server, &p.issuing.der]),
        Err(TlsError::InvalidCertificate)
    ));
    assert_eq!(refused.get(), Some(CertError::HostMismatch));
    let other = pki();
    let mut v = ServerVerifier::new(&other.root.der, &refused, &cache);
    assert!(matches!(
        check(&mut v, "gateway.test", &[&server, &p.issuing.der]),
        Err(TlsError::InvalidCertificate)
    ));
    // (Another root of the same name: the issuing CA's signature is what fails.)
    assert_eq!(refused.get(), Some(CertError::BadSignature));
}
