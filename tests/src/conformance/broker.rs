//! The brokers under test, each with its own PKI in a temp dir, listening on loopback with
//! mutual TLS and stopped (by PID) when dropped:
//!
//! - Debian's mosquitto 2 (the reference: a case that fails there is a wrong case), with
//!   `require_certificate true`, `use_identity_as_username true` and no ACL;
//! - the `fleet-gateway` binary (FLEET_GATEWAY_BIN, else `target/debug/fleet-gateway`), with
//!   service identities and ACL rules that let them use `#` and `$conf/#`.
//!
//! Every client is a service certificate (OU=service) of tenant `acme` whose CN is its client
//! id, so the same client works against both brokers.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{gateway_binary, workspace_target, Pki, TENANT};

/// Which broker a case runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Mosquitto,
    Gateway,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Mosquitto => "mosquitto",
            Kind::Gateway => "fleet-gateway",
        })
    }
}

/// A child process stopped (SIGKILL, by its PID) when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client identity: its certificate and key files (PEM), its CN as the client id.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A running broker and the PKI its clients use.
pub struct Broker {
    pub kind: Kind,
    pub addr: SocketAddr,
    dir: PathBuf,
    /// Shared by the gateways of one cluster ([`Broker::sibling_gateway`]).
    pki: Arc<Mutex<Pki>>,
    issued: Arc<Mutex<HashSet<String>>>,
    log: PathBuf,
    crl: PathBuf,
    _process: Process,
}

impl Broker {
    /// mosquitto on a free loopback port, or `None` (a skip) when it is not installed and
    /// not required (CI=true or FLEET_REQUIRE_MOSQUITTO).
    pub fn mosquitto() -> Option<Broker> {
        let Some(bin) = find_program("mosquitto") else {
            assert!(
                !super::required("FLEET_REQUIRE_MOSQUITTO"),
                "mosquitto (the broker) is required (CI or FLEET_REQUIRE_MOSQUITTO) but not \
                 installed: apt-get install mosquitto (cargo xtask test does)"
            );
            eprintln!("skipping: mosquitto is not installed (cargo xtask test installs it)");
            return None;
        };
        let pki = Pki::new();
        let dir = pki.dir.path().to_owned();
        // OpenSSL wants the whole chain up to a self-signed root to verify a client.
        let cafile = dir.join("mosquitto-ca.pem");
        let bundle = [
            std::fs::read(dir.join("gateway/clients-ca.pem")).expect("clients CA"),
            std::fs::read(dir.join("ca/root.pem")).expect("root"),
        ]
        .concat();
        std::fs::write(&cafile, bundle).expect("write the CA bundle");
        let log = dir.join("mosquitto.log");
        // A free port can be taken by someone else before mosquitto binds it: try again.
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.join("mosquitto.conf");
            std::fs::write(&conf, mosquitto_conf(&dir, &cafile, port)).expect("write config");
            let child = Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .expect("mosquitto starts");
            let mut process = Process(child);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if listening(&mut process, addr) {
                return Some(Broker::new(Kind::Mosquitto, addr, pki, log, process));
            }
        }
        panic!(
            "mosquitto did not start listening:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The gateway binary on port 0 (the address is the last word of its first line).
    pub fn gateway() -> Broker {
        let pki = Pki::new();
        let dir = pki.dir.path().to_owned();
        let (addr, log, process, _) = spawn_gateway(&dir, "", false);
        Broker::new(Kind::Gateway, addr, pki, log, process)
    }

    /// The gateway binary with `extra` appended to its config (e.g. a `[cluster]` table).
    /// Its CRL is its own copy of the station's ([`Broker::crl`]), so a test can change
    /// one gateway's CRL and not another's.
    pub fn gateway_with(extra: &str) -> Broker {
        let pki = Pki::new();
        let dir = pki.dir.path().to_owned();
        let (addr, log, process, crl) = spawn_gateway(&dir, extra, true);
        let mut b = Broker::new(Kind::Gateway, addr, pki, log, process);
        b.crl = crl;
        b
    }

    /// Another gateway binary on the same PKI (so every identity works on both), with
    /// `extra` appended to its config.
    pub fn sibling_gateway(&self, extra: &str) -> Broker {
        let (addr, log, process, crl) = spawn_gateway(&self.dir, extra, true);
        Broker {
            kind: Kind::Gateway,
            addr,
            dir: self.dir.clone(),
            pki: self.pki.clone(),
            issued: self.issued.clone(),
            log,
            crl,
            _process: process,
        }
    }

    /// The CRL file this broker reads.
    pub fn crl(&self) -> &Path {
        &self.crl
    }

    /// A device of tenant `acme` (issued by the station) and a rustls client config with
    /// its identity, trusting the root.
    pub fn device(&self) -> (String, Arc<rustls::ClientConfig>) {
        let mut pki = self.pki.lock().expect("pki lock");
        let bundle = pki.devices(TENANT, 1).remove(0);
        let config = crate::device_client_config(&bundle, &self.root());
        (bundle.device_id.clone(), config)
    }

    /// Revokes `device_id` at the station and puts the new CRL in `crl` (renamed into
    /// place, as the station writes it).
    pub fn revoke_into(&self, device_id: &str, crl: &Path) {
        let mut pki = self.pki.lock().expect("pki lock");
        let revoked = pki
            .station
            .revoke(device_id, fleet_provision::Reason::KeyCompromise)
            .expect("revoke");
        let staged = crl.with_extension("new");
        std::fs::copy(&revoked.crl_path, &staged).expect("copy the CRL");
        std::fs::rename(&staged, crl).expect("put the CRL in place");
    }

    /// The broker process's id.
    pub fn pid(&self) -> u32 {
        self._process.0.id()
    }

    /// Kills the broker (SIGKILL, by its PID), as a crash would.
    pub fn kill(&mut self) {
        let _ = self._process.0.kill();
        let _ = self._process.0.wait();
    }

    fn new(kind: Kind, addr: SocketAddr, pki: Pki, log: PathBuf, process: Process) -> Broker {
        let crl = pki.path("crl/issuing.crl.pem");
        Broker {
            kind,
            addr,
            dir: pki.dir.path().to_owned(),
            pki: Arc::new(Mutex::new(pki)),
            issued: Arc::new(Mutex::new(HashSet::new())),
            crl,
            log,
            _process: process,
        }
    }

    /// The trust anchor that verifies the broker's certificate.
    pub fn root(&self) -> PathBuf {
        self.dir.join("ca/root.pem")
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A service identity of tenant `acme` named `name` (issued on first use).
    pub fn identity(&self, name: &str) -> Identity {
        let mut issued = self.issued.lock().expect("identity lock");
        if issued.insert(name.to_owned()) {
            let pki = self.pki.lock().expect("pki lock");
            pki.station
                .issue_service_cert(name, TENANT)
                .unwrap_or_else(|e| panic!("issue the service certificate {name}: {e}"));
        }
        Identity {
            name: name.to_owned(),
            cert: self.dir.join(format!("services/{name}.pem")),
            key: self.dir.join(format!("services/{name}.key")),
        }
    }

    /// A rustls client config presenting `name`'s certificate and trusting the root.
    pub fn client_config(&self, name: &str) -> Arc<rustls::ClientConfig> {
        let id = self.identity(name);
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.root()).expect("root pem") {
            roots.add(c.expect("root cert")).expect("add root");
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&id.cert)
            .expect("client cert pem")
            .map(|c| c.expect("client cert"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(&id.key).expect("client key");
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client auth"),
        )
    }
}

/// Starts the gateway binary with its config in `dir` (the PKI's) plus `extra`, reading its
/// own copy of the station's CRL when `own_crl`; returns its address (the last word of its
/// first line), its log, the process and the CRL file it reads.
fn spawn_gateway(
    dir: &Path,
    extra: &str,
    own_crl: bool,
) -> (SocketAddr, PathBuf, Process, PathBuf) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let bin = gateway_binary();
    let station_crl = dir.join("crl/issuing.crl.pem");
    let crl = if own_crl {
        let copy = dir.join(format!("gateway-{n}.crl.pem"));
        std::fs::copy(&station_crl, &copy).expect("copy the CRL");
        copy
    } else {
        station_crl
    };
    let config = dir.join(format!("gateway-{n}.toml"));
    // No admin listener unless `extra` configures one.
    let admin = if extra.contains("[admin]") {
        ""
    } else {
        "\n[admin]\nenabled = false\n"
    };
    let conf = GATEWAY_CONF.replace(
        "crl = [\"crl/issuing.crl.pem\"]",
        &format!("crl = [{:?}]", crl.display().to_string()),
    );
    std::fs::write(&config, format!("{conf}{admin}\n{extra}")).expect("write config");
    let log = dir.join(format!("gateway-{n}.log"));
    let mut child = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&config)
        // FLEET_GW_LOG (e.g. `fleet_gateway=debug,async_nats=debug`) for a closer look.
        .env(
            "RUST_LOG",
            std::env::var("FLEET_GW_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("the gateway binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let process = Process(child);
    let addr = crate::gateway_address(stdout, &log);
    (addr, log, process, crl)
}

/// The gateway's config (without `[admin]`, see [`spawn_gateway`]): services may use `#` (so `+` and `#` filters at the first level can
/// be tried) and `$conf/#` (a `$` topic both brokers let a client publish to).
const GATEWAY_CONF: &str = r##"listen = "127.0.0.1:0"

[tls]
server_cert = "gateway/server.pem"
server_key = "gateway/server.key"
client_ca = ["gateway/clients-ca.pem"]
crl = ["crl/issuing.crl.pem"]

[[acl.service]]
effect = "allow"
action = "all"
pattern = "#"

[[acl.service]]
effect = "allow"
action = "all"
pattern = "$conf/#"
"##;

fn mosquitto_conf(dir: &Path, cafile: &Path, port: u16) -> String {
    format!(
        // Run as root, mosquitto would switch to the `mosquitto` user, which cannot read the
        // temp dir; `user` is ignored when not run as root.
        "user root\n\
         per_listener_settings false\n\
         allow_anonymous true\n\
         persistence false\n\
         log_dest stderr\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n\
         listener {port} 127.0.0.1\n\
         cafile {cafile}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate true\n\
         use_identity_as_username true\n",
        cafile = cafile.display(),
        cert = dir.join("gateway/server.pem").display(),
        key = dir.join("gateway/server.key").display(),
    )
}

/// Waits (at most 10 s) until `addr` accepts TCP; false if the process exited first.
fn listening(process: &mut Process, addr: SocketAddr) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            // mosquitto listens before it loads the TLS files, and exits if they are bad.
            std::thread::sleep(Duration::from_millis(100));
            return matches!(process.0.try_wait(), Ok(None));
        }
        if matches!(process.0.try_wait(), Ok(Some(_))) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `name` on PATH or in the sbin directories (mosquitto is in /usr/sbin).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The Python interpreter of the paho-mqtt venv: FLEET_PAHO_PYTHON, else the venv
/// `cargo xtask test` makes under `target/conformance-venv`; `None` (a skip) when it is
/// missing and not required (CI=true or FLEET_REQUIRE_PAHO).
pub fn paho_python() -> Option<PathBuf> {
    let python = std::env::var_os("FLEET_PAHO_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_target().join("conformance-venv/bin/python"));
    if python.is_file() {
        return Some(python);
    }
    assert!(
        !super::required("FLEET_REQUIRE_PAHO"),
        "the paho-mqtt venv is required (CI or FLEET_REQUIRE_PAHO) but {} is missing \
         (cargo xtask test makes it)",
        python.display()
    );
    eprintln!(
        "skipping: no paho-mqtt venv at {} (cargo xtask test makes it)",
        python.display()
    );
    None
}
