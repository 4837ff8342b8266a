//! TLS 1.3 wire formats the device reads and writes (RFC 8446 §4–§6), as parse/emit pairs
//! on byte slices: the only suite, group and signature scheme are the ones the device offers.

use super::TlsError;

// Record content types (§5.1).
pub const CHANGE_CIPHER_SPEC: u8 = 20;
pub const ALERT: u8 = 21;
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

// Handshake message types (§4).
pub const CLIENT_HELLO: u8 = 1;
pub const SERVER_HELLO: u8 = 2;
pub const NEW_SESSION_TICKET: u8 = 4;
pub const ENCRYPTED_EXTENSIONS: u8 = 8;
pub const CERTIFICATE: u8 = 11;
pub const CERTIFICATE_REQUEST: u8 = 13;
pub const CERTIFICATE_VERIFY: u8 = 15;
pub const FINISHED: u8 = 20;
pub const KEY_UPDATE: u8 = 24;

/// TLS_AES_128_GCM_SHA256.
pub const AES_128_GCM_SHA256: u16 = 0x1301;
/// secp256r1 (named group 23).
pub const SECP256R1: u16 = 0x0017;
/// ecdsa_secp256r1_sha256.
pub const ECDSA_P256_SHA256: u16 = 0x0403;
const TLS13: u16 = 0x0304;

// Extensions.
const SERVER_NAME: u16 = 0;
const SUPPORTED_GROUPS: u16 = 10;
const SIGNATURE_ALGORITHMS: u16 = 13;
const SUPPORTED_VERSIONS: u16 = 43;
const KEY_SHARE: u16 = 51;

/// Alert descriptions the device reads or sends.
pub const CLOSE_NOTIFY: u8 = 0;

/// Largest TLSCiphertext fragment (§5.2): 2^14 + 256.
pub const MAX_CIPHERTEXT: usize = 16384 + 256;

/// The random value of a HelloRetryRequest (§4.1.3).
const HELLO_RETRY: [u8; 32] = [
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
];

/// Reads big-endian fields off a slice; every read checks the length left.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    /// `what` names the message for errors: "ServerHello too short".
    pub fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Cursor { rest: bytes, what }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], TlsError> {
        if self.rest.len() < n {
            return Err(TlsError::Decode(self.what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, TlsError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, TlsError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u24(&mut self) -> Result<usize, TlsError> {
        let b = self.take(3)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    /// A vector with a length prefix of 1, 2 or 3 bytes.
    pub fn vec(&mut self, prefix: usize) -> Result<Cursor<'a>, TlsError> {
        let len = match prefix {
            1 => usize::from(self.u8()?),
            2 => usize::from(self.u16()?),
            _ => self.u24()?,
        };
        Ok(Cursor::new(self.take(len)?, self.what))
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// Fails unless everything was read.
    pub fn end(&self) -> Result<(), TlsError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(TlsError::Decode(self.what))
        }
    }
}

/// Writes fields into a slice; `None` once it is full.
pub struct Writer<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl<'a> Writer<'a> {
    pub fn new(out: &'a mut [u8]) -> Self {
        Writer { out, len: 0 }
    }

    pub fn put(&mut self, bytes: &[u8]) -> Result<(), TlsError> {
        let end = self.len + bytes.len();
        self.out
            .get_mut(self.len..end)
            .ok_or(TlsError::TooLarge)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    pub fn u8(&mut self, v: u8) -> Result<(), TlsError> {
        self.put(&[v])
    }

    pub fn u16(&mut self, v: u16) -> Result<(), TlsError> {
        self.put(&v.to_be_bytes())
    }

    /// Opens a vector with a `prefix`-byte length; [`Writer::close`] fills it in.
    pub fn open(&mut self, prefix: usize) -> Result<(usize, usize), TlsError> {
        self.put(&[0; 3][..prefix])?;
        Ok((self.len, prefix))
    }

    pub fn close(&mut self, (start, prefix): (usize, usize)) {
        let len = (self.len - start).to_be_bytes();
        self.out[start - prefix..start].copy_from_slice(&len[len.len() - prefix..]);
    }

    pub fn written(&self) -> usize {
        self.len
    }
}

/// Writes a handshake message: its type, a 24-bit length, and what `body` writes.
pub fn emit_handshake(
    out: &mut [u8],
    kind: u8,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), TlsError>,
) -> Result<usize, TlsError> {
    let mut w = Writer::new(out);
    w.u8(kind)?;
    let m = w.open(3)?;
    body(&mut w)?;
    w.close(m);
    Ok(w.written())
}

/// The device's ClientHello (§4.1.2): TLS 1.3 only, AES-128-GCM-SHA256, secp256r1 with
/// `key_share` (an uncompressed point), ecdsa_secp256r1_sha256, and the gateway's name.
pub fn emit_client_hello(
    out: &mut [u8],
    random: &[u8; 32],
    host: &str,
    key_share: &[u8; 65],
) -> Result<usize, TlsError> {
    emit_handshake(out, CLIENT_HELLO, |w| {
        w.u16(0x0303)?;
        w.put(random)?;
        w.u8(0)?; // legacy_session_id: empty
        w.put(&[0, 2])?;
        w.u16(AES_128_GCM_SHA256)?;
        w.put(&[1, 0])?; // legacy_compression_methods: null
        let exts = w.open(2)?;

        w.u16(SERVER_NAME)?;
        let e = w.open(2)?;
        let list = w.open(2)?;
        w.u8(0)?; // host_name
        let name = w.open(2)?;
        w.put(host.as_bytes())?;
        w.close(name);
        w.close(list);
        w.close(e);

        w.u16(SUPPORTED_VERSIONS)?;
        w.put(&[0, 3, 2])?;
        w.u16(TLS13)?;

        w.u16(SUPPORTED_GROUPS)?;
        w.put(&[0, 4, 0, 2])?;
        w.u16(SECP256R1)?;

        w.u16(SIGNATURE_ALGORITHMS)?;
        w.put(&[0, 4, 0, 2])?;
        w.u16(ECDSA_P256_SHA256)?;

        w.u16(KEY_SHARE)?;
        w.put(&[0, 71, 0, 69])?;
        w.u16(SECP256R1)?;
        w.put(&[0, 65])?;
        w.put(key_share)?;

        w.close(exts);
        Ok(())
    })
}

/// A handshake message: its type and body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u8,
    pub body: &'a [u8],
}

/// The first whole handshake message in `bytes` and its length with the header, or `None`
/// while it is incomplete.
pub fn parse_handshake(bytes: &[u8]) -> Option<(Message<'_>, usize)> {
    let header = bytes.get(..4)?;
    let len = usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
    let body = bytes.get(4..4 + len)?;
    Some((
        Message {
            kind: header[0],
            body,
        },
        4 + len,
    ))
}

/// What the device takes from a ServerHello: the server's key share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerHello<'a> {
    pub key_share: &'a [u8],
}

/// Parses a ServerHello body and checks it picked what the device offered.
pub fn parse_server_hello(body: &[u8]) -> Result<ServerHello<'_>, TlsError> {
    let mut c = Cursor::new(body, "ServerHello malformed");
    c.u16()?; // legacy_version
    if c.take(32)? == HELLO_RETRY {
        return Err(TlsError::Unsupported(
            "the gateway asked for another key exchange",
        ));
    }
    if !c.vec(1)?.is_empty() {
        return Err(TlsError::Decode(
            "ServerHello echoes a session id the device never sent",
        ));
    }
    if c.u16()? != AES_128_GCM_SHA256 {
        return Err(TlsError::Unsupported("cipher suite not offered"));
    }
    if c.u8()? != 0 {
        return Err(TlsError::Decode("ServerHello with compression"));
    }
    let mut exts = c.vec(2)?;
    c.end()?;
    let (mut version, mut key_share) = (None, None);
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let mut data = exts.vec(2)?;
        match kind {
            SUPPORTED_VERSIONS => version = Some(data.u16()?),
            KEY_SHARE => {
                if data.u16()? != SECP256R1 {
                    return Err(TlsError::Unsupported("key exchange group not offered"));
                }
                key_share = Some(data.vec(2)?.rest());
            }
            // RFC 8446 §4.1.4: nothing the client did not offer (no PSK, no cookie).
            _ => return Err(TlsError::Unsupported("ServerHello extension not offered")),
        }
        data.end()?;
    }
    if version != Some(TLS13) {
        return Err(TlsError::Unsupported("the gateway does not speak TLS 1.3"));
    }
    let key_share = key_share.ok_or(TlsError::Decode("ServerHello without a key share"))?;
    Ok(ServerHello { key_share })
}

/// The certificate_request_context of a CertificateRequest (its extensions are not needed:
/// the device has one certificate and one signature scheme to offer).
pub fn parse_certificate_request(body: &[u8]) -> Result<&[u8], TlsError> {
    let mut c = Cursor::new(body, "CertificateRequest malformed");
    let context = c.vec(1)?.rest();
    c.vec(2)?;
    c.end()?;
    Ok(context)
}

/// The certificates of a Certificate message, leaf first; checked whole when parsed.
#[derive(Debug, Clone)]
pub struct Certificates<'a> {
    list: Cursor<'a>,
}

impl<'a> Iterator for Certificates<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let cert = self.list.vec(3).ok()?.rest();
        self.list.vec(2).ok()?; // per-certificate extensions
        Some(cert)
    }
}

/// Parses a server's Certificate body.
pub fn parse_certificate(body: &[u8]) -> Result<Certificates<'_>, TlsError> {
    let mut c = Cursor::new(body, "Certificate malformed");
    c.vec(1)?; // certificate_request_context: empty from a server
    let list = c.vec(3)?;
    c.end()?;
    let mut check = list.clone();
    while !check.is_empty() {
        check.vec(3)?;
        check.vec(2)?;
    }
    Ok(Certificates { list })
}

/// The signature of a CertificateVerify, which must be ecdsa_secp256r1_sha256.
pub fn parse_certificate_verify(body: &[u8]) -> Result<&[u8], TlsError> {
    let mut c = Cursor::new(body, "CertificateVerify malformed");
    if c.u16()? != ECDSA_P256_SHA256 {
        return Err(TlsError::Unsupported(
            "the gateway signs with a scheme not offered",
        ));
    }
    let signature = c.vec(2)?.rest();
    c.end()?;
    Ok(signature)
}

/// The device's Certificate message: `context` from the request, one certificate.
pub fn emit_certificate(out: &mut [u8], context: &[u8], cert: &[u8]) -> Result<usize, TlsError> {
    emit_handshake(out, CERTIFICATE, |w| {
        let c = w.open(1)?;
        w.put(context)?;
        w.close(c);
        let list = w.open(3)?;
        let entry = w.open(3)?;
        w.put(cert)?;
        w.close(entry);
        w.put(&[0, 0])?;
        w.close(list);
        Ok(())
    })
}

/// A CertificateVerify with an ecdsa_secp256r1_sha256 signature (DER).
pub fn emit_certificate_verify(out: &mut [u8], signature: &[u8]) -> Result<usize, TlsError> {
    emit_handshake(out, CERTIFICATE_VERIFY, |w| {
        w.u16(ECDSA_P256_SHA256)?;
        let s = w.open(2)?;
        w.put(signature)?;
        w.close(s);
        Ok(())
    })
}

/// The bytes a CertificateVerify signs (§4.4.3): 64 spaces, the context string, a zero
/// byte, the transcript hash.
pub fn signed_content(server: bool, transcript: &[u8; 32]) -> [u8; 64 + 34 + 32] {
    let mut m = [0x20u8; 64 + 34 + 32];
    let context: &[u8; 34] = if server {
        b"TLS 1.3, server CertificateVerify\0"
    } else {
        b"TLS 1.3, client CertificateVerify\0"
    };
    m[64..98].copy_from_slice(context);
    m[98..].copy_from_slice(transcript);
    m
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn client_hello_bytes() {
        let mut out = [0u8; 256];
        let share = [4u8; 65];
        let n = emit_client_hello(&mut out, &[0xAA; 32], "gw", &share).unwrap();
        let mut expected = std::vec::Vec::new();
        expected.extend_from_slice(&[1, 0, 0, 0]); // type, length (patched below)
        expected.extend_from_slice(&[3, 3]);
        expected.extend_from_slice(&[0xAA; 32]);
        expected.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
        let exts: &[&[u8]] = &[
            &[0, 0, 0, 7, 0, 5, 0, 0, 2, b'g', b'w'],
            &[0, 43, 0, 3, 2, 3, 4],
            &[0, 10, 0, 4, 0, 2, 0, 23],
            &[0, 13, 0, 4, 0, 2, 4, 3],
            &[0, 51, 0, 71, 0, 69, 0, 23, 0, 65],
            &share,
        ];
        let ext_len: usize = exts.iter().map(|e| e.len()).sum();
        expected.extend_from_slice(&(ext_len as u16).to_be_bytes());
        for e in exts {
            expected.extend_from_slice(e);
        }
        let body = expected.len() - 4;
        expected[3] = body as u8;
        expected[2] = (body >> 8) as u8;
        assert_eq!(&out[..n], &expected[..]);
        // Too small a buffer is an error, not a panic.
        assert_eq!(
            emit_client_hello(&mut out[..100], &[0; 32], "gw", &share),
            Err(TlsError::TooLarge)
        );
    }

    fn server_hello(suite: u16, version: u16, group: u16) -> std::vec::Vec<u8> {
        server_hello_with(suite, version, group, &[])
    }

    fn server_hello_with(suite: u16, version: u16, group: u16, extra: &[u8]) -> std::vec::Vec<u8> {
        let mut b = std::vec![3, 3];
        b.extend_from_slice(&[0x11; 32]);
        b.push(0);
        b.extend_from_slice(&suite.to_be_bytes());
        b.push(0);
        let mut exts = std::vec![0, 43, 0, 2];
        exts.extend_from_slice(&version.to_be_bytes());
        exts.extend_from_slice(&[0, 51, 0, 4 + 65]);
        exts.extend_from_slice(&group.to_be_bytes());
        exts.extend_from_slice(&[0, 65]);
        exts.extend_from_slice(&[4; 65]);
        exts.extend_from_slice(extra);
        b.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        b.extend_from_slice(&exts);
        b
    }

    #[test]
    fn server_hello_parses_and_refuses_what_was_not_offered() {
        let ok = server_hello(0x1301, 0x0304, 23);
        assert_eq!(parse_server_hello(&ok).unwrap().key_share, &[4; 65][..]);
        assert!(matches!(
            parse_server_hello(&server_hello(0x1302, 0x0304, 23)),
            Err(TlsError::Unsupported(_))
        ));
        assert!(matches!(
            parse_server_hello(&server_hello(0x1301, 0x0303, 23)),
            Err(TlsError::Unsupported(_))
        ));
        assert!(matches!(
            parse_server_hello(&server_hello(0x1301, 0x0304, 29)),
            Err(TlsError::Unsupported(_))
        ));
        // An extension the device did not offer (pre_shared_key).
        let psk = server_hello_with(0x1301, 0x0304, 23, &[0, 41, 0, 2, 0, 0]);
        assert_eq!(
            parse_server_hello(&psk),
            Err(TlsError::Unsupported("ServerHello extension not offered"))
        );
        let mut retry = ok.clone();
        retry[2..34].copy_from_slice(&HELLO_RETRY);
        assert!(matches!(
            parse_server_hello(&retry),
            Err(TlsError::Unsupported(_))
        ));
        // Every truncation is a decode error, never a panic.
        for n in 0..ok.len() {
            assert!(parse_server_hello(&ok[..n]).is_err(), "{n}");
        }
    }

    #[test]
    fn certificate_round_trip_and_truncation() {
        let mut out = [0u8; 64];
        let n = emit_certificate(&mut out, &[7], b"DER").unwrap();
        assert_eq!(
            &out[..n],
            &[11, 0, 0, 13, 1, 7, 0, 0, 8, 0, 0, 3, b'D', b'E', b'R', 0, 0]
        );
        let (msg, len) = parse_handshake(&out[..n]).unwrap();
        assert_eq!((msg.kind, len), (CERTIFICATE, n));
        assert!(parse_handshake(&out[..n - 1]).is_none());
        let seen: std::vec::Vec<&[u8]> = parse_certificate(msg.body).unwrap().collect();
        assert_eq!(seen, [b"DER"]);
        for k in 0..msg.body.len() {
            assert!(parse_certificate(&msg.body[..k]).is_err(), "{k}");
        }
    }

    #[test]
    fn certificate_verify_round_trip() {
        let mut out = [0u8; 16];
        let n = emit_certificate_verify(&mut out, &[1, 2, 3]).unwrap();
        assert_eq!(&out[..n], &[15, 0, 0, 7, 4, 3, 0, 3, 1, 2, 3]);
        assert_eq!(parse_certificate_verify(&out[4..n]).unwrap(), &[1, 2, 3]);
        assert!(matches!(
            parse_certificate_verify(&[8, 4, 0, 0]),
            Err(TlsError::Unsupported(_))
        ));
    }

    #[test]
    fn certificate_request_context() {
        assert_eq!(
            parse_certificate_request(&[2, 9, 9, 0, 4, 0, 13, 0, 0]).unwrap(),
            &[9, 9]
        );
        assert!(parse_certificate_request(&[2, 9]).is_err());
    }
}
