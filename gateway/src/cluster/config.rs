//! The `[cluster]` table: where the NATS servers are, how to authenticate to them, and the
//! names of the JetStream stream and KV buckets the gateways share.
//!
//! ```toml
//! [cluster]
//! servers = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
//! name = "gw-1"                        # this gateway, unique in the cluster (default: a random id)
//! client_cert = "nats/client.pem"      # optional mTLS to NATS (both or neither)
//! client_key = "nats/client.key"
//! ca = "nats/ca.pem"                   # optional: the CA of the NATS servers' certificates
//! subject_prefix = "fleet"             # MQTT messages travel on <prefix>.{v|d}.<topic tokens>
//! stream = "FLEET_MESSAGES"            # QoS 1/2 messages
//! retained_bucket = "fleet-retained"   # one key per retained topic
//! control_bucket = "fleet-control"     # revocations, kicks, session locations
//! crl_bucket = "fleet-crl"             # the CRLs the stations publish (watched; see crls.rs)
//! crl_cache = "cluster-crls.pem"       # the last verified CRLs from it (default: next to the config)
//! replicas = 1                         # of the stream and the buckets (3 for an R3 NATS cluster)
//! max_age_secs = 86400                 # how long the stream keeps a message
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{ConfigError, Problem};

/// A validated `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// NATS server URLs (`nats://` or `tls://`), tried in turn.
    pub servers: Vec<String>,
    /// This gateway's name in the cluster (session locations, message ids).
    pub name: Option<String>,
    /// Client certificate and key for mutual TLS to NATS.
    pub client_auth: Option<(PathBuf, PathBuf)>,
    /// The CA that signs the NATS servers' certificates.
    pub ca: Option<PathBuf>,
    pub subject_prefix: String,
    pub stream: String,
    pub retained_bucket: String,
    pub control_bucket: String,
    /// The KV bucket the stations publish their CRLs to.
    pub crl_bucket: String,
    /// Where the CRLs verified from the bucket are kept (`None`: nowhere, so a gateway
    /// started while NATS is away has only its CRL files).
    pub crl_cache: Option<PathBuf>,
    pub replicas: usize,
    pub max_age: Duration,
}

impl ClusterConfig {
    /// A cluster on `servers` with the default names and one replica.
    pub fn new(servers: Vec<String>) -> ClusterConfig {
        ClusterConfig {
            servers,
            name: None,
            client_auth: None,
            ca: None,
            subject_prefix: "fleet".into(),
            stream: "FLEET_MESSAGES".into(),
            retained_bucket: "fleet-retained".into(),
            control_bucket: "fleet-control".into(),
            crl_bucket: "fleet-crl".into(),
            crl_cache: None,
            replicas: 1,
            max_age: Duration::from_secs(86_400),
        }
    }
}

/// `[cluster]` as serde reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileCluster {
    servers: Vec<String>,
    name: Option<String>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    ca: Option<PathBuf>,
    subject_prefix: Option<String>,
    stream: Option<String>,
    retained_bucket: Option<String>,
    control_bucket: Option<String>,
    crl_bucket: Option<String>,
    crl_cache: Option<PathBuf>,
    replicas: Option<usize>,
    max_age_secs: Option<u64>,
}

/// Whether `name` is usable as a NATS subject token, stream or bucket name.
fn nats_name(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::new(key, Problem::Empty));
    }
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            Problem::NotANatsName {
                value: value.to_owned(),
            },
        ))
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        base.join(path)
    }
}

impl FileCluster {
    pub(crate) fn validate(self, base: &Path) -> Result<ClusterConfig, ConfigError> {
        let mut c = ClusterConfig::new(Vec::new());
        if self.servers.is_empty() {
            return Err(ConfigError::new("cluster.servers", Problem::Empty));
        }
        for (i, url) in self.servers.iter().enumerate() {
            let scheme_ok = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
            if !scheme_ok || url.parse::<async_nats::ServerAddr>().is_err() {
                return Err(ConfigError::new(
                    format!("cluster.servers[{i}]"),
                    Problem::NotANatsUrl { value: url.clone() },
                ));
            }
        }
        c.servers = self.servers;
        if let Some(name) = self.name {
            nats_name("cluster.name", &name)?;
            c.name = Some(name);
        }
        c.client_auth = match (self.client_cert, self.client_key) {
            (Some(cert), Some(key)) => Some((resolve(base, &cert), resolve(base, &key))),
            (None, None) => None,
            _ => return Err(ConfigError::new("cluster", Problem::CertWithoutKey)),
        };
        c.ca = self.ca.map(|p| resolve(base, &p));
        c.crl_cache = Some(resolve(
            base,
            self.crl_cache
                .as_deref()
                .unwrap_or(Path::new("cluster-crls.pem")),
        ));
        let names = [
            (
                "cluster.subject_prefix",
                self.subject_prefix,
                &mut c.subject_prefix,
            ),
            ("cluster.stream", self.stream, &mut c.stream),
            (
                "cluster.retained_bucket",
                self.retained_bucket,
                &mut c.retained_bucket,
            ),
            (
                "cluster.control_bucket",
                self.control_bucket,
                &mut c.control_bucket,
            ),
            ("cluster.crl_bucket", self.crl_bucket, &mut c.crl_bucket),
        ];
        for (key, value, slot) in names {
            if let Some(v) = value {
                nats_name(key, &v)?;
                *slot = v;
            }
        }
        if let Some(r) = self.replicas {
            if !(1..=5).contains(&r) {
                return Err(ConfigError::new(
                    "cluster.replicas",
                    Problem::OutOfRange {
                        value: r,
                        min: 1,
                        max: 5,
                    },
                ));
            }
            c.replicas = r;
        }
        if let Some(secs) = self.max_age_secs {
            if secs == 0 {
                return Err(ConfigError::new("cluster.max_age_secs", Problem::Zero));
            }
            c.max_age = Duration::from_secs(secs);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        let file: FileCluster = toml::from_str(text).expect("shape");
        file.validate(Path::new("/etc/fleet"))
    }

    #[test]
    fn defaults_and_paths() {
        let c = parse("servers = [\"nats://127.0.0.1:4222\"]").unwrap();
        let mut expected = ClusterConfig::new(vec!["nats://127.0.0.1:4222".into()]);
        expected.crl_cache = Some("/etc/fleet/cluster-crls.pem".into());
        assert_eq!(c, expected);
        let c = parse(
            "servers = [\"tls://nats:4222\"]\nclient_cert = \"c.pem\"\nclient_key = \"/k.pem\"\n\
             ca = \"ca.pem\"\nreplicas = 3\nstream = \"S\"\nname = \"gw-1\"",
        )
        .unwrap();
        assert_eq!(
            c.client_auth,
            Some(("/etc/fleet/c.pem".into(), "/k.pem".into()))
        );
        assert_eq!(c.ca, Some("/etc/fleet/ca.pem".into()));
        assert_eq!((c.replicas, c.stream.as_str()), (3, "S"));
        assert_eq!(c.name.as_deref(), Some("gw-1"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("servers = []", "cluster.servers", "must not be empty"),
            (
                "servers = [\"http://x:1\"]",
                "cluster.servers[0]",
                "not a NATS URL",
            ),
            (
                "servers = [\"nats://a:1\"]\nclient_cert = \"c\"",
                "cluster",
                "together",
            ),
            (
                "servers = [\"nats://a:1\"]\nreplicas = 7",
                "cluster.replicas",
                "1..=5",
            ),
            (
                "servers = [\"nats://a:1\"]\nstream = \"a.b\"",
                "cluster.stream",
                "a.b",
            ),
            (
                "servers = [\"nats://a:1\"]\nname = \"\"",
                "cluster.name",
                "empty",
            ),
            (
                "servers = [\"nats://a:1\"]\nmax_age_secs = 0",
                "cluster.max_age_secs",
                "at least 1",
            ),
        ];
        for (text, key, needle) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert!(e.to_string().contains(needle), "{e} lacks {needle}");
        }
    }
}
