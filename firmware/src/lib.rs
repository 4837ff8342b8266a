//! `fleet-firmware`: the device side of fleet.
//!
//! `#![no_std]` and allocation-free. The `std` feature runs the same core on a host over
//! tokio; that is the "simulated device" the demo, the tests and the load generators use.
#![cfg_attr(not(feature = "std"), no_std)]
// Network, file and user input never reach an unwrap or expect: every failure is a typed
// error (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod asn1;
pub mod backoff;
#[cfg(feature = "embassy")]
pub mod board;
pub mod csr;
pub mod device;
pub mod ec;
pub mod error;
pub mod outbox;
pub mod session;
pub mod slots;
pub mod socket;
pub mod supervisor;
pub mod tls;
pub mod x509;

#[cfg(feature = "std")]
pub mod sim;

// The wire formats live in `fleet-protocol`, shared with the gateway and the station; the
// device's code names them `crate::mqtt`, `crate::bundle` and `crate::topic`.
pub use fleet_protocol::{bundle, limits, mqtt, topic};

pub use error::Error;
