//! Gateway configuration: a TOML file, validated once at load into typed values.
//!
//! ```toml
//! listen = "127.0.0.1:8883"
//!
//! [tls]
//! server_cert = "gateway/server.pem"      # leaf first, then intermediates
//! server_key = "gateway/server.key"
//! client_ca = ["gateway/clients-ca.pem"]  # every CA in every file is a trust anchor
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
//! router_segment_bytes = 4194304          # per-filter message log: 4 segments of 4 MiB
//! router_segments = 4
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
//! token_file = "admin.token"
//!
//! [renewal]                                # optional: certificate rotation via the station
//! station = "station.example.com:8443"     # fleet-provision serve
//! client_cert = "gateway/station-client.pem"   # fleet-provision gateway-client-cert
//! client_key = "gateway/station-client.key"
//! station_ca = "ca/root.pem"
//! threshold_days = 30                      # devices expiring sooner are told to renew
//!
//! [[acl.device]]                           # appended to the default device rules
//! effect = "deny"
//! action = "publish"
//! pattern = "tenants/{tenant}/devices/{device}/cmd/#"
//! ```
//!
//! Relative paths are resolved against the directory of the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::acl::{Policy, Rule};
use crate::Error;

/// Where the TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM chain: server certificate first, then intermediates.
    pub server_cert: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1).
    pub server_key: PathBuf,
    /// PEM files of CAs that issue client certificates. Every certificate in each file counts.
    pub client_ca: Vec<PathBuf>,
    /// PEM files of CRLs (each must be signed by a client CA). Watched and reloaded.
    pub crl: Vec<PathBuf>,
}

impl TlsFiles {
    /// Every file the TLS state is built from (what the watcher watches).
    pub fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.server_cert, &self.server_key]
            .into_iter()
            .chain(&self.client_ca)
            .chain(&self.crl)
    }
}

/// Limits that keep one client, or one source address, from hurting the others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// A client that has not finished the TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// A client that has not sent CONNECT by then after the handshake is dropped.
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
    /// The router keeps messages per subscription filter in a log of this many segments of
    /// this many bytes. A subscriber that falls further behind than the log loses the
    /// oldest messages, so size it for the backlog of the slowest online subscriber.
    pub router_segment_bytes: usize,
    pub router_segments: usize,
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
            router_segment_bytes: 4 * 1024 * 1024,
            router_segments: 4,
            audit_source_per_minute: 30.0,
            audit_source_burst: 20.0,
            audit_per_minute: 3000.0,
            audit_burst: 500.0,
        }
    }
}

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
}

impl Config {
    /// A configuration with default limits and the default ACL policy.
    pub fn new(listen: SocketAddr, tls: TlsFiles) -> Config {
        Config {
            listen,
            tls,
            limits: Limits::default(),
            service_ou: "service".to_owned(),
            policy: Policy::default(),
            admin: None,
            audit_log: None,
            renewal: None,
        }
    }

    /// Loads and validates a TOML config file.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_toml(&text, base).map_err(|message| Error::Config {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses TOML text; relative paths are resolved against `base`.
    pub fn from_toml(text: &str, base: &Path) -> Result<Config, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let listen = file.listen.parse().map_err(|e| {
            format!(
                "key `listen`: {:?} is not an address:port ({e})",
                file.listen
            )
        })?;
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        if file.tls.client_ca.is_empty() {
            return Err(
                "key `tls.client_ca`: at least one CA file is required (mutual TLS is mandatory)"
                    .into(),
            );
        }
        let tls = TlsFiles {
            server_cert: resolve(file.tls.server_cert),
            server_key: resolve(file.tls.server_key),
            client_ca: file.tls.client_ca.into_iter().map(resolve).collect(),
            crl: file.tls.crl.into_iter().map(resolve).collect(),
        };
        let defaults = Limits::default();
        let secs = |key: &str, v: Option<u64>, d: Duration| match v {
            Some(0) => Err(format!("key `limits.{key}`: must be at least 1")),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(d),
        };
        let positive = |key: &str, v: Option<usize>, d: usize| match v {
            Some(0) => Err(format!("key `limits.{key}`: must be at least 1")),
            Some(n) => Ok(n),
            None => Ok(d),
        };
        let rate = |key: &str, v: Option<f64>, d: f64| match v {
            Some(r) if !(r.is_finite() && r >= 1.0) => Err(format!(
                "key `limits.{key}`: must be a number of at least 1"
            )),
            Some(r) => Ok(r),
            None => Ok(d),
        };
        let limits = Limits {
            handshake_timeout: secs(
                "handshake_timeout_secs",
                file.limits.handshake_timeout_secs,
                defaults.handshake_timeout,
            )?,
            connect_timeout: secs(
                "connect_timeout_secs",
                file.limits.connect_timeout_secs,
                defaults.connect_timeout,
            )?,
            max_packet_size: match file.limits.max_packet_size {
                Some(n) if !(64..=268_435_460).contains(&n) => {
                    return Err(format!(
                        "key `limits.max_packet_size`: {n} is outside 64..=268435460"
                    ))
                }
                Some(n) => n,
                None => defaults.max_packet_size,
            },
            max_connections: positive(
                "max_connections",
                file.limits.max_connections,
                defaults.max_connections,
            )?,
            max_handshakes: positive(
                "max_handshakes",
                file.limits.max_handshakes,
                defaults.max_handshakes,
            )?,
            ip_connect_rate: rate(
                "ip_connect_rate",
                file.limits.ip_connect_rate,
                defaults.ip_connect_rate,
            )?,
            ip_connect_burst: rate(
                "ip_connect_burst",
                file.limits.ip_connect_burst,
                defaults.ip_connect_burst,
            )?,
            publish_rate: rate(
                "publish_rate",
                file.limits.publish_rate,
                defaults.publish_rate,
            )?,
            publish_burst: rate(
                "publish_burst",
                file.limits.publish_burst,
                defaults.publish_burst,
            )?,
            max_subscriptions: positive(
                "max_subscriptions",
                file.limits.max_subscriptions,
                defaults.max_subscriptions,
            )?,
            router_segment_bytes: positive(
                "router_segment_bytes",
                file.limits.router_segment_bytes,
                defaults.router_segment_bytes,
            )?,
            router_segments: positive(
                "router_segments",
                file.limits.router_segments,
                defaults.router_segments,
            )?,
            audit_source_per_minute: rate(
                "audit_source_per_minute",
                file.limits.audit_source_per_minute,
                defaults.audit_source_per_minute,
            )?,
            audit_source_burst: rate(
                "audit_source_burst",
                file.limits.audit_source_burst,
                defaults.audit_source_burst,
            )?,
            audit_per_minute: rate(
                "audit_per_minute",
                file.limits.audit_per_minute,
                defaults.audit_per_minute,
            )?,
            audit_burst: rate("audit_burst", file.limits.audit_burst, defaults.audit_burst)?,
        };
        let admin = match file.admin {
            Some(a) if a.enabled == Some(false) => None,
            Some(a) => {
                let listen = match a.listen {
                    Some(l) => l.parse().map_err(|e| {
                        format!("key `admin.listen`: {l:?} is not an address:port ({e})")
                    })?,
                    None => Admin::default().listen,
                };
                let token = match (a.token, a.token_file) {
                    (Some(_), Some(_)) => {
                        return Err("table `admin`: set `token` or `token_file`, not both".into())
                    }
                    (Some(t), None) => Some(t),
                    (None, Some(f)) => Some(
                        std::fs::read_to_string(resolve(f.clone()))
                            .map_err(|e| format!("key `admin.token_file`: {}: {e}", f.display()))?
                            .trim()
                            .to_owned(),
                    ),
                    (None, None) => None,
                };
                if token.as_deref().is_some_and(str::is_empty) {
                    return Err("key `admin.token`: must not be empty".into());
                }
                if !listen.ip().is_loopback() && token.is_none() {
                    return Err(format!(
                        "table `admin`: listening on {listen} (not loopback) requires `token` or `token_file`"
                    ));
                }
                Some(Admin { listen, token })
            }
            None => Some(Admin::default()),
        };
        let mut policy = Policy::default();
        policy.device.extend(file.acl.device);
        policy.service.extend(file.acl.service);
        policy.validate().map_err(|e| format!("table `acl`: {e}"))?;
        Ok(Config {
            listen,
            tls,
            limits,
            service_ou: file.identity.service_ou.unwrap_or_else(|| "service".into()),
            policy,
            admin,
            audit_log: file.audit_log.clone().map(resolve),
            renewal: match file.renewal {
                None => None,
                Some(r) => {
                    if r.threshold_days == Some(0) {
                        return Err("key `renewal.threshold_days`: must be at least 1".into());
                    }
                    Some(crate::renewal::Renewal {
                        server_name: match r.server_name {
                            Some(n) => n,
                            None => r
                                .station
                                .rsplit_once(':')
                                .map(|(h, _)| h.to_owned())
                                .ok_or_else(|| {
                                    format!(
                                        "key `renewal.station`: {:?} is not host:port",
                                        r.station
                                    )
                                })?,
                        },
                        station: r.station,
                        client_cert: resolve(r.client_cert),
                        client_key: resolve(r.client_key),
                        station_ca: resolve(r.station_ca),
                        threshold: Duration::from_secs(
                            86_400 * u64::from(r.threshold_days.unwrap_or(30)),
                        ),
                    })
                }
            },
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: String,
    tls: FileTls,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    identity: FileIdentity,
    #[serde(default)]
    acl: FileAcl,
    admin: Option<FileAdmin>,
    audit_log: Option<PathBuf>,
    renewal: Option<FileRenewal>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRenewal {
    station: String,
    server_name: Option<String>,
    client_cert: PathBuf,
    client_key: PathBuf,
    station_ca: PathBuf,
    threshold_days: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    enabled: Option<bool>,
    listen: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    server_cert: PathBuf,
    server_key: PathBuf,
    #[serde(default)]
    client_ca: Vec<PathBuf>,
    #[serde(default)]
    crl: Vec<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    handshake_timeout_secs: Option<u64>,
    connect_timeout_secs: Option<u64>,
    max_packet_size: Option<usize>,
    max_connections: Option<usize>,
    max_handshakes: Option<usize>,
    ip_connect_rate: Option<f64>,
    ip_connect_burst: Option<f64>,
    publish_rate: Option<f64>,
    publish_burst: Option<f64>,
    max_subscriptions: Option<usize>,
    router_segment_bytes: Option<usize>,
    router_segments: Option<usize>,
    audit_source_per_minute: Option<f64>,
    audit_source_burst: Option<f64>,
    audit_per_minute: Option<f64>,
    audit_burst: Option<f64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileIdentity {
    service_ou: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileAcl {
    #[serde(default)]
    device: Vec<Rule>,
    #[serde(default)]
    service: Vec<Rule>,
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

    #[test]
    fn loads_and_resolves_paths() {
        let c = Config::from_toml(GOOD, Path::new("/etc/fleet")).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8883".parse().unwrap());
        assert_eq!(c.tls.server_cert, PathBuf::from("/etc/fleet/gw/server.pem"));
        assert_eq!(c.tls.server_key, PathBuf::from("/abs/server.key"));
        assert_eq!(c.tls.client_ca.len(), 2);
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.max_packet_size, 256 * 1024);
        assert_eq!(c.policy.device.len(), Policy::default().device.len() + 1);
        assert_eq!(c.admin, Some(Admin::default()));
        let off = format!("{GOOD}\n[admin]\nenabled = false\n");
        assert_eq!(Config::from_toml(&off, Path::new(".")).unwrap().admin, None);
        let public = format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:9100\"\ntoken = \"s3cret\"\n");
        let admin = Config::from_toml(&public, Path::new("."))
            .unwrap()
            .admin
            .unwrap();
        assert_eq!(admin.token.as_deref(), Some("s3cret"));
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
                "table `acl`",
            ),
            (GOOD.replace("[limits]", "[limits]\nbogus = 1"), "bogus"),
            (format!("{GOOD}\n[limits2]\n"), "limits2"),
            (
                format!("{GOOD}\n[admin]\nlisten = \"0.0.0.0:9100\"\n"),
                "requires `token`",
            ),
            (format!("{GOOD}\n[admin]\ntoken = \"\"\n"), "admin.token"),
            (
                GOOD.replace("[limits]", "[limits]\npublish_rate = 0.5"),
                "limits.publish_rate",
            ),
            (
                GOOD.replace("[limits]", "[limits]\nmax_connections = 0"),
                "limits.max_connections",
            ),
        ];
        for (text, needle) in cases {
            let err = Config::from_toml(&text, Path::new(".")).unwrap_err();
            assert!(err.contains(needle), "{err:?} does not mention {needle}");
        }
    }
}
