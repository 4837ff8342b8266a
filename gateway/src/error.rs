//! The crate's one error type, and the typed details its variants carry.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::acl::PatternError;
use crate::crl::CrlRollback;

/// Errors that stop the gateway from starting or reloading. Per-connection problems are not
/// errors of this kind: they close that one connection and are logged with a [`crate::Refusal`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The config file is not valid: which key, and what is wrong with it.
    #[error("config {path}: {error}")]
    Config { path: PathBuf, error: ConfigError },
    /// A certificate, key or CRL file that cannot be used.
    #[error("{path}: {problem}")]
    Pem { path: PathBuf, problem: PemProblem },
    /// A validly signed CRL that is older than the one in force for its issuer: refused, the
    /// newer one stays in force.
    #[error("{path}: refused, an older CRL does not replace a newer one: {rollback}")]
    CrlRollback {
        path: PathBuf,
        rollback: CrlRollback,
    },
    #[error("TLS setup: {0}")]
    Tls(TlsSetup),
    /// The TLS files cannot be watched (`path`: the directory, or `None` when no watcher
    /// could be made at all).
    #[error("cannot watch {} for changes: {source}", path.as_ref().map_or("the TLS files".into(), |p| p.display().to_string()))]
    Watch {
        path: Option<PathBuf>,
        source: notify::Error,
    },
    /// The `[renewal]` material (station CA, client certificate and key, server name).
    #[error("renewal: {what}: {detail}")]
    Renewal { what: &'static str, detail: String },
    /// The `[cluster]` settings cannot be used (TLS material for NATS, the NATS URLs).
    #[error("cluster: {what}: {detail}")]
    Cluster { what: &'static str, detail: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("doctor needs the client CAs: pass --ca FILE or --config gateway.toml")]
    DoctorWithoutCa,
}

/// What is wrong with a certificate, key or CRL file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemProblem {
    #[error("bad PEM certificate: {0}")]
    Certificate(rustls_pki_types::pem::Error),
    #[error("no CERTIFICATE block found")]
    NoCertificate,
    #[error("no usable private key: {0}")]
    PrivateKey(rustls_pki_types::pem::Error),
    #[error("not a usable CA certificate: {0}")]
    NotACa(rustls::Error),
    #[error("bad PEM CRL: {0}")]
    Crl(rustls_pki_types::pem::Error),
    #[error("no X509 CRL block found")]
    NoCrl,
    /// `index` counts from 1, in file order.
    #[error("CRL {index} cannot be parsed: {error}")]
    CrlUnparsable {
        index: usize,
        error: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    #[error(
        "CRL {index} ({issuer}) is not signed by any configured client CA (tls.client_ca) \
         or CRL issuer (tls.crl_issuers)"
    )]
    CrlNotSigned { index: usize, issuer: String },
    /// A `tls.crl_issuers` certificate that cannot vouch for CRLs.
    #[error("tls.crl_issuers: {0}")]
    CrlIssuer(crate::crl::issuers::CrlIssuerProblem),
}

/// Building the rustls server configuration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetup {
    #[error("client verifier: {0}")]
    ClientVerifier(rustls::server::VerifierBuilderError),
    #[error("protocol versions: {0}")]
    ProtocolVersions(rustls::Error),
    #[error("server certificate and key: {0}")]
    ServerCertificate(rustls::Error),
}

/// A configuration value that cannot be used: the key path where it is (`listen`,
/// `admin.token`, `acl.device[2].pattern`; empty for the file as a whole) and what is wrong.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub key: String,
    pub problem: Problem,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, problem: Problem) -> ConfigError {
        ConfigError {
            key: key.into(),
            problem,
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.problem)
        } else {
            write!(f, "key `{}`: {}", self.key, self.problem)
        }
    }
}

/// What is wrong with a configuration value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// Not TOML, or not the shape of a gateway config: an unknown or missing key, a value of
    /// the wrong type. `message` is the TOML parser's.
    #[error("{message}{}", line.map_or(String::new(), |l| format!(" (line {l})")))]
    Toml {
        message: String,
        line: Option<usize>,
    },
    #[error("{value:?} is not an address:port ({source})")]
    NotAnAddress {
        value: String,
        source: std::net::AddrParseError,
    },
    #[error("{value:?} is not host:port")]
    NotHostPort { value: String },
    #[error("must be at least 1")]
    Zero,
    #[error("{value} is not allowed: must be a number of at least 1")]
    RateBelowOne { value: f64 },
    #[error("{value} is outside {min}..={max}")]
    OutOfRange {
        value: usize,
        min: usize,
        max: usize,
    },
    #[error("at least one CA file is required (mutual TLS is mandatory)")]
    NoClientCa,
    #[error("set `token` or `token_file`, not both")]
    TokenAndTokenFile,
    #[error("{path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("must not be empty")]
    Empty,
    #[error(
        "the admin token has {chars} characters; at least {min} are required (e.g. 32 random hex digits)"
    )]
    TokenTooShort { chars: usize, min: usize },
    #[error("listening on {listen} (not loopback) requires `token` or `token_file`")]
    TokenRequired { listen: SocketAddr },
    #[error("{0}")]
    Pattern(PatternError),
    /// A TLS file the key names cannot be used (the error says which and why).
    #[error("{0}")]
    Material(Box<crate::Error>),
    #[error("{value:?} is not a NATS URL (nats://host:port or tls://host:port)")]
    NotANatsUrl { value: String },
    #[error("{value:?} may hold only letters, digits, '-' and '_' (a NATS subject token, stream or bucket name)")]
    NotANatsName { value: String },
    #[error("set `client_cert` and `client_key` together, or neither")]
    CertWithoutKey,
}
