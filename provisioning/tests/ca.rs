//! CA keys at rest and CAs from other PKIs.

mod common;

use common::{cli_env, openssl, request, stderr};
use fleet_provision::{Error, KeyProtection, Passphrase, Station};

const PASS: &str = "correct horse battery staple";

#[test]
fn ca_keys_are_encrypted_and_only_the_right_passphrase_opens_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pass = Passphrase::new(PASS);
    Station::init(d, "Acme", KeyProtection::Encrypted(pass.clone())).unwrap();
    for key in ["ca/root.key", "ca/issuing.key"] {
        let text = std::fs::read_to_string(d.join(key)).unwrap();
        assert!(
            text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
            "{key}"
        );
        // A tool nobody here wrote opens it with the passphrase, and not without it.
        openssl(
            d,
            &[
                "pkey",
                "-noout",
                "-in",
                key,
                "-passin",
                &format!("pass:{PASS}"),
            ],
        );
        let wrong = std::process::Command::new("openssl")
            .current_dir(d)
            .args([
                "pkey",
                "-noout",
                "-in",
                key,
                "-passin",
                "pass:not it at all",
            ])
            .output()
            .unwrap();
        assert!(!wrong.status.success());
    }

    match Station::open(d, None) {
        Err(Error::PassphraseRequired { path }) => assert!(path.ends_with("ca/issuing.key")),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened an encrypted key without a passphrase"),
    }
    match Station::open(d, Some(&Passphrase::new("a wrong passphrase"))) {
        Err(e @ Error::WrongPassphrase { .. }) => {
            assert!(e.to_string().contains("does not open"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened with the wrong passphrase"),
    }
    let mut st = Station::open(d, Some(&pass)).unwrap();
    st.issue_devices(&request("acme", 2)).unwrap();
    assert!(st.verify_audit().is_ok());

    // The command line takes the passphrase from a file or the environment, never silently
    // writes plaintext, and refuses short passphrases for new keys.
    let other = tempfile::tempdir().unwrap();
    let o = other.path();
    let refused = cli_env(o, &["ca", "init", "--org", "Acme"], &[]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("FLEET_CA_PASSPHRASE"),
        "{}",
        stderr(&refused)
    );
    let short = cli_env(
        o,
        &["ca", "init", "--org", "Acme"],
        &[("FLEET_CA_PASSPHRASE", "short")],
    );
    assert!(!short.status.success());
    assert!(stderr(&short).contains("at least 12"), "{}", stderr(&short));
    let pass_file = o.join("pass.txt");
    std::fs::write(&pass_file, format!("{PASS}\n")).unwrap();
    let pf = pass_file.to_str().unwrap();
    let init = cli_env(
        o,
        &["--passphrase-file", pf, "ca", "init", "--org", "Acme"],
        &[],
    );
    assert!(init.status.success(), "{}", stderr(&init));
    let listing = cli_env(o, &["devices"], &[]);
    assert!(
        listing.status.success(),
        "listing needs no key: {}",
        stderr(&listing)
    );
    let no_pass = cli_env(o, &["crl"], &[]);
    assert!(!no_pass.status.success());
    assert!(
        stderr(&no_pass).contains("is encrypted"),
        "{}",
        stderr(&no_pass)
    );
    let wrong = cli_env(
        o,
        &["crl"],
        &[("FLEET_CA_PASSPHRASE", "the wrong passphrase")],
    );
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("does not open"),
        "{}",
        stderr(&wrong)
    );
    let env_ok = cli_env(o, &["crl"], &[("FLEET_CA_PASSPHRASE", PASS)]);
    assert!(env_ok.status.success(), "{}", stderr(&env_ok));
}

/// A root and an issuing CA made with openssl, as another PKI would.
fn openssl_ca(d: &std::path::Path, curve: &str) {
    let genkey = |name: &str| {
        if curve == "rsa" {
            openssl(d, &["genrsa", "-out", name, "2048"]);
        } else {
            openssl(
                d,
                &["ecparam", "-name", curve, "-genkey", "-noout", "-out", name],
            );
        }
    };
    genkey("root.key");
    genkey("issuing.key");
    std::fs::write(
        d.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-subj",
            "/O=Other PKI/CN=Other Root",
            "-days",
            "3650",
            "-out",
            "root.pem",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "issuing.key",
            "-subj",
            "/O=Other PKI/CN=Other Issuing",
            "-out",
            "issuing.csr",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "issuing.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "1825",
            "-extfile",
            "ca.ext",
            "-out",
            "issuing.pem",
        ],
    );
}

#[test]
fn an_issuing_ca_from_another_pki_is_imported_and_issues_verifiable_devices() {
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path();
    openssl_ca(p, "prime256v1");
    let station_dir = tempfile::tempdir().unwrap();
    let d = station_dir.path();
    let (cert, key, root) = (
        p.join("issuing.pem"),
        p.join("issuing.key"),
        p.join("root.pem"),
    );
    let import = cli_env(
        d,
        &[
            "ca",
            "import",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ],
        &[("FLEET_CA_PASSPHRASE", PASS)],
    );
    assert!(import.status.success(), "{}", stderr(&import));
    assert!(std::fs::read_to_string(d.join("ca/issuing.key"))
        .unwrap()
        .contains("ENCRYPTED PRIVATE KEY"));
    assert!(
        !d.join("ca/root.key").exists(),
        "the other PKI keeps its root key"
    );

    let mut st = Station::open(d, Some(&Passphrase::new(PASS))).unwrap();
    st.issue_devices(&request("acme", 1)).unwrap();
    openssl(
        d,
        &[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            "ca/issuing.pem",
            "devices/acme-000001.pem",
        ],
    );
    // The bundle's trust anchor is the other PKI's root.
    let bundle = std::fs::read(d.join("devices/acme-000001.bin")).unwrap();
    let b = fleet_protocol::bundle::Bundle::parse(&bundle).unwrap();
    assert_eq!(b.trust_anchor_der, st.root_ca().cert_der.as_slice());
    assert!(st.verify_audit().is_ok());

    // Importing over an existing CA is refused.
    let again = cli_env(
        d,
        &[
            "ca",
            "import",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        &[("FLEET_CA_PASSPHRASE", PASS)],
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already holds a CA"),
        "{}",
        stderr(&again)
    );
}

fn import_error(dir: &std::path::Path, cert: &str, key: &str, root: Option<&str>) -> String {
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let out_dir = tempfile::tempdir().unwrap();
    let (cert, key) = (p(cert), p(key));
    let mut args = vec![
        "ca",
        "import",
        "--cert",
        &cert,
        "--key",
        &key,
        "--insecure-plaintext-keys",
    ];
    let root = root.map(p);
    if let Some(r) = &root {
        args.extend(["--root", r]);
    }
    let out = cli_env(out_dir.path(), &args, &[]);
    assert!(!out.status.success(), "import of {cert} succeeded");
    assert!(
        !out_dir.path().join("ca/issuing.pem").exists(),
        "a refused import leaves nothing behind"
    );
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn unusable_cas_are_refused_with_the_reason() {
    let ec = tempfile::tempdir().unwrap();
    openssl_ca(ec.path(), "prime256v1");
    let e = ec.path();
    // Key of another certificate.
    assert!(
        import_error(e, "issuing.pem", "root.key", Some("root.pem")).contains("does not belong")
    );
    // Not signed by the given root.
    let err = import_error(e, "root.pem", "root.key", Some("issuing.pem"));
    assert!(err.contains("not signed by the given root"), "{err}");
    // A leaf is not a CA.
    openssl(
        e,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "leaf.key",
        ],
    );
    openssl(
        e,
        &[
            "req", "-new", "-key", "leaf.key", "-subj", "/CN=leaf", "-out", "leaf.csr",
        ],
    );
    openssl(
        e,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "issuing.pem",
            "-CAkey",
            "issuing.key",
            "-CAcreateserial",
            "-days",
            "10",
            "-out",
            "leaf.pem",
        ],
    );
    assert!(import_error(e, "leaf.pem", "leaf.key", Some("issuing.pem")).contains("not a CA"));
    // Garbage where PEM belongs.
    std::fs::write(e.join("junk.pem"), "this is not PEM").unwrap();
    let err = import_error(e, "junk.pem", "issuing.key", None);
    assert!(
        err.contains("junk.pem") && err.contains("no CERTIFICATE block"),
        "{err}"
    );
    assert!(import_error(e, "issuing.pem", "junk.pem", None).contains("junk.pem"));

    // Wrong key types.
    let rsa = tempfile::tempdir().unwrap();
    openssl_ca(rsa.path(), "rsa");
    let err = import_error(rsa.path(), "issuing.pem", "issuing.key", Some("root.pem"));
    assert!(err.contains("P-256"), "{err}");
    let p384 = tempfile::tempdir().unwrap();
    openssl_ca(p384.path(), "secp384r1");
    let err = import_error(p384.path(), "issuing.pem", "issuing.key", Some("root.pem"));
    assert!(err.contains("P-256"), "{err}");

    // An expired CA.
    let expired = tempfile::tempdir().unwrap();
    let x = expired.path();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Expired CA");
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(x.join("ca.pem"), cert.pem()).unwrap();
    std::fs::write(x.join("ca.key"), key.serialize_pem()).unwrap();
    let err = import_error(x, "ca.pem", "ca.key", None);
    assert!(err.contains("expired"), "{err}");
}

#[test]
fn a_station_whose_issuing_ca_expired_refuses_to_issue() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = common::station(d);
    st.issue_devices(&request("acme", 1)).unwrap();
    drop(st);
    // Swap in an issuing certificate for the same key that has already expired.
    let key_pem = std::fs::read_to_string(d.join("ca/issuing.key")).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Acme Issuing CA");
    std::fs::write(
        d.join("ca/issuing.pem"),
        params.self_signed(&key).unwrap().pem(),
    )
    .unwrap();

    let mut st = Station::open(d, None).unwrap();
    let before = st.devices().unwrap();
    let err = st.issue_devices(&request("acme", 3)).unwrap_err();
    assert!(matches!(err, Error::CaExpired { .. }), "{err}");
    assert!(err.to_string().contains("expired"));
    assert_eq!(st.devices().unwrap(), before, "nothing reserved");
    // Revocation still works: a CA past its end must still be able to revoke.
    st.revoke("acme-000001", fleet_provision::Reason::KeyCompromise)
        .unwrap();
}
