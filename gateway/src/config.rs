//! Gateway configuration: a TOML file, validated once at load into typed values.
//!
//! ```toml
//! listen = "127.0.0.1:8883"
//! audit_log = "audit.jsonl"               # top-level keys before the first table
//!
//! [tls]
//! server_cert = "gateway/server.pem"      # leaf first, then intermediates
//! server_key = "gateway/server.key"
//! client_ca = ["gateway/clients-ca.pem"]  # every CA in every file is a trust anchor
//! crl_issuers = []                        # intermediates that sign CRLs, not anchors
//! crl = ["crl/issuing.crl.pem"]           # watched: a change takes effect within a second
//!
//! [limits]
//! handshake_timeout_secs = 10
//! connect_timeout_secs = 10
//! max_packet_size = 262144
//! max_connections = 20000
//! max_handshakes = 1024                   # in progress at once
//! ip_connect_rate = 200                   # new connections/s per source IP
//! ip_connect_burst = 1000
//! publish_rate = 100                      # PUBLISH/s per session; above: disconnected
//! publish_burst = 200
//! max_subscriptions = 100                 # filters per session; more get SUBACK refusals
//! queue_messages = 10000                  # per session, waiting for the client (offline,
//! queue_bytes = 16777216                  #   or behind its in-flight window)
//! queue_overflow = "drop_newest"          # drop_newest | drop_oldest | disconnect
//! audit_source_per_minute = 30            # refusal records per source IP written to the
//! audit_source_burst = 20                 #   audit log; beyond: counted in a summary record
//! audit_per_minute = 3000                 # refusal records from all sources together
//! audit_burst = 500
//!
//! [identity]
//! service_ou = "service"
//!
//! [admin]                                  # default: on, 127.0.0.1:9100, no token
//! listen = "127.0.0.1:9100"                # off-loopback requires token or token_file
//! token_file = "admin.token"               # at least 16 characters
//!
//! [renewal]                                # optional: certificate rotation via the station
//! station = "station.example.com:8443"     # fleet-provision serve
//! client_cert = "gateway/station-client.pem"   # fleet-provision gateway-client-cert
//! client_key = "gateway/station-client.key"
//! station_ca = "ca/root.pem"
//! threshold_days = 30                      # devices expiring sooner are told to renew
//!
//! [console]                                # optional: the console's certificate history
//! station = "station.example.com:8443"     #   and Revoke, at the station
//! client_cert = "gateway/console-operator.pem" # fleet-provision operator-cert (OU=operator)
//! client_key = "gateway/console-operator.key"
//! station_ca = "ca/root.pem"
//! [cluster]                                # optional: gateways sharing NATS JetStream
//! servers = ["nats://127.0.0.1:4222"]      # see crate::cluster::ClusterConfig for the rest
//!
//! [[acl.device]]                           # appended to the default device rules
//! effect = "deny"
//! action = "publish"
//! pattern = "tenants/{tenant}/devices/{device}/cmd/#"
//! ```
//!
//! Relative paths are resolved against the directory of the config file. The file is read by
//! serde (unknown keys refused), then checked in one validation pass; every error names its
//! key (see [`ConfigError`]). `tests/tests/readme_config.rs` loads this example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::acl::Policy;
use crate::error::{ConfigError, Problem};
use crate::Error;

mod file;

/// Where the TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM chain: server certificate first, then intermediates.
    pub server_cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub server_key: PathBuf,
    /// PEM files of CAs that issue client certificates. Every certificate in each file counts.
    #[serde(default)]
    pub client_ca: Vec<PathBuf>,
    /// PEM files of intermediate CA certificates used only to check CRL signatures (the
    /// issuing CA of a PKI whose root is the only client CA): never trust anchors, each must
    /// chain to a client CA. Watched and reloaded.
    #[serde(default)]
    pub crl_issuers: Vec<PathBuf>,
    /// PEM files of CRLs (each must be signed by a client CA or a CRL issuer). Watched and
    /// reloaded.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
}

impl TlsFiles {
    /// Every file the TLS state is built from (what the watcher watches).
    pub fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.server_cert, &self.server_key]
            .into_iter()
            .chain(&self.client_ca)
            .chain(&self.crl_issuers)
            .chain(&self.crl)
    }

    fn resolve(mut self, base: &Path) -> Result<TlsFiles, ConfigError> {
        if self.client_ca.is_empty() {
            return Err(ConfigError::new("tls.client_ca", Problem::NoClientCa));
        }
        for path in [&mut self.server_cert, &mut self.server_key]
            .into_iter()
            .chain(&mut self.client_ca)
            .chain(&mut self.crl_issuers)
            .chain(&mut self.crl)
        {
            *path = resolve(base, path);
        }
        self.check_crl_issuers()?;
        Ok(self)
    }

    /// Each CRL issuer must be a CA allowed to sign CRLs that chains to a client CA: checked
    /// when the file is loaded (and again by every TLS load, as the files may change).
    fn check_crl_issuers(&self) -> Result<(), ConfigError> {
        if self.crl_issuers.is_empty() {
            return Ok(());
        }
        crate::tls::check_crl_issuers(&self.client_ca, &self.crl_issuers).map_err(|(i, e)| {
            let key = match i {
                Some(i) => format!("tls.crl_issuers[{i}]"),
                None => "tls.client_ca".to_owned(),
            };
            ConfigError::new(key, Problem::Material(Box::new(e)))
        })
    }
}

/// Limits that keep one client, or one source address, from hurting the others. In the file:
/// the `[limits]` table, every key optional (the defaults below).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// A client that has not finished the TLS handshake by then is dropped.
    #[serde(rename = "handshake_timeout_secs", deserialize_with = "seconds")]
    pub handshake_timeout: Duration,
    /// A client that has not sent CONNECT by then after the handshake is dropped.
    #[serde(rename = "connect_timeout_secs", deserialize_with = "seconds")]
    pub connect_timeout: Duration,
    /// Largest MQTT packet accepted from a client, in bytes.
    pub max_packet_size: usize,
    /// Open connections at most; more are closed at accept.
    pub max_connections: usize,
    /// TLS handshakes in progress at most; others wait (within their handshake timeout).
    pub max_handshakes: usize,
    /// New connections per second per source IP, and the burst allowed.
    pub ip_connect_rate: f64,
    pub ip_connect_burst: f64,
    /// PUBLISH packets per second per session, and the burst allowed; above it the session
    /// is closed with reason `rate_limited`.
    pub publish_rate: f64,
    pub publish_burst: f64,
    /// Subscription filters one session may hold; further filters are refused in the SUBACK
    /// (0x80, or 0x97 "quota exceeded" in MQTT 5).
    pub max_subscriptions: usize,
    /// Messages, and bytes of topic, payload and properties, one session's queue holds for
    /// its client: while it is offline (a kept session) or behind its in-flight window.
    /// Nothing is preallocated: an idle session's queue is empty and holds no memory. The
    /// defaults (10,000 messages, 16 MiB) let a backend subscriber ride out a burst.
    pub queue_messages: usize,
    pub queue_bytes: usize,
    /// What happens to a message that does not fit (QoS 0 messages are dropped first);
    /// every drop is counted in `fleet_gateway_dropped_messages_total`.
    pub queue_overflow: crate::broker::Overflow,
    /// Refusal records written to the audit log per minute per source IP, and the burst;
    /// further refusals from that source are counted and summarised (see [`crate::audit`]).
    pub audit_source_per_minute: f64,
    pub audit_source_burst: f64,
    /// Refusal records written per minute from all sources together, and the burst.
    pub audit_per_minute: f64,
    pub audit_burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_packet_size: 256 * 1024,
            max_connections: 20_000,
            max_handshakes: 1024,
            ip_connect_rate: 200.0,
            ip_connect_burst: 1000.0,
            publish_rate: 100.0,
            publish_burst: 200.0,
            max_subscriptions: 100,
            queue_messages: 10_000,
            queue_bytes: 16 << 20,
            queue_overflow: crate::broker::Overflow::DropNewest,
            audit_source_per_minute: 30.0,
            audit_source_burst: 20.0,
            audit_per_minute: 3000.0,
            audit_burst: 500.0,
        }
    }
}

/// The MQTT packet sizes a limit may name: the smallest useful one, and the protocol's
/// largest (a 268,435,455-byte remaining length plus a 5-byte fixed header).
const PACKET_SIZES: std::ops::RangeInclusive<usize> = 64..=268_435_460;

impl Limits {
    /// The validation pass: counts and timeouts at least 1, rates finite and at least 1,
    /// the packet size within what MQTT can carry.
    fn check(&self) -> Result<(), ConfigError> {
        let key = |name: &str| format!("limits.{name}");
        let counts = [
            ("handshake_timeout_secs", self.handshake_timeout.as_secs()),
            ("connect_timeout_secs", self.connect_timeout.as_secs()),
            ("max_connections", self.max_connections as u64),
            ("max_handshakes", self.max_handshakes as u64),
            ("max_subscriptions", self.max_subscriptions as u64),
            ("queue_messages", self.queue_messages as u64),
            ("queue_bytes", self.queue_bytes as u64),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, n)| *n == 0) {
            return Err(ConfigError::new(key(name), Problem::Zero));
        }
        let rates = [
            ("ip_connect_rate", self.ip_connect_rate),
            ("ip_connect_burst", self.ip_connect_burst),
            ("publish_rate", self.publish_rate),
            ("publish_burst", self.publish_burst),
            ("audit_source_per_minute", self.audit_source_per_minute),
            ("audit_source_burst", self.audit_source_burst),
            ("audit_per_minute", self.audit_per_minute),
            ("audit_burst", self.audit_burst),
        ];
        if let Some(&(name, value)) = rates.iter().find(|(_, r)| !(r.is_finite() && *r >= 1.0)) {
            return Err(ConfigError::new(key(name), Problem::RateBelowOne { value }));
        }
        if !PACKET_SIZES.contains(&self.max_packet_size) {
            return Err(ConfigError::new(
                key("max_packet_size"),
                Problem::OutOfRange {
                    value: self.max_packet_size,
                    min: *PACKET_SIZES.start(),
                    max: *PACKET_SIZES.end(),
                },
            ));
        }
        Ok(())
    }
}

fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

/// The shortest admin token accepted: a bearer token is the admin API's only protection.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// The admin HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Bearer token required on every request; mandatory when `listen` is not loopback.
    pub token: Option<String>,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            listen: SocketAddr::from(([127, 0, 0, 1], 9100)),
            token: None,
        }
    }
}

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    pub limits: Limits,
    /// Subject OU that marks a certificate as a backend service.
    pub service_ou: String,
    pub policy: Policy,
    /// `None`: no admin listener.
    pub admin: Option<Admin>,
    /// JSON-lines audit file (records also go to the `audit` log target).
    pub audit_log: Option<PathBuf>,
    /// Certificate rotation through the station (`None`: devices are told nothing).
    pub renewal: Option<crate::renewal::Renewal>,
    /// The console's station actions, with a fleet operator's identity (`None`: the console
    /// says that certificate history and revocation need `[console]`).
    pub console: Option<crate::console::ConsoleStation>,
    /// A cluster of gateways over NATS JetStream (`None`: this gateway alone, in process).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Config {
    /// A configuration with default limits and the default ACL policy.
    pub fn new(listen: SocketAddr, tls: TlsFiles) -> Config {
        Config {
            listen,
            tls,
            limits: Limits::default(),
            service_ou: default_service_ou(),
            policy: Policy::default(),
            admin: None,
            audit_log: None,
            renewal: None,
            console: None,
            cluster: None,
        }
    }

    /// Loads and validates a TOML config file.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base).map_err(|error| Error::Config {
            path: path.to_owned(),
            error,
        })
    }

    /// What `fleet-gateway check-config` does: loads the file, then the TLS material it
    /// names (certificates, key, client CAs, CRLs) as `serve` would, without serving.
    pub fn check(path: &Path) -> Result<Config, Error> {
        let config = Config::from_file(path)?;
        crate::tls::load(&config.tls)?;
        Ok(config)
    }

    /// Parses TOML text; relative paths are resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let file: file::FileConfig =
            serde_path_to_error::deserialize(toml::Deserializer::new(text))
                .map_err(|e| toml_error(text, e))?;
        file.validate(base)
    }
}

/// A serde error at a key path as a [`ConfigError`] (key empty for the file as a whole).
fn toml_error(text: &str, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
    let key = e.path().to_string();
    let e = e.into_inner();
    let line = e.span().map(|span| {
        1 + text.as_bytes()[..span.start.min(text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    });
    let message = e.message().trim_end();
    // `audit_log = …` after `[admin]` belongs to `[admin]` in TOML: say so.
    let misplaced = TOP_LEVEL_KEYS
        .iter()
        .find(|top| key.ends_with(&format!(".{top}")) && message.starts_with("unknown field"));
    let message = match misplaced {
        Some(top) => {
            format!("{message}; `{top}` is a top-level key: put it before the first [table]")
        }
        None => message.to_owned(),
    };
    ConfigError::new(
        if key == "." { String::new() } else { key },
        Problem::Toml { message, line },
    )
}

/// The keys of the file that are not tables.
const TOP_LEVEL_KEYS: [&str; 2] = ["listen", "audit_log"];

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

fn parse_addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|source| {
        ConfigError::new(
            key,
            Problem::NotAnAddress {
                value: value.to_owned(),
                source,
            },
        )
    })
}

fn default_service_ou() -> String {
    "service".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:8883"
[tls]
server_cert = "gw/server.pem"
server_key = "/abs/server.key"
client_ca = ["ca1.pem", "ca2.pem"]
[limits]
handshake_timeout_secs = 3
[[acl.device]]
effect = "deny"
action = "publish"
pattern = "tenants/{tenant}/devices/{device}/cmd/#"
"#;

    /// 16 characters: the shortest token accepted.
    const TOKEN: &str = "0123456789abcdef";

    #[test]
    fn loads_and_resolves_paths() {
        let c = Config::from_toml(GOOD, Path::new("/etc/fleet")).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8883".parse().unwrap());
        assert_eq!(c.tls.server_cert, PathBuf::from("/etc/fleet/gw/server.pem"));
        assert_eq!(c.tls.server_key, PathBuf::from("/abs/server.key"));
        assert_eq!(c.tls.client_ca.len(), 2);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.max_packet_size, 256 * 1024);
        assert_eq!(
            c.limits.queue_overflow,
            crate::broker::Overflow::DropNewest,
            "the default overflow policy"
        );
        let policy = GOOD.replace(
            "[limits]",
            "[limits]\nqueue_overflow = \"disconnect\"\nqueue_messages = 5",
        );
        let limits = Config::from_toml(&policy, Path::new(".")).unwrap().limits;
        assert_eq!(
            (limits.queue_overflow, limits.queue_messages),
            (crate::broker::Overflow::Disconnect, 5)
        );
        assert_eq!(c.policy.device.len(), Policy::default().device.len() + 1);
        assert_eq!(c.admin, Some(Admin::default()));
        let off = format!("{GOOD}\n[admin]\nenabled = false\n");
        assert_eq!(Config::from_toml(&off, Path::new(".")).unwrap().admin, None);
        let public = format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:9100\"\ntoken = \"{TOKEN}\"\n");
        let admin = Config::from_toml(&public, Path::new("."))
            .unwrap()
            .admin
            .unwrap();
        assert_eq!(admin.token.as_deref(), Some(TOKEN));
        assert_eq!(admin.listen, "0.0.0.0:9100".parse().unwrap());
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (GOOD.replace("127.0.0.1:8883", "nowhere"), "key `listen`"),
            (
                GOOD.replace("handshake_timeout_secs = 3", "handshake_timeout_secs = 0"),
                "limits.handshake_timeout_secs",
            ),
            (
                GOOD.replace("client_ca = [\"ca1.pem\", \"ca2.pem\"]", ""),
                "tls.client_ca",
            ),
            (
                GOOD.replace("{device}/cmd/#", "{device}/#/cmd"),
                "key `acl.device[0].pattern`",
            ),
            (GOOD.replace("[limits]", "[limits]\nbogus = 1"), "bogus"),
            (format!("{GOOD}\n[limits2]\n"), "limits2"),
            (
                format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:9100\"\n"),
                "requires `token`",
            ),
            (format!("{GOOD}\n[admin]\ntoken = \"\"\n"), "admin.token"),
            (
                format!("{GOOD}\n[admin]\ntoken = \"a\"\ntoken_file = \"t\"\n"),
                "not both",
            ),
            (
                format!("{GOOD}\n[admin]\ntoken_file = \"missing.token\"\n"),
                "key `admin.token_file`: missing.token",
            ),
            (
                GOOD.replace("[limits]", "[limits]\npublish_rate = 0.5"),
                "limits.publish_rate",
            ),
            (
                GOOD.replace("[limits]", "[limits]\nmax_connections = 0"),
                "limits.max_connections",
            ),
            (
                GOOD.replace("[limits]", "[limits]\nqueue_messages = 0"),
                "limits.queue_messages",
            ),
            (
                GOOD.replace("[limits]", "[limits]\nqueue_overflow = \"drop_all\""),
                "limits.queue_overflow",
            ),
        ];
        for (text, needle) in cases {
            let err = Config::from_toml(&text, Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err:?} does not mention {needle}");
        }
    }

    fn key_and_problem(text: &str) -> (String, Problem) {
        let err = Config::from_toml(text, Path::new(".")).unwrap_err();
        (err.key, err.problem)
    }

    #[test]
    fn errors_say_which_key_and_what() {
        let (key, problem) = key_and_problem(&format!(
            "{GOOD}\n[[acl.device]]\neffect = \"allow\"\naction = \"all\"\npattern = \"a/{{bogus}}\"\n"
        ));
        assert_eq!(key, "acl.device[1].pattern");
        assert!(matches!(
            problem,
            Problem::Pattern(crate::acl::PatternError::UnknownTemplate(ref p)) if p == "a/{bogus}"
        ));
        // A top-level key after a table header belongs to that table (README once did this).
        let (key, problem) = key_and_problem(&format!(
            "{GOOD}\n[admin]\nlisten = \"127.0.0.1:9100\"\naudit_log = \"audit.jsonl\"\n"
        ));
        assert_eq!(key, "admin.audit_log");
        // GOOD's lines, the blank one, `[admin]`, `listen`, then `audit_log`.
        let line = GOOD.lines().count() + 4;
        assert!(
            matches!(&problem, Problem::Toml { message, line: Some(l) }
                if message.starts_with("unknown field `audit_log`")
                    && message.ends_with("`audit_log` is a top-level key: put it before the first [table]")
                    && *l == line),
            "{problem:?}"
        );
        let (key, problem) =
            key_and_problem(&GOOD.replace("[limits]", "[limits]\nmax_packet_size = 10"));
        assert_eq!(key, "limits.max_packet_size");
        assert!(matches!(
            problem,
            Problem::OutOfRange {
                value: 10,
                min: 64,
                max: 268_435_460
            }
        ));
        let (key, problem) = key_and_problem("listen = \"127.0.0.1:1\"\n[tls\n");
        assert_eq!(key, "", "a syntax error is the file's, not a key's");
        assert!(
            matches!(problem, Problem::Toml { line: Some(2), .. }),
            "{problem:?}"
        );
        let (key, problem) = key_and_problem(&format!("{GOOD}\n[renewal]\nstation = \"nohost\"\nclient_cert = \"c\"\nclient_key = \"k\"\nstation_ca = \"ca\"\n"));
        assert_eq!(key, "renewal.station");
        assert!(matches!(problem, Problem::NotHostPort { .. }));
    }

    #[test]
    fn a_short_admin_token_is_refused_wherever_it_comes_from() {
        let dir = tempfile::tempdir().unwrap();
        let short = &TOKEN[..15];
        for listen in ["0.0.0.0:9100", "127.0.0.1:9100"] {
            let (key, problem) = key_and_problem(&format!(
                "{GOOD}\n[admin]\nlisten = \"{listen}\"\ntoken = \"{short}\"\n"
            ));
            assert_eq!(key, "admin.token");
            assert!(matches!(
                problem,
                Problem::TokenTooShort { chars: 15, min: 16 }
            ));
        }
        let (_, problem) = key_and_problem(&format!(
            "{GOOD}\n[admin]\nlisten = \"0.0.0.0:9100\"\ntoken = \"x\"\n"
        ));
        assert_eq!(
            problem.to_string(),
            "the admin token has 1 characters; at least 16 are required (e.g. 32 random hex digits)"
        );
        std::fs::write(dir.path().join("admin.token"), format!("{short}\n")).unwrap();
        let file =
            format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:9100\"\ntoken_file = \"admin.token\"\n");
        let err = Config::from_toml(&file, dir.path()).unwrap_err();
        assert_eq!(err.key, "admin.token_file");
        assert!(matches!(
            err.problem,
            Problem::TokenTooShort { chars: 15, .. }
        ));
        std::fs::write(dir.path().join("admin.token"), format!("{TOKEN}\n")).unwrap();
        let admin = Config::from_toml(&file, dir.path()).unwrap().admin.unwrap();
        assert_eq!(admin.token.as_deref(), Some(TOKEN), "read and trimmed");
    }

    #[test]
    fn the_console_table_names_the_station_and_an_operator_identity() {
        let base = Path::new("/etc/fleet");
        let text = format!(
            "{GOOD}\n[console]\nstation = \"station.example.com:8443\"\nclient_cert = \"op.pem\"\nclient_key = \"op.key\"\nstation_ca = \"/ca/root.pem\"\n"
        );
        let console = Config::from_toml(&text, base).unwrap().console.unwrap();
        assert_eq!(console.station, "station.example.com:8443");
        assert_eq!(console.server_name, "station.example.com");
        assert_eq!(console.client_cert, base.join("op.pem"));
        assert_eq!(console.station_ca, PathBuf::from("/ca/root.pem"));
        assert!(Config::from_toml(GOOD, base).unwrap().console.is_none());
        let (key, problem) = key_and_problem(&format!(
            "{GOOD}\n[console]\nstation = \"nohost\"\nclient_cert = \"c\"\nclient_key = \"k\"\nstation_ca = \"ca\"\n"
        ));
        assert_eq!(key, "console.station");
        assert!(matches!(problem, Problem::NotHostPort { .. }));
        let (key, _) = key_and_problem(&format!(
            "{GOOD}\n[console]\nstation = \"s:1\"\nclient_cert = \"c\"\nstation_ca = \"ca\"\n"
        ));
        assert_eq!(key, "console", "client_key is required");
    }
}
