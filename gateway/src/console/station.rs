//! The station behind the console: a device's certificate history (`GET /v1/devices/{id}`)
//! and revocation (`POST /v1/devices/{id}/revoke`), over mutual TLS with a fleet operator's
//! identity (`[console]` in the config: station address, station CA, and a client
//! certificate from `fleet-provision operator-cert`, subject OU=operator).
//!
//! Not with the renewal relay's identity (OU=gateway): the station lets a gateway relay
//! renewals only, since its key lives on an internet-facing host. The operator identity may
//! look up and revoke devices of every tenant at the station and nothing else; the station
//! audits each revocation with its name. The station decides who may do what: it answers
//! with its own status and message, which the console shows as they are.

use std::time::Duration;

use crate::station_link::{LoadError, StationAccess, StationLink};

/// `[console]` in the config: where the station is and the operator identity (subject
/// OU=operator) to use.
pub type ConsoleStation = StationAccess;

/// Largest answer read from the station.
const MAX_RESPONSE: usize = 256 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the station answered: its HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

/// Talks to the station for the console.
pub struct Station {
    link: StationLink,
}

impl Station {
    /// The station client from `[console]`; `Err` says what is unusable.
    pub fn load(r: &ConsoleStation) -> Result<Station, String> {
        let link = StationLink::load(r, MAX_RESPONSE).map_err(|e| match e {
            LoadError::Read { .. } => e.to_string(),
            LoadError::Field { field, detail } => format!("console.{field}: {detail}"),
        })?;
        Ok(Station { link })
    }

    /// `host:port` of the station.
    pub fn address(&self) -> &str {
        self.link.address()
    }

    /// `GET /v1/devices/{device}`: the device and all its certificates.
    pub async fn device(&self, device: &str) -> Result<Answer, String> {
        self.call("GET", &format!("/v1/devices/{device}"), None)
            .await
    }

    /// `POST /v1/devices/{device}/revoke` with the reason (e.g. `keyCompromise`).
    pub async fn revoke(&self, device: &str, reason: &str) -> Result<Answer, String> {
        let body = serde_json::json!({ "reason": reason }).to_string();
        self.call("POST", &format!("/v1/devices/{device}/revoke"), Some(body))
            .await
    }

    async fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<Answer, String> {
        let station = self.link.address();
        let method = hyper::Method::from_bytes(method.as_bytes())
            .map_err(|e| format!("station request: {e}"))?;
        let exchange = self
            .link
            .exchange(method, path, body.unwrap_or_default().into_bytes());
        let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| format!("the station {station} did not answer in time"))?
            .map_err(|e| e.to_string())?;
        let body = serde_json::from_slice(&bytes)
            .map_err(|e| format!("station {station} answered {status} with non-JSON: {e}"))?;
        Ok(Answer { status, body })
    }
}
