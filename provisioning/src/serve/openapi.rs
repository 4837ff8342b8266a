//! The API description served at `/openapi.json`.

use crate::Reason;

/// The API description served at `/openapi.json`.
pub fn openapi_document() -> serde_json::Value {
    let error = serde_json::json!({"$ref": "#/components/schemas/Error"});
    let errors = |codes: &[&str]| -> serde_json::Value {
        codes
            .iter()
            .map(|c| {
                (
                    (*c).to_owned(),
                    serde_json::json!({"description": "error", "content": {"application/json": {"schema": error}}}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let with = |mut ok: serde_json::Value, codes: &[&str]| {
        if let (Some(o), serde_json::Value::Object(e)) = (ok.as_object_mut(), errors(codes)) {
            o.extend(e);
        }
        ok
    };
    let issued = serde_json::json!({"$ref": "#/components/schemas/Issued"});
    let renewal_rules = "The station renews only the device's current certificate, or once the certificate it was renewed from when that answer was lost (409 superseded_certificate for an older one, 403 certificate_not_live for a revoked one), only once it ends within the renewal window (409 not_yet_renewable, with renewable_after), and at most so many times per device and period (429 renewal_rate_limited, with retry_after and Retry-After).";
    serde_json::json!({
        "openapi": "3.1.0",
        "info": {
            "title": "fleet-provision station API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Mutual TLS with a client certificate of the station's issuing CA (security scheme clientCertificate; there is no token). Operators: service certificates (OU=service), acting on their own tenant; fleet operators (OU=operator), look-up and revocation in every tenant. Devices: their own certificate, for POST /v1/renew only. Gateways (OU=gateway): POST /v1/devices/{id}/renew only. A device id of another tenant is answered exactly as an absent one (404). Every error is JSON (schema Error): 400 bad request, 401 no client certificate, 403 not allowed, 404 unknown device or route, 409 registry state conflict or renewal not allowed now, 413 body over 64 KiB, 415 JSON without its content type, 429 too many renewals (with Retry-After), 503 station busy (with Retry-After) or issuing CA expired."
        },
        "paths": {
            "/v1/devices": {"post": {
                "summary": "Issue a device: CSR flow (csr_pem, optional device_id) or key injection (generate)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CreateDevice"}}}},
                "responses": with(serde_json::json!({"201": {"description": "issued", "content": {"application/json": {"schema": issued}}}}), &["400", "401", "403", "409", "413", "415", "503"])
            }},
            "/v1/devices/{id}": {"get": {
                "summary": "A device and all its certificates",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": with(serde_json::json!({"200": {"description": "the device", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Device"}}}}}), &["401", "403", "404", "503"])
            }},
            "/v1/devices/{id}/revoke": {"post": {
                "summary": "Revoke a device (active and superseded certificates); writes a new CRL",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object", "properties": {"reason": {"type": "string", "enum": Reason::ALL.map(|(_, n)| n)}}}}}},
                "responses": with(serde_json::json!({"200": {"description": "revoked", "content": {"application/json": {"schema": {"type": "object", "properties": {"device_id": {"type": "string"}, "revoked_serials": {"type": "array", "items": {"type": "string"}}, "reason": {"type": "string"}}}}}}}), &["400", "401", "403", "404", "409", "413", "503"])
            }},
            "/v1/renew": {"post": {
                "summary": "A device renews itself: PKCS#10 request (PEM or DER) for a new P-256 key; the old certificate is superseded and revoked after the grace period",
                "description": renewal_rules,
                "requestBody": {"required": true, "content": {"application/pkcs10": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": with(serde_json::json!({"200": {"description": "renewed", "content": {"application/json": {"schema": issued}}}}), &["400", "401", "403", "409", "413", "429", "503"])
            }},
            "/v1/devices/{id}/renew": {"post": {
                "summary": "A gateway (OU=gateway) relays the renewal of a device it authenticated: the CSR and the serial (hex, either case) of the certificate the device connected with",
                "description": renewal_rules,
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {"csr_pem": {"type": "string"}, "presented_serial": {"type": "string"}}, "required": ["csr_pem", "presented_serial"]}}}},
                "responses": with(serde_json::json!({"200": {"description": "renewed", "content": {"application/json": {"schema": issued}}}}), &["400", "401", "403", "409", "413", "415", "429", "503"])
            }},
            "/v1/crl": {"get": {
                "summary": "The current CRL (PEM)",
                "responses": with(serde_json::json!({"200": {"description": "CRL", "content": {"application/x-pem-file": {"schema": {"type": "string"}}}}}), &["401", "503"])
            }},
            "/healthz": {"get": {"summary": "Liveness (no certificate needed)", "security": [], "responses": {"200": {"description": "ok", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document (no certificate needed)", "security": [], "responses": {"200": {"description": "the API description", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
        },
        "security": [{"clientCertificate": []}],
        "components": {
        "securitySchemes": {"clientCertificate": {"type": "mutualTLS", "description": "A certificate of the station's issuing CA, checked against the station's CRL; its subject says the role: OU=service (tenant operator, O = tenant), OU=operator (fleet operator), OU=gateway (renewal relay), otherwise a device (CN = device id)."}},
        "schemas": {
            "Error": {"type": "object", "properties": {
                "error": {"type": "string", "description": "what went wrong, one line"},
                "reason": {"type": "string", "description": "machine-readable: bad_request, bad_csr, unauthenticated, forbidden, certificate_not_live, not_the_devices_certificate, not_found, device_exists, conflict, not_yet_renewable, superseded_certificate, payload_too_large, renewal_rate_limited, busy, ca_expired, internal, ..."},
                "renewable_after": {"type": "string", "format": "date-time", "description": "not_yet_renewable: when the certificate becomes renewable"},
                "renewable_after_unix": {"type": "integer"},
                "retry_after": {"type": "string", "format": "date-time", "description": "renewal_rate_limited: when the next renewal is allowed (also in Retry-After, seconds)"},
                "retry_after_unix": {"type": "integer"}
            }, "required": ["error", "reason"]},
            "CreateDevice": {"type": "object", "properties": {
                "csr_pem": {"type": "string"},
                "device_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", "description": "CSR flow only: an id in the operator's tenant's namespace, {tenant}-{suffix} with no '-' in the suffix (else 403); default: the tenant's next id, {tenant}-000001, ..."},
                "generate": {"type": "object", "properties": {"gateway_host": {"type": "string"}, "gateway_port": {"type": "integer"}}, "required": ["gateway_host"]}
            }},
            "Issued": {"type": "object", "properties": {
                "device_id": {"type": "string"}, "tenant": {"type": "string"}, "serial": {"type": "string"},
                "fingerprint": {"type": "string"}, "not_after": {"type": "integer", "description": "Unix seconds"},
                "certificate_pem": {"type": "string"}, "issuing_ca_pem": {"type": "string"},
                "bundle_base64": {"type": "string", "description": "key injection only"}
            }},
            "Device": {"type": "object", "properties": {
                "device_id": {"type": "string"}, "tenant": {"type": "string"}, "status": {"type": "string"},
                "certificates": {"type": "array", "items": {"type": "object", "properties": {
                    "serial": {"type": "string"}, "status": {"type": "string", "enum": ["reserved", "active", "superseded", "revoked", "aborted"]},
                    "fingerprint": {"type": "string"}, "created_at": {"type": "integer"}, "not_after": {"type": "integer"},
                    "superseded_at": {"type": "integer"}, "revoked_at": {"type": "integer"}, "revocation_reason": {"type": "string"}
                }}}
            }}
        }}
    })
}
