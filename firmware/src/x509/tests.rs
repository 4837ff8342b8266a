//! Chains made with rcgen (the station's own certificate library), checked the way a device
//! checks the gateway.

extern crate std;
use std::vec;
use std::vec::Vec;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::*;

pub(crate) struct Ca {
    pub(crate) der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca_params(name: &str, constraint: BasicConstraints) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(constraint);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

pub(crate) fn root(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = ca_params(name, BasicConstraints::Unconstrained);
    let der = params.self_signed(&key).unwrap().der().to_vec();
    Ca {
        der,
        issuer: Issuer::new(params, key),
    }
}

fn sub_ca(parent: &Ca, name: &str, constraint: BasicConstraints) -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = ca_params(name, constraint);
    let der = params
        .signed_by(&key, &parent.issuer)
        .unwrap()
        .der()
        .to_vec();
    Ca {
        der,
        issuer: Issuer::new(params, key),
    }
}

pub(crate) fn server_params(names: &[&str]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "fleet gateway");
    p.subject_alt_names = names
        .iter()
        .map(|n| SanType::DnsName((*n).try_into().unwrap()))
        .collect();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p
}

/// (certificate DER, its public key) signed by `ca`.
pub(crate) fn sign(params: &CertificateParams, ca: &Ca) -> (Vec<u8>, Vec<u8>) {
    let (cert, key) = sign_keyed(params, ca);
    (cert, key.public_key_raw().to_vec())
}

/// A certificate signed by `ca`, and its key pair.
pub(crate) fn sign_keyed(params: &CertificateParams, ca: &Ca) -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.der().to_vec(), key)
}

/// The station's shape: root → issuing CA (path length 0) → gateway certificate.
pub(crate) struct Pki {
    pub(crate) root: Ca,
    pub(crate) issuing: Ca,
}

pub(crate) fn pki() -> Pki {
    let root = root("Root");
    let issuing = sub_ca(&root, "Issuing", BasicConstraints::Constrained(0));
    Pki { root, issuing }
}

fn check(anchor: &Ca, chain: &[&[u8]], host: &str) -> Result<PublicKey, CertError> {
    verify_server(&anchor.der, chain.iter().copied(), host)
}

#[test]
fn the_stations_chain_verifies_and_yields_the_server_key() {
    let p = pki();
    let (server, key) = sign(&server_params(&["gateway.test"]), &p.issuing);
    assert_eq!(
        check(&p.root, &[&server, &p.issuing.der], "gateway.test").unwrap()[..],
        key[..]
    );
    // Host names compare without case; intermediates may come in any order, with extras.
    let other = root("Other");
    assert!(check(
        &p.root,
        &[&server, &other.der, &p.root.der, &p.issuing.der],
        "GATEWAY.test"
    )
    .is_ok());
    // A server certificate signed by the anchor itself needs no intermediate.
    let (direct, _) = sign(&server_params(&["gateway.test"]), &p.root);
    assert!(check(&p.root, &[&direct], "gateway.test").is_ok());
}

#[test]
fn host_names_wildcards_and_the_common_name_fallback() {
    let p = pki();
    let (server, _) = sign(&server_params(&["a.test", "*.fleet.test"]), &p.issuing);
    let chain: &[&[u8]] = &[&server, &p.issuing.der];
    assert!(check(&p.root, chain, "a.test").is_ok());
    assert!(check(&p.root, chain, "gw.fleet.test").is_ok());
    for host in [
        "b.test",
        "a.b.fleet.test",
        "fleet.test",
        ".fleet.test",
        "gw.fleet.test.",
    ] {
        assert_eq!(
            check(&p.root, chain, host),
            Err(CertError::HostMismatch),
            "{host}"
        );
    }
    // With a subjectAltName the common name does not count.
    assert_eq!(
        check(&p.root, chain, "fleet gateway"),
        Err(CertError::HostMismatch)
    );
    // Without one, it does.
    let mut cn_only = server_params(&[]);
    cn_only.distinguished_name = rcgen::DistinguishedName::new();
    cn_only
        .distinguished_name
        .push(DnType::OrganizationName, "acme");
    cn_only
        .distinguished_name
        .push(DnType::CommonName, "legacy.test");
    let (legacy, _) = sign(&cn_only, &p.issuing);
    assert!(check(&p.root, &[&legacy, &p.issuing.der], "legacy.test").is_ok());
    assert_eq!(
        check(&p.root, &[&legacy, &p.issuing.der], "other.test"),
        Err(CertError::HostMismatch)
    );
    assert!(
        !host_matches(b"*.test", b"a.test"),
        "wildcard over a single-label suffix"
    );
    assert!(!host_matches(b"a*.x.test", b"ab.x.test"));

    // An IP address matches an iPAddress entry only, never a name that spells it.
    let mut by_ip = server_params(&["10.0.2.2"]);
    by_ip
        .subject_alt_names
        .push(SanType::IpAddress([192, 168, 1, 20].into()));
    let (by_ip, _) = sign(&by_ip, &p.issuing);
    let chain: &[&[u8]] = &[&by_ip, &p.issuing.der];
    assert!(check(&p.root, chain, "192.168.1.20").is_ok());
    assert_eq!(
        check(&p.root, chain, "10.0.2.2"),
        Err(CertError::HostMismatch)
    );
    assert_eq!(
        check(&p.root, chain, "192.168.1.21"),
        Err(CertError::HostMismatch)
    );
}

#[test]
fn a_foreign_anchor_or_a_missing_intermediate_is_untrusted() {
    let p = pki();
    let (server, _) = sign(&server_params(&["gateway.test"]), &p.issuing);
    let foreign = root("Other");
    assert_eq!(
        check(&foreign, &[&server, &p.issuing.der], "gateway.test"),
        Err(CertError::UntrustedIssuer)
    );
    assert_eq!(
        check(&p.root, &[&server], "gateway.test"),
        Err(CertError::UntrustedIssuer)
    );
    // Same name as the real root, different key: the signature decides.
    let impostor = root("Root");
    assert_eq!(
        check(&impostor, &[&server, &p.issuing.der], "gateway.test"),
        Err(CertError::BadSignature)
    );
}

#[test]
fn certificates_for_other_purposes_are_not_server_certificates() {
    let p = pki();
    // A device certificate (clientAuth only) with the gateway's name in it.
    let mut device = server_params(&["gateway.test"]);
    device.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let (device, _) = sign(&device, &p.issuing);
    assert_eq!(
        check(&p.root, &[&device, &p.issuing.der], "gateway.test"),
        Err(CertError::NotAServerCertificate)
    );
    // A CA certificate presented as the server's.
    let mut ca_leaf = server_params(&["gateway.test"]);
    ca_leaf.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let (ca_leaf, _) = sign(&ca_leaf, &p.root);
    assert_eq!(
        check(&p.root, &[&ca_leaf], "gateway.test"),
        Err(CertError::NotAServerCertificate)
    );
    // A key that may not sign.
    let mut encipher_only = server_params(&["gateway.test"]);
    encipher_only.key_usages = vec![KeyUsagePurpose::KeyAgreement];
    let (encipher_only, _) = sign(&encipher_only, &p.issuing);
    assert_eq!(
        check(&p.root, &[&encipher_only, &p.issuing.der], "gateway.test"),
        Err(CertError::NotAServerCertificate)
    );
}

#[test]
fn intermediates_must_be_cas_within_their_path_length() {
    let p = pki();
    // A server certificate used as an issuer (its key signs another "server" certificate).
    let key = KeyPair::generate().unwrap();
    let params = server_params(&["gateway.test"]);
    let not_ca_der = params
        .signed_by(&key, &p.issuing.issuer)
        .unwrap()
        .der()
        .to_vec();
    let not_ca = Ca {
        der: not_ca_der,
        issuer: Issuer::new(params, key),
    };
    let (server, _) = sign(&server_params(&["gateway.test"]), &not_ca);
    assert_eq!(
        check(
            &p.root,
            &[&server, &not_ca.der, &p.issuing.der],
            "gateway.test"
        ),
        Err(CertError::IssuerNotACa)
    );
    // The issuing CA has path length 0: no CA below it.
    let deeper = sub_ca(&p.issuing, "Deeper", BasicConstraints::Unconstrained);
    let (server, _) = sign(&server_params(&["gateway.test"]), &deeper);
    assert_eq!(
        check(
            &p.root,
            &[&server, &deeper.der, &p.issuing.der],
            "gateway.test"
        ),
        Err(CertError::IssuerNotACa)
    );
    // Two intermediates under an unconstrained root are fine.
    let mid = sub_ca(&p.root, "Mid", BasicConstraints::Unconstrained);
    let low = sub_ca(&mid, "Low", BasicConstraints::Constrained(0));
    let (server, _) = sign(&server_params(&["gateway.test"]), &low);
    assert!(check(&p.root, &[&server, &low.der, &mid.der], "gateway.test").is_ok());
}

#[test]
fn unknown_critical_extensions_and_other_algorithms_are_refused() {
    let p = pki();
    let mut critical = server_params(&["gateway.test"]);
    let mut ext = CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0]);
    ext.set_criticality(true);
    critical.custom_extensions = vec![ext];
    let (server, _) = sign(&critical, &p.issuing);
    assert_eq!(
        check(&p.root, &[&server, &p.issuing.der], "gateway.test"),
        Err(CertError::UnknownCriticalExtension)
    );
    // The same extension, not critical, is ignored.
    let mut lenient = server_params(&["gateway.test"]);
    lenient.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 99999, 1],
        vec![5, 0],
    )];
    let (server, _) = sign(&lenient, &p.issuing);
    assert!(check(&p.root, &[&server, &p.issuing.der], "gateway.test").is_ok());

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let p384 = server_params(&["gateway.test"])
        .signed_by(&key, &p.issuing.issuer)
        .unwrap();
    assert_eq!(
        check(&p.root, &[p384.der(), &p.issuing.der], "gateway.test"),
        Err(CertError::Unsupported)
    );
}

#[test]
fn every_truncation_and_every_flipped_byte_is_refused_without_panicking() {
    let p = pki();
    let (server, _) = sign(&server_params(&["gateway.test"]), &p.issuing);
    for n in 0..server.len() {
        assert!(check(&p.root, &[&server[..n], &p.issuing.der], "gateway.test").is_err());
    }
    let mut flipped = server.clone();
    for i in 0..flipped.len() {
        for bit in [0x01, 0x80] {
            flipped[i] ^= bit;
            assert!(
                check(&p.root, &[&flipped, &p.issuing.der], "gateway.test").is_err(),
                "byte {i} ^ {bit:#x} accepted"
            );
            flipped[i] ^= bit;
        }
    }
    // The intermediate too: its signature or structure breaks.
    let mut issuing = p.issuing.der.clone();
    for i in 0..issuing.len() {
        issuing[i] ^= 0x01;
        assert!(check(&p.root, &[&server, &issuing], "gateway.test").is_err());
        issuing[i] ^= 0x01;
    }
}
