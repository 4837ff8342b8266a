//! `POST /v1/devices`: an operator issues a device in its tenant, from the device's CSR or
//! by key injection.

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::auth::{operator, Peer};
use super::body::JsonBody;
use super::error::ApiError;
use super::{Shared, SharedState};
use crate::error::{io, Error};
use crate::{BatchRequest, Certified, CsrInput, CsrRequest};

/// `POST /v1/devices`: a new device in the operator's tenant.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateDevice {
    /// CSR flow: the device's PKCS#10 request, PEM.
    csr_pem: Option<String>,
    /// Device id for the CSR flow (default: the tenant's next id).
    device_id: Option<String>,
    /// Key injection: the station generates the key and returns the identity bundle.
    generate: Option<Generate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Generate {
    gateway_host: String,
    #[serde(default = "default_port")]
    gateway_port: u16,
}

fn default_port() -> u16 {
    8883
}

#[derive(Debug, Serialize)]
pub(super) struct Issued {
    pub(super) device_id: String,
    tenant: String,
    pub(super) serial: String,
    fingerprint: String,
    not_after: i64,
    certificate_pem: String,
    issuing_ca_pem: String,
    /// Key injection only: the identity bundle to flash (it holds the private key).
    #[serde(skip_serializing_if = "Option::is_none")]
    bundle_base64: Option<String>,
}

pub(super) fn issued(c: &Certified, issuing_ca_pem: String, bundle: Option<Vec<u8>>) -> Issued {
    use base64::Engine;
    Issued {
        device_id: c.device_id.clone(),
        tenant: c.tenant.clone(),
        serial: c.serial_hex.clone(),
        fingerprint: c.fingerprint_hex.clone(),
        not_after: c.not_after,
        certificate_pem: c.cert_pem(),
        issuing_ca_pem,
        bundle_base64: bundle.map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
    }
}

/// `POST /v1/devices`: the CSR flow or key injection, whichever the request asks for.
pub(super) async fn create_device(
    AxState(shared): SharedState,
    Extension(peer): Extension<Peer>,
    body: Result<JsonBody<CreateDevice>, ApiError>,
) -> Result<(StatusCode, Json<Issued>), ApiError> {
    let (_, tenant) = operator(&peer)?;
    let tenant = tenant.to_owned();
    let JsonBody(req) = body?;
    if let Some(id) = &req.device_id {
        check_namespace(&tenant, id)?;
    }
    let out = match (req.csr_pem, req.generate) {
        (Some(csr), None) => from_csr(&shared, tenant, &csr, req.device_id).await?,
        (None, Some(_)) if req.device_id.is_some() => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "device_id is for the CSR flow; generated devices get the tenant's next id",
            ))
        }
        (None, Some(generate)) => generated(&shared, tenant, generate).await?,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give exactly one of csr_pem (CSR flow) or generate (key injection)",
            ))
        }
    };
    Ok((StatusCode::CREATED, Json(out)))
}

/// An operator names only ids in its own tenant's namespace (`{tenant}-{suffix}`, see
/// [`crate::in_tenant_namespace`]), so it can neither take nor probe another tenant's ids nor
/// move another tenant's counter. The answer never depends on what the registry holds.
fn check_namespace(tenant: &str, id: &str) -> Result<(), ApiError> {
    if crate::in_tenant_namespace(tenant, id) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "device_id {id:?} is not in your tenant's namespace: it must be {tenant}-<suffix>, the suffix of letters, digits, '.' and '_'"
        ),
    ))
}

/// The CSR flow: a certificate for the device's own key.
async fn from_csr(
    shared: &Arc<Shared>,
    tenant: String,
    csr_pem: &str,
    device_id: Option<String>,
) -> Result<Issued, ApiError> {
    let der = crate::pki::csr_der(csr_pem.as_bytes())?;
    let input = CsrInput { der, device_id };
    let validity_days = shared.options.validity_days;
    shared
        .with_station(move |s| {
            let ca = s.issuing_ca().cert_pem.clone();
            let req = CsrRequest {
                tenant,
                validity_days,
            };
            let mut c = s.certify_csrs(&req, &[input], |_| {})?;
            let c = c.pop().ok_or(Error::NothingDelivered)?;
            Ok(issued(&c, ca, None))
        })
        .await
}

/// Key injection: the station generates the key; the answer carries the bundle holding it.
async fn generated(
    shared: &Arc<Shared>,
    tenant: String,
    generate: Generate,
) -> Result<Issued, ApiError> {
    let validity_days = shared.options.validity_days;
    shared
        .with_station(move |s| {
            let ca = s.issuing_ca().cert_pem.clone();
            let req = BatchRequest {
                tenant,
                count: 1,
                gateway_host: generate.gateway_host,
                gateway_port: generate.gateway_port,
                validity_days,
            };
            let d = s
                .issue_devices(&req)?
                .pop()
                .ok_or(Error::NothingDelivered)?;
            let bundle = std::fs::read(&d.bundle_path).map_err(io(&d.bundle_path))?;
            let record = s
                .device(&d.device_id)?
                .pop()
                .ok_or_else(|| Error::UnknownDevice(d.device_id.clone()))?;
            let der = s.cert_der(&d.serial_hex)?.unwrap_or_default();
            let c = Certified {
                device_id: d.device_id,
                tenant: record.tenant,
                serial_hex: d.serial_hex,
                fingerprint_hex: record.fingerprint_hex.unwrap_or_default(),
                not_after: record.not_after.unwrap_or_default(),
                cert_der: der,
            };
            Ok(issued(&c, ca, Some(bundle)))
        })
        .await
}
