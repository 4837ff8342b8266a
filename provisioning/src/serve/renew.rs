//! Renewal: a device renews itself, or a gateway relays the renewal of a device it
//! authenticated.

use axum::extract::{Path as UrlPath, State as AxState};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;

use super::auth::Peer;
use super::body::{JsonBody, RawBody};
use super::error::ApiError;
use super::issue::{issued, Issued};
use super::SharedState;

pub(super) async fn renew(
    AxState(shared): SharedState,
    Extension(peer): Extension<Peer>,
    body: Result<RawBody, ApiError>,
) -> Result<Json<Issued>, ApiError> {
    let Peer::Device { id, serial_hex } = peer else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "renewal is for devices, authenticated with their current certificate",
        ));
    };
    let RawBody(body) = body?;
    let der = crate::pki::csr_der(&body)?;
    let validity_days = shared.options.validity_days;
    let grace = shared.options.grace;
    let policy = shared.renewal;
    let out = shared
        .with_station(move |s| {
            let c = s.renew(&id, &serial_hex, &der, validity_days, &policy)?;
            // A renewal is also a good moment to retire certificates whose grace ended.
            s.expire_superseded(grace)?;
            Ok(issued(&c, s.issuing_ca().cert_pem.clone(), None))
        })
        .await?;
    tracing::info!("{} renewed: serial {}", out.device_id, out.serial);
    Ok(Json(out))
}

/// `POST /v1/devices/{id}/renew` by a gateway, for a device connected to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RelayedRenewal {
    csr_pem: String,
    /// Serial (hex) of the certificate the device authenticated with at the gateway.
    presented_serial: String,
}

pub(super) async fn relayed_renew(
    AxState(shared): SharedState,
    Extension(peer): Extension<Peer>,
    UrlPath(id): UrlPath<String>,
    body: Result<JsonBody<RelayedRenewal>, ApiError>,
) -> Result<Json<Issued>, ApiError> {
    let Peer::Gateway { name } = peer else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only a gateway (OU=gateway) relays renewals; devices use POST /v1/renew",
        ));
    };
    let JsonBody(req) = body?;
    let der = crate::pki::csr_der(req.csr_pem.as_bytes())?;
    let validity_days = shared.options.validity_days;
    let grace = shared.options.grace;
    let policy = shared.renewal;
    let out = shared
        .with_station(move |s| {
            let c = s.renew(&id, &req.presented_serial, &der, validity_days, &policy)?;
            s.expire_superseded(grace)?;
            Ok(issued(&c, s.issuing_ca().cert_pem.clone(), None))
        })
        .await?;
    tracing::info!(
        "{} renewed through gateway {name}: serial {}",
        out.device_id,
        out.serial
    );
    Ok(Json(out))
}
