//! The session driven with bytes: what the gateway sends is written out by hand from the
//! MQTT 3.1.1 specification (§3), and so is what the device must send.

extern crate std;

use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use super::*;
use crate::device::RotationEvent;

const ID: &str = "acme-000001";
const PREFIX: &str = "tenants/acme/devices/acme-000001/";

fn bundle() -> Bundle<'static> {
    Bundle {
        generation: 1,
        device_id: ID,
        tenant: "acme",
        cert_der: b"\x30\x03\x02\x01\x01",
        private_key_der: Some(b"\x30\x01k"),
        trust_anchor_der: b"\x30\x01a",
        gateway_host: "gw.test",
        gateway_port: 8883,
        seed: None,
    }
}

/// Nothing periodic, no rotation: each test turns on what it checks.
fn quiet() -> Options {
    Options {
        keep_alive_secs: 0,
        telemetry_period_ms: 0,
        telemetry_qos: QoS::AtMostOnce,
        ack_timeout_ms: 5000,
        rotation: false,
    }
}

/// Records what the session tells the app.
#[derive(Default)]
struct Recorder {
    connected: u32,
    commands: Vec<(String, Vec<u8>)>,
    events: Vec<String>,
    /// Telemetry payloads handed out, by sequence number.
    readings: u32,
}

impl App for Recorder {
    fn telemetry(&mut self, seq: u32, out: &mut [u8]) -> usize {
        self.readings += 1;
        let text = format!("t{seq}");
        out[..text.len()].copy_from_slice(text.as_bytes());
        text.len()
    }

    fn on_command(&mut self, topic: &str, payload: &[u8], reply: &mut [u8]) -> Option<usize> {
        self.commands.push((topic.to_string(), payload.to_vec()));
        reply[..3].copy_from_slice(b"ok!");
        Some(3)
    }

    fn on_connected(&mut self) {
        self.connected += 1;
    }

    fn on_rotation(&mut self, event: RotationEvent<'_>) {
        self.events.push(format!("{event:?}"));
    }
}

/// A deterministic generator (xorshift); good enough to make test keys.
struct TestRng(u64);

impl rand_core::RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        rand_core::impls::fill_bytes_via_next(self, dest)
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for TestRng {}

/// What a session borrows, and the app and RNG the pump would pass.
struct Rig {
    bundle: Bundle<'static>,
    outbox: Outbox<4, MAX_PAYLOAD>,
    stats: Stats,
    bundle_out: [u8; 2048],
    app: Recorder,
    rng: TestRng,
}

impl Rig {
    fn new() -> Rig {
        Rig {
            bundle: bundle(),
            outbox: Outbox::new(),
            stats: Stats::default(),
            bundle_out: [0; 2048],
            app: Recorder::default(),
            rng: TestRng(0x2545_F491_4F6C_DD1D),
        }
    }
}

/// A session on a rig, with the calls a pump makes.
struct Driver<'r> {
    session: DeviceSession<'r, 4>,
    app: &'r mut Recorder,
    rng: &'r mut TestRng,
}

impl<'r> Driver<'r> {
    fn new(rig: &'r mut Rig, options: Options) -> Driver<'r> {
        let session = DeviceSession::new(
            &rig.bundle,
            options,
            &mut rig.outbox,
            &mut rig.stats,
            &mut rig.bundle_out,
        )
        .unwrap();
        Driver {
            session,
            app: &mut rig.app,
            rng: &mut rig.rng,
        }
    }

    /// The next step at `now`, with the bytes to send when it is one.
    fn poll(&mut self, now: u64) -> Result<(Step, Vec<u8>), Error> {
        let mut out = [0u8; MAX_PACKET];
        let step = self.session.poll(now, &mut out, self.app, self.rng)?;
        let sent = match step {
            Step::Send(n) => out[..n].to_vec(),
            _ => Vec::new(),
        };
        Ok((step, sent))
    }

    /// The packet the session sends at `now`; fails the test if it has none.
    fn sends(&mut self, now: u64) -> Vec<u8> {
        match self.poll(now).unwrap() {
            (Step::Send(_), bytes) => bytes,
            (other, _) => panic!("expected a packet, got {other:?}"),
        }
    }

    fn receive(&mut self, bytes: &[u8], now: u64) -> Result<usize, Error> {
        self.session.received(bytes, now, self.app)
    }

    /// CONNECT → CONNACK → SUBSCRIBE → SUBACK at `now`.
    fn subscribe(&mut self, now: u64) {
        assert_eq!(self.sends(now)[0], 0x10, "CONNECT first");
        self.receive(&CONNACK_ACCEPTED, now).unwrap();
        assert_eq!(self.sends(now)[0], 0x82, "SUBSCRIBE next");
        self.receive(&SUBACK_GRANTED, now).unwrap();
    }
}

/// CONNACK (§3.2): session present 0, return code 0.
const CONNACK_ACCEPTED: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
/// SUBACK (§3.9) for packet id 1: QoS 1 and QoS 0 granted.
const SUBACK_GRANTED: [u8; 6] = [0x90, 0x04, 0x00, 0x01, 0x01, 0x00];

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn len16(s: &[u8]) -> [u8; 2] {
    (s.len() as u16).to_be_bytes()
}

/// A PUBLISH (§3.3) as the gateway sends it: QoS 0 without a packet id, QoS 1 with `id`.
/// Remaining lengths below 128 (one byte).
fn publish(topic: &str, id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let first = if id.is_some() { 0x32 } else { 0x30 };
    let id = id.map(u16::to_be_bytes);
    let id: &[u8] = id.as_ref().map_or(&[], |b| &b[..]);
    let body = cat(&[&len16(topic.as_bytes()), topic.as_bytes(), id, payload]);
    assert!(body.len() < 128);
    cat(&[&[first, body.len() as u8], &body])
}

/// Topic, packet id and payload of a PUBLISH the device sent (remaining length < 16384).
fn parse_publish(bytes: &[u8]) -> (u8, String, Option<u16>, Vec<u8>) {
    let first = bytes[0];
    assert_eq!(first & 0xf0, 0x30, "a PUBLISH: {bytes:02x?}");
    let (len, at) = if bytes[1] & 0x80 == 0 {
        (usize::from(bytes[1]), 2)
    } else {
        (
            usize::from(bytes[1] & 0x7f) + (usize::from(bytes[2]) << 7),
            3,
        )
    };
    assert_eq!(bytes.len(), at + len, "one whole packet");
    let body = &bytes[at..];
    let tl = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = core::str::from_utf8(&body[2..2 + tl]).unwrap().to_string();
    let mut rest = &body[2 + tl..];
    let id = if first & 0x06 != 0 {
        let id = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        Some(id)
    } else {
        None
    };
    (first, topic, id, rest.to_vec())
}

#[test]
fn connect_and_subscribe_are_the_bytes_the_specification_gives() {
    let mut rig = Rig::new();
    let mut d = Driver::new(
        &mut rig,
        Options {
            keep_alive_secs: 30,
            ..quiet()
        },
    );
    // §3.1: protocol name "MQTT", level 4, flags 0x02 (clean session), keep-alive 30 s, the
    // device id as client id.
    let connect = cat(&[
        &[0x10, 23, 0x00, 0x04],
        b"MQTT",
        &[0x04, 0x02, 0x00, 30, 0x00, 11],
        ID.as_bytes(),
    ]);
    assert_eq!(d.sends(0), connect);
    assert_eq!(d.poll(1).unwrap().0, Step::Wait { until_ms: 5000 });
    d.receive(&CONNACK_ACCEPTED, 10).unwrap();
    // §3.8: packet id 1, the device's commands at QoS 1 and its certificate topics at QoS 0.
    let commands = format!("{PREFIX}cmd/#");
    let cert = format!("{PREFIX}cert/#");
    let subscribe = cat(&[
        &[0x82, 85, 0x00, 0x01],
        &len16(commands.as_bytes()),
        commands.as_bytes(),
        &[0x01],
        &len16(cert.as_bytes()),
        cert.as_bytes(),
        &[0x00],
    ]);
    assert_eq!(d.sends(10), subscribe);
    assert_eq!(d.app.connected, 0, "not before SUBACK");
    d.receive(&SUBACK_GRANTED, 20).unwrap();
    assert_eq!(d.app.connected, 1);
    // Subscribed: the first ping is due a keep-alive after SUBACK.
    assert_eq!(d.poll(20).unwrap().0, Step::Wait { until_ms: 30_020 });
    drop(d);
    assert_eq!(rig.stats.connects, 1);
}

#[test]
fn a_refused_connack_is_an_error_that_names_the_code() {
    let mut rig = Rig::new();
    let mut d = Driver::new(&mut rig, quiet());
    d.sends(0);
    // Return code 5: not authorized.
    let ended = d.receive(&[0x20, 0x02, 0x00, 0x05], 1).unwrap_err();
    assert!(
        matches!(ended, Error::Refused(ConnectReturnCode::NotAuthorized)),
        "{ended}"
    );
    assert_eq!(d.app.connected, 0);
    drop(d);
    assert_eq!(rig.stats.connects, 0);
}

#[test]
fn a_failed_subscription_ends_the_session_before_it_starts() {
    let mut rig = Rig::new();
    let mut d = Driver::new(&mut rig, quiet());
    d.sends(0);
    d.receive(&CONNACK_ACCEPTED, 1).unwrap();
    d.sends(1);
    // Return code 0x80 for the command filter.
    let ended = d
        .receive(&[0x90, 0x04, 0x00, 0x01, 0x80, 0x00], 2)
        .unwrap_err();
    assert!(
        matches!(
            ended,
            Error::Protocol("gateway refused the command subscription")
        ),
        "{ended}"
    );
    assert_eq!(d.app.connected, 0);
    drop(d);
    assert_eq!(rig.stats.connects, 1, "the CONNECT itself was accepted");
}

#[test]
fn something_else_than_connack_or_suback_is_a_protocol_error() {
    let mut rig = Rig::new();
    let mut d = Driver::new(&mut rig, quiet());
    d.sends(0);
    let ended = d.receive(&[0xd0, 0x00], 1).unwrap_err();
    assert!(
        matches!(ended, Error::Protocol("expected CONNACK")),
        "{ended}"
    );

    let mut rig = Rig::new();
    let mut d = Driver::new(&mut rig, quiet());
    d.sends(0);
    d.receive(&CONNACK_ACCEPTED, 1).unwrap();
    d.sends(1);
    let ended = d.receive(&[0xd0, 0x00], 2).unwrap_err();
    assert!(
        matches!(ended, Error::Protocol("expected SUBACK")),
        "{ended}"
    );
}

#[test]
fn no_acknowledgement_by_the_deadline_is_a_timeout() {
    for acked in [false, true] {
        let mut rig = Rig::new();
        let mut d = Driver::new(&mut rig, quiet());
        d.sends(100);
        if acked {
            // The SUBACK is due by the same deadline as the CONNACK.
            d.receive(&CONNACK_ACCEPTED, 3000).unwrap();
            d.sends(3000);
        }
        assert_eq!(d.poll(5099).unwrap().0, Step::Wait { until_ms: 5100 });
        let ended = d.poll(5100).unwrap_err();
        assert!(
            matches!(ended, Error::Timeout("no acknowledgement from the gateway")),
            "{ended}"
        );
    }
}

#[test]
fn a_command_is_acknowledged_and_its_reply_published() {
    let mut rig = Rig::new();
    let mut d = Driver::new(&mut rig, quiet());
    d.subscribe(0);
    let topic = format!("{PREFIX}cmd/blink");
    let command = publish(&topic, Some(7), b"{\"n\":3}");
    assert_eq!(d.receive(&command, 50).unwrap(), command.len());
    assert_eq!(d.app.commands, [(topic, b"{\"n\":3}".to_vec())]);
    // §3.4: PUBACK for packet id 7, then the reply on `…/ack` at QoS 0.
    assert_eq!(d.sends(50), [0x40, 0x02, 0x00, 0x07]);
    let (first, reply_topic, id, payload) = parse_publish(&d.sends(50));
    assert_eq!(
        (first, reply_topic.as_str(), id, &payload[..]),
        (0x30, format!("{PREFIX}ack").as_str(), None, &b"ok!"[..])
    );
    assert_eq!(d.poll(50).unwrap().0, Step::Wait { until_ms: u64::MAX });
    drop(d);
    assert_eq!(rig.stats.commands, 1);
}

#[test]
fn packets_split_across_reads_are_handled_once_whole() {
    let mut rig = Rig::new();
    let mut d = Driver::new(&mut rig, quiet());
    d.subscribe(0);
    let one = publish(&format!("{PREFIX}cmd/a"), None, b"1");
    let two = publish(&format!("{PREFIX}cmd/b"), Some(2), b"2");
    let both = cat(&[&one, &two]);
    // All of the first and part of the second: only the first is taken.
    let cut = one.len() + 3;
    assert_eq!(d.receive(&both[..cut], 1).unwrap(), one.len());
    assert_eq!(d.app.commands.len(), 1);
    assert_eq!(d.receive(&both[one.len()..], 2).unwrap(), two.len());
    assert_eq!(d.app.commands.len(), 2);
}

#[test]
fn keep_alive_pings_fall_due_and_a_missing_pingresp_ends_the_session() {
    let mut rig = Rig::new();
    let mut d = Driver::new(
        &mut rig,
        Options {
            keep_alive_secs: 30,
            ..quiet()
        },
    );
    d.subscribe(1000);
    assert_eq!(d.poll(30_999).unwrap().0, Step::Wait { until_ms: 31_000 });
    // §3.12: PINGREQ.
    assert_eq!(d.sends(31_000), [0xc0, 0x00]);
    assert_eq!(d.poll(31_001).unwrap().0, Step::Wait { until_ms: 61_000 });
    // §3.13: PINGRESP.
    d.receive(&[0xd0, 0x00], 31_050).unwrap();
    assert_eq!(d.sends(61_000), [0xc0, 0x00]);
    // No answer to that one within the next keep-alive.
    assert_eq!(d.poll(90_999).unwrap().0, Step::Wait { until_ms: 91_000 });
    let ended = d.poll(91_000).unwrap_err();
    assert!(
        matches!(ended, Error::Timeout("no PINGRESP within the keep-alive")),
        "{ended}"
    );
}

#[test]
fn telemetry_is_published_each_period() {
    let mut rig = Rig::new();
    let mut d = Driver::new(
        &mut rig,
        Options {
            telemetry_period_ms: 1000,
            ..quiet()
        },
    );
    d.subscribe(500);
    let (first, topic, id, payload) = parse_publish(&d.sends(500));
    assert_eq!(
        (first, topic, id, payload),
        (0x30, format!("{PREFIX}telemetry"), None, b"t0".to_vec())
    );
    assert_eq!(d.poll(501).unwrap().0, Step::Wait { until_ms: 1500 });
    assert_eq!(parse_publish(&d.sends(1500)).3, b"t1");
    drop(d);
    assert_eq!(rig.stats.published, 2);
}

#[test]
fn qos1_telemetry_is_sent_again_with_dup_after_a_reconnect_until_acknowledged() {
    let options = Options {
        telemetry_period_ms: 1000,
        telemetry_qos: QoS::AtLeastOnce,
        ..quiet()
    };
    let mut rig = Rig::new();
    let mut d = Driver::new(&mut rig, options);
    d.subscribe(0);
    let sent = d.sends(0);
    // §3.3.1: QoS 1 (0x02), DUP clear, packet id 1.
    assert_eq!(sent[0], 0x32);
    let (_, topic, id, payload) = parse_publish(&sent);
    assert_eq!(
        (topic, id, payload),
        (format!("{PREFIX}telemetry"), Some(1), b"t0".to_vec())
    );
    // The connection drops before the PUBACK.
    drop(d);
    assert_eq!(rig.outbox.len(), 1);

    let mut d = Driver::new(
        &mut rig,
        Options {
            telemetry_period_ms: 0,
            ..options
        },
    );
    d.subscribe(5000);
    let again = d.sends(5000);
    // The same message, now with DUP (0x08).
    assert_eq!(again[0], 0x3a);
    assert_eq!(again[1..], sent[1..]);
    assert_eq!(d.poll(5001).unwrap().0, Step::Wait { until_ms: u64::MAX });
    // §3.4: PUBACK for packet id 1 releases it.
    d.receive(&[0x40, 0x02, 0x00, 0x01], 5002).unwrap();
    drop(d);
    assert!(rig.outbox.is_empty());
    assert_eq!((rig.stats.published, rig.stats.acked), (2, 1));
}

#[test]
fn unexpected_packets_once_subscribed_are_protocol_errors() {
    let mut rig = Rig::new();
    let mut d = Driver::new(&mut rig, quiet());
    d.subscribe(0);
    // PUBREC (§3.5): the device never sends QoS 2.
    let ended = d.receive(&[0x50, 0x02, 0x00, 0x01], 1).unwrap_err();
    assert!(
        matches!(ended, Error::Protocol("unexpected packet from the gateway")),
        "{ended}"
    );
    // Malformed: a PUBACK with a remaining length of 3.
    let mut rig = Rig::new();
    let mut d = Driver::new(&mut rig, quiet());
    d.subscribe(0);
    assert!(matches!(
        d.receive(&[0x40, 0x03, 0x00, 0x01, 0x00], 1),
        Err(Error::Mqtt(_))
    ));
}

/// The uncompressed public key in a CSR: the 65 bytes after `03 42 00` that begin with 04.
fn csr_point(csr: &[u8]) -> [u8; 65] {
    let at = csr
        .windows(4)
        .position(|w| w == [0x03, 0x42, 0x00, 0x04])
        .expect("a P-256 key in the request");
    csr[at + 3..at + 68].try_into().unwrap()
}

#[test]
fn a_rotation_asks_requests_and_writes_the_renewed_bundle() {
    let mut rig = Rig::new();
    let mut d = Driver::new(
        &mut rig,
        Options {
            rotation: true,
            ..quiet()
        },
    );
    d.subscribe(0);
    // Subscribed: the device asks about its certificate.
    let (_, topic, _, payload) = parse_publish(&d.sends(0));
    assert_eq!(
        (topic, payload),
        (format!("{PREFIX}cert/status/get"), Vec::new())
    );
    assert_eq!(d.poll(1).unwrap().0, Step::Wait { until_ms: u64::MAX });

    // The gateway says renew (at QoS 1: acknowledged after the request is out).
    let status = publish(
        &format!("{PREFIX}cert/status"),
        Some(3),
        b"{\"renew\":true,\"days_left\":9}",
    );
    d.receive(&status, 10).unwrap();
    let (first, topic, _, csr) = parse_publish(&d.sends(10));
    assert_eq!((first, topic), (0x30, format!("{PREFIX}cert/csr")));
    assert_eq!(csr[0], 0x30, "a DER request");
    assert_eq!(d.sends(10), [0x40, 0x02, 0x00, 0x03]);
    let point = csr_point(&csr);

    // A certificate that is not for the new key is refused; the session goes on.
    let wrong = publish(
        &format!("{PREFIX}cert/new"),
        None,
        &[0x30, 0x02, 0x04, 0x00],
    );
    d.receive(&wrong, 20).unwrap();
    assert_eq!(d.poll(20).unwrap().0, Step::Wait { until_ms: u64::MAX });

    // The new certificate (any DER carrying the new key will do here): the session is done.
    let cert = cat(&[&[0x30, 0x43, 0x03, 0x41], &point]);
    let new = publish(&format!("{PREFIX}cert/new"), None, &cert);
    d.receive(&new, 30).unwrap();
    let (step, _) = d.poll(31).unwrap();
    let Step::Done(Outcome::Renewed { generation, len }) = step else {
        panic!("expected the renewal, got {step:?}");
    };
    assert_eq!(generation, 2);
    assert_eq!(
        d.app.events,
        [
            "Status { renew: true }",
            "Requested",
            "Rejected",
            "Renewed { generation: 2 }"
        ]
    );
    drop(d);

    let renewed = Bundle::parse(&rig.bundle_out[..len]).unwrap();
    assert_eq!(renewed.generation, 2);
    assert_eq!(renewed.cert_der, &cert[..]);
    assert_eq!(
        (renewed.device_id, renewed.gateway_host),
        (ID, "gw.test"),
        "everything else as before"
    );
    let key = crate::asn1::sec1_private_key(renewed.private_key_der.unwrap()).unwrap();
    assert_eq!(
        crate::ec::public_key(&key),
        point,
        "the key the request was for"
    );
}

#[test]
fn a_rotation_refused_by_the_gateway_is_reported_and_nothing_is_requested_twice() {
    let mut rig = Rig::new();
    let mut d = Driver::new(&mut rig, quiet());
    d.subscribe(0);
    let renew = publish(&format!("{PREFIX}cert/status"), None, b"{\"renew\":true}");
    d.receive(&renew, 1).unwrap();
    assert_eq!(parse_publish(&d.sends(1)).1, format!("{PREFIX}cert/csr"));
    // Asked again while the request is out: no second key.
    d.receive(&renew, 2).unwrap();
    assert_eq!(d.poll(2).unwrap().0, Step::Wait { until_ms: u64::MAX });
    let error = publish(&format!("{PREFIX}cert/error"), None, b"station unavailable");
    d.receive(&error, 3).unwrap();
    assert_eq!(
        d.app.events,
        [
            "Status { renew: true }",
            "Requested",
            "Status { renew: true }",
            "Refused(\"station unavailable\")"
        ]
    );
    // Nothing is sent for a refusal.
    assert_eq!(d.poll(3).unwrap().0, Step::Wait { until_ms: u64::MAX });
}
