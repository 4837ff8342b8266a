//! The MQTT codec both the gateway and the device use, both versions: parsing arbitrary bytes
//! never panics, and whatever parses re-emits to bytes that parse to the same packet.
#![no_main]

use fleet_protocol::mqtt::v5::Packet5;
use fleet_protocol::mqtt::{MqttError, Packet};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((p, n))) = Packet::parse(rest, MAX) {
        let mut out = vec![0u8; p.encoded_len()];
        let written = p.emit(&mut out).expect("a parsed 3.1.1 packet re-encodes");
        let (again, _) = Packet::parse(&out[..written], MAX)
            .expect("re-encoded 3.1.1 packet parses")
            .expect("whole");
        assert_eq!(again, p);
        // The device's parser agrees, or refuses a packet only clients send.
        match Packet::parse_from_server(rest, MAX) {
            Ok(Some(from_server)) => assert_eq!(from_server, (p, n)),
            Err(MqttError::ClientOnly { .. }) => {}
            other => panic!("parse_from_server disagrees with parse: {other:?}"),
        }
        rest = &rest[n..];
    }
    let mut rest = data;
    while let Ok(Some((p, n))) = Packet5::parse(rest, MAX) {
        let mut out = vec![0u8; p.encoded_len()];
        let written = p
            .emit(&mut out)
            .expect("a parsed version 5 packet re-encodes");
        let (again, _) = Packet5::parse(&out[..written], MAX)
            .expect("re-encoded version 5 packet parses")
            .expect("whole");
        assert_eq!(again, p);
        rest = &rest[n..];
    }
});
