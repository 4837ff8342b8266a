//! Certificate rotation messages.
//!
//! Device ↔ gateway, on the device's `cert/` topics ([`crate::topic::Cert`]): the gateway
//! answers `cert/status/get` with a [`CertStatus`], which both sides handle without
//! allocating. Gateway ↔ station, over HTTPS (`POST /v1/devices/{id}/renew`): with the
//! `serde` feature, the [`RenewalRequest`] the gateway relays and the station's answer,
//! [`Issued`] or [`ApiError`].

use core::fmt;

/// The `cert/status` payload: `{"now":…,"not_after":…,"renew":true|false}`, times in Unix
/// seconds. The gateway knows the time and the device's certificate; the device has no clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CertStatus {
    /// The gateway's clock.
    pub now: i64,
    /// When the device's current certificate ends.
    pub not_after: i64,
    /// Whether the device should send a `cert/csr` now.
    pub renew: bool,
}

impl CertStatus {
    /// The status of a certificate ending at `not_after`: renew when it ends within
    /// `threshold_secs` of `now`.
    pub fn new(now: i64, not_after: i64, threshold_secs: i64) -> CertStatus {
        CertStatus {
            now,
            not_after,
            renew: not_after.saturating_sub(now) <= threshold_secs,
        }
    }

    /// Whether a `cert/status` payload asks the device to renew (what the device checks; it
    /// needs no other field).
    pub fn asks_renewal(payload: &[u8]) -> bool {
        const RENEW: &[u8] = b"\"renew\":true";
        payload.windows(RENEW.len()).any(|w| w == RENEW)
    }
}

/// The JSON payload, exactly as the gateway sends it.
impl fmt::Display for CertStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{{\"now\":{},\"not_after\":{},\"renew\":{}}}",
            self.now, self.not_after, self.renew
        )
    }
}

#[cfg(feature = "serde")]
pub use messages::{ApiError, Issued, RenewalRequest};

#[cfg(feature = "serde")]
mod messages {
    use alloc::string::String;

    use serde::{Deserialize, Serialize};

    /// The body of `POST /v1/devices/{id}/renew`: a gateway (subject OU=gateway) relays the
    /// renewal of a device it authenticated.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RenewalRequest {
        /// The device's PKCS#10 request for its new key, PEM.
        pub csr_pem: String,
        /// Serial (lowercase hex) of the certificate the device authenticated with.
        pub presented_serial: String,
    }

    /// The station's answer when it issued a certificate (a renewal, or a new device).
    /// Unknown fields are ignored, so the station may add some.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Issued {
        pub device_id: String,
        pub tenant: String,
        /// Serial of the new certificate, lowercase hex.
        pub serial: String,
        /// SHA-256 of the new certificate's DER, lowercase hex.
        pub fingerprint: String,
        /// End of validity, Unix seconds.
        pub not_after: i64,
        pub certificate_pem: String,
        pub issuing_ca_pem: String,
        /// Key injection only: the identity bundle to flash, base64 (it holds the private key).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub bundle_base64: Option<String>,
    }

    /// The station's answer when it refuses: `{"error": "…"}`, one line saying why.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ApiError {
        pub error: String,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn status_says_renew_within_the_threshold_only() {
        let day = 86_400;
        let far = CertStatus::new(1000, 1000 + 40 * day, 30 * day);
        assert_eq!(
            far.to_string(),
            r#"{"now":1000,"not_after":3457000,"renew":false}"#
        );
        assert!(!CertStatus::asks_renewal(far.to_string().as_bytes()));
        let near = CertStatus::new(1000, 1000 + 29 * day, 30 * day);
        assert!(near.renew);
        assert!(CertStatus::asks_renewal(near.to_string().as_bytes()));
        // Already expired, and extreme values: still sane, never an overflow.
        assert!(CertStatus::new(1000, 500, 0).renew);
        assert!(CertStatus::new(i64::MAX, i64::MIN, i64::MIN / 2).renew);
        assert!(!CertStatus::new(i64::MIN, i64::MAX, 0).renew);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn messages_round_trip_through_json() {
        use alloc::string::String;

        let status = CertStatus::new(1000, 2000, 5000);
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(
            json,
            status.to_string(),
            "serde and Display write the same bytes"
        );
        assert_eq!(serde_json::from_str::<CertStatus>(&json).unwrap(), status);

        let request = RenewalRequest {
            csr_pem:
                "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
                    .into(),
            presented_serial: "01ab".into(),
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            serde_json::from_str::<RenewalRequest>(&json).unwrap(),
            request
        );
        assert!(serde_json::from_str::<RenewalRequest>(
            r#"{"csr_pem":"x","presented_serial":"01","extra":1}"#
        )
        .is_err());

        let issued = Issued {
            device_id: "acme-000001".into(),
            tenant: "acme".into(),
            serial: "7f01".into(),
            fingerprint: "ab".repeat(32),
            not_after: 1_900_000_000,
            certificate_pem: "-----BEGIN CERTIFICATE-----\n".into(),
            issuing_ca_pem: "-----BEGIN CERTIFICATE-----\n".into(),
            bundle_base64: None,
        };
        let json = serde_json::to_string(&issued).unwrap();
        assert!(!json.contains("bundle_base64"));
        assert_eq!(serde_json::from_str::<Issued>(&json).unwrap(), issued);
        let with_bundle = Issued {
            bundle_base64: Some(String::from("RkxJRA==")),
            ..issued
        };
        let json = serde_json::to_string(&with_bundle).unwrap();
        assert_eq!(serde_json::from_str::<Issued>(&json).unwrap(), with_bundle);

        let refused: ApiError = serde_json::from_str(r#"{"error":"not due"}"#).unwrap();
        assert_eq!(refused.error, "not due");
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"error":"not due"}"#
        );
    }
}
