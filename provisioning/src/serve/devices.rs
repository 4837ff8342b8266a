//! An operator's view of devices: look-up and revocation, in its own tenant (OU=service) or
//! in every tenant (a fleet operator, OU=operator).

use std::sync::Arc;

use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::auth::{overseer, Peer, Scope};
use super::body::OptionalJson;
use super::error::ApiError;
use super::{Shared, SharedState};
use crate::{CertRecord, Reason};

#[derive(Debug, Serialize)]
pub(super) struct CertView {
    serial: String,
    status: &'static str,
    fingerprint: Option<String>,
    created_at: i64,
    not_after: Option<i64>,
    superseded_at: Option<i64>,
    revoked_at: Option<i64>,
    revocation_reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct DeviceView {
    device_id: String,
    tenant: String,
    /// The device's current state: its newest certificate's status.
    status: &'static str,
    certificates: Vec<CertView>,
}

fn device_view(certs: Vec<CertRecord>) -> Option<DeviceView> {
    let last = certs.last()?.clone();
    Some(DeviceView {
        device_id: last.device_id,
        tenant: last.tenant,
        status: last.status.name(),
        certificates: certs
            .into_iter()
            .map(|c| CertView {
                serial: c.serial_hex,
                status: c.status.name(),
                fingerprint: c.fingerprint_hex,
                created_at: c.created_at,
                not_after: c.not_after,
                superseded_at: c.superseded_at,
                revoked_at: c.revoked_at,
                revocation_reason: c.revocation_reason,
            })
            .collect(),
    })
}

/// The one answer for a device id that is absent and for one of another tenant: the same
/// status and body, so a tenant learns nothing about other tenants' ids.
fn not_in_tenant(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no device {id:?} in your tenant"),
    )
}

/// A device the operator covers; absent and another tenant's are [`not_in_tenant`].
async fn tenant_device(
    shared: &Arc<Shared>,
    scope: Scope<'_>,
    id: String,
) -> Result<Vec<CertRecord>, ApiError> {
    let answer = not_in_tenant(&id);
    let certs = shared.with_station(move |s| s.device_certs(&id)).await?;
    if certs.first().is_some_and(|c| scope.covers(&c.tenant)) {
        Ok(certs)
    } else {
        Err(answer)
    }
}

pub(super) async fn get_device(
    AxState(shared): SharedState,
    Extension(peer): Extension<Peer>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<DeviceView>, ApiError> {
    let (_, scope) = overseer(&peer)?;
    let certs = tenant_device(&shared, scope, id.clone()).await?;
    device_view(certs)
        .map(Json)
        .ok_or_else(|| not_in_tenant(&id))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RevokeRequest {
    reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub(super) struct RevokeResponse {
    device_id: String,
    revoked_serials: Vec<String>,
    reason: &'static str,
}

pub(super) async fn revoke_device(
    AxState(shared): SharedState,
    Extension(peer): Extension<Peer>,
    UrlPath(id): UrlPath<String>,
    body: Result<OptionalJson<RevokeRequest>, ApiError>,
) -> Result<Json<RevokeResponse>, ApiError> {
    let (by, scope) = overseer(&peer)?;
    let OptionalJson(body) = body?;
    let reason = body
        .and_then(|b| b.reason)
        .map_or(Ok(Reason::Unspecified), |r| Reason::parse(&r))?;
    tenant_device(&shared, scope, id.clone()).await?;
    tracing::info!("{by} revokes {id} ({})", reason.name());
    let revoked = shared
        .with_station(move |s| s.revoke_as(&id, reason, Some(&by)))
        .await?;
    Ok(Json(RevokeResponse {
        device_id: revoked
            .records
            .first()
            .map(|r| r.device_id.clone())
            .unwrap_or_default(),
        revoked_serials: revoked.records.into_iter().map(|r| r.serial_hex).collect(),
        reason: reason.name(),
    }))
}
