//! API errors: each station error answered with its own status, always as JSON:
//! `{"error": "<what went wrong, one line>", "reason": "<machine-readable code>", ...}`,
//! with more fields where a client can act on them (`renewable_after`, `retry_after`).
//!
//! | station error                                   | status                      | reason |
//! |-------------------------------------------------|-----------------------------|--------|
//! | bad input, a refused CSR, an unencodable bundle | 400 Bad Request             | `bad_request`, `bad_csr` |
//! | no client certificate                           | 401 Unauthorized            | `unauthenticated` |
//! | a refused caller, a certificate not live        | 403 Forbidden               | `forbidden`, `certificate_not_live`, `not_the_devices_certificate` |
//! | an unknown device (or another tenant's)         | 404 Not Found               | `not_found` |
//! | a duplicate device, a registry state conflict   | 409 Conflict                | `device_exists`, `conflict` |
//! | a renewal outside the window, from an older certificate     | 409 Conflict    | `not_yet_renewable`, `superseded_certificate` |
//! | a body over the limit                           | 413 Payload Too Large       | `payload_too_large` |
//! | too many renewals                               | 429 with `Retry-After`      | `renewal_rate_limited` |
//! | a lock another process holds                    | 503 with `Retry-After`      | `busy` |
//! | an expired issuing CA                           | 503 Service Unavailable     | `ca_expired` |
//! | anything else (I/O, database, TLS setup, …)     | 500, logged                 | `internal` |

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::{Error, Forbidden, RenewalRefused};

/// Seconds a client is asked to wait when the station is busy (`Retry-After`).
pub const RETRY_AFTER_SECS: u32 = 2;

/// An API error: a status, a machine-readable reason and a one-line message, sent as
/// `{"error": "...", "reason": "...", ...details}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: &'static str,
    pub(super) message: String,
    /// Seconds for `Retry-After`, when trying again later can succeed.
    retry_after: Option<u32>,
    /// More fields for the body (e.g. `renewable_after`); a `Vec` keeps the error small.
    details: Vec<(String, serde_json::Value)>,
}

/// The reason code of a status when nothing more specific applies.
fn generic_reason(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "internal",
    }
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            reason: generic_reason(status),
            message: message.into(),
            retry_after: None,
            details: Vec::new(),
        }
    }

    pub(super) fn internal(message: String) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable reason (`not_found`, `not_yet_renewable`, …).
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    fn with_reason(mut self, reason: &'static str) -> ApiError {
        self.reason = reason;
        self
    }

    fn with_detail(mut self, key: &str, value: serde_json::Value) -> ApiError {
        self.details.push((key.to_owned(), value));
        self
    }

    /// `key` as RFC 3339 and `key_unix` as Unix seconds.
    fn with_time(self, key: &str, unix: i64) -> ApiError {
        let text = time::OffsetDateTime::from_unix_timestamp(unix)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .map_or(serde_json::Value::Null, serde_json::Value::String);
        self.with_detail(key, text)
            .with_detail(&format!("{key}_unix"), unix.into())
    }
}

/// The status a station error is answered with.
fn status_of(e: &Error) -> StatusCode {
    match e {
        Error::InvalidInput { .. }
        | Error::Csr { .. }
        | Error::Bundle { .. }
        | Error::BundleFile { .. }
        | Error::NoPrivateKey { .. } => StatusCode::BAD_REQUEST,
        Error::Forbidden(_) => StatusCode::FORBIDDEN,
        Error::UnknownDevice(_) => StatusCode::NOT_FOUND,
        Error::DuplicateDevice(_) | Error::Conflict(_) => StatusCode::CONFLICT,
        Error::RenewalRefused(RenewalRefused::RateLimited { .. }) => StatusCode::TOO_MANY_REQUESTS,
        Error::RenewalRefused(_) => StatusCode::CONFLICT,
        Error::Busy(_) | Error::CaExpired { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A more specific reason than the status's, and the fields a client acts on.
fn refine(api: ApiError, e: &Error) -> ApiError {
    match e {
        Error::Csr { .. } => api.with_reason("bad_csr"),
        Error::DuplicateDevice(_) => api.with_reason("device_exists"),
        Error::Busy(_) => api.with_reason("busy"),
        Error::CaExpired { .. } => api.with_reason("ca_expired"),
        Error::Forbidden(Forbidden::CertificateNotLive { .. }) => {
            api.with_reason("certificate_not_live")
        }
        Error::Forbidden(Forbidden::NotTheDevicesCertificate { .. }) => {
            api.with_reason("not_the_devices_certificate")
        }
        Error::RenewalRefused(RenewalRefused::NotYetRenewable {
            renewable_after, ..
        }) => api
            .with_reason("not_yet_renewable")
            .with_time("renewable_after", *renewable_after),
        Error::RenewalRefused(RenewalRefused::RateLimited { retry_after, .. }) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let secs = u32::try_from(retry_after.saturating_sub(now).max(1)).unwrap_or(u32::MAX);
            ApiError {
                retry_after: Some(secs),
                ..api.with_reason("renewal_rate_limited")
            }
            .with_time("retry_after", *retry_after)
        }
        Error::RenewalRefused(RenewalRefused::Superseded { .. }) => {
            api.with_reason("superseded_certificate")
        }
        _ => api,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = status_of(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        let retry_after = matches!(e, Error::Busy(_)).then_some(RETRY_AFTER_SECS);
        let api = ApiError {
            retry_after,
            ..ApiError::new(status, e.to_string())
        };
        refine(api, &e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.message.into());
        body.insert("reason".into(), self.reason.into());
        body.extend(self.details);
        let body = Json(serde_json::Value::Object(body));
        match self.retry_after {
            Some(secs) => {
                (self.status, [(header::RETRY_AFTER, secs.to_string())], body).into_response()
            }
            None => (self.status, body).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Busy, Conflict, CsrError};

    #[test]
    fn each_kind_of_error_gets_its_own_status() {
        let cases: Vec<(Error, StatusCode)> = vec![
            (CsrError::NotP256.into(), StatusCode::BAD_REQUEST),
            (
                Error::InvalidInput {
                    field: "reason",
                    message: "no".into(),
                },
                StatusCode::BAD_REQUEST,
            ),
            (
                Forbidden::NotTheDevicesCertificate {
                    device_id: "d".into(),
                    serial_hex: "01".into(),
                }
                .into(),
                StatusCode::FORBIDDEN,
            ),
            (Error::UnknownDevice("d".into()), StatusCode::NOT_FOUND),
            (Error::DuplicateDevice("d".into()), StatusCode::CONFLICT),
            (
                Conflict::NothingToRevoke {
                    device_id: "d".into(),
                }
                .into(),
                StatusCode::CONFLICT,
            ),
            (
                Busy::Station { dir: "s".into() }.into(),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                RenewalRefused::NotYetRenewable {
                    device_id: "d".into(),
                    serial_hex: "01".into(),
                    not_after: 2,
                    renewable_after: 1,
                }
                .into(),
                StatusCode::CONFLICT,
            ),
            (
                RenewalRefused::RateLimited {
                    device_id: "d".into(),
                    count: 3,
                    max: 3,
                    period_secs: 60,
                    retry_after: 1,
                }
                .into(),
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (Error::NothingDelivered, StatusCode::INTERNAL_SERVER_ERROR),
        ];
        for (error, status) in cases {
            let text = error.to_string();
            assert_eq!(ApiError::from(error).status(), status, "{text}");
        }
    }

    #[test]
    fn only_a_busy_station_asks_the_client_to_retry() {
        let busy = ApiError::from(Error::from(Busy::Registry {
            path: "registry.sqlite3".into(),
        }))
        .into_response();
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            busy.headers().get(header::RETRY_AFTER).unwrap(),
            &RETRY_AFTER_SECS.to_string()
        );
        let expired = ApiError::from(Error::CaExpired {
            not_after: "yesterday".into(),
        })
        .into_response();
        assert_eq!(expired.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(expired.headers().get(header::RETRY_AFTER).is_none());
    }
}
