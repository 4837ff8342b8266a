//! A message as it travels through NATS (core subjects, the JetStream stream and the
//! retained-message KV bucket): the topic is the subject (or key), and the body is this
//! envelope: what the broker core needs to deliver it exactly as a local publish.
//!
//! ```text
//! version (1) = 1 | flags (1): qos bits 0-1, retain 2, expiry 3, properties 4
//! origin: u16 length + UTF-8 client id
//! [expiry]: u32 Message Expiry Interval (s) + u64 publish time (ms since the Unix epoch)
//! [properties]: u8 has-format + u8 format | 3 × (u32 length + 1 or u32::MAX for none)
//!               (content type, response topic, correlation data)
//!               | u16 user property count + (u16 + key, u16 + value) each
//! payload: the rest
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use fleet_protocol::mqtt::QoS;

use crate::broker::{Message, MessageProperties};

const VERSION: u8 = 1;
const RETAIN: u8 = 1 << 2;
const EXPIRY: u8 = 1 << 3;
const PROPERTIES: u8 = 1 << 4;
/// An optional field that is absent.
const NONE: u32 = u32::MAX;

/// Why an envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message envelope from NATS: {0}")]
pub struct BadEnvelope(&'static str);

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn put_str16(out: &mut BytesMut, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
    out.put_u16(u16::try_from(bytes.len()).unwrap_or(u16::MAX));
    out.put_slice(bytes);
}

fn put_opt(out: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            out.put_u32(u32::try_from(b.len()).unwrap_or(NONE - 1));
            out.put_slice(b);
        }
        None => out.put_u32(NONE),
    }
}

/// The envelope of `message`, published at `published` (wall clock, for expiry elsewhere).
pub fn encode(message: &Message, published: SystemTime) -> Bytes {
    let mut flags = message.qos as u8;
    if message.retain {
        flags |= RETAIN;
    }
    if message.expiry_interval.is_some() {
        flags |= EXPIRY;
    }
    if message.properties.is_some() {
        flags |= PROPERTIES;
    }
    let mut out = BytesMut::with_capacity(message.size() + 32);
    out.put_u8(VERSION);
    out.put_u8(flags);
    put_str16(&mut out, message.origin.as_deref().unwrap_or(""));
    if let Some(interval) = message.expiry_interval {
        out.put_u32(interval);
        out.put_u64(unix_ms(published));
    }
    if let Some(p) = &message.properties {
        match p.payload_format_indicator {
            Some(f) => out.put_slice(&[1, f]),
            None => out.put_slice(&[0, 0]),
        }
        put_opt(&mut out, p.content_type.as_deref().map(str::as_bytes));
        put_opt(&mut out, p.response_topic.as_deref().map(str::as_bytes));
        put_opt(&mut out, p.correlation_data.as_deref());
        let count = p.user_properties.len().min(usize::from(u16::MAX));
        out.put_u16(u16::try_from(count).unwrap_or(u16::MAX));
        for (k, v) in p.user_properties.iter().take(count) {
            put_str16(&mut out, k);
            put_str16(&mut out, v);
        }
    }
    out.put_slice(&message.payload);
    out.freeze()
}

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), BadEnvelope> {
        if self.0.remaining() < n {
            Err(BadEnvelope("truncated"))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self) -> Result<u8, BadEnvelope> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }

    fn u16(&mut self) -> Result<u16, BadEnvelope> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }

    fn u32(&mut self) -> Result<u32, BadEnvelope> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }

    fn u64(&mut self) -> Result<u64, BadEnvelope> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }

    fn bytes(&mut self, n: usize) -> Result<Bytes, BadEnvelope> {
        self.need(n)?;
        Ok(self.0.split_to(n))
    }

    fn text(bytes: Bytes) -> Result<Box<str>, BadEnvelope> {
        std::str::from_utf8(&bytes)
            .map(Into::into)
            .map_err(|_| BadEnvelope("text that is not UTF-8"))
    }

    fn str16(&mut self) -> Result<Box<str>, BadEnvelope> {
        let n = usize::from(self.u16()?);
        Reader::text(self.bytes(n)?)
    }

    fn opt(&mut self) -> Result<Option<Bytes>, BadEnvelope> {
        match self.u32()? {
            NONE => Ok(None),
            n => Ok(Some(self.bytes(usize::try_from(n).unwrap_or(usize::MAX))?)),
        }
    }

    fn properties(&mut self) -> Result<MessageProperties, BadEnvelope> {
        let has_format = self.u8()?;
        let format = self.u8()?;
        let content_type = self.opt()?.map(Reader::text).transpose()?;
        let response_topic = self.opt()?.map(Reader::text).transpose()?;
        let correlation_data = self.opt()?;
        let count = self.u16()?;
        let mut user_properties = Vec::with_capacity(usize::from(count.min(64)));
        for _ in 0..count {
            user_properties.push((self.str16()?, self.str16()?));
        }
        Ok(MessageProperties {
            payload_format_indicator: (has_format == 1).then_some(format),
            content_type,
            response_topic,
            correlation_data,
            user_properties,
        })
    }
}

/// The message an envelope on `topic` carries, its expiry counted from its publish time
/// (`now` and `wall_now` are this process's clocks at reception).
pub fn decode(
    topic: &str,
    body: Bytes,
    now: Instant,
    wall_now: SystemTime,
) -> Result<Message, BadEnvelope> {
    let mut r = Reader(body);
    if r.u8()? != VERSION {
        return Err(BadEnvelope("unknown version"));
    }
    let flags = r.u8()?;
    let qos = match flags & 0b11 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return Err(BadEnvelope("QoS 3")),
    };
    let origin = r.str16()?;
    let mut message = Message::new(topic, Bytes::new(), qos, flags & RETAIN != 0);
    message.origin = (!origin.is_empty()).then(|| Arc::from(origin));
    if flags & EXPIRY != 0 {
        let interval = r.u32()?;
        let published = r.u64()?;
        let age = Duration::from_millis(unix_ms(wall_now).saturating_sub(published));
        let lifetime = Duration::from_secs(u64::from(interval));
        message.expiry_interval = Some(interval);
        message.expires_at = Some(now.checked_add(lifetime.saturating_sub(age)).unwrap_or(now));
    }
    if flags & PROPERTIES != 0 {
        message.properties = Some(Box::new(r.properties()?));
    }
    message.payload = r.0;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Message {
        let mut m = Message::new("a/b", &b"payload"[..], QoS::ExactlyOnce, true);
        m.origin = Some(Arc::from("dev-1"));
        m.expiry_interval = Some(60);
        m.properties = Some(Box::new(MessageProperties {
            payload_format_indicator: Some(1),
            content_type: Some("text/plain".into()),
            response_topic: None,
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "v".into()), ("k".into(), "w\nx".into())],
        }));
        m
    }

    #[test]
    fn a_message_survives_the_trip() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let sent = full();
        let body = encode(&sent, wall - Duration::from_secs(10));
        let got = decode("a/b", body, now, wall).expect("decodes");
        assert_eq!(got.topic, sent.topic);
        assert_eq!(got.payload, sent.payload);
        assert_eq!((got.qos, got.retain), (QoS::ExactlyOnce, true));
        assert_eq!(got.origin.as_deref(), Some("dev-1"));
        assert_eq!(got.properties, sent.properties);
        assert_eq!(got.expiry_interval, Some(60));
        // Ten of its sixty seconds were spent before it arrived.
        assert_eq!(got.expires_at, Some(now + Duration::from_secs(50)));
    }

    #[test]
    fn a_plain_message_is_small_and_survives() {
        let m = Message::new("t", &b"x"[..], QoS::AtMostOnce, false);
        let body = encode(&m, SystemTime::now());
        assert_eq!(body.len(), 5);
        let got = decode("t", body, Instant::now(), SystemTime::now()).expect("decodes");
        assert_eq!(got, m);
    }

    #[test]
    fn damaged_envelopes_are_errors() {
        let body = encode(&full(), SystemTime::now());
        for cut in [0, 1, 3, 8, 20] {
            let e = decode("a", body.slice(..cut), Instant::now(), SystemTime::now());
            assert_eq!(e, Err(BadEnvelope("truncated")), "cut at {cut}");
        }
        let mut wrong = body.to_vec();
        wrong[0] = 9;
        let e = decode("a", wrong.into(), Instant::now(), SystemTime::now());
        assert_eq!(
            e.unwrap_err().to_string(),
            "message envelope from NATS: unknown version"
        );
        let e = decode(
            "a",
            Bytes::from_static(&[1, 3, 0, 0]),
            Instant::now(),
            SystemTime::now(),
        );
        assert_eq!(e, Err(BadEnvelope("QoS 3")));
    }
}
