//! `fleet-hil`: runs devices against a gateway and reports a verdict.
//!
//! For now the devices are the firmware core running on the host (`fleet-firmware` with its
//! `std` feature). Each scenario returns a report; the binary prints one verdict line and
//! exits non-zero when a scenario fails.

pub mod backend;
pub mod bench;
pub mod fleet;
pub mod probe;
pub mod qemu;
pub mod refusals;
pub mod rotation;

/// The crate's one error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Bundle {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("backend MQTT client: {0}")]
    Backend(String),
}
