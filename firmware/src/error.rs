//! The crate's one error type.

use core::fmt;

use crate::bundle::BundleError;

/// Everything that can go wrong on the device side.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The identity bundle in flash is unusable.
    Bundle(BundleError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Bundle(e) => e.fmt(f),
        }
    }
}

impl From<BundleError> for Error {
    fn from(e: BundleError) -> Self {
        Error::Bundle(e)
    }
}

impl core::error::Error for Error {}
