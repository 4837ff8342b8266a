//! The PKI on its own: the CA hierarchy, what each kind of certificate says, CRLs,
//! passphrase-protected keys and CSR checks.

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::*;
use crate::error::{CrlError, CsrError};

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

fn cn(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

/// A root and an issuing CA, as a station makes them.
fn hierarchy() -> (Ca, Ca) {
    let root = new_root_ca("Acme").unwrap();
    let issuing = new_issuing_ca(&root, "Acme").unwrap();
    (root, issuing)
}

#[test]
fn the_root_signs_itself_and_an_issuing_ca_that_may_sign_only_leaves() {
    let (root, issuing) = hierarchy();
    let r = parse(&root.cert_der);
    let i = parse(&issuing.cert_der);
    assert!(r.is_ca() && i.is_ca());
    assert_eq!(cn(&r), "Acme Root CA");
    assert_eq!(cn(&i), "Acme Issuing CA");
    r.verify_signature(None).expect("self-signed");
    i.verify_signature(Some(r.public_key()))
        .expect("signed by the root");
    let constraints = i.basic_constraints().unwrap().unwrap().value;
    assert_eq!(constraints.path_len_constraint, Some(0));
    assert!(r
        .basic_constraints()
        .unwrap()
        .unwrap()
        .value
        .path_len_constraint
        .is_none());
    let usage = i.key_usage().unwrap().unwrap().value;
    assert!(usage.key_cert_sign() && usage.crl_sign());
    // The CA rebuilt from its parts signs like the original.
    let pkcs8 = issuing.key.serialize_der();
    let rebuilt = Ca::from_parts(&issuing.cert_pem, &pkcs8).unwrap();
    let leaf = sign_device(&rebuilt, "acme-000001", "acme", 30).unwrap();
    parse(&leaf.cert_der)
        .verify_signature(Some(i.public_key()))
        .expect("signed by the rebuilt CA");
    check_importable(&issuing, &root.cert()).expect("a station CA is importable");
}

#[test]
fn device_service_and_server_certificates_say_what_they_are_for() {
    let (_, issuing) = hierarchy();
    let ca = parse(&issuing.cert_der);
    let serial = random_serial();
    assert_eq!(serial.len(), 16);
    assert!(
        serial[0] & 0x80 == 0 && serial[0] != 0,
        "positive, 16 bytes"
    );

    let device = sign_device_with_serial(&issuing, "acme-000007", "acme", 30, &serial).unwrap();
    let d = parse(&device.cert_der);
    d.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(cn(&d), "acme-000007");
    assert_eq!(d.raw_serial(), serial.as_slice());
    assert_eq!(device.serial, serial);
    assert!(!d.is_ca());
    let eku = d.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(d.validity().not_after.timestamp(), device.not_after);
    assert!(d.validity().time_to_expiration().unwrap() > time::Duration::days(29));
    // The key the bundle stores is the certificate's key.
    let sec1 = device.key_sec1_der().unwrap();
    let pem = pkcs8_pem_from_sec1(&sec1).unwrap();
    let back = KeyPair::from_pem(&pem).unwrap();
    assert_eq!(back.public_key_raw(), device.key.public_key_raw());
    assert_eq!(sec1_from_pkcs8(&back.serialize_der()).unwrap(), sec1);

    let service = sign_service(&issuing, "ops", "acme", 30).unwrap();
    let s = parse(&service.cert_der);
    let ou: Vec<&str> = s
        .subject()
        .iter_organizational_unit()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(ou, ["service"]);

    let server = sign_server(&issuing, &["gw.example", "10.0.0.1"], 30).unwrap();
    let v = parse(&server.cert_der);
    assert_eq!(cn(&v), "gw.example");
    assert!(v.extended_key_usage().unwrap().unwrap().value.server_auth);
    let sans = v.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(sans.general_names.len(), 2);
    let bad = sign_server(&issuing, &["gw.exämple"], 30).err().unwrap();
    assert!(
        matches!(bad, Error::InvalidInput { field: "host", .. }),
        "{bad}"
    );
    assert!(sign_server(&issuing, &[], 30).is_err());
}

#[test]
fn crls_are_signed_numbered_and_list_their_entries() {
    let (_, issuing) = hierarchy();
    let ca = parse(&issuing.cert_der);
    let now = time::OffsetDateTime::now_utc();
    let entry = CrlEntry {
        serial: vec![0x01, 0x02, 0x03],
        revoked_at: now,
        reason: rcgen::RevocationReason::KeyCompromise,
    };
    let mut numbers = Vec::new();
    for (number, entries) in [(1, vec![]), (2, vec![entry.clone()])] {
        let pem = sign_crl(&issuing, number, &entries, now, time::Duration::days(7)).unwrap();
        let der = ::pem::parse(&pem).unwrap().into_contents();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        crl.verify_signature(ca.public_key())
            .expect("signed by the CA");
        numbers.push(crl.crl_number().unwrap().to_string());
        let serials: Vec<&[u8]> = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial())
            .collect();
        assert_eq!(
            serials,
            entries
                .iter()
                .map(|e| e.serial.as_slice())
                .collect::<Vec<_>>()
        );
        let next = crl.next_update().unwrap().timestamp();
        assert_eq!(next, (now + time::Duration::days(7)).unix_timestamp());
    }
    assert_eq!(numbers, ["1", "2"]);
}

#[test]
fn a_crl_is_read_only_from_its_issuer_and_never_replaced_by_an_older_one() {
    let (root, issuing) = hierarchy();
    let now = time::OffsetDateTime::now_utc();
    let der = |ca: &Ca, number: u64, at: time::OffsetDateTime| {
        let pem = sign_crl(ca, number, &[], at, time::Duration::days(7)).unwrap();
        ::pem::parse(pem).unwrap().into_contents()
    };
    let info = crl_info(&der(&issuing, 7, now), &issuing.cert_der).unwrap();
    assert_eq!(info.number, 7);
    assert_eq!(info.this_update, now.unix_timestamp());
    // Another issuer's CRL, or one whose signature does not verify, is not read.
    assert!(matches!(
        crl_info(&der(&root, 8, now), &issuing.cert_der),
        Err(CrlError::ForeignIssuer { .. })
    ));
    let mut forged = der(&issuing, 8, now);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(crl_info(&forged, &issuing.cert_der).is_err());
    assert!(matches!(
        crl_info(b"garbage", &issuing.cert_der),
        Err(CrlError::Unreadable(_))
    ));

    let older = |number, secs: i64| CrlInfo {
        number,
        this_update: info.this_update + secs,
    };
    assert!(older(7, 0).may_replace(&info).is_ok());
    assert!(older(8, 1).may_replace(&info).is_ok());
    assert_eq!(
        older(6, 10).may_replace(&info),
        Err(CrlError::LowerNumber {
            number: 6,
            in_force: 7
        })
    );
    assert!(matches!(
        older(8, -1).may_replace(&info),
        Err(CrlError::OlderThisUpdate { .. })
    ));
}

#[test]
fn an_encrypted_key_opens_with_its_passphrase_only() {
    let (_, issuing) = hierarchy();
    let path = std::path::Path::new("ca/issuing.key");
    let pass = Passphrase::new("correct horse battery staple\n");
    let pem = key_to_pem(&issuing.key, Some(&pass)).unwrap();
    assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    assert!(!pem.contains(&issuing.key.serialize_pem()));
    // The trailing newline of a passphrase file is not part of it.
    let der = key_from_pem(
        &pem,
        path,
        Some(&Passphrase::new("correct horse battery staple")),
    )
    .unwrap();
    assert_eq!(
        KeyPair::try_from(der.as_slice()).unwrap().public_key_raw(),
        issuing.key.public_key_raw()
    );
    let wrong = key_from_pem(
        &pem,
        path,
        Some(&Passphrase::new("incorrect horse battery")),
    );
    assert!(matches!(wrong, Err(Error::WrongPassphrase { .. })));
    let none = key_from_pem(&pem, path, None);
    assert!(matches!(none, Err(Error::PassphraseRequired { .. })));
    let short = key_to_pem(&issuing.key, Some(&Passphrase::new("short"))).unwrap_err();
    assert!(
        matches!(
            short,
            Error::InvalidInput {
                field: "passphrase",
                ..
            }
        ),
        "{short}"
    );
    // Unencrypted keys read back as they are.
    let plain = key_to_pem(&issuing.key, None).unwrap();
    assert_eq!(
        key_from_pem(&plain, path, None).unwrap().as_slice(),
        issuing.key.serialize_der().as_slice()
    );
    let junk = key_from_pem("no key here", path, None).unwrap_err();
    assert!(matches!(junk, Error::BadPem { .. }), "{junk}");
}

fn csr(key: &KeyPair, params: rcgen::CertificateParams) -> Vec<u8> {
    params.serialize_request(key).unwrap().der().to_vec()
}

fn reason(result: Result<CheckedCsr, Error>) -> CsrError {
    match result {
        Err(Error::Csr { reason, .. }) => reason,
        Err(other) => panic!("not a CSR refusal: {other}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn csrs_give_the_station_a_p256_key_and_nothing_else() {
    let key = KeyPair::generate().unwrap();
    let good = csr(&key, rcgen::CertificateParams::default());
    let checked = check_csr(&good).unwrap();
    assert_eq!(checked.public_key, key.public_key_raw());
    // PEM and DER in, DER out.
    let pem = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", good.clone()));
    assert_eq!(csr_der(pem.as_bytes()).unwrap(), good);
    assert_eq!(csr_der(&good).unwrap(), good);
    let cert_pem = ::pem::encode(&::pem::Pem::new("CERTIFICATE", good.clone()));
    assert!(matches!(
        reason(csr_der(cert_pem.as_bytes()).and_then(|d| check_csr(&d))),
        CsrError::NotARequestBlock(ref tag) if tag == "CERTIFICATE"
    ));

    let with_names = rcgen::CertificateParams::new(vec!["gateway.example".to_owned()]).unwrap();
    assert_eq!(
        reason(check_csr(&csr(&key, with_names))),
        CsrError::RequestsNames
    );
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    assert_eq!(reason(check_csr(&csr(&key, ca))), CsrError::RequestsCa);
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    assert_eq!(
        reason(check_csr(&csr(&p384, rcgen::CertificateParams::default()))),
        CsrError::NotP256
    );
    let trailing = [good.as_slice(), &[0, 0]].concat();
    assert_eq!(reason(check_csr(&trailing)), CsrError::TrailingBytes(2));
    assert!(matches!(reason(check_csr(b"junk")), CsrError::NotPkcs10(_)));
    let mut forged = good.clone();
    let n = forged.len();
    forged[n - 3] ^= 0x40;
    assert_eq!(reason(check_csr(&forged)), CsrError::BadSignature);
}
