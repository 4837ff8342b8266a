//! The validated text fields of a bundle: device id and tenant ([`Name`]), gateway host
//! ([`Host`]). Each rule lives here once; a `&Name` or `&Host` is proof it was applied.

use core::fmt;
use core::ops::Deref;

use super::{BundleError, Field};

/// Longest device id or tenant.
pub const MAX_NAME_LEN: usize = 64;
/// Longest gateway host (a DNS name: 253).
pub const MAX_HOST_LEN: usize = 253;

/// A device id or a tenant: 1 to 64 of `[A-Za-z0-9._-]`, so it can never add a level or a
/// wildcard to a topic. Every part of fleet that names devices applies this one rule.
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Name(str);

/// A gateway host: a DNS name or an IP literal, 1 to 253 of `[A-Za-z0-9.:-]`.
#[derive(PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct Host(str);

impl Name {
    /// `s` as a device id, or why it is not one.
    pub fn device_id(s: &str) -> Result<&Name, BundleError> {
        Name::parse(Field::DeviceId, s.as_bytes())
    }

    /// `s` as a tenant, or why it is not one.
    pub fn tenant(s: &str) -> Result<&Name, BundleError> {
        Name::parse(Field::Tenant, s.as_bytes())
    }

    /// Checks the bytes of `field` (device id or tenant).
    pub(super) fn parse(field: Field, v: &[u8]) -> Result<&Name, BundleError> {
        let invalid = |reason| BundleError::InvalidField { field, reason };
        if v.is_empty() || v.len() > MAX_NAME_LEN {
            return Err(invalid("must be 1 to 64 characters"));
        }
        if !v
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        {
            return Err(invalid("may only contain A-Z, a-z, 0-9, '.', '_' and '-'"));
        }
        // All bytes are ASCII, so this cannot fail; map rather than unwrap to stay panic-free.
        let s = core::str::from_utf8(v).map_err(|_| invalid("not UTF-8"))?;
        // SAFETY: `Name` is a `repr(transparent)` wrapper of `str`, so both references have
        // the same layout and metadata; the lifetime is carried over unchanged.
        Ok(unsafe { &*(s as *const str as *const Name) })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Host {
    /// `s` as a gateway host, or why it is not one.
    pub fn new(s: &str) -> Result<&Host, BundleError> {
        Host::parse(s.as_bytes())
    }

    pub(super) fn parse(v: &[u8]) -> Result<&Host, BundleError> {
        let invalid = |reason| BundleError::InvalidField {
            field: Field::GatewayHost,
            reason,
        };
        if v.is_empty() || v.len() > MAX_HOST_LEN {
            return Err(invalid("must be 1 to 253 characters"));
        }
        if !v
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':'))
        {
            return Err(invalid("must be a DNS name or an IP address"));
        }
        let s = core::str::from_utf8(v).map_err(|_| invalid("not UTF-8"))?;
        // SAFETY: as for `Name`: `Host` is a `repr(transparent)` wrapper of `str`.
        Ok(unsafe { &*(s as *const str as *const Host) })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! str_newtype {
    ($t:ty) => {
        impl Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$t> for str {
            fn eq(&self, other: &$t) -> bool {
                self == &other.0
            }
        }
    };
}

str_newtype!(Name);
str_newtype!(Host);

/// Whether `s` is acceptable as a device id or tenant (see [`Name`]).
pub fn valid_name(s: &str) -> bool {
    Name::device_id(s).is_ok()
}

/// Whether `s` is acceptable as a gateway host (see [`Host`]).
pub fn valid_host(s: &str) -> bool {
    Host::new(s).is_ok()
}
