//! The usual PKI, made with plain `openssl` commands (`openssl ca`, as a CA operator would):
//! the root is the only trust anchor, the issuing CA that devices send in their chain signs
//! the CRL of the devices, and is configured only as a CRL issuer (`tls.crl_issuers`), not as
//! a trust anchor. The root's own CRL revokes intermediates.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fleet_gateway::config::TlsFiles;
use fleet_gateway::reload::Trigger;
use fleet_gateway::{Config, Error, PemProblem, Problem};
use fleet_tests::{wait_for, RunningGateway};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs (cargo xtask test installs it)");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// One CA run by `openssl ca`: its directory `name/` holds the key, the certificate, the
/// database and the CRL number; `openssl.cnf` has a section `[name]` for it.
fn ca_section(dir: &Path, name: &str) -> String {
    let d = dir.join(name);
    std::fs::create_dir_all(d.join("new")).unwrap();
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(d.join("crlnumber"), "01\n").unwrap();
    format!(
        "[{name}]\ndir = {}\ndatabase = $dir/index.txt\nnew_certs_dir = $dir/new\n\
         certificate = $dir/cert.pem\nprivate_key = $dir/key.pem\nrand_serial = yes\n\
         crlnumber = $dir/crlnumber\ndefault_md = sha256\ndefault_days = 30\n\
         default_crl_days = 7\npolicy = any\nunique_subject = no\ncopy_extensions = none\n\n",
        d.display()
    )
}

const EXTENSIONS: &str = "\
[req]
distinguished_name = req_dn

[req_dn]

[any]
commonName = supplied
organizationName = optional

[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[device_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
";

/// The PKI: `root` (anchor) → `issuing` (signs the device CRL) → devices; `other` is a
/// second intermediate of the root; `foreign` is an unrelated self-signed CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut cnf = String::from("[ca]\ndefault_ca = issuing\n\n");
        for name in ["root", "issuing", "other", "foreign"] {
            cnf.push_str(&ca_section(d, name));
        }
        cnf.push_str(EXTENSIONS);
        std::fs::write(d.join("openssl.cnf"), cnf).unwrap();
        let pki = Pki { dir };
        for root in ["root", "foreign"] {
            pki.key(&format!("{root}/key.pem"));
            pki.run(&[
                "req",
                "-config",
                "openssl.cnf",
                "-new",
                "-x509",
                "-key",
                &format!("{root}/key.pem"),
                "-out",
                &format!("{root}/cert.pem"),
                "-subj",
                &format!("/CN=Test {root} CA"),
                "-days",
                "30",
                "-extensions",
                "ca_ext",
            ]);
        }
        for intermediate in ["issuing", "other"] {
            pki.issue(
                "root",
                intermediate,
                &format!("/CN=Test {intermediate} CA"),
                "ca_ext",
            );
            std::fs::copy(
                pki.path(&format!("{intermediate}.pem")),
                pki.path(&format!("{intermediate}/cert.pem")),
            )
            .unwrap();
            std::fs::copy(
                pki.path(&format!("{intermediate}.key")),
                pki.path(&format!("{intermediate}/key.pem")),
            )
            .unwrap();
        }
        pki.issue("root", "server", "/CN=localhost", "server_ext");
        for ca in ["root", "issuing", "other", "foreign"] {
            pki.crl(ca);
        }
        pki
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn run(&self, args: &[&str]) {
        openssl(self.dir.path(), args);
    }

    fn key(&self, out: &str) {
        self.run(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            out,
        ]);
    }

    /// `name.key` and `name.pem`, issued by CA `ca` with extension section `ext`.
    fn issue(&self, ca: &str, name: &str, subject: &str, ext: &str) {
        self.key(&format!("{name}.key"));
        self.run(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            subject,
            "-out",
            &format!("{name}.csr"),
        ]);
        self.run(&[
            "ca",
            "-batch",
            "-config",
            "openssl.cnf",
            "-name",
            ca,
            "-extensions",
            ext,
            "-in",
            &format!("{name}.csr"),
            "-out",
            &format!("{name}.pem"),
            "-notext",
        ]);
    }

    /// A device of tenant `acme` under `ca`: its chain (leaf, then `ca`'s certificate) and key.
    fn device(&self, ca: &str, id: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        self.issue(ca, id, &format!("/CN={id}/O=acme"), "device_ext");
        let chain = [
            self.path(&format!("{id}.pem")),
            self.path(&format!("{ca}/cert.pem")),
        ]
        .iter()
        .map(|p| CertificateDer::from_pem_file(p).unwrap())
        .collect();
        (
            chain,
            PrivateKeyDer::from_pem_file(self.path(&format!("{id}.key"))).unwrap(),
        )
    }

    /// Revokes `name.pem` in CA `ca`'s database and writes that CA's new CRL.
    fn revoke(&self, ca: &str, name: &str) {
        self.run(&[
            "ca",
            "-config",
            "openssl.cnf",
            "-name",
            ca,
            "-revoke",
            &format!("{name}.pem"),
        ]);
        self.crl(ca);
    }

    /// Writes CA `ca`'s CRL to `ca.crl.pem`, atomically (as a CA operator would replace it).
    fn crl(&self, ca: &str) {
        self.run(&[
            "ca",
            "-config",
            "openssl.cnf",
            "-name",
            ca,
            "-gencrl",
            "-out",
            &format!("{ca}.crl.tmp"),
        ]);
        std::fs::rename(
            self.path(&format!("{ca}.crl.tmp")),
            self.path(&format!("{ca}.crl.pem")),
        )
        .unwrap();
    }

    fn tls(&self, crl_issuers: &[&str], crls: &[&str]) -> TlsFiles {
        TlsFiles {
            server_cert: self.path("server.pem"),
            server_key: self.path("server.key"),
            client_ca: vec![self.path("root/cert.pem")],
            crl_issuers: crl_issuers
                .iter()
                .map(|ca| self.path(&format!("{ca}/cert.pem")))
                .collect(),
            crl: crls
                .iter()
                .map(|ca| self.path(&format!("{ca}.crl.pem")))
                .collect(),
        }
    }

    fn config(&self, crl_issuers: &[&str], crls: &[&str]) -> Config {
        Config::new("127.0.0.1:0".parse().unwrap(), self.tls(crl_issuers, crls))
    }
}

/// mTLS with `identity`, CONNECT (MQTT 3.1.1, empty client id); the stream if CONNACK 0 came.
async fn session(
    gw: &RunningGateway,
    root: &Path,
    identity: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> Option<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(root).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(identity.0, identity.1)
    .unwrap();
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        tls.write_all(&[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 0])
            .await?;
        let mut answer = [0u8; 4];
        tls.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>((answer == [0x20, 2, 0, 0]).then_some(tls))
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
}

/// Whether the gateway closed this session within 5 s.
async fn closed(tls: &mut Tls) -> bool {
    let mut buf = [0u8; 64];
    let read = async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .is_ok()
}

fn crl_not_signed(e: &Error) -> bool {
    matches!(
        e,
        Error::Pem {
            problem: PemProblem::CrlNotSigned { .. },
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuing_ca_signs_the_crl_while_only_the_root_is_trusted() {
    let pki = Pki::new();
    let root = pki.path("root/cert.pem");
    // Without the issuing CA as a CRL issuer its CRL cannot be verified: refused at start.
    let refused = fleet_gateway::Gateway::bind(pki.config(&[], &["issuing"])).await;
    assert!(
        refused.as_ref().is_err_and(crl_not_signed),
        "{:?}",
        refused.err()
    );
    // A CRL by an unrelated CA is refused at start, whatever the CRL issuers.
    let refused =
        fleet_gateway::Gateway::bind(pki.config(&["issuing"], &["issuing", "foreign"])).await;
    let e = refused.err().expect("a foreign CRL is refused");
    assert!(crl_not_signed(&e), "{e}");
    assert!(e.to_string().contains("Test foreign CA"), "{e}");

    let gw = RunningGateway::start(pki.config(&["issuing", "other"], &["issuing", "root"])).await;
    let mut victim = session(&gw, &root, pki.device("issuing", "dev-1"))
        .await
        .expect("a device of the issuing CA is accepted");
    let mut bystander = session(&gw, &root, pki.device("issuing", "dev-2"))
        .await
        .expect("a second device is accepted");
    // The issuing CA is no trust anchor: a device that does not send it is unknown.
    let (chain, key) = pki.device("issuing", "dev-alone");
    assert!(session(&gw, &root, (chain[..1].to_vec(), key))
        .await
        .is_none());

    // The issuing CA revokes dev-1: its live session is closed, a new one refused.
    pki.revoke("issuing", "dev-1");
    assert!(closed(&mut victim).await, "the revoked session is closed");
    assert!(
        session(
            &gw,
            &root,
            (
                pki.device_chain("issuing", "dev-1"),
                pki.device_key("dev-1")
            )
        )
        .await
        .is_none(),
        "the revoked device is refused"
    );
    let mut other = session(&gw, &root, pki.device("other", "dev-3"))
        .await
        .expect("a device of the other intermediate is accepted");

    // A CRL of an unrelated CA copied over the root's: the reload is refused, the state in
    // force stays (a device of the issuing CA still connects).
    std::fs::copy(pki.path("foreign.crl.pem"), pki.path("root.crl.pem")).unwrap();
    let reload = gw.shared.reload(Trigger::Admin);
    assert!(reload.as_ref().is_err_and(crl_not_signed), "{reload:?}");
    assert!(session(&gw, &root, pki.device("issuing", "dev-5"))
        .await
        .is_some());
    pki.crl("root");
    wait_for(
        "the root's CRL back in force",
        Duration::from_secs(5),
        || gw.shared.reload(Trigger::Admin).is_ok(),
    )
    .await;

    // The root revokes the other intermediate: its devices' live sessions are closed and
    // new handshakes through it refused; the issuing CA's devices are untouched.
    pki.revoke("root", "other");
    assert!(
        closed(&mut other).await,
        "the session under the revoked intermediate is closed"
    );
    assert!(session(&gw, &root, pki.device_identity("other", "dev-3"))
        .await
        .is_none());
    assert!(
        session(&gw, &root, pki.device("other", "dev-4"))
            .await
            .is_none(),
        "a new device of a revoked intermediate is refused"
    );
    assert!(session(&gw, &root, pki.device("issuing", "dev-6"))
        .await
        .is_some());
    let mut buf = [0u8; 1];
    let still_open =
        tokio::time::timeout(Duration::from_millis(300), bystander.read(&mut buf)).await;
    assert!(
        still_open.is_err(),
        "the bystander's session stays open: {still_open:?}"
    );
    gw.stop().await;
}

impl Pki {
    fn device_chain(&self, ca: &str, id: &str) -> Vec<CertificateDer<'static>> {
        [
            self.path(&format!("{id}.pem")),
            self.path(&format!("{ca}/cert.pem")),
        ]
        .iter()
        .map(|p| CertificateDer::from_pem_file(p).unwrap())
        .collect()
    }

    fn device_key(&self, id: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(self.path(&format!("{id}.key"))).unwrap()
    }

    /// A device issued before, again.
    fn device_identity(
        &self,
        ca: &str,
        id: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.device_chain(ca, id), self.device_key(id))
    }
}

#[test]
fn crl_issuers_are_checked_when_the_config_is_loaded() {
    let pki = Pki::new();
    let load = |issuers: &str| {
        let text = format!(
            "listen = \"127.0.0.1:8883\"\n[tls]\nserver_cert = \"server.pem\"\n\
             server_key = \"server.key\"\nclient_ca = [\"root/cert.pem\"]\n\
             crl_issuers = [{issuers}]\ncrl = [\"issuing.crl.pem\"]\n"
        );
        let path = pki.path("gateway.toml");
        std::fs::write(&path, text).unwrap();
        Config::from_file(&path)
    };
    let ok = load("\"issuing/cert.pem\"").expect("the issuing CA chains to the root");
    assert_eq!(ok.tls.crl_issuers, vec![pki.path("issuing/cert.pem")]);
    fleet_gateway::tls::load(&ok.tls).expect("and its CRL loads");

    pki.issue("issuing", "dev-x", "/CN=dev-x/O=acme", "device_ext");
    for (issuers, key, says) in [
        (
            "\"issuing/cert.pem\", \"foreign/cert.pem\"",
            "tls.crl_issuers[1]",
            "is not signed by any configured client CA",
        ),
        ("\"dev-x.pem\"", "tls.crl_issuers[0]", "is not a CA"),
        ("\"missing.pem\"", "tls.crl_issuers[0]", "cannot read"),
    ] {
        let err = load(issuers).expect_err(issuers);
        let Error::Config { error, .. } = &err else {
            panic!("{issuers}: {err}")
        };
        assert_eq!(error.key, key, "{err}");
        assert!(matches!(error.problem, Problem::Material(_)), "{err}");
        assert!(err.to_string().contains(says), "{issuers}: {err}");
    }

    // `fleet-gateway doctor` checks the same way: with the CRL issuer the chain passes.
    let chain = pki.path("dev-x.chain.pem");
    let pem = [pki.path("dev-x.pem"), pki.path("issuing/cert.pem")]
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<String>();
    std::fs::write(&chain, pem).unwrap();
    let diagnose = |crl_issuers: &[PathBuf]| {
        fleet_gateway::doctor::diagnose(&fleet_gateway::doctor::Inputs {
            cert: &chain,
            key: Some(&pki.path("dev-x.key")),
            client_ca: &[pki.path("root/cert.pem")],
            crl_issuers,
            crl: &[pki.path("issuing.crl.pem")],
            service_ou: "service",
            at: None,
        })
    };
    let report = diagnose(&[pki.path("issuing/cert.pem")]).expect("doctor runs");
    assert!(report.accepted(), "{:?}", report.findings);
    let refused = diagnose(&[]).expect_err("no CRL issuer: the CRL is refused");
    assert!(crl_not_signed(&refused), "{refused}");
}
