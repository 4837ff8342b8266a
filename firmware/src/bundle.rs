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
//! a caller-provided buffer.

use core::fmt;

/// The four bytes every bundle starts with.
pub const MAGIC: [u8; 4] = *b"FLID";
/// The format version this code reads and writes.
pub const VERSION: u8 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 20;
/// Largest body accepted: bigger than any sane flash slot, small enough to bound parsing.
pub const MAX_BODY_LEN: usize = 32 * 1024;
/// Longest device id or tenant.
pub const MAX_NAME_LEN: usize = 64;
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
    /// Device id, equal to the certificate subject CN.
    pub device_id: &'a str,
    /// Tenant, equal to the certificate subject O.
    pub tenant: &'a str,
    /// The device certificate, DER.
    pub cert_der: &'a [u8],
    /// The device private key (SEC1 DER, P-256); `None` when a secure element holds it.
    pub private_key_der: Option<&'a [u8]>,
    /// The certificate the gateway's chain must lead to, DER.
    pub trust_anchor_der: &'a [u8],
    /// Gateway host name; the server certificate must name it.
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

        let device_id = name(Field::DeviceId, required(Field::DeviceId)?)?;
        let tenant = name(Field::Tenant, required(Field::Tenant)?)?;
        let cert_der = der_sequence(Field::DeviceCert, required(Field::DeviceCert)?)?;
        let private_key_der = optional(Field::PrivateKey)
            .map(|v| der_sequence(Field::PrivateKey, v))
            .transpose()?;
        let trust_anchor_der = der_sequence(Field::TrustAnchor, required(Field::TrustAnchor)?)?;
        let gateway_host = host(required(Field::GatewayHost)?)?;
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

/// Whether `s` is acceptable as a device id or tenant (1-64 of `[A-Za-z0-9._-]`). Every part
/// of fleet that names devices applies this one rule.
pub fn valid_name(s: &str) -> bool {
    name(Field::DeviceId, s.as_bytes()).is_ok()
}

/// Whether `s` is acceptable as a gateway host (DNS name or IP literal, 1-253 characters).
pub fn valid_host(s: &str) -> bool {
    host(s.as_bytes()).is_ok()
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

fn name(field: Field, v: &[u8]) -> Result<&str, BundleError> {
    if v.is_empty() || v.len() > MAX_NAME_LEN {
        return Err(BundleError::InvalidField {
            field,
            reason: "must be 1 to 64 characters",
        });
    }
    if !v
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        return Err(BundleError::InvalidField {
            field,
            reason: "may only contain A-Z, a-z, 0-9, '.', '_' and '-'",
        });
    }
    // All bytes are ASCII, so this cannot fail; map rather than unwrap to stay panic-free.
    core::str::from_utf8(v).map_err(|_| BundleError::InvalidField {
        field,
        reason: "not UTF-8",
    })
}

fn host(v: &[u8]) -> Result<&str, BundleError> {
    let field = Field::GatewayHost;
    if v.is_empty() || v.len() > 253 {
        return Err(BundleError::InvalidField {
            field,
            reason: "must be 1 to 253 characters",
        });
    }
    if !v
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':'))
    {
        return Err(BundleError::InvalidField {
            field,
            reason: "must be a DNS name or an IP address",
        });
    }
    core::str::from_utf8(v).map_err(|_| BundleError::InvalidField {
        field,
        reason: "not UTF-8",
    })
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
mod tests {
    use super::*;

    // Minimal well-formed DER SEQUENCEs stand in for certificate and key here; real
    // certificates round-trip through this format in provisioning's and the end-to-end tests.
    const CERT: &[u8] = &[0x30, 0x03, 0x02, 0x01, 0x05];
    const KEY: &[u8] = &[0x30, 0x02, 0x04, 0x00];
    const ANCHOR: &[u8] = &[0x30, 0x00];
    const SEED: [u8; SEED_LEN] = [7; SEED_LEN];

    fn sample() -> Bundle<'static> {
        Bundle {
            generation: 3,
            device_id: "dev-000001",
            tenant: "acme",
            cert_der: CERT,
            private_key_der: Some(KEY),
            trust_anchor_der: ANCHOR,
            gateway_host: "localhost",
            gateway_port: 8883,
            seed: Some(&SEED),
        }
    }

    fn encode(b: &Bundle) -> std::vec::Vec<u8> {
        let mut out = std::vec![0u8; b.encoded_len()];
        let n = b.emit(&mut out).expect("emit");
        assert_eq!(n, out.len());
        out
    }

    extern crate std;

    #[test]
    fn round_trip_with_and_without_key() {
        let b = sample();
        assert_eq!(Bundle::parse(&encode(&b)), Ok(b));
        let no_key = Bundle {
            private_key_der: None,
            seed: None,
            ..sample()
        };
        assert_eq!(Bundle::parse(&encode(&no_key)), Ok(no_key));
    }

    #[test]
    fn exact_bytes_of_a_small_bundle() {
        let b = Bundle {
            generation: 1,
            device_id: "d",
            tenant: "t",
            cert_der: &[0x30, 0x00],
            private_key_der: None,
            trust_anchor_der: &[0x30, 0x00],
            gateway_host: "h",
            gateway_port: 0x2233,
            seed: None,
        };
        let bytes = encode(&b);
        let body: &[u8] = &[
            1, 1, 0, b'd', //
            2, 1, 0, b't', //
            3, 2, 0, 0x30, 0x00, //
            5, 2, 0, 0x30, 0x00, //
            6, 1, 0, b'h', //
            7, 2, 0, 0x33, 0x22,
        ];
        assert_eq!(&bytes[..4], b"FLID");
        assert_eq!(
            &bytes[4..16],
            &[1, 0, 0, 0, 1, 0, 0, 0, body.len() as u8, 0, 0, 0]
        );
        assert_eq!(&bytes[HEADER_LEN..], body);
        let crc = checksum(&bytes[..16], body);
        assert_eq!(&bytes[16..20], &crc.to_le_bytes());
    }

    #[test]
    fn trailing_erased_flash_is_ignored() {
        let mut bytes = encode(&sample());
        bytes.resize(bytes.len() + 64, 0xFF);
        assert_eq!(Bundle::parse(&bytes), Ok(sample()));
        assert_eq!(Bundle::parse(&[0xFF; 64]), Err(BundleError::BadMagic));
    }

    #[test]
    fn every_truncation_is_rejected() {
        let bytes = encode(&sample());
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    Bundle::parse(&bytes[..len]),
                    Err(BundleError::Truncated { .. })
                ),
                "truncation to {len} bytes accepted"
            );
        }
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let bytes = encode(&sample());
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    Bundle::parse(&bad).is_err(),
                    "flipping bit {bit} of byte {i} was accepted"
                );
            }
        }
    }

    /// Builds a bundle from raw body fields with a correct CRC, to test the field rules
    /// beneath the checksum.
    fn with_body(body: &[u8]) -> std::vec::Vec<u8> {
        let mut out = std::vec![0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[12..16].copy_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
        let crc = checksum(&out[..16], body);
        out[16..20].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn fields(extra: &[u8], skip: u8) -> std::vec::Vec<u8> {
        let mut body = std::vec::Vec::new();
        for (tag, v) in [
            (1u8, &b"dev"[..]),
            (2, b"acme"),
            (3, CERT),
            (5, ANCHOR),
            (6, b"localhost"),
            (7, &[0xB3, 0x22]),
        ] {
            if tag != skip {
                body.extend_from_slice(&[tag, v.len() as u8, 0]);
                body.extend_from_slice(v);
            }
        }
        body.extend_from_slice(extra);
        body
    }

    #[test]
    fn field_rules() {
        assert!(Bundle::parse(&with_body(&fields(&[], 0))).is_ok());
        for (tag, field) in [
            (1, Field::DeviceId),
            (3, Field::DeviceCert),
            (7, Field::GatewayPort),
        ] {
            assert_eq!(
                Bundle::parse(&with_body(&fields(&[], tag))),
                Err(BundleError::MissingField(field))
            );
        }
        assert_eq!(
            Bundle::parse(&with_body(&fields(&[1, 1, 0, b'x'], 0))),
            Err(BundleError::DuplicateField(Field::DeviceId))
        );
        assert_eq!(
            Bundle::parse(&with_body(&fields(&[0x20, 0, 0], 0))),
            Err(BundleError::UnknownField(0x20))
        );
        // Optional extension tags are skipped.
        assert!(Bundle::parse(&with_body(&fields(&[0x90, 1, 0, 9], 0))).is_ok());
        assert_eq!(
            Bundle::parse(&with_body(&fields(&[8, 1, 0, 9], 0))),
            Err(BundleError::InvalidField {
                field: Field::Seed,
                reason: "must be exactly 32 bytes"
            })
        );
        assert!(matches!(
            Bundle::parse(&with_body(&fields(&[4, 2, 0, 0x30, 0x05], 0))),
            Err(BundleError::InvalidField {
                field: Field::PrivateKey,
                ..
            })
        ));
        assert_eq!(
            Bundle::parse(&with_body(&fields(&[0x90, 9, 0, 1], 0))),
            Err(BundleError::FieldOverrun {
                offset: 6 + 7 + 8 + 5 + 12 + 5
            })
        );
    }

    #[test]
    fn bad_names_are_refused_by_emit() {
        for id in ["", "has space", "tenants/x", "ümlaut"] {
            let b = Bundle {
                device_id: id,
                ..sample()
            };
            let mut out = [0u8; 512];
            assert!(matches!(
                b.emit(&mut out),
                Err(BundleError::InvalidField {
                    field: Field::DeviceId,
                    ..
                })
            ));
        }
        let b = Bundle {
            gateway_port: 0,
            ..sample()
        };
        assert!(b.emit(&mut [0u8; 512]).is_err());
        assert!(matches!(
            sample().emit(&mut [0u8; 10]),
            Err(BundleError::BufferTooSmall { .. })
        ));
    }

    #[test]
    fn newest_slot_wins_and_invalid_slot_falls_back() {
        let a = encode(&sample());
        let b = encode(&Bundle {
            generation: 4,
            ..sample()
        });
        assert_eq!(newest(&a, &b).map(|(s, _)| s), Ok(1));
        assert_eq!(newest(&b, &a).map(|(s, _)| s), Ok(0));
        let mut corrupt_b = b.clone();
        corrupt_b[30] ^= 0xFF;
        assert_eq!(newest(&a, &corrupt_b).map(|(s, _)| s), Ok(0));
        assert_eq!(newest(&[0xFF; 32], &b).map(|(s, _)| s), Ok(1));
        assert_eq!(newest(&[0xFF; 32], &[0; 8]), Err(BundleError::BadMagic));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = Bundle::parse(&data);
        }

        #[test]
        fn arbitrary_bodies_with_valid_crc_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = Bundle::parse(&with_body(&body));
        }
    }
}
