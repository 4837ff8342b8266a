//! The admin HTTP API (axum), on its own listener.
//!
//! `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /v1/sessions`,
//! `POST /v1/sessions/{device}/kick`, `POST /v1/reload`, `GET /openapi.json`.
//! With a token configured, every request needs `Authorization: Bearer <token>` (and the
//! OpenAPI document says so; without one it declares no authentication).

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
use crate::state::Shared;

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

/// The Content-Type of `/metrics`: the OpenMetrics text format prometheus-client writes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The admin router. `token`: required bearer token, if any.
pub fn router(shared: Arc<Shared>, token: Option<String>) -> Router {
    let document = Arc::new(openapi_document(token.is_some()));
    let api = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/sessions", get(sessions))
        .route("/v1/sessions/{device}/kick", post(kick))
        .route("/v1/reload", post(reload))
        .route(
            "/openapi.json",
            get(move || async move { Json(document.as_ref().clone()) }),
        )
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

/// Ready unless this gateway is in a cluster that cannot take messages now (NATS
/// unreachable, the stream or buckets not set up): 503 with the reason. While the cluster's
/// CRL bucket is not watched, a line says so and which CRLs stay in force; that alone is
/// no reason for 503 (the gateway still refuses what its last verified CRLs revoke).
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let crl = shared
        .crl_source_down()
        .map_or(String::new(), |note| format!("{note}\n"));
    match shared.cluster.as_ref().map(|c| c.ready()) {
        Some(Err(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: cluster: {why}\n{crl}"),
        )
            .into_response(),
        _ => format!("ready\n{crl}").into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = shared.render_metrics(&shared.sessions.list());
    ([(header::CONTENT_TYPE, OPENMETRICS)], body).into_response()
}

#[derive(Deserialize)]
struct SessionsQuery {
    /// `cluster`: every gateway's sessions, with the gateway holding each.
    scope: Option<String>,
}

async fn sessions(State(shared): State<Arc<Shared>>, Query(q): Query<SessionsQuery>) -> Response {
    match q.scope.as_deref() {
        None | Some("local") => Json(local_sessions(&shared)).into_response(),
        Some("cluster") => match &shared.cluster {
            Some(c) => Json(c.control.sessions()).into_response(),
            None => (
                StatusCode::NOT_FOUND,
                "scope=cluster: this gateway has no [cluster]\n",
            )
                .into_response(),
        },
        Some(other) => (
            StatusCode::BAD_REQUEST,
            format!("scope={other}: use local or cluster\n"),
        )
            .into_response(),
    }
}

fn local_sessions(shared: &Shared) -> Vec<SessionView> {
    shared
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
        .collect()
}

async fn kick(
    State(shared): State<Arc<Shared>>,
    Path(device): Path<String>,
    Query(q): Query<KickQuery>,
) -> Response {
    let n = shared.sessions.kick_where(Kick::Admin, |s| {
        s.identity.id == device && q.tenant.as_ref().is_none_or(|t| *t == s.identity.tenant)
    });
    if n > 0 {
        return Json(serde_json::json!({ "kicked": n })).into_response();
    }
    // Not here: in a cluster, the gateway holding it closes it.
    match &shared.cluster {
        Some(c) => match c.kick(&device, q.tenant.as_deref()).await {
            Ok(()) => (
                StatusCode::ACCEPTED,
                Json(serde_json::json!({ "kicked": 0, "forwarded": true })),
            )
                .into_response(),
            Err(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "kicked": 0, "forwarded": false, "error": e })),
            )
                .into_response(),
        },
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "kicked": 0 })),
        )
            .into_response(),
    }
}

async fn reload(State(shared): State<Arc<Shared>>) -> Response {
    match shared.reload(crate::reload::Trigger::Admin) {
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

/// The OpenAPI 3.1 description of this API (hand-written: it is small and stable). `bearer`:
/// whether a token is configured; only then are bearer authentication and its 401 answers
/// declared.
pub fn openapi_document(bearer: bool) -> serde_json::Value {
    let mut doc = openapi_paths();
    if bearer {
        doc["components"]["securitySchemes"] =
            serde_json::json!({ "bearer": { "type": "http", "scheme": "bearer" } });
        doc["security"] = serde_json::json!([{ "bearer": [] }]);
        let unauthorized = serde_json::json!({ "description": "Missing or wrong bearer token" });
        if let Some(paths) = doc["paths"].as_object_mut() {
            for (path, operation) in paths.iter_mut() {
                let Some(operation) = operation.as_object_mut() else {
                    continue;
                };
                for op in operation.values_mut() {
                    if path == "/" {
                        // The console's page itself loads without a token; its data does not.
                        op["security"] = serde_json::json!([]);
                    } else {
                        op["responses"]["401"] = unauthorized.clone();
                    }
                }
            }
        }
    }
    doc
}

/// The document without authentication.
fn openapi_paths() -> serde_json::Value {
    use serde_json::json;
    let text = |d: &str| json!({ "description": d, "content": { "text/plain": { "schema": { "type": "string" } } } });
    let metrics = json!({ "description": "metrics", "content": { OPENMETRICS: { "schema": { "type": "string" } } } });
    json!({
        "openapi": "3.1.0",
        "info": { "title": "fleet-gateway admin API", "version": env!("CARGO_PKG_VERSION") },
        "components": {
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
            "/healthz": { "get": { "summary": "Liveness", "responses": { "200": text("ok") } } },
            "/readyz": { "get": { "summary": "Readiness: listeners bound, broker running, and in a cluster NATS reachable with the stream and buckets set up", "responses": { "200": text("ready"), "503": text("not ready: the reason") } } },
            "/metrics": { "get": { "summary": "Prometheus / OpenMetrics exposition", "responses": { "200": metrics } } },
            "/openapi.json": { "get": { "summary": "This document", "responses": { "200": { "description": "OpenAPI document" } } } },
            "/v1/sessions": { "get": {
                "summary": "Live sessions (scope=cluster: every gateway's, with the gateway holding each)",
                "parameters": [
                    { "name": "scope", "in": "query", "required": false, "schema": { "type": "string", "enum": ["local", "cluster"] } }
                ],
                "responses": {
                    "200": { "description": "Sessions sorted by tenant and id: this gateway's (Session) or the cluster's (entries with gateway, device, tenant, kind, serial, connected_at)", "content": { "application/json": { "schema": { "type": "array", "items": { "$ref": "#/components/schemas/Session" } } } } },
                    "400": { "description": "Unknown scope" },
                    "404": { "description": "scope=cluster on a gateway without [cluster]" }
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
                    "202": { "description": "Not on this gateway: sent to the other gateways of the cluster, the one holding it closes it" },
                    "404": { "description": "No live session with that id (a gateway without [cluster])" },
                    "503": { "description": "Not on this gateway, and the cluster could not be told" }
                }
            } },
            "/v1/reload": { "post": {
                "summary": "Reload certificates, keys, client CAs and CRLs; close sessions whose certificates are now revoked",
                "responses": {
                    "200": { "description": "Reloaded", "content": { "application/json": { "schema": { "type": "object", "properties": { "reloaded": { "type": "boolean" }, "kicked": { "type": "integer" } } } } } },
                    "422": { "description": "A file was bad, or a CRL older than the one in force; the previous state stays in force" }
                }
            } }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operations(doc: &serde_json::Value) -> Vec<&serde_json::Value> {
        doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|p| p.as_object().unwrap().values())
            .collect()
    }

    #[test]
    fn bearer_authentication_is_declared_only_with_a_token() {
        let open = openapi_document(false);
        assert!(open.get("security").is_none(), "{open}");
        assert!(open["components"].get("securitySchemes").is_none());
        assert!(operations(&open)
            .iter()
            .all(|op| op["responses"].get("401").is_none()));

        let guarded = openapi_document(true);
        assert_eq!(guarded["security"], serde_json::json!([{ "bearer": [] }]));
        assert_eq!(
            guarded["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let ops = operations(&guarded);
        assert_eq!(ops.len(), 16);
        let page = &guarded["paths"]["/"]["get"];
        assert_eq!(
            page["security"],
            serde_json::json!([]),
            "the page needs no token"
        );
        assert!(page["responses"].get("401").is_none());
        let data = ops.iter().filter(|op| !std::ptr::eq(**op, page));
        assert!(
            data.clone().count() == 15
                && data.clone().all(|op| op["responses"].get("401").is_some())
        );
        assert_eq!(
            guarded["components"]["schemas"],
            open["components"]["schemas"]
        );
    }

    #[test]
    fn metrics_are_declared_as_what_is_served() {
        let doc = openapi_document(false);
        let content = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
        let types: Vec<&String> = content.as_object().unwrap().keys().collect();
        assert_eq!(types, [OPENMETRICS]);
    }
}
