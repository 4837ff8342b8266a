//! The crate's one error type.

use std::path::PathBuf;

/// Everything the station can refuse or fail at. Messages say what and where.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{dir} already holds a CA ({what} exists); refusing to overwrite it")]
    CaExists { dir: PathBuf, what: PathBuf },
    #[error(
        "{dir} is not a station directory: {what} is missing (run `fleet-provision ca init` first)"
    )]
    NotAStation { dir: PathBuf, what: PathBuf },
    #[error("refusing to write CA private keys unencrypted: set FLEET_CA_PASSPHRASE or pass --passphrase-file to encrypt them, or --insecure-plaintext-keys (development only)")]
    PlaintextKeysNotAllowed,
    #[error("{path}: {message}")]
    BadPem { path: PathBuf, message: String },
    #[error("invalid {field}: {message}")]
    InvalidInput {
        field: &'static str,
        message: String,
    },
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("registry {path}: {source}")]
    Registry {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("identity bundle: {0}")]
    Bundle(String),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("{path} is encrypted: set FLEET_CA_PASSPHRASE or pass --passphrase-file")]
    PassphraseRequired { path: PathBuf },
    #[error("{path}: the passphrase does not open this key")]
    WrongPassphrase { path: PathBuf },
    #[error("certificate signing request refused: {0}")]
    Csr(String),
    #[error("device {0} already exists in the registry")]
    DuplicateDevice(String),
    #[error("device {0} is not in the registry")]
    UnknownDevice(String),
    #[error("{0}")]
    State(String),
    #[error("the issuing CA expired at {not_after}; import or create a new one before issuing")]
    CaExpired { not_after: String },
    #[error("{0}")]
    Forbidden(String),
}

/// Maps an I/O error to [`Error::Io`], naming the file.
pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Maps a registry database error to [`Error::Registry`], naming the database file.
pub(crate) fn db(path: &std::path::Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |source| Error::Registry {
        path: path.to_owned(),
        source,
    }
}
