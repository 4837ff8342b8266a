//! Fixtures of the MQTT conformance suite (`tests/tests/conformance.rs`): the brokers under
//! test (Debian's mosquitto as the reference, the `fleet-gateway` binary) on loopback with
//! mutual TLS, and a raw client that speaks to them packet by packet with an independent
//! codec (rumqttc's `mqttbytes`, never `fleet_protocol`'s).

pub mod broker;
pub mod packet;
pub mod wire;

pub use broker::{Broker, Kind};
pub use packet::{ConnAck, Msg, Options, Pkt, Sub, Version, Will};
pub use wire::Conn;

/// A tool the suite needs is required (fail, not skip) under CI=true or when `var` is set.
pub fn required(var: &str) -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true") || std::env::var_os(var).is_some()
}
