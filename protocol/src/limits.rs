//! Sizes the device, the gateway and the station agree on.
//!
//! The device sizes its static buffers from these; the gateway and the station must never send
//! or write anything larger. The identity bundle's own format limits are in [`crate::bundle`]
//! ([`MAX_BODY_LEN`](crate::bundle::MAX_BODY_LEN), [`MAX_NAME_LEN`](crate::bundle::MAX_NAME_LEN),
//! [`MAX_HOST_LEN`](crate::bundle::MAX_HOST_LEN)), MQTT's in [`crate::mqtt`]
//! ([`MAX_REMAINING_LENGTH`](crate::mqtt::MAX_REMAINING_LENGTH)).

/// Largest TLS record payload the gateway sends to devices (`fleet-gateway` sets rustls'
/// `max_fragment_size` to this). TLS allows 16 KiB records; a device that had to buffer one
/// would need 12 KiB more RAM than the MQTT packets it accepts ([`DEVICE_MAX_PACKET`]) ever
/// call for.
pub const MAX_RECORD: usize = 4096;

/// Largest MQTT packet a device accepts or sends.
pub const DEVICE_MAX_PACKET: usize = 1024;

/// Longest topic a device builds: `tenants/{tenant}/devices/{device}/cert/status/get` with
/// names of [`MAX_NAME_LEN`](crate::bundle::MAX_NAME_LEN) (161 bytes).
pub const DEVICE_MAX_TOPIC: usize = crate::topic::MAX_LEN;

/// Largest telemetry payload, command reply and queued QoS 1 message of a device.
pub const DEVICE_MAX_PAYLOAD: usize = 512;

/// Largest identity bundle a device writes when it renews (its certificate, key and trust
/// anchor together).
pub const DEVICE_MAX_BUNDLE: usize = 2048;

// A whole device packet fits in one record; a renewed bundle is one the format accepts.
const _: () = assert!(DEVICE_MAX_PACKET <= MAX_RECORD);
const _: () = assert!(DEVICE_MAX_BUNDLE <= crate::bundle::HEADER_LEN + crate::bundle::MAX_BODY_LEN);
