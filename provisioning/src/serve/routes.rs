//! The routes, and the two that need no handler module of their own: the CRL and the API
//! description.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State as AxState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};

use super::auth::Peer;
use super::error::ApiError;
use super::{devices, issue, openapi, renew};
use super::{Shared, SharedState};
use crate::error::io;

/// Largest request body (a CSR is well under 1 KiB); larger ones get 413.
pub const BODY_LIMIT: usize = 64 * 1024;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/devices", post(issue::create_device))
        .route("/v1/devices/{id}", get(devices::get_device))
        .route("/v1/devices/{id}/revoke", post(devices::revoke_device))
        .route("/v1/renew", post(renew::renew))
        .route("/v1/devices/{id}/renew", post(renew::relayed_renew))
        .route("/v1/crl", get(crl))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(shared)
}

async fn crl(
    AxState(shared): SharedState,
    Extension(peer): Extension<Peer>,
) -> Result<Response, ApiError> {
    if peer == Peer::Anonymous {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a client certificate from the station's CA is required",
        ));
    }
    let pem = shared
        .with_station(|s| {
            let path = s.crl_path();
            std::fs::read(&path).map_err(io(&path))
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], pem).into_response())
}

async fn openapi_json() -> Json<serde_json::Value> {
    Json(openapi::openapi_document())
}
