//! What the station enforces itself, whoever calls it (found by an outside black-box test,
//! issue 21), over real mutual TLS: the renewal window and rate on both renewal routes,
//! tenant-scoped device ids, and one JSON error shape with the right status.

mod common;

use common::api::{
    device_identity, gateway_identity, new_csr_pem, service_identity, Identity, Running,
};
use fleet_provision::{BatchRequest, RenewalPolicy, Station};

fn devices(
    st: &mut Station,
    tenant: &str,
    count: u32,
    validity_days: u32,
) -> Vec<(String, String, Identity)> {
    st.issue_devices(&BatchRequest {
        validity_days,
        ..common::request(tenant, count)
    })
    .unwrap()
    .into_iter()
    .map(|d| {
        let id = device_identity(&d.bundle_path);
        (d.device_id, d.serial_hex, id)
    })
    .collect()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A device renews itself; returns (status, body as JSON).
async fn renew_direct(server: &Running, device: &Identity) -> (u16, serde_json::Value) {
    let (_, csr) = new_csr_pem();
    let (status, body) = server
        .call(Some(device), "POST", "/v1/renew", csr.into_bytes())
        .await
        .unwrap();
    (status, json(&body))
}

/// A gateway relays a renewal for `id`, presenting `serial`.
async fn renew_relayed(
    server: &Running,
    gateway: &Identity,
    id: &str,
    serial: &str,
) -> (u16, serde_json::Value) {
    let (_, csr) = new_csr_pem();
    let body = serde_json::json!({ "csr_pem": csr, "presented_serial": serial });
    server
        .json(
            Some(gateway),
            "POST",
            &format!("/v1/devices/{id}/renew"),
            body,
        )
        .await
}

fn identity_from(answer: &serde_json::Value, key: &rcgen::KeyPair) -> Identity {
    Identity {
        cert: answer["certificate_pem"].as_str().unwrap().to_owned(),
        key: key.serialize_pem(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_far_from_its_end_is_not_renewed_on_either_route() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = common::station(d);
    let far = devices(&mut st, "acme", 1, 365).remove(0);
    let gateway = gateway_identity(&st, "gw-1");
    drop(st);
    let server = Running::start(d, time::Duration::hours(1)).await;

    let (status, body) = renew_direct(&server, &far.2).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "not_yet_renewable", "{body}");
    assert!(body["error"].as_str().unwrap().contains(&far.0), "{body}");
    // Renewable 30 days (the gateway's default threshold) before the end: ~335 days from now.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let after = body["renewable_after_unix"].as_i64().unwrap();
    assert!((after - now - 335 * 86_400).abs() < 120, "{body}");
    let text = body["renewable_after"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| t.unix_timestamp() == after),
        "{body}"
    );
    let (status, body) = renew_relayed(&server, &gateway, &far.0, &far.1).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "not_yet_renewable", "{body}");
    server.stop().await;

    // Nothing was issued, and the window is configurable.
    let st = Station::open(d, None).unwrap();
    assert_eq!(st.device(&far.0).unwrap().len(), 1);
    drop(st);
    let wide = RenewalPolicy {
        window: time::Duration::days(400),
        ..RenewalPolicy::default()
    };
    let server = Running::start_with(d, time::Duration::hours(1), wide).await;
    let (status, body) = renew_relayed(&server, &gateway, &far.0, &far.1).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_current_certificate_renews_and_not_too_often_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = common::station(d);
    let near = devices(&mut st, "acme", 1, 10).remove(0);
    let gateway = gateway_identity(&st, "gw-1");
    drop(st);
    let policy = RenewalPolicy {
        max_renewals: 3,
        ..RenewalPolicy::default()
    };
    let server = Running::start_with(d, time::Duration::hours(1), policy).await;

    // First renewal (the API issues 30-day certificates: renewable again at once).
    let (status, body) = renew_direct(&server, &near.2).await;
    assert_eq!(status, 200, "{body}");
    // Its answer is lost: the device asks again with the certificate it renewed from, once.
    let (key, csr) = new_csr_pem();
    let (status, body) = server
        .call(Some(&near.2), "POST", "/v1/renew", csr.into_bytes())
        .await
        .unwrap();
    assert_eq!(status, 200, "the retry after a lost answer: {body}");
    let retried = json(&body);
    let current = identity_from(&retried, &key);
    // Two renewals old: the certificate still connects (grace period) but renews on
    // neither route.
    let (status, body) = renew_direct(&server, &near.2).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "superseded_certificate", "{body}");
    let (status, body) = renew_relayed(&server, &gateway, &near.0, &near.1).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "superseded_certificate", "{body}");

    // The current certificate renews through the gateway, with the serial in upper case.
    let serial = retried["serial"].as_str().unwrap().to_ascii_uppercase();
    let (status, third) = renew_relayed(&server, &gateway, &near.0, &serial).await;
    assert_eq!(status, 200, "{third}");
    let serial = third["serial"].as_str().unwrap().to_owned();
    // A fourth within the period: refused with when to try again, on both routes.
    let (status, body) = renew_direct(&server, &current).await;
    assert_eq!(status, 429, "the lost-answer retry counts too: {body}");
    assert_eq!(body["reason"], "renewal_rate_limited", "{body}");
    let (status, body) = renew_relayed(&server, &gateway, &near.0, &serial).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["reason"], "renewal_rate_limited", "{body}");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let retry = body["retry_after_unix"].as_i64().unwrap();
    assert!((retry - now - 86_400).abs() < 120, "{body}");
    server.stop().await;

    // The count is in the registry: a restarted station still refuses.
    let server = Running::start_with(d, time::Duration::hours(1), policy).await;
    let (_, csr) = new_csr_pem();
    let body = serde_json::json!({ "csr_pem": csr, "presented_serial": serial });
    let (status, headers, text) = server
        .call_with_headers(
            Some(&gateway),
            "POST",
            &format!("/v1/devices/{}/renew", near.0),
            body.to_string().into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(status, 429, "{text}");
    let wait: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((86_000..=86_400).contains(&wait), "{wait}");
    server.stop().await;
    let st = Station::open(d, None).unwrap();
    let statuses: Vec<&str> = st
        .device(&near.0)
        .unwrap()
        .iter()
        .map(|c| c.status.name())
        .collect();
    assert_eq!(
        statuses,
        ["superseded", "superseded", "superseded", "active"]
    );
}

/// `who` creates a device with an explicit id by the CSR flow.
async fn create_named(server: &Running, who: &Identity, id: &str) -> (u16, serde_json::Value) {
    let (_, csr) = new_csr_pem();
    let body = serde_json::json!({ "csr_pem": csr, "device_id": id });
    server.json(Some(who), "POST", "/v1/devices", body).await
}

async fn generate(server: &Running, who: &Identity) -> String {
    let body = serde_json::json!({ "generate": { "gateway_host": "gw.test" } });
    let (status, issued) = server.json(Some(who), "POST", "/v1/devices", body).await;
    assert_eq!(status, 201, "{issued}");
    issued["device_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_can_neither_see_nor_take_another_tenants_device_ids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let st = common::station(d);
    let acme = service_identity(&st, "ops", "acme");
    let other = service_identity(&st, "ops", "other");
    let acme_eu = service_identity(&st, "ops-eu", "acme-eu");
    drop(st);
    let server = Running::start(d, time::Duration::hours(1)).await;
    assert_eq!(generate(&server, &acme).await, "acme-000001");
    assert_eq!(generate(&server, &other).await, "other-000001");

    for (who, victim, name) in [(&other, "acme", "other"), (&acme, "other", "acme")] {
        let taken = format!("{victim}-000001");
        let absent = format!("{victim}-000099");
        // Look-up and revocation: one answer for "another tenant's" and "absent".
        for (method, route) in [("GET", ""), ("POST", "/revoke")] {
            let mut answers = Vec::new();
            for id in [&taken, &absent] {
                let path = format!("/v1/devices/{id}{route}");
                let (status, body) = server
                    .call(Some(who), method, &path, b"{}".to_vec())
                    .await
                    .unwrap();
                answers.push((status, body.replace(id.as_str(), "ID")));
            }
            assert_eq!(answers[0], answers[1], "{name}: {method} {route}");
            assert_eq!(answers[0].0, 404, "{name}: {answers:?}");
        }
        // Creating an id in the other tenant's namespace: refused, whether it exists or not,
        // and the other tenant's own next id does not move.
        let mut answers = Vec::new();
        for id in [&taken, &format!("{victim}-000002")] {
            let (status, body) = create_named(&server, who, id).await;
            answers.push((status, body.to_string().replace(id.as_str(), "ID")));
        }
        assert_eq!(answers[0], answers[1], "{name}");
        assert_eq!(answers[0].0, 403, "{name}: {answers:?}");
    }
    assert_eq!(generate(&server, &acme).await, "acme-000002");
    assert_eq!(generate(&server, &other).await, "other-000002");

    // A tenant whose name extends another's keeps its own namespace, both ways.
    let (status, body) = create_named(&server, &acme, "acme-eu-000001").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(generate(&server, &acme_eu).await, "acme-eu-000001");
    let (status, body) = create_named(&server, &acme_eu, "acme-000003").await;
    assert_eq!(status, 403, "{body}");
    // Within its own namespace an operator names ids freely; a taken one is a conflict.
    let (status, body) = create_named(&server, &acme, "acme-board7").await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = create_named(&server, &acme, "acme-board7").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "device_exists", "{body}");
    // Each sees its own devices.
    for (who, id) in [
        (&acme, "acme-board7"),
        (&acme_eu, "acme-eu-000001"),
        (&other, "other-000002"),
    ] {
        let (status, body) = server
            .json(
                Some(who),
                "GET",
                &format!("/v1/devices/{id}"),
                serde_json::Value::Null,
            )
            .await;
        assert_eq!(status, 200, "{id}: {body}");
    }
    server.stop().await;
}

/// The number of the CRL file in a station directory.
fn crl_number(dir: &std::path::Path) -> u64 {
    let pem = std::fs::read(dir.join("crl/issuing.crl.pem")).unwrap();
    let der = pem::parse(pem).unwrap().into_contents();
    let ca = fleet_provision::pki::CaCert::from_pem(
        &std::fs::read_to_string(dir.join("ca/issuing.pem")).unwrap(),
    )
    .unwrap();
    fleet_provision::pki::crl_info(&der, &ca.cert_der)
        .unwrap()
        .number
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_crl_never_lets_a_revoked_device_back_into_the_station() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = common::station(d);
    let issued = devices(&mut st, "acme", 2, 30);
    let ops = service_identity(&st, "ops", "acme");
    drop(st);
    let crl_file = d.join("crl/issuing.crl.pem");
    let old = std::fs::read(&crl_file).unwrap();
    let old_number = crl_number(d);
    let (revoked, bystander) = (&issued[0].2, &issued[1].2);

    let server = Running::start(d, time::Duration::hours(1)).await;
    let path = format!("/v1/devices/{}/revoke", issued[0].0);
    let (status, body) = server
        .json(Some(&ops), "POST", &path, serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(server
        .call(Some(revoked), "GET", "/v1/crl", Vec::new())
        .await
        .is_err());
    let newest = crl_number(d);
    assert!(newest > old_number);

    // While it runs: the old CRL copied over the file is refused at the next operation,
    // and a fresh one replaces it on disk.
    std::fs::write(&crl_file, &old).unwrap();
    let (status, _) = server
        .json(
            Some(&ops),
            "GET",
            &format!("/v1/devices/{}", issued[1].0),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(status, 200);
    assert!(server
        .call(Some(revoked), "GET", "/v1/crl", Vec::new())
        .await
        .is_err());
    assert!(crl_number(d) > newest);
    server.stop().await;

    // While it is down: a restarted station refuses it too (the registry knows the last
    // number it wrote).
    std::fs::write(&crl_file, &old).unwrap();
    let server = Running::start(d, time::Duration::hours(1)).await;
    assert!(
        server
            .call(Some(revoked), "GET", "/v1/crl", Vec::new())
            .await
            .is_err(),
        "a revoked device connected with an older CRL in force"
    );
    let (status, crl) = server
        .call(Some(bystander), "GET", "/v1/crl", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_ne!(crl.as_bytes(), old.as_slice());
    assert!(crl_number(d) > newest);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_one_json_shape_with_its_own_status() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = common::station(d);
    let (id, serial, device) = devices(&mut st, "acme", 1, 10).remove(0);
    let ops = service_identity(&st, "ops", "acme");
    let gateway = gateway_identity(&st, "gw-1");
    drop(st);
    let server = Running::start(d, time::Duration::hours(1)).await;
    let shape = |status: u16, text: &str, want: u16, reason: &str, what: &str| {
        assert_eq!(status, want, "{what}: {text}");
        let body = json(text);
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {text}"
        );
        assert_eq!(body["reason"], reason, "{what}: {text}");
    };

    // A body over the limit on every route that takes one: 413, JSON.
    let big = vec![b' '; 65 * 1024];
    let revoke = format!("/v1/devices/{id}/revoke");
    let relay = format!("/v1/devices/{id}/renew");
    for (who, path) in [
        (&ops, "/v1/devices"),
        (&ops, revoke.as_str()),
        (&device, "/v1/renew"),
        (&gateway, relay.as_str()),
    ] {
        let (status, text) = server
            .call(Some(who), "POST", path, big.clone())
            .await
            .unwrap();
        shape(status, &text, 413, "payload_too_large", path);
    }
    // Bodies that do not parse: 400, JSON.
    for (who, path, body) in [
        (&ops, "/v1/devices", &b"{not json"[..]),
        (&ops, revoke.as_str(), &b"{not json"[..]),
        (&device, "/v1/renew", &b"not a CSR"[..]),
        (&gateway, relay.as_str(), &b"[]"[..]),
    ] {
        let (status, text) = server
            .call(Some(who), "POST", path, body.to_vec())
            .await
            .unwrap();
        assert_eq!(status, 400, "{path}: {text}");
        assert!(json(&text)["error"].is_string(), "{path}: {text}");
    }
    // No such route, a wrong method, no certificate.
    let (status, text) = server
        .call(Some(&ops), "GET", "/v1/nothing", Vec::new())
        .await
        .unwrap();
    shape(status, &text, 404, "not_found", "unknown route");
    let (status, text) = server
        .call(Some(&ops), "DELETE", "/v1/devices", Vec::new())
        .await
        .unwrap();
    shape(status, &text, 405, "method_not_allowed", "wrong method");
    let (status, text) = server
        .call(None, "POST", "/v1/renew", Vec::new())
        .await
        .unwrap();
    assert_eq!(status, 403, "{text}");
    assert!(json(&text)["error"].is_string(), "{text}");
    let (status, text) = server
        .call(None, "GET", "/v1/crl", Vec::new())
        .await
        .unwrap();
    shape(status, &text, 401, "unauthenticated", "no certificate");

    // A serial in upper case is the same serial (it renews: a 10-day certificate).
    let upper = serial.to_ascii_uppercase();
    assert_ne!(upper, serial, "the serial has hex letters");
    let (status, body) = renew_relayed(&server, &gateway, &id, &upper).await;
    assert_eq!(status, 200, "{body}");

    // The description says what is required: client certificates, no token.
    let (_, doc) = server
        .json(None, "GET", "/openapi.json", serde_json::Value::Null)
        .await;
    assert_eq!(
        doc["components"]["securitySchemes"]["clientCertificate"]["type"],
        "mutualTLS"
    );
    assert_eq!(
        doc["security"],
        serde_json::json!([{ "clientCertificate": [] }])
    );
    assert!(!doc.to_string().contains("bearer"), "no bearer auth: {doc}");
    for open in ["/healthz", "/openapi.json"] {
        assert_eq!(
            doc["paths"][open]["get"]["security"],
            serde_json::json!([]),
            "{open}"
        );
    }
    for (path, method) in [("/v1/renew", "post"), ("/v1/devices/{id}/renew", "post")] {
        let responses = &doc["paths"][path][method]["responses"];
        for code in ["409", "413", "429"] {
            assert!(responses[code].is_object(), "{path} lacks {code}");
        }
    }
    server.stop().await;
}

#[test]
fn a_new_device_id_or_tenant_starts_with_a_letter_or_digit() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = common::station(dir.path());
    let (_, csr) = new_csr_pem();
    let der = pem::parse(csr).unwrap().into_contents();
    let req = fleet_provision::CsrRequest {
        tenant: "acme".into(),
        validity_days: 30,
    };
    for bad in [".", "..", "-rf", "a/b", "a+b", "a#b", "a b", "a\0b"] {
        let input = fleet_provision::CsrInput {
            der: der.clone(),
            device_id: Some(bad.into()),
        };
        let err = st.certify_csrs(&req, &[input], |_| {}).unwrap_err();
        assert!(
            matches!(err, fleet_provision::Error::InvalidInput { .. }),
            "{bad:?}: {err}"
        );
    }
    for bad_tenant in [".", "_x"] {
        assert!(
            st.issue_service_cert("ops", bad_tenant).is_err(),
            "{bad_tenant}"
        );
        let req = BatchRequest {
            tenant: bad_tenant.into(),
            ..common::request("acme", 1)
        };
        assert!(st.issue_devices(&req).is_err(), "{bad_tenant}");
    }
    assert!(st.devices().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_operator_looks_up_and_revokes_in_every_tenant_and_does_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = common::station(d);
    let acme = devices(&mut st, "acme", 1, 10).remove(0);
    let other = devices(&mut st, "other", 1, 10).remove(0);
    let gateway = gateway_identity(&st, "gw-1");
    let files = st.issue_operator_cert("console").unwrap();
    let console = Identity {
        cert: std::fs::read_to_string(files.cert_path).unwrap(),
        key: std::fs::read_to_string(files.key_path).unwrap(),
    };
    drop(st);
    let server = Running::start(d, time::Duration::hours(1)).await;

    for id in [&acme.0, &other.0] {
        let (status, view) = server
            .json(
                Some(&console),
                "GET",
                &format!("/v1/devices/{id}"),
                serde_json::Value::Null,
            )
            .await;
        assert_eq!(status, 200, "{view}");
        assert_eq!(view["device_id"], id.as_str());
    }
    let (status, body) = server
        .json(
            Some(&console),
            "GET",
            "/v1/devices/acme-000404",
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    // Issuing and renewing are not a fleet operator's.
    let (_, csr) = new_csr_pem();
    let (status, body) = server
        .json(
            Some(&console),
            "POST",
            "/v1/devices",
            serde_json::json!({ "csr_pem": csr }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = renew_relayed(&server, &console, &acme.0, &acme.1).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = renew_direct(&server, &console).await;
    assert_eq!(status, 403, "{body}");

    let path = format!("/v1/devices/{}/revoke", other.0);
    let body = serde_json::json!({ "reason": "keyCompromise" });
    let (status, revoked) = server.json(Some(&console), "POST", &path, body).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked_serials"], serde_json::json!([other.1]));
    assert!(server
        .call(Some(&other.2), "GET", "/v1/crl", Vec::new())
        .await
        .is_err());
    // A revoked certificate renews on no route (a gateway's CRL may lag behind).
    let (status, body) = renew_relayed(&server, &gateway, &other.0, &other.1).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "certificate_not_live", "{body}");
    server.stop().await;

    // The audit log names who revoked.
    let log = std::fs::read_to_string(d.join("audit.log")).unwrap();
    let record = log
        .lines()
        .map(json)
        .find(|r| r["kind"] == "revoke")
        .expect("a revoke record");
    assert_eq!(record["device_id"], other.0.as_str());
    assert_eq!(record["by"], "console (operator)");
    assert!(Station::open(d, None).unwrap().verify_audit().is_ok());
}
