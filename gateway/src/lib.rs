//! `fleet-gateway`: the cloud MQTT gateway.
//!
//! Every client authenticates with a certificate (mutual TLS); the certificate names the
//! session's identity, the ACL policy decides what it may publish, subscribe and receive, and
//! the gateway's own broker core ([`broker`], shared through [`hub`]) moves the messages.
//!
//! ```text
//! accept → TLS handshake (timeout) → Identity from cert → CONNECT checks (session)
//!        → hub.connect → socket ⇄ Session rules (ACL, rate) ⇄ Hub (Mutex<Broker>) ⇄ outboxes
//! ```
//!
//! Module layering: `server` (listener) → `connection` (one client) → `session` (rules),
//! `hub` (the shared broker); `state::Shared` is what they, `admin` and `console` share.

// Network, file and user input never reach an unwrap or expect: every failure is a typed
// error (tests may unwrap).
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod acl;
pub mod admin;
pub mod audit;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod console;
pub mod crl;
pub mod doctor;
mod error;
pub mod hub;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod registry;
pub mod reload;
pub mod renewal;
pub mod server;
pub mod session;
pub mod state;
pub mod station_link;
pub mod tls;

pub use config::Config;
pub use error::{ConfigError, Error, PemProblem, Problem, TlsSetup};
pub use server::Gateway;
pub use session::Refusal;
