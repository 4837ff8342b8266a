//! The identity bundle: what the factory station flashes into each board.
//!
//! Wire format (all integers little-endian):
//!
//! ```text
//! offset size  field
//! 0      4     magic "FLID"
//! 4      1     format version (1)
//! 5      3     reserved, must be zero
//! 8      4     generation (A/B slot counter: the higher valid one wins)
//! 12     4     body length in bytes
//! 16     4     CRC-32 (ISO-HDLC) over bytes 0..16 followed by the body
//! 20     n     body: a sequence of fields, each `tag: u8, len: u16, value: [u8; len]`
//! ```
//!
//! Bytes after the body are ignored, so a bundle can sit in an erased (0xFF) flash slot.
//!
//! | tag | field                     | required | value                               |
//! |-----|---------------------------|----------|-------------------------------------|
//! | 1   | device id                 | yes      | 1..=64 of `[A-Za-z0-9._-]`          |
//! | 2   | tenant                    | yes      | 1..=64 of `[A-Za-z0-9._-]`          |
//! | 3   | device certificate        | yes      | X.509 DER                           |
//! | 4   | device private key        | no       | SEC1 DER, P-256 (absent: secure element) |
//! | 5   | gateway trust anchor      | yes      | X.509 DER                           |
//! | 6   | gateway host              | yes      | DNS name or IP literal, 1..=253     |
//! | 7   | gateway port              | yes      | u16, non-zero                       |
//! | 8   | per-device seed           | no       | 32 bytes                            |
//!
//! Tags 0x80 and above are optional extensions that an older reader skips; an unknown tag
//! below 0x80 is rejected, and so is any field that appears twice.
//!
//! [`Bundle::parse`] borrows from the input and allocates nothing; [`Bundle::emit`] writes into
//! a caller-provided buffer. The text fields are checked by [`Name`] and [`Host`], the one place
//! of their rules: `parse` (and `emit`, which re-parses what it wrote) through them, and a
//! station before it builds a bundle with [`Name::device_id`], [`Name::tenant`] and
//! [`Host::new`], which say which rule a value breaks. The [`Bundle`] fields stay `&str`: the
//! device loop and the station take them as such.

use core::fmt;

mod names;

pub use names::{valid_host, valid_name, Host, Name, MAX_HOST_LEN, MAX_NAME_LEN};

/// The four bytes every bundle starts with.
pub const MAGIC: [u8; 4] = *b"FLID";
/// The format version this code reads and writes.
pub const VERSION: u8 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 20;
/// Largest body accepted: bigger than any sane flash slot, small enough to bound parsing.
pub const MAX_BODY_LEN: usize = 32 * 1024;
/// Length of the per-device seed.
pub const SEED_LEN: usize = 32;

const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// A field of the bundle body, as its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Field {
    DeviceId = 1,
    Tenant = 2,
    DeviceCert = 3,
    PrivateKey = 4,
    TrustAnchor = 5,
    GatewayHost = 6,
    GatewayPort = 7,
    Seed = 8,
}

impl Field {
    fn from_tag(tag: u8) -> Option<Field> {
        Some(match tag {
            1 => Field::DeviceId,
            2 => Field::Tenant,
            3 => Field::DeviceCert,
            4 => Field::PrivateKey,
            5 => Field::TrustAnchor,
            6 => Field::GatewayHost,
            7 => Field::GatewayPort,
            8 => Field::Seed,
            _ => return None,
        })
    }

    /// Human name of the field, for error messages.
    pub fn name(self) -> &'static str {
        match self {
            Field::DeviceId => "device id",
            Field::Tenant => "tenant",
            Field::DeviceCert => "device certificate",
            Field::PrivateKey => "device private key",
            Field::TrustAnchor => "gateway trust anchor",
            Field::GatewayHost => "gateway host",
            Field::GatewayPort => "gateway port",
            Field::Seed => "per-device seed",
        }
    }
}

/// Why a bundle was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BundleError {
    /// Fewer bytes than the header, or than the header says the body has.
    Truncated { needed: usize, available: usize },
    /// The first four bytes are not "FLID" (an erased or foreign flash region).
    BadMagic,
    /// A format version this firmware does not know.
    UnsupportedVersion(u8),
    /// Reserved header bytes are not zero.
    ReservedNotZero,
    /// The body length is larger than [`MAX_BODY_LEN`].
    BodyTooLarge(usize),
    /// The stored CRC does not match the content.
    BadChecksum { stored: u32, computed: u32 },
    /// A field header or value runs past the end of the body (offset within the body).
    FieldOverrun { offset: usize },
    /// A tag below 0x80 that this version does not know.
    UnknownField(u8),
    /// A field appears twice.
    DuplicateField(Field),
    /// A required field is absent.
    MissingField(Field),
    /// A field is present but its value is not acceptable.
    InvalidField { field: Field, reason: &'static str },
    /// `emit` was given a buffer smaller than [`Bundle::encoded_len`].
    BufferTooSmall { needed: usize, available: usize },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BundleError::Truncated { needed, available } => write!(
                f,
                "identity bundle truncated: needs {needed} bytes, only {available} present"
            ),
            BundleError::BadMagic => {
                write!(f, "no identity bundle here (magic is not \"FLID\")")
            }
            BundleError::UnsupportedVersion(v) => write!(
                f,
                "identity bundle format version {v} is not supported (this build reads {VERSION})"
            ),
            BundleError::ReservedNotZero => {
                write!(f, "identity bundle header has non-zero reserved bytes")
            }
            BundleError::BodyTooLarge(n) => write!(
                f,
                "identity bundle body of {n} bytes exceeds the {MAX_BODY_LEN}-byte limit"
            ),
            BundleError::BadChecksum { stored, computed } => write!(
                f,
                "identity bundle CRC mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            BundleError::FieldOverrun { offset } => write!(
                f,
                "identity bundle field at body offset {offset} runs past the end of the body"
            ),
            BundleError::UnknownField(tag) => {
                write!(f, "identity bundle has unknown required field tag {tag}")
            }
            BundleError::DuplicateField(field) => {
                write!(f, "identity bundle has the {} field twice", field.name())
            }
            BundleError::MissingField(field) => {
                write!(f, "identity bundle lacks the {} field", field.name())
            }
            BundleError::InvalidField { field, reason } => {
                write!(f, "identity bundle {} is invalid: {reason}", field.name())
            }
            BundleError::BufferTooSmall { needed, available } => write!(
                f,
                "buffer of {available} bytes is too small for a {needed}-byte identity bundle"
            ),
        }
    }
}

/// A device identity, borrowed from the bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bundle<'a> {
    /// Slot generation; the higher valid generation is the active identity.
    pub generation: u32,
    /// Device id, equal to the certificate subject CN; a valid [`Name`].
    pub device_id: &'a str,
    /// Tenant, equal to the certificate subject O; a valid [`Name`].
    pub tenant: &'a str,
    /// The device certificate, DER.
    pub cert_der: &'a [u8],
    /// The device private key (SEC1 DER, P-256); `None` when a secure element holds it.
    pub private_key_der: Option<&'a [u8]>,
    /// The certificate the gateway's chain must lead to, DER.
    pub trust_anchor_der: &'a [u8],
    /// Gateway host name, a valid [`Host`]; the server certificate must name it.
    pub gateway_host: &'a str,
    /// Gateway TCP port.
    pub gateway_port: u16,
    /// Per-device seed (used to seed the RNG on emulated boards only).
    pub seed: Option<&'a [u8; SEED_LEN]>,
}

impl<'a> Bundle<'a> {
    /// Parses and validates a bundle. Trailing bytes after the body are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Bundle<'a>, BundleError> {
        let header = bytes.get(..HEADER_LEN).ok_or(BundleError::Truncated {
            needed: HEADER_LEN,
            available: bytes.len(),
        })?;
        if header[0..4] != MAGIC {
            return Err(BundleError::BadMagic);
        }
        if header[4] != VERSION {
            return Err(BundleError::UnsupportedVersion(header[4]));
        }
        if header[5..8] != [0, 0, 0] {
            return Err(BundleError::ReservedNotZero);
        }
        let generation = read_u32(&header[8..12]);
        let body_len = read_u32(&header[12..16]) as usize;
        if body_len > MAX_BODY_LEN {
            return Err(BundleError::BodyTooLarge(body_len));
        }
        let total = HEADER_LEN + body_len;
        let body = bytes.get(HEADER_LEN..total).ok_or(BundleError::Truncated {
            needed: total,
            available: bytes.len(),
        })?;
        let stored = read_u32(&header[16..20]);
        let computed = checksum(&header[..16], body);
        if stored != computed {
            return Err(BundleError::BadChecksum { stored, computed });
        }
        Self::parse_body(generation, body)
    }

    fn parse_body(generation: u32, body: &'a [u8]) -> Result<Bundle<'a>, BundleError> {
        let mut slots: [Option<&'a [u8]>; 8] = [None; 8];
        let mut offset = 0;
        while offset < body.len() {
            let head = body
                .get(offset..offset + 3)
                .ok_or(BundleError::FieldOverrun { offset })?;
            let tag = head[0];
            let len = u16::from_le_bytes([head[1], head[2]]) as usize;
            let value = body
                .get(offset + 3..offset + 3 + len)
                .ok_or(BundleError::FieldOverrun { offset })?;
            match Field::from_tag(tag) {
                Some(field) => {
                    let slot = &mut slots[field as usize - 1];
                    if slot.is_some() {
                        return Err(BundleError::DuplicateField(field));
                    }
                    *slot = Some(value);
                }
                None if tag >= 0x80 => {}
                None => return Err(BundleError::UnknownField(tag)),
            }
            offset += 3 + len;
        }

        let required =
            |field: Field| slots[field as usize - 1].ok_or(BundleError::MissingField(field));
        let optional = |field: Field| slots[field as usize - 1];

        let device_id = Name::parse(Field::DeviceId, required(Field::DeviceId)?)?.as_str();
        let tenant = Name::parse(Field::Tenant, required(Field::Tenant)?)?.as_str();
        let cert_der = der_sequence(Field::DeviceCert, required(Field::DeviceCert)?)?;
        let private_key_der = optional(Field::PrivateKey)
            .map(|v| der_sequence(Field::PrivateKey, v))
            .transpose()?;
        let trust_anchor_der = der_sequence(Field::TrustAnchor, required(Field::TrustAnchor)?)?;
        let gateway_host = Host::parse(required(Field::GatewayHost)?)?.as_str();
        let gateway_port = port(required(Field::GatewayPort)?)?;
        let seed = optional(Field::Seed)
            .map(|v| {
                <&[u8; SEED_LEN]>::try_from(v).map_err(|_| BundleError::InvalidField {
                    field: Field::Seed,
                    reason: "must be exactly 32 bytes",
                })
            })
            .transpose()?;

        Ok(Bundle {
            generation,
            device_id,
            tenant,
            cert_der,
            private_key_der,
            trust_anchor_der,
            gateway_host,
            gateway_port,
            seed,
        })
    }

    /// Exact number of bytes [`Bundle::emit`] writes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    fn body_len(&self) -> usize {
        self.fields()
            .iter()
            .flatten()
            .map(|(_, v)| 3 + v.len())
            .sum::<usize>()
            + 3
            + 2
    }

    fn fields(&self) -> [Option<(Field, &'a [u8])>; 7] {
        [
            Some((Field::DeviceId, self.device_id.as_bytes())),
            Some((Field::Tenant, self.tenant.as_bytes())),
            Some((Field::DeviceCert, self.cert_der)),
            self.private_key_der.map(|k| (Field::PrivateKey, k)),
            Some((Field::TrustAnchor, self.trust_anchor_der)),
            Some((Field::GatewayHost, self.gateway_host.as_bytes())),
            self.seed.map(|s| (Field::Seed, &s[..])),
        ]
    }

    /// Validates the fields and writes the bundle into `out`, returning the length written.
    ///
    /// Everything `parse` would reject is rejected here too, so a station cannot write a
    /// bundle a board would refuse.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, BundleError> {
        let needed = self.encoded_len();
        if out.len() < needed {
            return Err(BundleError::BufferTooSmall {
                needed,
                available: out.len(),
            });
        }
        let body_len = needed - HEADER_LEN;
        if body_len > MAX_BODY_LEN {
            return Err(BundleError::BodyTooLarge(body_len));
        }
        let mut pos = HEADER_LEN;
        let port = self.gateway_port.to_le_bytes();
        let port_field = Some((Field::GatewayPort, &port[..]));
        for (field, value) in self.fields().into_iter().chain([port_field]).flatten() {
            let len = u16::try_from(value.len()).map_err(|_| BundleError::InvalidField {
                field,
                reason: "longer than 65535 bytes",
            })?;
            out[pos] = field as u8;
            out[pos + 1..pos + 3].copy_from_slice(&len.to_le_bytes());
            out[pos + 3..pos + 3 + value.len()].copy_from_slice(value);
            pos += 3 + value.len();
        }
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5..8].fill(0);
        out[8..12].copy_from_slice(&self.generation.to_le_bytes());
        out[12..16].copy_from_slice(&(body_len as u32).to_le_bytes());
        let crc = checksum(&out[..16], &out[HEADER_LEN..needed]);
        out[16..20].copy_from_slice(&crc.to_le_bytes());

        // Round-trip through the parser: the single place where field rules live.
        Bundle::parse(&out[..needed])?;
        Ok(needed)
    }
}

/// Picks the identity to boot from two flash slots: the valid one with the higher generation.
///
/// Returns which slot (0 = A, 1 = B) and its bundle, or the error of slot A when neither is
/// valid.
pub fn newest<'a>(slot_a: &'a [u8], slot_b: &'a [u8]) -> Result<(usize, Bundle<'a>), BundleError> {
    match (Bundle::parse(slot_a), Bundle::parse(slot_b)) {
        (Ok(a), Ok(b)) if b.generation > a.generation => Ok((1, b)),
        (Ok(a), _) => Ok((0, a)),
        (Err(_), Ok(b)) => Ok((1, b)),
        (Err(e), Err(_)) => Err(e),
    }
}

fn checksum(header: &[u8], body: &[u8]) -> u32 {
    let mut digest = CRC32.digest();
    digest.update(header);
    digest.update(body);
    digest.finalize()
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn port(v: &[u8]) -> Result<u16, BundleError> {
    let field = Field::GatewayPort;
    let bytes: [u8; 2] = v.try_into().map_err(|_| BundleError::InvalidField {
        field,
        reason: "must be 2 bytes",
    })?;
    match u16::from_le_bytes(bytes) {
        0 => Err(BundleError::InvalidField {
            field,
            reason: "must not be zero",
        }),
        p => Ok(p),
    }
}

/// Checks that a DER blob is one complete SEQUENCE (certificates and SEC1 keys both are),
/// so a truncated or padded value is caught here and not deep inside TLS.
fn der_sequence(field: Field, v: &[u8]) -> Result<&[u8], BundleError> {
    let invalid = |reason| BundleError::InvalidField { field, reason };
    if v.len() < 2 || v[0] != 0x30 {
        return Err(invalid("not a DER SEQUENCE"));
    }
    let (len, header) = match v[1] {
        n if n < 0x80 => (n as usize, 2),
        0x81 if v.len() >= 3 => (v[2] as usize, 3),
        0x82 if v.len() >= 4 => (u16::from_be_bytes([v[2], v[3]]) as usize, 4),
        _ => return Err(invalid("unsupported DER length encoding")),
    };
    if header + len != v.len() {
        return Err(invalid("DER length does not match the field length"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
