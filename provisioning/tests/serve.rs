//! The station API over real mutual TLS: operators issue, look up and revoke in their tenant;
//! devices renew themselves; superseded certificates retire after the grace period.

mod common;

use common::api::{device_identity, new_csr_pem, service_identity, Identity, Running};
use fleet_provision::{bundle_to_pem, Busy, Error, Station};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_issue_look_up_and_revoke_within_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let st = common::station(d);
    let ops = service_identity(&st, "ops", "acme");
    let other = service_identity(&st, "ops", "globex");
    drop(st);
    let server = Running::start(d, time::Duration::hours(1)).await;

    // No certificate: only the description and the health check.
    let (status, doc) = server
        .json(None, "GET", "/openapi.json", serde_json::Value::Null)
        .await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/renew"]["post"].is_object());
    let (status, body) = server
        .json(None, "POST", "/v1/devices", serde_json::json!({}))
        .await;
    assert_eq!(status, 401, "{body}");

    // CSR flow.
    let (_, csr) = new_csr_pem();
    let (status, issued) = server
        .json(
            Some(&ops),
            "POST",
            "/v1/devices",
            serde_json::json!({ "csr_pem": csr }),
        )
        .await;
    assert_eq!(status, 201, "{issued}");
    assert_eq!(issued["device_id"], "acme-000001");
    assert!(issued["certificate_pem"]
        .as_str()
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert!(issued.get("bundle_base64").is_none());

    // Key injection returns the bundle, key inside.
    let (status, generated) = server
        .json(
            Some(&ops),
            "POST",
            "/v1/devices",
            serde_json::json!({ "generate": { "gateway_host": "gw.test" } }),
        )
        .await;
    assert_eq!(status, 201, "{generated}");
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(generated["bundle_base64"].as_str().unwrap())
        .unwrap();
    let b = fleet_protocol::bundle::Bundle::parse(&bundle).unwrap();
    assert_eq!(b.device_id, "acme-000002");
    assert!(b.private_key_der.is_some());
    let (cert, key) = bundle_to_pem(&b).unwrap();
    let device = Identity { cert, key };

    // Bad requests.
    for (body, needle) in [
        (serde_json::json!({}), "exactly one"),
        (
            serde_json::json!({ "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n" }),
            "not a PKCS#10",
        ),
        (
            serde_json::json!({ "csr_pem": csr, "colour": "blue" }),
            "unknown field",
        ),
        (
            serde_json::json!({ "csr_pem": csr, "device_id": "acme-000001" }),
            "already exists",
        ),
    ] {
        let (status, err) = server.json(Some(&ops), "POST", "/v1/devices", body).await;
        assert!(status == 400 || status == 409, "{status} {err}");
        assert!(err["error"].as_str().unwrap().contains(needle), "{err}");
    }
    let (status, _) = server
        .call(Some(&ops), "POST", "/v1/devices", b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400);

    // Look-up, tenant-scoped; devices may not use operator routes.
    let (status, view) = server
        .json(
            Some(&ops),
            "GET",
            "/v1/devices/acme-000001",
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(view["status"], "active");
    assert_eq!(view["certificates"].as_array().unwrap().len(), 1);
    // Another tenant's operator sees nothing; a device may not use operator routes.
    for (who, method, path, expected) in [
        (&other, "GET", "/v1/devices/acme-000001", 404),
        (&device, "GET", "/v1/devices/acme-000001", 403),
        (&other, "POST", "/v1/devices/acme-000002/revoke", 404),
    ] {
        let (status, body) = server
            .json(Some(who), method, path, serde_json::json!({}))
            .await;
        assert_eq!(status, expected, "{method} {path}: {body}");
    }

    // Revocation: the device is shut out of the station at once (the CRL is reloaded).
    let (status, _) = server
        .json(Some(&device), "GET", "/v1/crl", serde_json::Value::Null)
        .await;
    assert_eq!(status, 200);
    let (status, revoked) = server
        .json(
            Some(&ops),
            "POST",
            "/v1/devices/acme-000002/revoke",
            serde_json::json!({ "reason": "keyCompromise" }),
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked_serials"].as_array().unwrap().len(), 1);
    assert!(server
        .call(Some(&device), "GET", "/v1/crl", Vec::new())
        .await
        .is_err());
    let (status, again) = server
        .json(
            Some(&ops),
            "POST",
            "/v1/devices/acme-000002/revoke",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 409, "{again}");
    let (status, crl) = server
        .call(Some(&ops), "GET", "/v1/crl", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(crl.contains("BEGIN X509 CRL"));
    server.stop().await;

    let st = Station::open(d, None).unwrap();
    assert!(st.verify_audit().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_renew_themselves_and_old_certificates_retire_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = common::station(d);
    let issued = st.issue_devices(&common::request("acme", 2)).unwrap();
    let ops = service_identity(&st, "ops", "acme");
    drop(st);
    let original = device_identity(&issued[0].bundle_path);
    let neighbour = device_identity(&issued[1].bundle_path);
    let server = Running::start(d, time::Duration::hours(1)).await;

    // Renewal with a new key.
    let (key1, csr1) = new_csr_pem();
    let (status, renewed) = server
        .call(Some(&original), "POST", "/v1/renew", csr1.into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200, "{renewed}");
    let renewed: serde_json::Value = serde_json::from_str(&renewed).unwrap();
    assert_eq!(renewed["device_id"], "acme-000001");
    let first = Identity {
        cert: renewed["certificate_pem"].as_str().unwrap().to_owned(),
        key: key1.serialize_pem(),
    };

    let (key2, csr2) = new_csr_pem();
    let (status, body) = server
        .call(Some(&first), "POST", "/v1/renew", csr2.into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let second: serde_json::Value = serde_json::from_str(&body).unwrap();
    let current = Identity {
        cert: second["certificate_pem"].as_str().unwrap().to_owned(),
        key: key2.serialize_pem(),
    };
    // Two renewals old, the first certificate still connects during the grace period, but
    // it no longer renews: only the current certificate does (and the one it was renewed
    // from, once, when the answer was lost).
    let (_, csr_old) = new_csr_pem();
    let (status, body) = server
        .call(Some(&original), "POST", "/v1/renew", csr_old.into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("superseded_certificate"), "{body}");
    // Renewing with the key of the certificate presented is refused; so are operators.
    let same_key = rcgen::CertificateParams::default()
        .serialize_request(&key2)
        .unwrap()
        .pem()
        .unwrap();
    let (status, body) = server
        .call(Some(&current), "POST", "/v1/renew", same_key.into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("new key"), "{body}");
    let (_, csr) = new_csr_pem();
    let (status, _) = server
        .call(Some(&ops), "POST", "/v1/renew", csr.clone().into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 403);
    let (status, body) = server
        .call(Some(&neighbour), "POST", "/v1/renew", b"garbage".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400, "{body}");

    let (_, view) = server
        .json(
            Some(&ops),
            "GET",
            "/v1/devices/acme-000001",
            serde_json::Value::Null,
        )
        .await;
    let statuses: Vec<&str> = view["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["superseded", "superseded", "active"], "{view}");
    server.stop().await;

    // With the grace period over, both superseded certificates are revoked and shut out;
    // the current one keeps working (a third renewal within the day: the default allows 3).
    let server = Running::start(d, time::Duration::ZERO).await;
    for old in [&original, &first] {
        assert!(
            server
                .call(Some(old), "GET", "/v1/crl", Vec::new())
                .await
                .is_err(),
            "a retired certificate still connects"
        );
    }
    let (status, body) = server
        .call(Some(&current), "POST", "/v1/renew", csr.into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    server.stop().await;
    let st = Station::open(d, None).unwrap();
    let certs = st.device("acme-000001").unwrap();
    let statuses: Vec<&str> = certs.iter().map(|c| c.status.name()).collect();
    // The renewal with grace 0 also retired the certificate it replaced.
    assert_eq!(statuses, ["revoked", "revoked", "revoked", "active"]);
    assert_eq!(certs[0].revocation_reason.as_deref(), Some("superseded"));
    assert!(st.verify_audit().is_ok());
}

#[test]
fn a_second_writer_on_the_same_station_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let st = common::station(dir.path());
    let err = Station::open(dir.path(), None)
        .err()
        .expect("second open refused");
    assert!(matches!(err, Error::Busy(Busy::Station { .. })), "{err}");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(st);
    assert!(Station::open(dir.path(), None).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_relays_renewals_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = common::station(d);
    let issued = st.issue_devices(&common::request("acme", 1)).unwrap();
    let ops = service_identity(&st, "ops", "acme");
    let files = st.issue_gateway_client_cert("gw-1").unwrap();
    let gateway = Identity {
        cert: std::fs::read_to_string(files.cert_path).unwrap(),
        key: std::fs::read_to_string(files.key_path).unwrap(),
    };
    drop(st);
    let device = device_identity(&issued[0].bundle_path);
    let serial = issued[0].serial_hex.clone();
    let server = Running::start(d, time::Duration::hours(1)).await;
    let (_, csr) = new_csr_pem();
    let body = serde_json::json!({ "csr_pem": csr, "presented_serial": serial });
    for who in [&ops, &device] {
        let (status, _) = server
            .json(
                Some(who),
                "POST",
                "/v1/devices/acme-000001/renew",
                body.clone(),
            )
            .await;
        assert_eq!(status, 403, "only gateways relay");
    }
    let (status, _) = server
        .json(
            Some(&gateway),
            "GET",
            "/v1/devices/acme-000001",
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(status, 403, "a gateway cannot look devices up");
    // A serial that is not the device's is refused.
    let (status, err) = server
        .json(
            Some(&gateway),
            "POST",
            "/v1/devices/acme-000001/renew",
            serde_json::json!({ "csr_pem": csr, "presented_serial": "0badbeef" }),
        )
        .await;
    assert_eq!(status, 403, "{err}");
    let (status, renewed) = server
        .json(
            Some(&gateway),
            "POST",
            "/v1/devices/acme-000001/renew",
            body,
        )
        .await;
    assert_eq!(status, 200, "{renewed}");
    assert_eq!(renewed["device_id"], "acme-000001");
    server.stop().await;
    let st = Station::open(d, None).unwrap();
    let statuses: Vec<&str> = st
        .device("acme-000001")
        .unwrap()
        .iter()
        .map(|c| c.status.name())
        .collect();
    assert_eq!(statuses, ["superseded", "active"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_gets_its_own_status() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = common::station(d);
    st.issue_devices(&common::request("acme", 1)).unwrap();
    let ops = service_identity(&st, "ops", "acme");
    drop(st);
    let server = Running::start(d, time::Duration::hours(1)).await;
    let (_, csr) = new_csr_pem();

    // Bad request: a CSR that is not one.
    let (status, body) = server
        .json(
            Some(&ops),
            "POST",
            "/v1/devices",
            serde_json::json!({ "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n" }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // Unknown device: looked up or revoked.
    for (method, path) in [
        ("GET", "/v1/devices/acme-000404"),
        ("POST", "/v1/devices/acme-000404/revoke"),
    ] {
        let (status, body) = server
            .json(Some(&ops), method, path, serde_json::json!({}))
            .await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("acme-000404"),
            "{body}"
        );
    }
    // State conflicts: a device revoked twice, a device id taken.
    let revoke = "/v1/devices/acme-000001/revoke";
    let (status, _) = server
        .json(Some(&ops), "POST", revoke, serde_json::json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = server
        .json(Some(&ops), "POST", revoke, serde_json::json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no active certificate"),
        "{body}"
    );
    let taken = serde_json::json!({ "csr_pem": csr, "device_id": "acme-000001" });
    let (status, body) = server.json(Some(&ops), "POST", "/v1/devices", taken).await;
    assert_eq!(status, 409, "{body}");

    // Lock busy: another process holds the registry's write lock. The station answers 503
    // with Retry-After once SQLite's busy wait runs out; when the lock is gone, the same
    // request succeeds.
    let holder = rusqlite::Connection::open(d.join("registry.sqlite3")).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let request = serde_json::json!({ "csr_pem": csr })
        .to_string()
        .into_bytes();
    let (status, headers, body) = server
        .call_with_headers(Some(&ops), "POST", "/v1/devices", request.clone())
        .await
        .unwrap();
    assert_eq!(status, 503, "{body}");
    let retry: u32 = headers
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    assert!(body.contains("locked"), "{body}");
    holder.execute_batch("ROLLBACK").unwrap();
    let (status, headers, body) = server
        .call_with_headers(Some(&ops), "POST", "/v1/devices", request)
        .await
        .unwrap();
    assert_eq!(status, 201, "{body}");
    assert!(headers.get("retry-after").is_none());
    server.stop().await;
    let st = Station::open(d, None).unwrap();
    assert!(st.verify_audit().is_ok());
}
