//! The device side of mutual TLS 1.3: our own client, because the point of a device's
//! handshake cost is its P-256 work and the client has to hand it to [`crate::ec`]
//! (p256-cm4 on Cortex-M) — including the key exchange, which embedded-tls computes with
//! RustCrypto itself, with no hook. One suite (TLS_AES_128_GCM_SHA256), one group
//! (secp256r1), one signature scheme (ecdsa_secp256r1_sha256), a client certificate, no
//! resumption, no early data: what the gateway speaks and a device needs.
//!
//! [`handshake`] is the protocol without I/O, [`wire`] its messages, [`keys`] the key
//! schedule and record protection (RustCrypto HKDF and AES-GCM); [`Connection`] moves the
//! bytes over any `embedded-io-async` socket and splits into a reader and a writer.
//! There is no way to connect without checking the gateway's chain and signature.

use core::cell::Cell;

use embedded_io::{ErrorKind, ErrorType};
use embedded_io_async::{Read, Write};

use crate::asn1;
use crate::bundle::Bundle;
use crate::x509::{CertError, PublicKey};

pub mod handshake;
pub mod keys;
pub mod wire;

use handshake::{Handshake, Peer, Step};
use keys::{Protection, TAG_LEN};

/// Longest gateway host name (DNS: 253).
pub const HOST_MAX: usize = crate::bundle::MAX_HOST_LEN;

/// Largest TLS record payload the gateway sends to devices: see
/// [`fleet_protocol::limits::MAX_RECORD`].
pub const MAX_RECORD: usize = crate::limits::MAX_RECORD;

/// TLS record buffer sizes. The read buffer holds one whole record from the gateway
/// ([`MAX_RECORD`] plus the AEAD tag and content type); the write buffer the largest MQTT
/// packet the device sends plus record overhead, and the handshake's client certificate.
pub const READ_BUFFER: usize = MAX_RECORD + 64;
pub const WRITE_BUFFER: usize = 4096;

/// The gateway chain that last passed [`x509::verify_server`]: a digest of everything that
/// check read (trust anchor, host name, every certificate) and the server key it gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedChain {
    digest: [u8; 32],
    key: PublicKey,
}

/// Kept across connections (in [`crate::device::Buffers`]): a gateway that presents the very
/// same certificates as last time, for the same anchor and host name, is not checked again.
/// The check is deterministic (no clock), so the answer would be the same; its two chain
/// signatures are most of a reconnect's cost with RustCrypto's P-256. The gateway's
/// `CertificateVerify` is checked on every handshake: it proves the key is the gateway's.
pub type ChainCache = Cell<Option<VerifiedChain>>;

/// What went wrong in TLS, as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsError {
    /// The socket failed.
    Io(ErrorKind),
    /// The gateway closed the connection (TCP end or close_notify).
    Closed,
    /// The gateway sent this alert (RFC 8446 §6: 42 bad_certificate, 44 certificate_revoked,
    /// 116 certificate_required, …).
    Alert(u8),
    /// Malformed TLS data from the gateway: where.
    Decode(&'static str),
    /// The gateway chose what the device does not offer.
    Unsupported(&'static str),
    /// The gateway's certificate chain was refused, and why.
    Certificate(CertError),
    /// The gateway's CertificateVerify does not verify with its certificate's key.
    BadSignature,
    /// The gateway's Finished does not match the handshake.
    BadFinished,
    /// A record failed authentication (tampered, or keys out of step).
    BadRecordMac,
    /// A record larger than the read buffer (the gateway caps records at [`MAX_RECORD`]).
    RecordTooLarge,
    /// What the device writes does not fit its buffer.
    TooLarge,
    /// The identity bundle's private key is unusable (or absent: held by a secure element).
    Key,
    /// 2^64 records under one key.
    Exhausted,
}

impl core::fmt::Display for TlsError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            TlsError::Io(kind) => write!(f, "socket error ({})", io_text(*kind)),
            TlsError::Closed => f.write_str("connection closed"),
            TlsError::Alert(code) => {
                write!(f, "the gateway sent alert {code}{}", alert_name(*code))
            }
            TlsError::Decode(what) => write!(f, "malformed TLS data from the gateway: {what}"),
            TlsError::Unsupported(what) => write!(f, "gateway's choice not offered: {what}"),
            TlsError::Certificate(e) => write!(f, "gateway certificate refused: {e}"),
            TlsError::BadSignature => f.write_str("gateway handshake signature does not verify"),
            TlsError::BadFinished => f.write_str("gateway Finished does not match the handshake"),
            TlsError::BadRecordMac => f.write_str("record failed authentication"),
            TlsError::RecordTooLarge => f.write_str("record larger than the read buffer"),
            TlsError::TooLarge => f.write_str("message larger than the write buffer"),
            TlsError::Key => f.write_str("device private key unusable"),
            TlsError::Exhausted => f.write_str("record sequence numbers exhausted"),
        }
    }
}

impl TlsError {
    /// The alert the device sends when it aborts the handshake for this (RFC 8446 §6.2);
    /// none for what the gateway or the socket ended.
    fn alert(&self) -> Option<u8> {
        Some(match self {
            TlsError::Certificate(CertError::UntrustedIssuer) => 48, // unknown_ca
            TlsError::Certificate(_) => 42,                          // bad_certificate
            TlsError::BadSignature | TlsError::BadFinished => 51,    // decrypt_error
            TlsError::BadRecordMac => 20,                            // bad_record_mac
            TlsError::RecordTooLarge => 22,                          // record_overflow
            TlsError::Decode(_) => 50,                               // decode_error
            TlsError::Unsupported(_) => 47,                          // illegal_parameter
            TlsError::TooLarge | TlsError::Key | TlsError::Exhausted => 80, // internal_error
            TlsError::Io(_) | TlsError::Closed | TlsError::Alert(_) => return None,
        })
    }
}

/// The names of the alerts a gateway sends a device it refuses (RFC 8446 §6), for logs.
fn alert_name(code: u8) -> &'static str {
    match code {
        40 => " (handshake_failure)",
        42 => " (bad_certificate)",
        44 => " (certificate_revoked)",
        45 => " (certificate_expired)",
        48 => " (unknown_ca)",
        116 => " (certificate_required)",
        _ => "",
    }
}

/// Socket error kinds in words (board images carry no `Debug` output).
fn io_text(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ConnectionReset => "connection reset",
        ErrorKind::ConnectionAborted => "connection aborted",
        ErrorKind::NotConnected => "not connected",
        ErrorKind::TimedOut => "timed out",
        ErrorKind::BrokenPipe => "broken pipe",
        _ => "other",
    }
}

impl core::error::Error for TlsError {}

impl embedded_io::Error for TlsError {
    fn kind(&self) -> ErrorKind {
        match self {
            TlsError::Io(kind) => *kind,
            TlsError::Closed => ErrorKind::ConnectionAborted,
            _ => ErrorKind::Other,
        }
    }
}

fn io(e: impl embedded_io::Error) -> TlsError {
    TlsError::Io(e.kind())
}

/// Records from the gateway: raw bytes are read into `buf`; each record is decrypted in place
/// and its content moved to the front, after content kept from earlier records (`plain`
/// bytes: application data not yet read, or a handshake message not yet whole).
struct Records<'b> {
    buf: &'b mut [u8],
    plain: usize,
    filled: usize,
}

impl Records<'_> {
    async fn fill<S: Read>(&mut self, socket: &mut S, upto: usize) -> Result<(), TlsError> {
        while self.filled < upto {
            match socket
                .read(&mut self.buf[self.filled..])
                .await
                .map_err(io)?
            {
                0 => return Err(TlsError::Closed),
                n => self.filled += n,
            }
        }
        Ok(())
    }

    /// Reads the next record and appends its content to the kept content; returns its
    /// content type. Without `keys`, records are plaintext (before the key exchange).
    async fn pull<S: Read>(
        &mut self,
        socket: &mut S,
        keys: Option<&mut Protection>,
    ) -> Result<u8, TlsError> {
        let start = self.plain;
        // Kept content is at most the buffer less a header (it came in a record that fit), so
        // the next header always fits.
        self.fill(socket, start + 5).await?;
        let header = &self.buf[start..start + 5];
        let outer = header[0];
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > wire::MAX_CIPHERTEXT {
            return Err(TlsError::Decode("record longer than TLS allows"));
        }
        let end = start + 5 + len;
        if end > self.buf.len() {
            return Err(TlsError::RecordTooLarge);
        }
        self.fill(socket, end).await?;
        let (kind, content) = match keys {
            // A compatibility ChangeCipherSpec may come unprotected (RFC 8446 §5).
            _ if outer == wire::CHANGE_CIPHER_SPEC => (outer, len),
            Some(keys) if outer == wire::APPLICATION_DATA => {
                match keys.open(&mut self.buf[start..end])? {
                    (wire::CHANGE_CIPHER_SPEC, _) => {
                        return Err(TlsError::Decode("protected ChangeCipherSpec"))
                    }
                    opened => opened,
                }
            }
            Some(_) => {
                return Err(TlsError::Decode(
                    "unprotected record after the key exchange",
                ))
            }
            None => (outer, len),
        };
        self.buf.copy_within(start + 5..start + 5 + content, start);
        self.buf.copy_within(end..self.filled, start + content);
        self.filled -= end - (start + content);
        self.plain = start + content;
        Ok(kind)
    }

    /// Drops the first `n` bytes of content.
    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.filled, 0);
        self.plain -= n;
        self.filled -= n;
    }

    /// The first whole handshake message in the kept content (`None` while incomplete).
    fn message(&self) -> Option<usize> {
        wire::parse_handshake(&self.buf[..self.plain]).map(|(_, n)| n)
    }

    /// Reads the alert in the kept content.
    fn alert(&self) -> TlsError {
        match self.buf[..self.plain] {
            [_, wire::CLOSE_NOTIFY] => TlsError::Closed,
            [_, code] => TlsError::Alert(code),
            _ => TlsError::Decode("alert malformed"),
        }
    }
}

/// The gateway's records after the handshake: what [`Connection`] and [`Reader`] read.
struct ReadHalf<'b> {
    records: Records<'b>,
    keys: Protection,
    /// The content type of the kept content.
    kept: u8,
}

impl ReadHalf<'_> {
    async fn read<S: Read>(
        &mut self,
        socket: &mut S,
        out: &mut [u8],
        key_update: &Cell<bool>,
    ) -> Result<usize, TlsError> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            let kept = self.records.plain;
            if kept > 0 && self.kept == wire::APPLICATION_DATA {
                let n = kept.min(out.len());
                out[..n].copy_from_slice(&self.records.buf[..n]);
                self.records.consume(n);
                return Ok(n);
            }
            let kind = self.records.pull(socket, Some(&mut self.keys)).await?;
            if kept > 0 && kind != wire::HANDSHAKE {
                return Err(TlsError::Decode(
                    "handshake message split by another record",
                ));
            }
            self.kept = kind;
            match kind {
                // Handed out at the top of the loop (an empty record: read the next).
                wire::APPLICATION_DATA => {}
                wire::HANDSHAKE => {
                    while let Some(n) = self.records.message() {
                        self.after_handshake(n, key_update)?;
                        self.records.consume(n);
                    }
                }
                wire::ALERT => return Err(self.records.alert()),
                _ => return Err(TlsError::Decode("unexpected record type")),
            }
        }
    }

    /// A handshake message after the handshake (the first `n` kept bytes): session tickets
    /// are ignored (no resumption), KeyUpdate moves the gateway's keys on and, when asked,
    /// ours (the writer does it before its next record).
    fn after_handshake(&mut self, n: usize, key_update: &Cell<bool>) -> Result<(), TlsError> {
        match self.records.buf[..n] {
            [wire::NEW_SESSION_TICKET, ..] => Ok(()),
            [wire::KEY_UPDATE, 0, 0, 1, request @ (0 | 1)] => {
                if self.records.plain != n {
                    return Err(TlsError::Decode("KeyUpdate not at the end of its record"));
                }
                self.keys.update();
                if request == 1 {
                    key_update.set(true);
                }
                Ok(())
            }
            _ => Err(TlsError::Decode(
                "unexpected handshake message after the handshake",
            )),
        }
    }
}

/// The device's records after the handshake: application data is gathered in `buf` (after
/// room for the record header) and sealed into one record on flush or when full.
struct WriteHalf<'b> {
    buf: &'b mut [u8],
    len: usize,
    keys: Protection,
}

impl WriteHalf<'_> {
    /// Room for content in one record: header, content type and tag take the rest.
    fn capacity(&self) -> usize {
        self.buf.len() - 5 - 1 - TAG_LEN
    }

    async fn write<S: Write>(
        &mut self,
        socket: &mut S,
        data: &[u8],
        key_update: &Cell<bool>,
    ) -> Result<usize, TlsError> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.len == self.capacity() {
            self.flush(socket, key_update).await?;
        }
        let n = data.len().min(self.capacity() - self.len);
        self.buf[5 + self.len..5 + self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        Ok(n)
    }

    async fn flush<S: Write>(
        &mut self,
        socket: &mut S,
        key_update: &Cell<bool>,
    ) -> Result<(), TlsError> {
        if key_update.take() {
            // Our KeyUpdate (update_not_requested) goes before any more data (§4.6.3).
            let mut record = [0u8; 5 + 5 + 1 + TAG_LEN];
            record[5..11].copy_from_slice(&[wire::KEY_UPDATE, 0, 0, 1, 0, wire::HANDSHAKE]);
            let n = self.keys.seal(&mut record, 6)?;
            socket.write_all(&record[..n]).await.map_err(io)?;
            self.keys.update();
        }
        if self.len > 0 {
            self.buf[5 + self.len] = wire::APPLICATION_DATA;
            let n = self.keys.seal(self.buf, self.len + 1)?;
            self.len = 0;
            socket.write_all(&self.buf[..n]).await.map_err(io)?;
        }
        socket.flush().await.map_err(io)
    }
}

/// An open TLS connection to the gateway.
pub struct Connection<'b, S> {
    socket: S,
    reader: ReadHalf<'b>,
    writer: WriteHalf<'b>,
    /// The gateway asked for a KeyUpdate from us (set by the reader, done by the writer).
    key_update: Cell<bool>,
}

impl<'b, S: Read + Write + Clone> Connection<'b, S> {
    /// Runs the handshake over `socket` with the identity in `bundle`: the gateway's chain
    /// is checked against the bundle's trust anchor and gateway host (or found in `cache`),
    /// its CertificateVerify and Finished always. `read_buf` must hold a whole record from
    /// the gateway ([`READ_BUFFER`]), `write_buf` the device's certificate flight.
    pub async fn open(
        mut socket: S,
        read_buf: &'b mut [u8],
        write_buf: &'b mut [u8],
        bundle: &Bundle<'_>,
        cache: &ChainCache,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Result<Self, TlsError> {
        let key_der = bundle.private_key_der.ok_or(TlsError::Key)?;
        let key = asn1::sec1_private_key(key_der).map_err(|_| TlsError::Key)?;
        let peer = Peer {
            cert_der: bundle.cert_der,
            key: &key,
            anchor_der: bundle.trust_anchor_der,
            host: bundle.gateway_host,
            cache,
        };
        let mut hs = Handshake::new(peer, rng);
        let mut random = [0u8; 32];
        rng.fill_bytes(&mut random);
        let mut records = Records {
            buf: read_buf,
            plain: 0,
            filled: 0,
        };
        // Where an alert goes if the device aborts: plaintext until the key exchange.
        let mut client_keys: Option<Protection> = None;
        let shaken = handshake(
            &mut socket,
            &mut records,
            &mut *write_buf,
            &mut hs,
            &random,
            &mut client_keys,
        )
        .await;
        match shaken {
            Ok((server, client)) => Ok(Connection {
                socket,
                reader: ReadHalf {
                    records,
                    keys: server,
                    kept: wire::APPLICATION_DATA,
                },
                writer: WriteHalf {
                    buf: write_buf,
                    len: 0,
                    keys: client,
                },
                key_update: Cell::new(false),
            }),
            Err(e) => {
                if let Some(code) = e.alert() {
                    send_alert(&mut socket, client_keys.as_mut(), code).await;
                }
                Err(e)
            }
        }
    }

    /// A reader and a writer that can be used at the same time (from two loops raced in
    /// one task); the socket must be a pair of halves, like [`crate::socket::SplitSocket`].
    pub fn split(&mut self) -> (Reader<'_, 'b, S>, Writer<'_, 'b, S>) {
        (
            Reader {
                socket: self.socket.clone(),
                half: &mut self.reader,
                key_update: &self.key_update,
            },
            Writer {
                socket: self.socket.clone(),
                half: &mut self.writer,
                key_update: &self.key_update,
            },
        )
    }
}

/// The handshake's I/O: the ClientHello out, the gateway's records in, each handshake message
/// through `hs`, the device's flight out. Returns the application keys (gateway's, device's).
async fn handshake<S: Read + Write>(
    socket: &mut S,
    records: &mut Records<'_>,
    write_buf: &mut [u8],
    hs: &mut Handshake<'_>,
    random: &[u8; 32],
    client_keys: &mut Option<Protection>,
) -> Result<(Protection, Protection), TlsError> {
    let n = hs.client_hello(random, write_buf.get_mut(5..).ok_or(TlsError::TooLarge)?)?;
    write_buf[..5].copy_from_slice(&[wire::HANDSHAKE, 3, 1, (n >> 8) as u8, n as u8]);
    socket.write_all(&write_buf[..5 + n]).await.map_err(io)?;
    socket.flush().await.map_err(io)?;
    let mut server_keys: Option<Protection> = None;
    loop {
        let kept = records.plain;
        match records.pull(socket, server_keys.as_mut()).await? {
            wire::HANDSHAKE => {}
            _ if kept > 0 => {
                return Err(TlsError::Decode(
                    "handshake message split by another record",
                ))
            }
            wire::CHANGE_CIPHER_SPEC if records.buf[..records.plain] == [1] => {
                records.consume(1);
                continue;
            }
            wire::ALERT => return Err(records.alert()),
            _ => return Err(TlsError::Decode("unexpected record during the handshake")),
        }
        while let Some(n) = records.message() {
            let step = hs.receive(&records.buf[..n], &mut write_buf[5..])?;
            records.consume(n);
            // Keys change at record boundaries only (§5.1).
            if records.plain > 0 && !matches!(step, Step::Wait) {
                return Err(TlsError::Decode("handshake data across a key change"));
            }
            match step {
                Step::Wait => {}
                Step::HandshakeKeys { server, client } => {
                    server_keys = Some(Protection::new(server));
                    *client_keys = Some(Protection::new(client));
                }
                Step::Done {
                    flight,
                    client,
                    server,
                } => {
                    let keys = client_keys
                        .as_mut()
                        .ok_or(TlsError::Decode("Finished first"))?;
                    write_buf[5 + flight] = wire::HANDSHAKE;
                    let n = keys.seal(write_buf, flight + 1)?;
                    socket.write_all(&write_buf[..n]).await.map_err(io)?;
                    socket.flush().await.map_err(io)?;
                    return Ok((Protection::new(server), Protection::new(client)));
                }
            }
        }
    }
}

/// Tells the gateway why the device aborts (best effort: the connection is over either way).
async fn send_alert<S: Write>(socket: &mut S, keys: Option<&mut Protection>, code: u8) {
    let mut record = [0u8; 5 + 3 + TAG_LEN];
    let n = match keys {
        Some(keys) => {
            record[5..8].copy_from_slice(&[2, code, wire::ALERT]);
            match keys.seal(&mut record, 3) {
                Ok(n) => n,
                Err(_) => return,
            }
        }
        None => {
            record[..7].copy_from_slice(&[wire::ALERT, 3, 3, 0, 2, 2, code]);
            7
        }
    };
    if socket.write_all(&record[..n]).await.is_ok() {
        let _ = socket.flush().await;
    }
}

/// The read half of a split [`Connection`].
pub struct Reader<'c, 'b, S> {
    socket: S,
    half: &'c mut ReadHalf<'b>,
    key_update: &'c Cell<bool>,
}

/// The write half of a split [`Connection`].
pub struct Writer<'c, 'b, S> {
    socket: S,
    half: &'c mut WriteHalf<'b>,
    key_update: &'c Cell<bool>,
}

impl<S> ErrorType for Connection<'_, S> {
    type Error = TlsError;
}

impl<S> ErrorType for Reader<'_, '_, S> {
    type Error = TlsError;
}

impl<S> ErrorType for Writer<'_, '_, S> {
    type Error = TlsError;
}

impl<S: Read> Read for Connection<'_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        let c = self;
        c.reader.read(&mut c.socket, buf, &c.key_update).await
    }
}

impl<S: Write> Write for Connection<'_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        let c = self;
        c.writer.write(&mut c.socket, buf, &c.key_update).await
    }

    async fn flush(&mut self) -> Result<(), TlsError> {
        let c = self;
        c.writer.flush(&mut c.socket, &c.key_update).await
    }
}

impl<S: Read> Read for Reader<'_, '_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, TlsError> {
        self.half.read(&mut self.socket, buf, self.key_update).await
    }
}

impl<S: Write> Write for Writer<'_, '_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, TlsError> {
        self.half
            .write(&mut self.socket, buf, self.key_update)
            .await
    }

    async fn flush(&mut self) -> Result<(), TlsError> {
        self.half.flush(&mut self.socket, self.key_update).await
    }
}
#[cfg(test)]
mod tests;
