//! The admin HTTP API (axum), on its own listener.
//!
//! `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /v1/sessions`,
//! `POST /v1/sessions/{device}/kick`, `POST /v1/reload`, `GET /openapi.json`.
//! With a token configured, every request needs `Authorization: Bearer <token>`.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::identity::Kind;
use crate::registry::Kick;
use crate::server::Shared;

/// One live session as the API shows it.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionView {
    pub device: String,
    pub tenant: String,
    /// `device` or `service`.
    pub kind: String,
    pub serial: String,
    pub fingerprint: String,
    pub peer: String,
    /// Seconds since the Unix epoch.
    pub connected_at: u64,
    pub cert_not_after: i64,
}

#[derive(Deserialize)]
struct KickQuery {
    tenant: Option<String>,
}

/// The admin router. `token`: required bearer token, if any.
pub fn router(shared: Arc<Shared>, token: Option<String>) -> Router {
    let api = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ready\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/sessions", get(sessions))
        .route("/v1/sessions/{device}/kick", post(kick))
        .route("/v1/reload", post(reload))
        .route("/openapi.json", get(openapi))
        .merge(crate::console::api(&shared))
        .with_state(shared);
    match token {
        Some(token) => api.layer(middleware::from_fn(move |req: Request, next: Next| {
            let expected = format!("Bearer {token}");
            async move {
                let ok = req
                    .headers()
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| constant_time_eq(v.as_bytes(), expected.as_bytes()));
                if ok {
                    next.run(req).await
                } else {
                    (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response()
                }
            }
        })),
        None => api,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = shared.metrics.render(&shared.sessions.list());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn sessions(State(shared): State<Arc<Shared>>) -> Json<Vec<SessionView>> {
    let list = shared
        .sessions
        .list()
        .into_iter()
        .map(|s| SessionView {
            device: s.identity.id.clone(),
            tenant: s.identity.tenant.clone(),
            kind: match s.identity.kind {
                Kind::Device => "device".into(),
                Kind::Service => "service".into(),
            },
            serial: s.identity.serial_hex(),
            fingerprint: s.identity.fingerprint_hex(),
            peer: s.peer.to_string(),
            connected_at: s
                .connected_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            cert_not_after: s.identity.not_after,
        })
        .collect();
    Json(list)
}

async fn kick(
    State(shared): State<Arc<Shared>>,
    Path(device): Path<String>,
    Query(q): Query<KickQuery>,
) -> Response {
    let n = shared.sessions.kick_where(Kick::Admin, |s| {
        s.identity.id == device && q.tenant.as_ref().is_none_or(|t| *t == s.identity.tenant)
    });
    let status = if n == 0 {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    (status, Json(serde_json::json!({ "kicked": n }))).into_response()
}

async fn reload(State(shared): State<Arc<Shared>>) -> Response {
    match shared.reload() {
        Ok(kicked) => {
            Json(serde_json::json!({ "reloaded": true, "kicked": kicked })).into_response()
        }
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({
                "reloaded": false,
                "error": e.to_string(),
                "note": "the previous TLS state stays in force"
            })),
        )
            .into_response(),
    }
}

async fn openapi() -> Json<serde_json::Value> {
    Json(openapi_document())
}

/// The OpenAPI 3.1 description of this API (hand-written: it is small and stable).
pub fn openapi_document() -> serde_json::Value {
    use serde_json::json;
    let text = |d: &str| json!({ "description": d, "content": { "text/plain": { "schema": { "type": "string" } } } });
    let unauthorized =
        json!({ "description": "Missing or wrong bearer token (only when a token is configured)" });
    json!({
        "openapi": "3.1.0",
        "info": { "title": "fleet-gateway admin API", "version": env!("CARGO_PKG_VERSION") },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Session": {
                    "type": "object",
                    "required": ["device", "tenant", "kind", "serial", "fingerprint", "peer", "connected_at", "cert_not_after"],
                    "properties": {
                        "device": { "type": "string", "description": "Certificate CN" },
                        "tenant": { "type": "string", "description": "Certificate O" },
                        "kind": { "type": "string", "enum": ["device", "service"] },
                        "serial": { "type": "string", "description": "Certificate serial, hex" },
                        "fingerprint": { "type": "string", "description": "SHA-256 of the certificate DER, hex" },
                        "peer": { "type": "string" },
                        "connected_at": { "type": "integer", "description": "Unix seconds" },
                        "cert_not_after": { "type": "integer", "description": "Unix seconds" }
                    }
                }
            }
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/": crate::console::openapi::page(),
            "/v1/console/stats": crate::console::openapi::stats(),
            "/v1/console/sessions": crate::console::openapi::sessions(),
            "/v1/console/devices/{device}": crate::console::openapi::device(),
            "/v1/console/certificates": crate::console::openapi::certificates(),
            "/v1/console/reasons": crate::console::openapi::reasons(),
            "/v1/console/station/devices/{device}": crate::console::openapi::station_device(),
            "/v1/console/station/devices/{device}/revoke": crate::console::openapi::station_revoke(),
            "/v1/audit": crate::console::openapi::audit(),
            "/healthz": { "get": { "summary": "Liveness", "responses": { "200": text("ok"), "401": unauthorized } } },
            "/readyz": { "get": { "summary": "Readiness: listeners bound, router running", "responses": { "200": text("ready"), "401": unauthorized } } },
            "/metrics": { "get": { "summary": "Prometheus / OpenMetrics exposition", "responses": { "200": text("metrics"), "401": unauthorized } } },
            "/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI document" }, "401": unauthorized } } },
            "/v1/sessions": { "get": {
                "summary": "Live sessions",
                "responses": {
                    "200": { "description": "Sessions sorted by tenant and id", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Session" } } } } },
                    "401": unauthorized
                }
            } },
            "/v1/sessions/{device}/kick": { "post": {
                "summary": "Close the sessions of a device (it may reconnect unless revoked)",
                "parameters": [
                    { "name": "device", "in": "path", "required": true, "schema": { "type": "string" } },
                    { "name": "tenant", "in": "query", "required": false, "schema": { "type": "string" } }
                ],
                "responses": {
                    "200": { "description": "Kicked", "content": { "application/json": { "schema": { "type": "object", "properties": { "kicked": { "type": "integer" } } } } } },
                    "404": { "description": "No live session with that id" },
                    "401": unauthorized
                }
            } },
            "/v1/reload": { "post": {
                "summary": "Reload certificates, keys, client CAs and CRLs; close sessions whose certificates are now revoked",
                "responses": {
                    "200": { "description": "Reloaded", "content": { "application/json": { "schema": { "type": "object", "properties": { "reloaded": { "type": "boolean" }, "kicked": { "type": "integer" } } } } } },
                    "422": { "description": "A file was bad; the previous state stays in force" },
                    "401": unauthorized
                }
            } }
        }
    })
}
