//! Certificate rotation without a device clock: the gateway knows the time and the device's
//! certificate, so it tells the device when to renew and relays its request to the station.
//!
//! Topic protocol, all under the device's own `tenants/{tenant}/devices/{device}/cert/`:
//!
//! | topic | direction | payload |
//! |---|---|---|
//! | `status/get` | device → gateway | empty: "how is my certificate?" |
//! | `status` | gateway → device | `{"now":…,"not_after":…,"renew":true\|false}` (Unix seconds, [`CertStatus`]) |
//! | `csr` | device → gateway | PKCS#10 request (DER) for a new P-256 key |
//! | `new` | gateway → device | the new certificate (DER) |
//! | `error` | gateway → device | one line of text: why there is no new certificate |
//!
//! `status/get` and `csr` are answered by the gateway and never reach the broker; `status`,
//! `new` and `error` are written to the device's connection only. The station sees the
//! request from the gateway's own client certificate (subject OU=gateway) together with the
//! serial of the certificate the device authenticated with ([`RenewalRequest`]), and applies
//! the same rules as for a device renewing itself; it answers with [`Issued`] or [`ApiError`].
//! The topics are [`fleet_protocol::topic::Cert`]'s.

use std::time::Duration;

use fleet_protocol::renewal::{ApiError, CertStatus, Issued, RenewalRequest};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::identity::Identity;
use crate::station_link::{ExchangeError, LoadError, StationAccess, StationLink};
use crate::Error;

/// Why the station gave no new certificate. Per connection, like a [`crate::Refusal`]: the
/// gateway logs it and sends its text to the device on `cert/error`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalError {
    #[error("the station did not answer in time")]
    Timeout,
    #[error("renewal request: {0}")]
    Encode(serde_json::Error),
    #[error(transparent)]
    Link(#[from] ExchangeError),
    #[error("station answered {status} with non-JSON: {source}")]
    NotJson {
        status: u16,
        source: serde_json::Error,
    },
    #[error("station refused ({status}): {reason}")]
    Refused { status: u16, reason: String },
    /// A success status without the fields of an issued certificate.
    #[error("station: unexpected answer: {0}")]
    Unexpected(serde_json::Error),
    #[error("station: certificate PEM: {0}")]
    CertificatePem(rustls::pki_types::pem::Error),
}

/// `[renewal]` in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The station and the gateway's client identity (subject OU=gateway).
    pub access: StationAccess,
    /// Devices whose certificate ends within this are told to renew.
    pub threshold: Duration,
}

/// Largest answer read from the station.
const MAX_RESPONSE: usize = 64 * 1024;
const TIMEOUT: Duration = Duration::from_secs(15);

/// Talks to the station for the gateway.
pub struct RenewalClient {
    link: StationLink,
}

impl RenewalClient {
    pub fn load(r: &Renewal) -> Result<RenewalClient, Error> {
        let link = StationLink::load(&r.access, MAX_RESPONSE).map_err(|e| match e {
            LoadError::Read { path, source } => Error::Read { path, source },
            LoadError::Field { field, detail } => Error::Renewal {
                what: field,
                detail,
            },
        })?;
        Ok(RenewalClient { link })
    }

    /// Asks the station for a new certificate; returns its DER, or why not.
    pub async fn renew(&self, who: &Identity, csr_der: &[u8]) -> Result<Vec<u8>, RenewalError> {
        tokio::time::timeout(TIMEOUT, self.renew_inner(who, csr_der))
            .await
            .unwrap_or(Err(RenewalError::Timeout))
    }

    async fn renew_inner(&self, who: &Identity, csr_der: &[u8]) -> Result<Vec<u8>, RenewalError> {
        let request = RenewalRequest {
            csr_pem: pem_encode("CERTIFICATE REQUEST", csr_der),
            presented_serial: fleet_host::hex(&who.serial),
        };
        let body = serde_json::to_vec(&request).map_err(RenewalError::Encode)?;
        let path = format!("/v1/devices/{}/renew", who.id);
        let (status, bytes) = self.link.exchange(hyper::Method::POST, &path, body).await?;
        let pem = answer(status, &bytes)?.certificate_pem;
        CertificateDer::from_pem_slice(pem.as_bytes())
            .map(|c| c.to_vec())
            .map_err(RenewalError::CertificatePem)
    }
}

/// The station's answer: [`Issued`] on success, else its [`ApiError`] as a refusal.
fn answer(status: u16, body: &[u8]) -> Result<Issued, RenewalError> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|source| RenewalError::NotJson { status, source })?;
    if (200..300).contains(&status) {
        return serde_json::from_value(json).map_err(RenewalError::Unexpected);
    }
    let reason = serde_json::from_value::<ApiError>(json)
        .map_or_else(|_| "no reason given".to_owned(), |e| e.error);
    Err(RenewalError::Refused { status, reason })
}

/// The `cert/status` JSON.
pub fn status_payload(who: &Identity, now: i64, threshold_secs: i64) -> Vec<u8> {
    CertStatus::new(now, who.not_after, threshold_secs)
        .to_string()
        .into_bytes()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(not_after: i64) -> Identity {
        Identity {
            id: "acme-000001".into(),
            tenant: "acme".into(),
            kind: crate::identity::Kind::Device,
            serial: vec![0x01, 0xab],
            issuer: Vec::new(),
            fingerprint: [0; 32],
            not_after,
        }
    }

    #[test]
    fn station_answers_become_a_certificate_or_a_typed_refusal() {
        let issued = Issued {
            device_id: "acme-000001".into(),
            tenant: "acme".into(),
            serial: "7f".into(),
            fingerprint: "00".into(),
            not_after: 2_000_000_000,
            certificate_pem: "PEM".into(),
            issuing_ca_pem: "CA".into(),
            bundle_base64: None,
        };
        let body = serde_json::to_vec(&issued).unwrap();
        assert_eq!(answer(200, &body).unwrap(), issued);

        let refused = answer(409, br#"{"error":"not due"}"#).unwrap_err();
        assert!(
            matches!(&refused, RenewalError::Refused { status: 409, reason } if reason == "not due")
        );
        assert_eq!(refused.to_string(), "station refused (409): not due");
        assert_eq!(
            answer(500, b"{}").unwrap_err().to_string(),
            "station refused (500): no reason given"
        );
        assert!(matches!(
            answer(502, b"<html>"),
            Err(RenewalError::NotJson { status: 502, .. })
        ));
        assert!(matches!(
            answer(200, br#"{"error":"x"}"#),
            Err(RenewalError::Unexpected(_))
        ));
        assert_eq!(
            RenewalError::Timeout.to_string(),
            "the station did not answer in time"
        );
    }

    #[test]
    fn status_says_renew_within_the_threshold_only() {
        let day = 86_400;
        assert_eq!(
            status_payload(&identity(1000 + 40 * day), 1000, 30 * day),
            br#"{"now":1000,"not_after":3457000,"renew":false}"#
        );
        assert!(
            String::from_utf8(status_payload(&identity(1000 + 29 * day), 1000, 30 * day))
                .unwrap()
                .ends_with("\"renew\":true}")
        );
        // Already expired (the gateway would not have let it in, but the answer is still sane).
        assert!(String::from_utf8(status_payload(&identity(500), 1000, 0))
            .unwrap()
            .ends_with("\"renew\":true}"));
    }
}
