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
use std::string::ToString;

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
fn bad_names_are_refused_by_their_constructors() {
    let long = "x".repeat(MAX_NAME_LEN + 1);
    for bad in ["", "has space", "tenants/x", "ümlaut", "a+", "#", &long] {
        assert!(
            matches!(
                Name::device_id(bad),
                Err(BundleError::InvalidField {
                    field: Field::DeviceId,
                    ..
                })
            ),
            "device id {bad:?}"
        );
        assert!(
            matches!(
                Name::tenant(bad),
                Err(BundleError::InvalidField {
                    field: Field::Tenant,
                    ..
                })
            ),
            "tenant {bad:?}"
        );
        assert!(!valid_name(bad));
    }
    let longest = "x".repeat(MAX_NAME_LEN);
    for good in ["a", "acme-000001", "A.b_c-9", &longest] {
        assert_eq!(Name::device_id(good).map(Name::as_str), Ok(good));
        assert!(valid_name(good));
    }
    assert_eq!(
        Name::device_id("has space").map_err(|e| e.to_string()),
        Err(
            "identity bundle device id is invalid: may only contain A-Z, a-z, 0-9, '.', '_' and '-'"
                .to_string()
        )
    );
    for (host, ok) in [
        ("localhost", true),
        ("127.0.0.1", true),
        ("::1", true),
        ("gw-1.example.com", true),
        ("", false),
        ("gw example", false),
        ("gw/x", false),
    ] {
        assert_eq!(Host::new(host).is_ok(), ok, "host {host:?}");
        assert_eq!(valid_host(host), ok);
    }
    assert!(!valid_host(&"h".repeat(MAX_HOST_LEN + 1)));
    assert!(valid_host(&"h".repeat(MAX_HOST_LEN)));
}

#[test]
fn names_read_as_str() {
    let id = Name::device_id("dev-000001").unwrap();
    let host = Host::new("gw.example").unwrap();
    assert!(*id == *"dev-000001", "Name == str");
    assert!(*"dev-000001" == *id, "str == Name");
    assert_eq!(id.len(), 10, "Deref to str");
    assert_eq!(std::format!("{id}/{host:?}"), "dev-000001/\"gw.example\"");
    assert_eq!(host.as_str(), "gw.example");
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
        tenant: "a/b",
        ..sample()
    };
    assert!(matches!(
        b.emit(&mut [0u8; 512]),
        Err(BundleError::InvalidField {
            field: Field::Tenant,
            ..
        })
    ));
}

#[test]
fn bad_hosts_and_ports_are_refused_by_emit() {
    for host in ["", "gw example"] {
        let b = Bundle {
            gateway_host: host,
            ..sample()
        };
        assert!(matches!(
            b.emit(&mut [0u8; 512]),
            Err(BundleError::InvalidField {
                field: Field::GatewayHost,
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
