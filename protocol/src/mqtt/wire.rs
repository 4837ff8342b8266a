//! Bounds-checked reading and writing of MQTT's primitive fields.

use super::{MqttError, MAX_REMAINING_LENGTH};

/// Reads fields from one packet's body; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    packet: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], packet: &'static str) -> Self {
        Reader {
            buf,
            pos: 0,
            packet,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        rest
    }

    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], MqttError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(MqttError::Truncated {
            packet: self.packet,
            field,
        })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, MqttError> {
        Ok(self.bytes(1, field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, MqttError> {
        let b = self.bytes(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, MqttError> {
        let b = self.bytes(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A variable byte integer inside the packet body.
    pub fn varint(&mut self, field: &'static str) -> Result<usize, MqttError> {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        match read_varint(rest)? {
            Some((value, used)) => {
                self.pos += used;
                Ok(value)
            }
            None => Err(MqttError::Truncated {
                packet: self.packet,
                field,
            }),
        }
    }

    /// A non-zero packet identifier.
    pub fn packet_id(&mut self) -> Result<u16, MqttError> {
        match self.u16("packet identifier")? {
            0 => Err(MqttError::ZeroPacketId {
                packet: self.packet,
            }),
            id => Ok(id),
        }
    }

    /// Length-prefixed binary data.
    pub fn binary(&mut self, field: &'static str) -> Result<&'a [u8], MqttError> {
        let n = self.u16(field)?;
        self.bytes(usize::from(n), field)
    }

    /// Length-prefixed UTF-8 string without U+0000.
    pub fn string(&mut self, field: &'static str) -> Result<&'a str, MqttError> {
        let raw = self.binary(field)?;
        let bad = MqttError::BadString {
            packet: self.packet,
            field,
        };
        let s = core::str::from_utf8(raw).map_err(|_| bad)?;
        if s.bytes().any(|b| b == 0) {
            return Err(bad);
        }
        Ok(s)
    }

    /// Fails if any byte is left.
    pub fn finish(&self) -> Result<(), MqttError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(MqttError::TrailingBytes {
                packet: self.packet,
            })
        }
    }
}

/// Writes fields into a caller buffer; every write is bounds-checked.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pub pos: usize,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    pub fn bytes(&mut self, b: &[u8]) -> Result<(), MqttError> {
        let end = self.pos + b.len();
        let available = self.buf.len();
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(MqttError::BufferTooSmall {
                needed: end,
                available,
            })?;
        dst.copy_from_slice(b);
        self.pos = end;
        Ok(())
    }

    pub fn u8(&mut self, v: u8) -> Result<(), MqttError> {
        self.bytes(&[v])
    }

    pub fn u16(&mut self, v: u16) -> Result<(), MqttError> {
        self.bytes(&v.to_be_bytes())
    }

    pub fn binary(&mut self, b: &[u8], field: &'static str) -> Result<(), MqttError> {
        let n = u16::try_from(b.len()).map_err(|_| MqttError::TooLong { field })?;
        self.u16(n)?;
        self.bytes(b)
    }

    pub fn string(&mut self, s: &str, field: &'static str) -> Result<(), MqttError> {
        self.binary(s.as_bytes(), field)
    }

    pub fn varint(&mut self, mut v: usize) -> Result<(), MqttError> {
        loop {
            let mut byte = (v % 128) as u8;
            v /= 128;
            if v > 0 {
                byte |= 0x80;
            }
            self.u8(byte)?;
            if v == 0 {
                return Ok(());
            }
        }
    }
}

/// Bytes a remaining length takes on the wire.
pub(crate) fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Decodes a remaining length from the bytes after the first header byte:
/// `Ok(None)` if more bytes are needed, else `(value, bytes used)`.
pub(crate) fn read_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, MqttError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Err(MqttError::MalformedRemainingLength)
}

/// One packet's fixed header, split from the front of a buffer.
pub(crate) struct Framed<'a> {
    /// Packet type, 1–15.
    pub kind: u8,
    pub flags: u8,
    pub body: &'a [u8],
    /// Bytes the whole packet takes.
    pub total: usize,
}

/// Each packet type's name, for errors (type 15 exists only in version 5).
pub(crate) const NAMES: [&str; 16] = [
    "reserved",
    "CONNECT",
    "CONNACK",
    "PUBLISH",
    "PUBACK",
    "PUBREC",
    "PUBREL",
    "PUBCOMP",
    "SUBSCRIBE",
    "SUBACK",
    "UNSUBSCRIBE",
    "UNSUBACK",
    "PINGREQ",
    "PINGRESP",
    "DISCONNECT",
    "AUTH",
];

/// Splits the packet at the front of `buf` (`Ok(None)`: not all there yet), checking the
/// fixed-header rules both protocol versions share. Type 15
/// is AUTH when `auth` (version 5) and reserved otherwise.
pub(crate) fn frame<'a>(
    buf: &'a [u8],
    max_packet_size: usize,
    auth: bool,
) -> Result<Option<Framed<'a>>, MqttError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let kind = first >> 4;
    let flags = first & 0x0F;
    if kind == 0 || (kind == 15 && !auth) {
        return Err(MqttError::ReservedPacketType(kind));
    }
    let required_flags = match kind {
        3 => None,
        6 | 8 | 10 => Some(0b0010),
        _ => Some(0),
    };
    if required_flags.is_some_and(|f| f != flags) {
        return Err(MqttError::BadFlags {
            packet: NAMES[usize::from(kind)],
            flags,
        });
    }
    let Some((remaining, len_bytes)) = read_varint(&buf[1..])? else {
        return Ok(None);
    };
    let total = 1 + len_bytes + remaining;
    if total > max_packet_size {
        return Err(MqttError::PacketTooLarge {
            size: total,
            max: max_packet_size,
        });
    }
    Ok(buf.get(1 + len_bytes..total).map(|body| Framed {
        kind,
        flags,
        body,
        total,
    }))
}

/// Writes a packet: fixed header (`first_byte`, remaining length `body`), then the body
/// `emit_body` writes. Returns the bytes written.
pub(crate) fn emit_framed(
    out: &mut [u8],
    first_byte: u8,
    body: usize,
    emit_body: impl FnOnce(&mut Writer<'_>) -> Result<(), MqttError>,
) -> Result<usize, MqttError> {
    if body > MAX_REMAINING_LENGTH {
        return Err(MqttError::TooLong { field: "packet" });
    }
    let needed = 1 + varint_len(body) + body;
    if out.len() < needed {
        return Err(MqttError::BufferTooSmall {
            needed,
            available: out.len(),
        });
    }
    let mut w = Writer::new(out);
    w.u8(first_byte)?;
    w.varint(body)?;
    emit_body(&mut w)?;
    Ok(w.pos)
}
