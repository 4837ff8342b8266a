//! The crate's one error type, and the typed reasons inside it.
//!
//! A leaf module: everything else in the crate imports from here, nothing here imports the
//! rest of the crate. Where a caller (or the station API's HTTP status) must tell cases
//! apart, the case is a variant, not a message.

use std::fmt;
use std::path::{Path, PathBuf};

use fleet_protocol::bundle::BundleError;

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
    /// The shared registry (PostgreSQL) refused or failed; `at` is its URL, never with
    /// the password.
    #[error("registry {at}: {}", pg_message(source))]
    SharedRegistry { at: String, source: postgres::Error },
    /// A device's identity bundle could not be encoded.
    #[error("identity bundle for {device_id}: {error}")]
    Bundle {
        device_id: String,
        error: BundleError,
    },
    /// A file is not a valid identity bundle.
    #[error("{path}: {error}")]
    BundleFile { path: PathBuf, error: BundleError },
    #[error("{device_id}: no private key in the bundle (held by a secure element)")]
    NoPrivateKey { device_id: String },
    #[error("private key: {0}")]
    Key(#[from] KeyError),
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
    #[error("{path} is encrypted: set FLEET_CA_PASSPHRASE or pass --passphrase-file")]
    PassphraseRequired { path: PathBuf },
    #[error("{path}: the passphrase does not open this key")]
    WrongPassphrase { path: PathBuf },
    /// A certificate signing request the station refuses, and which one it was.
    #[error("certificate signing request refused: {at}{reason}")]
    Csr { at: CsrAt, reason: CsrError },
    #[error("device {0} already exists in the registry")]
    DuplicateDevice(String),
    #[error("device {0} is not in the registry")]
    UnknownDevice(String),
    /// Another process holds a lock the operation needs: try again later.
    #[error(transparent)]
    Busy(#[from] Busy),
    /// The registry's state does not allow the operation.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The station API's TLS could not be set up.
    #[error("station TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("the issuing CA expired at {not_after}; import or create a new one before issuing")]
    CaExpired { not_after: String },
    /// The caller may not do this.
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    /// A renewal the station's renewal policy does not allow now.
    #[error(transparent)]
    RenewalRefused(#[from] RenewalRefused),
    #[error("Intel HEX: {0}")]
    IntelHex(#[from] ihex::WriterError),
    #[error("{what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    /// A CRL file the station will not honour.
    #[error("{}: CRL refused: {reason}", path.display())]
    Crl { path: PathBuf, reason: CrlError },
    /// A CRL written but not published to the gateway cluster's NATS.
    #[error(transparent)]
    Publish(#[from] crate::publish::PublishError),
    /// An operation on one item delivered none (a defect in the station, never the input).
    #[error("the station delivered nothing for a request of one")]
    NothingDelivered,
}

/// Which request a [`CsrError`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrAt {
    /// The only one (an API call, a renewal).
    Request,
    /// The `index`th (from 1) of `count` in one call.
    Batch { index: usize, count: usize },
    /// The one read from this file.
    File(PathBuf),
}

impl fmt::Display for CsrAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CsrAt::Request => Ok(()),
            CsrAt::Batch { index, count } => write!(f, "request {index} of {count}: "),
            CsrAt::File(path) => write!(f, "{}: ", path.display()),
        }
    }
}

/// Why a certificate signing request is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    #[error("not PEM: {0}")]
    NotPem(pem::PemError),
    #[error("PEM block is {0:?}, not CERTIFICATE REQUEST")]
    NotARequestBlock(String),
    /// The DER does not parse (the parser's explanation).
    #[error("not a PKCS#10 request: {0}")]
    NotPkcs10(String),
    #[error("{0} bytes after the request")]
    TrailingBytes(usize),
    #[error("the key is not P-256 (fleet devices use ECDSA P-256 keys only)")]
    NotP256,
    #[error("the signature does not verify with the request's own key")]
    BadSignature,
    #[error("it requests CA:true; device certificates are never CAs")]
    RequestsCa,
    #[error("it requests subject alternative names; device certificates carry none")]
    RequestsNames,
    #[error("public key: {0}")]
    PublicKey(String),
    #[error("it carries the key of the current certificate; renewal needs a new key")]
    SameKey,
}

impl From<CsrError> for Error {
    fn from(reason: CsrError) -> Error {
        Error::Csr {
            at: CsrAt::Request,
            reason,
        }
    }
}

/// Why a private key could not be converted or protected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("PKCS#8: {0}")]
    Pkcs8(pkcs8::Error),
    #[error("DER: {0}")]
    Der(pkcs8::der::Error),
    #[error("scrypt parameters: {0:?}")]
    Scrypt(pkcs8::pkcs5::scrypt::errors::InvalidParams),
    #[error("PBES2 parameters: {0}")]
    Pbes2(pkcs8::pkcs5::Error),
    #[error("not a P-256 SEC1 key")]
    NotSec1,
}

/// What went wrong with the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("encoding a record or manifest: {0}")]
    Encode(serde_json::Error),
    #[error("{}: the last record is not valid JSON ({source}); run `fleet-provision audit verify`", path.display())]
    LastRecordUnreadable {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: the registry anchors record {anchored} but the log ends at record {last} with a different hash: records were cut off or replaced; run `fleet-provision audit verify` and investigate before issuing anything", path.display())]
    CutOff {
        path: PathBuf,
        anchored: u64,
        last: u64,
    },
    #[error("{}: record {seq} no longer matches the hash anchored in the registry; run `fleet-provision audit verify`", path.display())]
    AnchorMismatch { path: PathBuf, seq: u64 },
    #[error("{problems} problem(s) in {}", path.display())]
    Tampered { path: PathBuf, problems: usize },
    #[error("registry {at}: the audit anchor of station {station} is no longer at record {expected}: another process appends to this station's log (the same station-name in two directories?); run `fleet-provision audit verify --all-stations`")]
    AnchorMoved {
        at: String,
        station: String,
        expected: u64,
    },
    #[error("{}: this station's registry and audit log are in its registry.sqlite3, not in {at}: move them with `fleet-provision registry migrate --from DIR --to {at}` first", path.display())]
    NotMigrated { path: PathBuf, at: String },
    #[error("{}: this station was migrated to {to} (`registry migrate`); its registry.sqlite3 is stale: run it with --registry {to}", path.display())]
    Migrated { path: PathBuf, to: String },
}

/// A lock another process holds.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Busy {
    #[error("{} is in use by another fleet-provision (is `serve` running? use its API, or stop it first)", dir.display())]
    Station { dir: PathBuf },
    #[error("registry {}: the database is locked by another connection; try again", path.display())]
    Registry { path: PathBuf },
    #[error("registry {at}: a lock another station holds, or a conflict with it; try again")]
    SharedRegistry { at: String },
}

/// A registry state that does not allow the operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Conflict {
    #[error("serial {serial_hex} is not a reserved certificate")]
    NotReserved { serial_hex: String },
    #[error("{device_id} has no active certificate (already revoked, or never issued)")]
    NothingToRevoke { device_id: String },
    /// `registry migrate` of a station the shared registry already holds.
    #[error("registry {at}: station {station} was migrated before (it already has {what} there); nothing was written")]
    AlreadyMigrated {
        at: String,
        station: String,
        what: &'static str,
    },
    /// `registry migrate` of a station whose device ids or serials the shared registry
    /// already holds (at most 10 of each named).
    #[error("registry {at}: already holds this station's device ids [{}] and serials [{}] (at most 10 of each named); nothing was written", device_ids.join(", "), serials.join(", "))]
    MigrateCollides {
        at: String,
        device_ids: Vec<String>,
        serials: Vec<String>,
    },
}

/// A refused caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Forbidden {
    #[error("certificate {serial_hex} is not one of {device_id}'s")]
    NotTheDevicesCertificate {
        device_id: String,
        serial_hex: String,
    },
    /// The certificate is the device's, but revoked, aborted or never delivered.
    #[error("certificate {serial_hex} of {device_id} is {status}")]
    CertificateNotLive {
        device_id: String,
        serial_hex: String,
        status: &'static str,
    },
}

/// Why the station does not renew a device now; each says what the device can do about it.
/// Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalRefused {
    /// The presented certificate is not near its end yet.
    #[error("certificate {serial_hex} of {device_id} is not yet renewable: it ends at {not_after} and may be renewed from {renewable_after} (Unix seconds)")]
    NotYetRenewable {
        device_id: String,
        serial_hex: String,
        not_after: i64,
        renewable_after: i64,
    },
    /// The device renewed as often as the policy allows within its period.
    #[error("{device_id} renewed {count} times within the last {period_secs} seconds (at most {max}); try again from {retry_after} (Unix seconds)")]
    RateLimited {
        device_id: String,
        count: usize,
        max: u32,
        period_secs: i64,
        retry_after: i64,
    },
    /// The presented certificate was already replaced by a renewal.
    #[error("certificate {serial_hex} of {device_id} is more than one renewal old; only the device's current certificate renews (or, once, the one it was renewed from)")]
    Superseded {
        device_id: String,
        serial_hex: String,
    },
}

/// Why a CRL is not honoured: not the issuing CA's, or older than the one in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    #[error("not a CRL: {0}")]
    Unreadable(String),
    #[error("issued by {issuer}, not by the station's issuing CA")]
    ForeignIssuer { issuer: String },
    #[error("its signature does not verify with the issuing CA's key")]
    BadSignature,
    #[error("it has no CRL number (or one over 64 bits)")]
    NoNumber,
    #[error("its number {number} is lower than {in_force}, the number of the CRL in force")]
    LowerNumber { number: u64, in_force: u64 },
    #[error("its thisUpdate {this_update} is older than {in_force}, that of the CRL in force (Unix seconds)")]
    OlderThisUpdate { this_update: i64, in_force: i64 },
}

/// Which part of the station API's TLS setup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("issuing CA: {0}")]
    IssuingCa(rustls::Error),
    #[error("CRL: {0}")]
    Crl(pem::PemError),
    #[error("client verifier: {0}")]
    ClientVerifier(rustls::server::VerifierBuilderError),
    #[error("protocol versions: {0}")]
    ProtocolVersions(rustls::Error),
    #[error("server certificate: {0}")]
    ServerCertificate(rustls::Error),
    #[error("server chain: {0}")]
    ServerChain(pem::PemError),
    #[error("server key: {0}")]
    ServerKey(pem::PemError),
}

/// What the database said (its message, SQLSTATE, constraint and detail), or what failed
/// on the way to it.
fn pg_message(e: &postgres::Error) -> String {
    let Some(db) = e.as_db_error() else {
        // The client's own message, then its causes (the TLS or I/O error underneath).
        let mut text = e.to_string();
        let mut cause = std::error::Error::source(e);
        for _ in 0..8 {
            let Some(c) = cause else { break };
            let more = c.to_string();
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            cause = c.source();
        }
        return text;
    };
    let mut text = format!("{} (SQLSTATE {}", db.message(), db.code().code());
    if let Some(constraint) = db.constraint() {
        text.push_str(&format!(", constraint {constraint}"));
    }
    text.push(')');
    if let Some(detail) = db.detail() {
        text.push_str(&format!(": {detail}"));
    }
    text
}

/// Maps an I/O error to [`Error::Io`], naming the file.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Maps a registry database error to [`Error::Registry`], naming the database file; a
/// database locked by another connection is [`Busy::Registry`].
pub(crate) fn db(path: &Path) -> impl Fn(rusqlite::Error) -> Error + '_ {
    move |source| {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
        match source.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked) => Error::Busy(Busy::Registry {
                path: path.to_owned(),
            }),
            _ => Error::Registry {
                path: path.to_owned(),
                source,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csr_refusal_says_which_request() {
        let batch = Error::Csr {
            at: CsrAt::Batch { index: 2, count: 3 },
            reason: CsrError::NotP256,
        };
        assert_eq!(
            batch.to_string(),
            "certificate signing request refused: request 2 of 3: the key is not P-256 (fleet devices use ECDSA P-256 keys only)"
        );
        let file = Error::Csr {
            at: CsrAt::File("dev.csr".into()),
            reason: CsrError::TrailingBytes(2),
        };
        assert_eq!(
            file.to_string(),
            "certificate signing request refused: dev.csr: 2 bytes after the request"
        );
        assert!(matches!(
            Error::from(CsrError::SameKey),
            Error::Csr {
                at: CsrAt::Request,
                reason: CsrError::SameKey
            }
        ));
    }

    #[test]
    fn a_locked_database_is_busy_and_other_database_errors_are_not() {
        let path = Path::new("registry.sqlite3");
        let locked = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        );
        assert!(matches!(
            db(path)(locked),
            Error::Busy(Busy::Registry { .. })
        ));
        let other = rusqlite::Error::QueryReturnedNoRows;
        assert!(matches!(db(path)(other), Error::Registry { .. }));
    }
}
