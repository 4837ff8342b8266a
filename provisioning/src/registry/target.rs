//! Where a shared registry is and how to reach it: a `postgres://` URL, a password kept out
//! of the URL (and out of every message), and TLS through rustls when a CA file is given.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postgres::config::{Host, SslMode};
use rustls_pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::Error;
use crate::fs::read_to_string;

/// How long opening a connection to the database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which registry a station uses.
#[derive(Clone, Default)]
pub enum RegistryLocation {
    /// SQLite in the station directory (`registry.sqlite3`): one station.
    #[default]
    StationDir,
    /// A PostgreSQL database several stations share.
    Postgres(Box<PostgresTarget>),
}

/// A PostgreSQL registry to connect to. Its [`Display`](std::fmt::Display) form
/// (`postgres://user@host:port/db`) never holds the password.
#[derive(Clone)]
pub struct PostgresTarget {
    pub(super) config: postgres::Config,
    pub(super) tls: Option<MakeRustlsConnect>,
    shown: String,
}

impl std::fmt::Display for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("at", &self.shown)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

fn invalid(message: String) -> Error {
    Error::InvalidInput {
        field: "registry",
        message,
    }
}

impl PostgresTarget {
    /// `url` is `postgres://user@host:port/db` (query options such as `sslmode=require` and
    /// `connect_timeout=5` allowed, a password not: give it as `password`). With `ca_file`
    /// (PEM, the CA that signed the database server's certificate) the connection is TLS,
    /// the server's certificate verified against it and its name; without it, plain TCP.
    pub fn new(
        url: &str,
        password: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<PostgresTarget, Error> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid("not a postgres://user@host:port/db URL".to_owned()));
        }
        // The parser's messages never repeat the URL, so a password in it is not shown.
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| invalid(format!("not a postgres://user@host:port/db URL: {e}")))?;
        if config.get_password().is_some() {
            return Err(invalid(
                "the URL holds a password: give it with --registry-password-file or PGPASSWORD instead".to_owned(),
            ));
        }
        let user = config
            .get_user()
            .ok_or_else(|| invalid("the URL names no user (postgres://user@host:port/db)".into()))?
            .to_owned();
        if config.get_hosts().is_empty() {
            return Err(invalid(
                "the URL names no host (postgres://user@host:port/db)".into(),
            ));
        }
        if let Some(password) = password {
            config.password(password.trim_end_matches(['\r', '\n']));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let tls = match ca_file {
            Some(path) => {
                config.ssl_mode(SslMode::Require);
                Some(MakeRustlsConnect::new(tls_config(path)?))
            }
            None if config.get_ssl_mode() == SslMode::Require => {
                return Err(invalid(
                    "sslmode=require needs --registry-ca-file (the CA that signed the database server's certificate)".into(),
                ));
            }
            None => {
                config.ssl_mode(SslMode::Disable);
                None
            }
        };
        let shown = shown(&config, &user);
        Ok(PostgresTarget { config, tls, shown })
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// `postgres://user@host:port/db`, never with the password.
fn shown(config: &postgres::Config, user: &str) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{}/{db}", hosts.join(","))
}

/// A rustls client configuration trusting only the CA certificates in `path`.
fn tls_config(path: &Path) -> Result<rustls::ClientConfig, Error> {
    let text = read_to_string(path)?;
    let bad = |message: String| Error::BadPem {
        path: path.to_owned(),
        message,
    };
    let blocks = pem::parse_many(&text).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for block in blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE") {
        roots
            .add(CertificateDer::from(block.into_contents()))
            .map_err(|e| bad(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no CERTIFICATE block".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("TLS protocol versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password_and_a_password_in_it_is_refused() {
        let t = PostgresTarget::new(
            "postgres://fleet@127.0.0.1:6543/reg",
            Some("s3cret\n"),
            None,
        )
        .unwrap();
        assert_eq!(t.to_string(), "postgres://fleet@127.0.0.1:6543/reg");
        assert_eq!(t.config.get_password(), Some(&b"s3cret"[..]));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(!t.is_tls());
        let err = PostgresTarget::new("postgres://fleet:hunter2@db/reg", None, None).unwrap_err();
        assert!(err.to_string().contains("holds a password"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn bad_urls_are_refused_with_what_is_wrong() {
        for (url, says) in [
            ("mysql://fleet@db/reg", "not a postgres://"),
            ("postgres://db/reg", "no user"),
            ("postgres://fleet@db:notaport/reg", "not a postgres://"),
            (
                "postgres://fleet@db/reg?sslmode=require",
                "--registry-ca-file",
            ),
        ] {
            let err = PostgresTarget::new(url, None, None).unwrap_err();
            assert!(err.to_string().contains(says), "{url}: {err}");
        }
    }
}
