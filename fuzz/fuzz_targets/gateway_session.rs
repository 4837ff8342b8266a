//! The gateway's decoding path after the handshake: bytes from a client are parsed in its
//! protocol version (first input byte: odd = 5) and every packet goes through the session's
//! rules (ACL, rate limit, rotation topics, subscription merge). Nothing may panic.
#![no_main]

use std::sync::Arc;
use std::time::Instant;

use fleet_gateway::acl::Policy;
use fleet_gateway::config::Limits;
use fleet_gateway::identity::{Identity, Kind};
use fleet_gateway::session::{Inbound, Session, Version};
use fleet_protocol::mqtt::v5::Packet5;
use fleet_protocol::mqtt::Packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&version, mut rest)) = data.split_first() else {
        return;
    };
    let version = if version & 1 == 1 {
        Version::V5
    } else {
        Version::V311
    };
    let identity = Identity {
        id: "acme-000001".into(),
        tenant: "acme".into(),
        kind: Kind::Device,
        serial: vec![1],
        issuer: vec![],
        fingerprint: [0; 32],
        not_after: 0,
    };
    let now = Instant::now();
    let mut session = Session::new(
        Arc::new(identity),
        Arc::new(Policy::default()),
        &Limits::default(),
        now,
    )
    .with_renewal(std::time::Duration::from_secs(86_400))
    .speaking(version);
    loop {
        let decided = match version {
            Version::V311 => match Packet::parse(rest, 4096) {
                Ok(Some((p, n))) => (session.inbound(p, now), n),
                _ => return,
            },
            Version::V5 => match Packet5::parse(rest, 4096) {
                Ok(Some((p, n))) => (session.inbound5(p, now), n),
                _ => return,
            },
        };
        rest = &rest[decided.1..];
        if let Inbound::Close(_) = decided.0 {
            return;
        }
    }
});
