//! Request bodies, with every refusal in the API's one JSON error shape and its own status:
//! 413 for a body over the limit, 415 for JSON without its content type, 400 for a body
//! that does not parse or has the wrong shape (axum's own rejections answer in plain text).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON body (`Content-Type: application/json`).
pub(super) struct JsonBody<T>(pub(super) T);

/// A JSON body that may be left out (empty); any content type.
pub(super) struct OptionalJson<T>(pub(super) Option<T>);

/// A body taken as it is (e.g. a PKCS#10 request, PEM or DER).
pub(super) struct RawBody(pub(super) Bytes);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| JsonBody(v))
            .map_err(|e| {
                // JSON of the wrong shape is a bad request like JSON that does not parse.
                let status = match e.status() {
                    StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
                    other => other,
                };
                ApiError::new(status, e.body_text())
            })
    }
}

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| ApiError::new(e.status(), e.body_text()))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        serde_json::from_slice(&bytes)
            .map(|v| OptionalJson(Some(v)))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not the expected JSON: {e}"),
                )
            })
    }
}
