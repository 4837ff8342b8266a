//! The crate's one error type.

use core::fmt;

use crate::bundle::BundleError;
use crate::mqtt::{ConnectReturnCode, MqttError};
use crate::tls::TlsError;

/// Everything that can go wrong on the device side.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The identity bundle in flash is unusable.
    Bundle(BundleError),
    /// TLS failed: handshake refused, I/O error inside TLS.
    Tls(TlsError),
    /// The gateway's certificate chain was refused, and why.
    Certificate(crate::x509::CertError),
    /// The gateway sent bytes that are not valid MQTT, or a packet could not be encoded.
    Mqtt(MqttError),
    /// The gateway answered CONNECT with a refusal.
    Refused(ConnectReturnCode),
    /// The gateway broke the protocol as the device sees it.
    Protocol(&'static str),
    /// Something did not arrive in time.
    Timeout(&'static str),
    /// The gateway closed the connection.
    Closed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bundle(e) => e.fmt(f),
            Error::Tls(e) => write!(f, "TLS: {e}"),
            Error::Certificate(e) => write!(f, "TLS: gateway certificate refused: {e}"),
            Error::Mqtt(e) => write!(f, "MQTT: {e}"),
            Error::Refused(code) => write!(f, "gateway refused CONNECT: {code:?}"),
            Error::Protocol(what) => write!(f, "protocol: {what}"),
            Error::Timeout(what) => write!(f, "timeout: {what}"),
            Error::Closed => write!(f, "gateway closed the connection"),
        }
    }
}

impl From<BundleError> for Error {
    fn from(e: BundleError) -> Self {
        Error::Bundle(e)
    }
}

impl From<TlsError> for Error {
    fn from(e: TlsError) -> Self {
        match e {
            TlsError::Closed => Error::Closed,
            TlsError::Certificate(why) => Error::Certificate(why),
            e => Error::Tls(e),
        }
    }
}

impl core::error::Error for Error {}
