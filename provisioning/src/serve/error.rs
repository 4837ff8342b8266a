//! API errors: each station error answered with its own status, as `{"error": "..."}`.
//!
//! | station error                                   | status                      |
//! |-------------------------------------------------|-----------------------------|
//! | bad input, a refused CSR, an unencodable bundle | 400 Bad Request             |
//! | a refused caller                                | 403 Forbidden               |
//! | an unknown device                               | 404 Not Found               |
//! | a duplicate device, a registry state conflict   | 409 Conflict                |
//! | a lock another process holds                    | 503 with `Retry-After`      |
//! | an expired issuing CA                           | 503 Service Unavailable     |
//! | anything else (I/O, database, TLS setup, …)     | 500, logged                 |

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::Error;

/// Seconds a client is asked to wait when the station is busy (`Retry-After`).
pub const RETRY_AFTER_SECS: u32 = 2;

/// An API error: a status and a one-line message, sent as `{"error": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    pub(super) message: String,
    /// Seconds for `Retry-After`, when trying again later can succeed.
    retry_after: Option<u32>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(super) fn internal(message: String) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    pub fn status(&self) -> StatusCode {
        self.status
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
        Error::Busy(_) | Error::CaExpired { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = status_of(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        let retry_after = matches!(e, Error::Busy(_)).then_some(RETRY_AFTER_SECS);
        ApiError {
            retry_after,
            ..ApiError::new(status, e.to_string())
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
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
    use crate::error::{Busy, Conflict, CsrError, Forbidden};

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
