//! OpenAPI path items of the console's routes, placed in the admin API's `/openapi.json`.

use serde_json::{json, Value};

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn error_schema() -> Value {
    json!({ "type": "object", "properties": { "error": { "type": "string" } } })
}

fn session_row() -> Value {
    json!({
        "type": "object",
        "required": ["device", "tenant", "kind", "serial", "fingerprint", "peer", "connected_at", "cert_not_after", "protocol"],
        "properties": {
            "device": { "type": "string", "description": "Certificate CN" },
            "tenant": { "type": "string", "description": "Certificate O" },
            "kind": { "type": "string", "enum": ["device", "service"] },
            "serial": { "type": "string", "description": "Certificate serial, hex" },
            "fingerprint": { "type": "string", "description": "SHA-256 of the certificate DER, hex" },
            "peer": { "type": "string" },
            "connected_at": { "type": "integer", "description": "Unix seconds" },
            "cert_not_after": { "type": "integer", "description": "Unix seconds" },
            "protocol": { "type": "string", "enum": ["3.1.1", "5"], "description": "MQTT version of the session" },
            "gateway": { "type": "string", "description": "In a cluster: the gateway holding the session ([cluster] name)" }
        }
    })
}

fn feed() -> Value {
    json!({
        "type": "object",
        "properties": {
            "file": { "type": "boolean", "description": "Whether the gateway writes an audit file (audit_log)" },
            "records": { "type": "array", "description": "Newest first", "items": {
                "type": "object",
                "required": ["ts", "event", "reason"],
                "properties": {
                    "ts": { "type": "number", "description": "Unix seconds" },
                    "event": { "type": "string", "enum": ["refused", "ended", "suppressed"] },
                    "reason": { "type": "string" },
                    "explanation": { "type": ["string", "null"], "description": "The reason in plain words (the words `fleet-gateway doctor` uses)" },
                    "detail": { "type": "string" },
                    "peer": { "type": "string" },
                    "device": { "type": "string" },
                    "tenant": { "type": "string" },
                    "serial": { "type": "string" },
                    "fingerprint": { "type": "string" },
                    "suppressed": { "type": "object", "additionalProperties": { "type": "integer" } }
                }
            } },
            "scanned_bytes": { "type": "integer" },
            "scanned_lines": { "type": "integer" },
            "unreadable_lines": { "type": "integer" },
            "complete": { "type": "boolean", "description": "Whether the whole file was read; if not, older records may match too" }
        }
    })
}

fn query(name: &str, kind: &str, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false, "schema": { "type": kind }, "description": description })
}

fn device_param() -> Value {
    json!({ "name": "device", "in": "path", "required": true, "schema": { "type": "string" } })
}

/// `/` and its two assets.
pub fn page() -> Value {
    json!({ "get": {
        "summary": "The fleet console (HTML; with /console.css and /console.js). Needs no token: it holds no data and asks for the token",
        "security": [],
        "responses": { "200": { "description": "The page", "content": { "text/html": { "schema": { "type": "string" } } } } }
    } })
}

pub fn stats() -> Value {
    let counts = json!({ "type": "object", "additionalProperties": { "type": "integer" } });
    json!({ "get": {
        "summary": "Fleet now: totals and per-second rates, sampled every second from the gateway's counters",
        "parameters": [query("since", "number", "Only rates after this moment (Unix seconds)")],
        "responses": {
            "200": ok("Totals since start and the last five minutes of rates", json!({
                "type": "object",
                "properties": {
                    "now": { "type": "number" },
                    "sessions": counts, "sessions_total": { "type": "integer" },
                    "connects_total": { "type": "integer" }, "refused_total": { "type": "integer" },
                    "refused_by_reason": counts,
                    "messages_in_total": { "type": "integer" }, "messages_out_total": { "type": "integer" },
                    "points": { "type": "array", "items": { "type": "object", "properties": {
                        "t": { "type": "number" }, "connects": { "type": "number" }, "refusals": { "type": "number" },
                        "messages_in": { "type": "number" }, "messages_out": { "type": "number" }, "sessions": counts
                    } } },
                    "cluster": { "type": "object", "description": "In a cluster: this gateway's name and the live sessions of every gateway alive (the other figures are this gateway's)", "properties": {
                        "gateway": { "type": "string" }, "sessions": counts, "sessions_total": { "type": "integer" }
                    } }
                }
            }))
        }
    } })
}

pub fn sessions() -> Value {
    json!({ "get": {
        "summary": "Live sessions, searched and one page at a time, sorted by tenant and id (in a cluster: every gateway's, each with the gateway holding it)",
        "parameters": [
            query("q", "string", "Part of the device id, tenant, serial, fingerprint, peer or gateway (any case)"),
            query("tenant", "string", "Only this tenant"),
            query("offset", "integer", "Rows to skip"),
            query("limit", "integer", "Rows per page (default 25, at most 500)"),
            { "name": "scope", "in": "query", "required": false, "schema": { "type": "string", "enum": ["local", "cluster"] },
              "description": "local: this gateway's sessions only; cluster (the default in a cluster): every gateway's" }
        ],
        "responses": {
            "200": ok("One page", json!({ "type": "object", "properties": {
                "total": { "type": "integer" }, "offset": { "type": "integer" }, "limit": { "type": "integer" },
                "items": { "type": "array", "items": session_row() },
                "gateway": { "type": "string", "description": "In a cluster: this gateway's name" }
            } })),
            "400": ok("Unknown scope", error_schema()),
            "404": ok("scope=cluster on a gateway without [cluster]", error_schema())
        }
    } })
}

pub fn device() -> Value {
    json!({ "get": {
        "summary": "A device: its live sessions and the newest audit records that name it",
        "parameters": [device_param(), query("tenant", "string", "Only this tenant")],
        "responses": {
            "200": ok("The device", json!({ "type": "object", "properties": {
                "device": { "type": "string" },
                "sessions": { "type": "array", "items": session_row(), "description": "In a cluster: on whichever gateway holds them" },
                "gateway": { "type": "string", "description": "In a cluster: this gateway's name" },
                "audit": feed(),
                "station": { "type": ["string", "null"], "description": "Station address, when certificate history and revocation are available" },
                "station_error": { "type": ["string", "null"] }
            } })),
            "400": ok("Not a device id", error_schema())
        }
    } })
}

pub fn certificates() -> Value {
    json!({ "get": {
        "summary": "Certificates of connected clients: expiry histogram (days left) and the devices due for renewal",
        "responses": {
            "200": ok("Histogram and devices due", json!({ "type": "object", "properties": {
                "now": { "type": "integer" },
                "threshold_days": { "type": "integer" },
                "threshold_configured": { "type": "boolean", "description": "[renewal] threshold_days, else the default 30" },
                "buckets": { "type": "array", "items": { "type": "object", "properties": {
                    "from_days": { "type": ["number", "null"] }, "to_days": { "type": ["number", "null"] }, "count": { "type": "integer" }
                } } },
                "due": { "type": "array", "items": session_row() },
                "due_total": { "type": "integer" },
                "station": { "type": ["string", "null"] }
            } }))
        }
    } })
}

pub fn reasons() -> Value {
    json!({ "get": {
        "summary": "Every refusal and session-end reason in plain words (the table `fleet-gateway doctor` uses)",
        "responses": {
            "200": ok("Reasons", json!({ "type": "array", "items": { "type": "object", "properties": {
                "reason": { "type": "string" }, "text": { "type": "string" }
            } } }))
        }
    } })
}

pub fn station_device() -> Value {
    json!({ "get": {
        "summary": "The device's certificate history, from the station named in [console], asked with its fleet operator identity (GET /v1/devices/{id} there)",
        "parameters": [device_param()],
        "responses": {
            "200": ok("The station's answer as it is", json!({ "type": "object" })),
            "404": ok("No [console] station configured", error_schema()),
            "502": ok("The station refused or could not be reached (station_status: its HTTP status)", error_schema()),
            "503": ok("The station is configured but its files are unusable", error_schema())
        }
    } })
}

pub fn station_revoke() -> Value {
    json!({ "post": {
        "summary": "Revoke the device through the station named in [console], as its fleet operator (POST /v1/devices/{id}/revoke there; the station audits it with the operator's name); the new CRL reaches the gateway like any other",
        "parameters": [device_param()],
        "requestBody": { "required": false, "content": { "application/json": { "schema": {
            "type": "object", "properties": { "reason": { "type": "string", "description": "keyCompromise, cessationOfOperation, superseded, affiliationChanged, privilegeWithdrawn or unspecified" } }
        } } } },
        "responses": {
            "200": ok("The station's answer as it is", json!({ "type": "object" })),
            "400": ok("Not a device id or not a reason", error_schema()),
            "404": ok("No [console] station configured", error_schema()),
            "502": ok("The station refused or could not be reached", error_schema()),
            "503": ok("The station is configured but its files are unusable", error_schema())
        }
    } })
}

pub fn audit() -> Value {
    json!({ "get": {
        "summary": "The audit log, newest first, filtered; reads at most max_bytes from the end of the file and 200,000 lines",
        "parameters": [
            query("device", "string", "Only records naming this device"),
            query("tenant", "string", "Only records of this tenant"),
            query("reason", "string", "Only this reason (unknown_ca, revoked, expired, client_id_mismatch, …)"),
            query("event", "string", "refused, ended or suppressed"),
            query("limit", "integer", "Records returned (default 100, at most 1000)"),
            query("max_bytes", "integer", "Bytes read from the end of the file (default 4 MiB, at most 16 MiB)")
        ],
        "responses": {
            "200": ok("Matching records", feed())
        }
    } })
}
