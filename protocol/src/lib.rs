//! `fleet-protocol`: the wire formats every part of fleet shares.
//!
//! `#![no_std]`, and the codecs allocate nothing: the device links this crate into its image,
//! the gateway and the factory station into their host binaries, so each format is defined
//! exactly once.
//!
//! - [`mqtt`]: the MQTT 3.1.1 codec and the version 5 layer over it.
//! - [`bundle`]: the identity bundle the station writes and the board boots from.
//! - [`topic`]: the `tenants/{tenant}/devices/{device}/…` topic scheme.
//! - [`renewal`]: certificate rotation: the `cert/status` payload, and with the `serde`
//!   feature the station's renewal request and answer.
//! - [`limits`]: sizes the sides agree on (TLS records, MQTT packets, topics, bundles).
#![no_std]
// Network, file and user input never reach an unwrap or expect: every failure is a typed
// error (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

#[cfg(feature = "serde")]
extern crate alloc;

pub mod bundle;
pub mod limits;
pub mod mqtt;
pub mod renewal;
pub mod topic;
