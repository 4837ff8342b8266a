//! The config file as serde reads it, table by table, and the validation pass that turns it
//! into a [`Config`]: every value checked once, every refusal naming its key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::MIN_ADMIN_TOKEN_CHARS;
use super::{default_service_ou, parse_addr, resolve, Admin, Config, Limits, TlsFiles};
use crate::acl::{Policy, Rule};
use crate::error::{ConfigError, Problem};
use crate::station_link::StationAccess;

/// The file as serde reads it; [`FileConfig::validate`] turns it into a [`Config`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    listen: String,
    tls: TlsFiles,
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    identity: FileIdentity,
    #[serde(default)]
    acl: FileAcl,
    admin: Option<FileAdmin>,
    audit_log: Option<PathBuf>,
    renewal: Option<FileRenewal>,
    console: Option<FileConsole>,
    cluster: Option<crate::cluster::FileCluster>,
}

impl FileConfig {
    pub(super) fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        let listen = parse_addr("listen", &self.listen)?;
        let tls = self.tls.resolve(base)?;
        self.limits.check()?;
        let policy = self.acl.policy()?;
        let admin = match self.admin {
            None => Some(Admin::default()),
            Some(admin) => admin.validate(base)?,
        };
        let renewal = self.renewal.map(|r| r.validate(base)).transpose()?;
        let console = self.console.map(|c| c.validate(base)).transpose()?;
        let cluster = self.cluster.map(|c| c.validate(base)).transpose()?;
        Ok(Config {
            listen,
            tls,
            limits: self.limits,
            service_ou: self.identity.service_ou,
            policy,
            admin,
            audit_log: self.audit_log.map(|p| resolve(base, &p)),
            renewal,
            console,
            cluster,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIdentity {
    #[serde(default = "default_service_ou")]
    service_ou: String,
}

impl Default for FileIdentity {
    fn default() -> Self {
        FileIdentity {
            service_ou: default_service_ou(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileAcl {
    #[serde(default)]
    device: Vec<Rule>,
    #[serde(default)]
    service: Vec<Rule>,
}

impl FileAcl {
    /// The default policy with the file's rules appended; every file rule checked, and
    /// named by its place in the file when refused.
    fn policy(self) -> Result<Policy, ConfigError> {
        let added = Policy {
            device: self.device,
            service: self.service,
        };
        added.validate().map_err(|bad| {
            ConfigError::new(
                format!("acl.{}[{}].pattern", bad.list, bad.index),
                Problem::Pattern(bad.problem),
            )
        })?;
        let mut policy = Policy::default();
        policy.device.extend(added.device);
        policy.service.extend(added.service);
        Ok(policy)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    #[serde(default = "enabled")]
    enabled: bool,
    listen: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
}

fn enabled() -> bool {
    true
}

impl FileAdmin {
    /// `None` when disabled. A token, wherever it comes from, must be long enough; off
    /// loopback one is required.
    fn validate(self, base: &Path) -> Result<Option<Admin>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let listen = match &self.listen {
            Some(l) => parse_addr("admin.listen", l)?,
            None => Admin::default().listen,
        };
        let (key, token) = match (self.token, self.token_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new("admin", Problem::TokenAndTokenFile))
            }
            (Some(t), None) => ("admin.token", Some(t)),
            (None, Some(f)) => ("admin.token_file", Some(read_token(base, &f)?)),
            (None, None) => ("admin.token", None),
        };
        match token.as_deref().map(|t| t.chars().count()) {
            Some(0) => return Err(ConfigError::new(key, Problem::Empty)),
            Some(chars) if chars < MIN_ADMIN_TOKEN_CHARS => {
                return Err(ConfigError::new(
                    key,
                    Problem::TokenTooShort {
                        chars,
                        min: MIN_ADMIN_TOKEN_CHARS,
                    },
                ))
            }
            Some(_) => {}
            None if !listen.ip().is_loopback() => {
                return Err(ConfigError::new("admin", Problem::TokenRequired { listen }))
            }
            None => {}
        }
        Ok(Some(Admin { listen, token }))
    }
}

fn read_token(base: &Path, file: &Path) -> Result<String, ConfigError> {
    match std::fs::read_to_string(resolve(base, file)) {
        Ok(text) => Ok(text.trim().to_owned()),
        Err(source) => Err(ConfigError::new(
            "admin.token_file",
            Problem::Unreadable {
                path: file.to_owned(),
                source,
            },
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRenewal {
    station: String,
    server_name: Option<String>,
    client_cert: PathBuf,
    client_key: PathBuf,
    station_ca: PathBuf,
    #[serde(default = "thirty")]
    threshold_days: u32,
}

fn thirty() -> u32 {
    30
}

impl FileRenewal {
    fn validate(self, base: &Path) -> Result<crate::renewal::Renewal, ConfigError> {
        if self.threshold_days == 0 {
            return Err(ConfigError::new("renewal.threshold_days", Problem::Zero));
        }
        let fields = StationFields {
            station: self.station,
            server_name: self.server_name,
            client_cert: self.client_cert,
            client_key: self.client_key,
            station_ca: self.station_ca,
        };
        Ok(crate::renewal::Renewal {
            access: fields.validate("renewal", base)?,
            threshold: Duration::from_secs(86_400 * u64::from(self.threshold_days)),
        })
    }
}

/// The station settings `[renewal]` and `[console]` share.
struct StationFields {
    station: String,
    server_name: Option<String>,
    client_cert: PathBuf,
    client_key: PathBuf,
    station_ca: PathBuf,
}

impl StationFields {
    /// `section` names the table in errors.
    fn validate(self, section: &str, base: &Path) -> Result<StationAccess, ConfigError> {
        let server_name = match self.server_name {
            Some(name) if name.is_empty() => {
                return Err(ConfigError::new(
                    format!("{section}.server_name"),
                    Problem::Empty,
                ))
            }
            Some(name) => name,
            None => match self.station.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                _ => {
                    return Err(ConfigError::new(
                        format!("{section}.station"),
                        Problem::NotHostPort {
                            value: self.station,
                        },
                    ))
                }
            },
        };
        Ok(StationAccess {
            server_name,
            station: self.station,
            client_cert: resolve(base, &self.client_cert),
            client_key: resolve(base, &self.client_key),
            station_ca: resolve(base, &self.station_ca),
        })
    }
}

/// `[console]`: the station the console asks for certificate history and revocation, with
/// a fleet operator's identity (`fleet-provision operator-cert`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConsole {
    station: String,
    server_name: Option<String>,
    client_cert: PathBuf,
    client_key: PathBuf,
    station_ca: PathBuf,
}

impl FileConsole {
    fn validate(self, base: &Path) -> Result<crate::console::ConsoleStation, ConfigError> {
        let fields = StationFields {
            station: self.station,
            server_name: self.server_name,
            client_cert: self.client_cert,
            client_key: self.client_key,
            station_ca: self.station_ca,
        };
        fields.validate("console", base)
    }
}
