//! DER, the subset that X.509 certificates, PKCS#10 requests, SEC1 keys and ECDSA signatures
//! use: single-byte tags and definite lengths below 64 KiB.
//!
//! Written by hand for size: the RustCrypto `der` crate and the certificate decoder built on
//! it cost ~30 KiB of flash in the device image, a quarter of its budget, for the handful of
//! shapes a device reads and writes. [`Reader`] borrows from its input and never panics;
//! [`Writer`] appends to a caller's slice.

/// Tags the device reads or writes.
pub mod tag {
    pub const BOOLEAN: u8 = 0x01;
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OID: u8 = 0x06;
    pub const UTF8_STRING: u8 = 0x0c;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    /// `[n]` constructed, context-specific.
    pub const fn context(n: u8) -> u8 {
        0xa0 | n
    }
    /// `[n]` primitive, context-specific (IMPLICIT over a primitive type).
    pub const fn context_primitive(n: u8) -> u8 {
        0x80 | n
    }
}

/// Object identifiers (content bytes) the device writes or compares, in one place.
pub mod oid {
    pub const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    pub const ORGANIZATION: &[u8] = &[0x55, 0x04, 0x0a];
    pub const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    pub const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    pub const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
}

/// Bytes that are not DER of the expected shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DerError;

impl core::fmt::Display for DerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("malformed DER")
    }
}

/// One element: its tag, its content, and all its bytes (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
    pub raw: &'a [u8],
}

/// Reads elements one after another from a slice.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(input: &'a [u8]) -> Self {
        Reader { rest: input }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next tag, without consuming anything.
    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element. Refuses multi-byte tags, indefinite and non-minimal lengths, and
    /// lengths past the end of the input.
    pub fn read(&mut self) -> Result<Tlv<'a>, DerError> {
        let input = self.rest;
        let (&tag, after_tag) = input.split_first().ok_or(DerError)?;
        if tag & 0x1f == 0x1f {
            return Err(DerError);
        }
        let (&first, after_len) = after_tag.split_first().ok_or(DerError)?;
        let (len, header) = match first {
            0..=0x7f => (usize::from(first), 2),
            0x81 => match after_len.first() {
                Some(&n) if n >= 0x80 => (usize::from(n), 3),
                _ => return Err(DerError),
            },
            0x82 => match after_len.get(..2) {
                Some(&[hi, lo]) if hi != 0 => (usize::from(hi) << 8 | usize::from(lo), 4),
                _ => return Err(DerError),
            },
            _ => return Err(DerError),
        };
        let end = header + len;
        let raw = input.get(..end).ok_or(DerError)?;
        self.rest = &input[end..];
        Ok(Tlv {
            tag,
            value: &raw[header..],
            raw,
        })
    }

    /// The next element, which must have this tag.
    pub fn expect(&mut self, tag: u8) -> Result<Tlv<'a>, DerError> {
        let tlv = self.read()?;
        if tlv.tag == tag {
            Ok(tlv)
        } else {
            Err(DerError)
        }
    }

    /// The next element if it has this tag; nothing is consumed otherwise.
    pub fn optional(&mut self, tag: u8) -> Result<Option<Tlv<'a>>, DerError> {
        if self.peek_tag() == Some(tag) {
            self.read().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The content of the next element (which must have this tag), as a reader.
    pub fn enter(&mut self, tag: u8) -> Result<Reader<'a>, DerError> {
        Ok(Reader::new(self.expect(tag)?.value))
    }

    /// Fails unless everything was read.
    pub fn finish(&self) -> Result<(), DerError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DerError)
        }
    }
}

/// The content of a BIT STRING with no unused bits.
pub fn whole_bytes(bit_string: &[u8]) -> Result<&[u8], DerError> {
    match bit_string.split_first() {
        Some((0, bytes)) => Ok(bytes),
        _ => Err(DerError),
    }
}

/// A non-negative INTEGER's content as a big-endian number of at most `N` bytes, left-padded
/// (DER's sign byte removed). Refuses negative and non-minimal encodings.
pub fn unsigned<const N: usize>(integer: &[u8]) -> Result<[u8; N], DerError> {
    let digits = match integer {
        [] => return Err(DerError),
        [b, ..] if b & 0x80 != 0 => return Err(DerError),
        [0, next, ..] if next & 0x80 == 0 => return Err(DerError),
        [0, rest @ ..] if !rest.is_empty() => rest,
        all => all,
    };
    let mut out = [0u8; N];
    let start = N.checked_sub(digits.len()).ok_or(DerError)?;
    out[start..].copy_from_slice(digits);
    Ok(out)
}

/// Output space ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Appends DER to a slice. Lengths up to 65535.
pub struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
}

/// Scratch space one nested element may take (the largest thing the device writes is a
/// certificate request).
pub const NESTED_MAX: usize = 512;

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut [u8]) -> Self {
        Writer { out, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn bytes(&mut self, b: &[u8]) -> Result<(), Full> {
        let end = self.len + b.len();
        self.out
            .get_mut(self.len..end)
            .ok_or(Full)?
            .copy_from_slice(b);
        self.len = end;
        Ok(())
    }

    pub fn header(&mut self, tag: u8, len: usize) -> Result<(), Full> {
        match len {
            0..=0x7f => self.bytes(&[tag, len as u8]),
            0x80..=0xff => self.bytes(&[tag, 0x81, len as u8]),
            0x100..=0xffff => self.bytes(&[tag, 0x82, (len >> 8) as u8, len as u8]),
            _ => Err(Full),
        }
    }

    pub fn tlv(&mut self, tag: u8, content: &[u8]) -> Result<(), Full> {
        self.header(tag, content.len())?;
        self.bytes(content)
    }

    /// A BIT STRING with no unused bits.
    pub fn bit_string(&mut self, bits: &[u8]) -> Result<(), Full> {
        self.header(tag::BIT_STRING, bits.len() + 1)?;
        self.bytes(&[0])?;
        self.bytes(bits)
    }

    /// A non-negative INTEGER from big-endian bytes (leading zeros dropped, a sign byte added
    /// when the top bit is set).
    pub fn unsigned(&mut self, be: &[u8]) -> Result<(), Full> {
        let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
        let digits = &be[start..];
        match digits.first() {
            None => self.tlv(tag::INTEGER, &[0]),
            Some(b) if b & 0x80 != 0 => {
                self.header(tag::INTEGER, digits.len() + 1)?;
                self.bytes(&[0])?;
                self.bytes(digits)
            }
            Some(_) => self.tlv(tag::INTEGER, digits),
        }
    }

    /// A constructed value whose content `f` writes into scratch space first.
    pub fn nested(
        &mut self,
        tag: u8,
        f: impl FnOnce(&mut Writer<'_>) -> Result<(), Full>,
    ) -> Result<(), Full> {
        let mut scratch = [0u8; NESTED_MAX];
        let mut inner = Writer::new(&mut scratch);
        f(&mut inner)?;
        let n = inner.len;
        self.tlv(tag, &scratch[..n])
    }
}

/// An ECDSA P-256 signature in DER (`SEQUENCE { r INTEGER, s INTEGER }`), as TLS and X.509
/// carry it: at most 72 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcdsaDer {
    bytes: [u8; 72],
    len: usize,
}

impl EcdsaDer {
    pub fn encode(signature: &p256::ecdsa::Signature) -> Self {
        let (r, s) = signature.split_bytes();
        let mut bytes = [0u8; 72];
        let mut w = Writer::new(&mut bytes);
        // Two 33-byte INTEGERs and a two-byte header always fit in 72 bytes.
        let _ = w.nested(tag::SEQUENCE, |w| {
            w.unsigned(&r)?;
            w.unsigned(&s)
        });
        let len = w.len();
        EcdsaDer { bytes, len }
    }

    /// Parses a DER signature; the scalars' range is checked by p256.
    pub fn decode(der: &[u8]) -> Result<p256::ecdsa::Signature, DerError> {
        let mut outer = Reader::new(der);
        let mut seq = outer.enter(tag::SEQUENCE)?;
        outer.finish()?;
        let r = unsigned::<32>(seq.expect(tag::INTEGER)?.value)?;
        let s = unsigned::<32>(seq.expect(tag::INTEGER)?.value)?;
        seq.finish()?;
        p256::ecdsa::Signature::from_scalars(r, s).map_err(|_| DerError)
    }
}

impl AsRef<[u8]> for EcdsaDer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The 32-byte scalar of a SEC1 `ECPrivateKey` (version 1; if it names a curve, P-256).
pub fn sec1_private_key(der: &[u8]) -> Result<p256::SecretKey, DerError> {
    let mut outer = Reader::new(der);
    let mut key = outer.enter(tag::SEQUENCE)?;
    outer.finish()?;
    if key.expect(tag::INTEGER)?.value != [1] {
        return Err(DerError);
    }
    let scalar = key.expect(tag::OCTET_STRING)?.value;
    if let Some(params) = key.optional(tag::context(0))? {
        let mut params = Reader::new(params.value);
        if params.expect(tag::OID)?.value != oid::P256 {
            return Err(DerError);
        }
        params.finish()?;
    }
    key.optional(tag::context(1))?;
    key.finish()?;
    p256::SecretKey::from_slice(scalar).map_err(|_| DerError)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec;

    #[test]
    fn lengths_short_long_and_refused() {
        let mut r = Reader::new(&[0x04, 0x02, 0xaa, 0xbb, 0x05, 0x00]);
        let t = r.read().unwrap();
        assert_eq!(
            (t.tag, t.value, t.raw),
            (0x04, &[0xaa, 0xbb][..], &[4, 2, 0xaa, 0xbb][..])
        );
        assert_eq!(r.read().unwrap().value, &[] as &[u8]);
        assert!(r.is_empty());

        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 0x80]);
        assert_eq!(Reader::new(&long).read().unwrap().value.len(), 0x80);
        let mut two = vec![0x04, 0x82, 0x01, 0x00];
        two.extend([7u8; 0x100]);
        assert_eq!(Reader::new(&two).read().unwrap().value.len(), 0x100);

        for bad in [
            &[0x04, 0x81, 0x7f][..], // non-minimal one-byte long form
            &[0x04, 0x82, 0x00, 0xff],
            &[0x04, 0x80],          // indefinite
            &[0x04, 0x83, 1, 0, 0], // too long for us
            &[0x04, 0x03, 1, 2],    // past the end
            &[0x1f, 0x01, 0x00],    // multi-byte tag
            &[0x04],
            &[],
        ] {
            assert_eq!(Reader::new(bad).read(), Err(DerError), "{bad:02x?}");
        }
    }

    #[test]
    fn integers_round_trip_through_writer_and_reader() {
        for (be, der) in [
            (&[0u8, 0, 5][..], &[2u8, 1, 5][..]),
            (&[0x80], &[2, 2, 0, 0x80]),
            (&[0, 0], &[2, 1, 0]),
        ] {
            let mut out = [0u8; 8];
            let mut w = Writer::new(&mut out);
            w.unsigned(be).unwrap();
            let n = w.len();
            assert_eq!(&out[..n], der);
            let value = Reader::new(der).expect(tag::INTEGER).unwrap().value;
            let back = unsigned::<3>(value).unwrap();
            assert_eq!(u32::from_be_bytes([0, back[0], back[1], back[2]]), {
                be.iter().fold(0u32, |a, &b| a << 8 | u32::from(b))
            });
        }
        for bad in [&[0x80u8][..], &[0, 0x01], &[]] {
            assert_eq!(unsigned::<4>(bad), Err(DerError), "{bad:02x?}");
        }
        assert_eq!(unsigned::<1>(&[1, 2]), Err(DerError), "too wide");
    }

    #[test]
    fn ecdsa_signatures_match_the_rustcrypto_encoding() {
        use p256::ecdsa::signature::Signer;
        let key = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        for msg in [&b"a"[..], b"bb", b"ccc", b"dddd", b"eeeee"] {
            let sig: p256::ecdsa::Signature = key.sign(msg);
            let ours = EcdsaDer::encode(&sig);
            assert_eq!(ours.as_ref(), sig.to_der().as_bytes());
            assert_eq!(EcdsaDer::decode(ours.as_ref()).unwrap(), sig);
        }
        assert!(
            EcdsaDer::decode(&[0x30, 0x06, 2, 1, 0, 2, 1, 1]).is_err(),
            "r = 0"
        );
        assert!(EcdsaDer::decode(&[0x30, 0x00]).is_err());
    }

    #[test]
    fn sec1_keys_with_and_without_the_optional_fields() {
        // ECPrivateKey { 1, scalar } and { 1, scalar, [0] P-256 }, by hand.
        let scalar = [7u8; 32];
        let mut bare = vec![0x30, 37, 2, 1, 1, 4, 32];
        bare.extend(scalar);
        assert_eq!(
            sec1_private_key(&bare).unwrap().to_bytes().as_slice(),
            scalar
        );
        let mut named = vec![0x30, 49, 2, 1, 1, 4, 32];
        named.extend(scalar);
        named.extend([
            0xa0, 10, 6, 8, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ]);
        assert!(sec1_private_key(&named).is_ok());
        let mut other_curve = named.clone();
        *other_curve.last_mut().unwrap() = 0x08;
        assert!(sec1_private_key(&other_curve).is_err());
        let mut version2 = bare.clone();
        version2[4] = 2;
        assert!(sec1_private_key(&version2).is_err());
        assert!(sec1_private_key(&bare[..bare.len() - 1]).is_err());
        let mut zero = vec![0x30, 37, 2, 1, 1, 4, 32];
        zero.extend([0u8; 32]);
        assert!(sec1_private_key(&zero).is_err(), "zero is not a key");
    }
}
