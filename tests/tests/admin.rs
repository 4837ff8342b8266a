//! The admin API, the audit log and the metrics, against a running gateway.

use std::time::Duration;

use fleet_firmware::device::Options;
use fleet_gateway::config::Admin;
use fleet_hil::fleet::Fleet;
use fleet_hil::refusals;
use fleet_tests::{http, wait_for, Pki, RunningGateway, TENANT};

const TOKEN: &str = "t0ken-for-the-admin-tests";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_kick_reload_metrics_audit_and_openapi() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 2);
    let audit_path = pki.path("audit.jsonl");
    let mut config = pki.gateway_config();
    config.admin = Some(Admin {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some(TOKEN.into()),
    });
    config.audit_log = Some(audit_path.clone());
    let gw = RunningGateway::start(config).await;
    let admin = gw.admin.expect("admin listener");
    let fleet = Fleet::start(&bundles, Some(gw.addr), Options::default());
    wait_for("2 device sessions", Duration::from_secs(20), || {
        gw.device_sessions() == 2
    })
    .await;

    assert_eq!(
        http(admin, "GET", "/healthz", None).await.0,
        401,
        "token required"
    );
    assert_eq!(http(admin, "GET", "/healthz", Some("wrong")).await.0, 401);
    assert_eq!(
        http(admin, "GET", "/healthz", Some(TOKEN)).await,
        (200, "ok\n".into())
    );
    assert_eq!(http(admin, "GET", "/readyz", Some(TOKEN)).await.0, 200);

    let (status, body) = http(admin, "GET", "/v1/sessions", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let list: Vec<fleet_gateway::admin::SessionView> = serde_json::from_str(&body).unwrap();
    let mut ids: Vec<&str> = list.iter().map(|s| s.device.as_str()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [bundles[0].device_id.as_str(), bundles[1].device_id.as_str()]
    );
    assert!(list
        .iter()
        .all(|s| s.kind == "device" && s.tenant == TENANT && s.fingerprint.len() == 64));

    let victim = &bundles[0].device_id;
    let (status, body) = http(
        admin,
        "POST",
        &format!("/v1/sessions/{victim}/kick"),
        Some(TOKEN),
    )
    .await;
    assert_eq!((status, body.trim()), (200, "{\"kicked\":1}"));
    let (status, _) = http(admin, "POST", "/v1/sessions/nobody/kick", Some(TOKEN)).await;
    assert_eq!(status, 404);

    // Refusals land in the audit log as JSON lines.
    let anchor = refusals::load_anchor(&pki.path("ca/root.pem")).unwrap();
    let foreign = refusals::foreign_ca_device(gw.addr, "localhost", &anchor)
        .await
        .unwrap();
    assert!(!foreign.got_connack);
    wait_for("audit records", Duration::from_secs(5), || {
        std::fs::read_to_string(&audit_path)
            .is_ok_and(|t| t.contains("unknown_ca") && t.contains("admin_kick"))
    })
    .await;
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    let records: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kick = records
        .iter()
        .find(|r| r["reason"] == "admin_kick")
        .unwrap();
    assert_eq!(kick["device"], victim.as_str());
    assert_eq!(kick["serial"].as_str().unwrap().len() % 2, 0);
    assert!(kick["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let refused = records
        .iter()
        .find(|r| r["reason"] == "unknown_ca")
        .unwrap();
    assert_eq!(refused["event"], "refused");

    let (status, body) = http(admin, "POST", "/v1/reload", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, serde_json::json!({ "reloaded": true, "kicked": 0 }));

    let (status, metrics) = http(admin, "GET", "/metrics", Some(TOKEN)).await;
    assert_eq!(status, 200);
    for needle in [
        "fleet_gateway_connects_total{result=\"refused\",reason=\"unknown_ca\"} 1",
        "fleet_gateway_session_ends_total{reason=\"admin_kick\"} 1",
        "fleet_gateway_sessions{tenant=\"acme\"}",
        "fleet_gateway_cert_expiry_days_bucket{le=\"30.0\"}",
        "fleet_gateway_bytes_total{direction=\"in\"}",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }

    check_openapi_with_token(admin).await;
    fleet.stop().await;
    gw.stop().await;
}

/// The document lists every route and, with a token configured, declares bearer auth.
async fn check_openapi_with_token(admin: std::net::SocketAddr) {
    let (status, doc) = http(admin, "GET", "/openapi.json", Some(TOKEN)).await;
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/sessions",
        "/v1/sessions/{device}/kick",
        "/v1/reload",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "openapi lacks {path}");
    }
    assert_eq!(doc["security"], serde_json::json!([{ "bearer": [] }]));
    assert!(doc["paths"]["/v1/reload"]["post"]["responses"]
        .get("401")
        .is_some());
}

/// One HTTP/1.1 GET to the admin API: the Content-Type header and the body.
async fn get_with_type(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap();
    (content_type, body.to_owned())
}

/// Without a token the OpenAPI document declares no authentication, and it declares
/// `/metrics` with the content type the endpoint serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_says_what_is_served() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let mut config = pki.gateway_config();
    config.admin = Some(Admin {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: None,
    });
    let gw = RunningGateway::start(config).await;
    let admin = gw.admin.expect("admin listener");
    // One device over mutual TLS, so the metrics have something to say.
    let _device = fleet_tests::raw::connect(&gw, &pki, &bundles[0], 60).await;

    // The gateway counts the session just after its CONNACK is on the wire: wait (bounded).
    let mut tries = 0;
    let (metrics_type, metrics) = loop {
        let (t, m) = get_with_type(admin, "/metrics").await;
        tries += 1;
        if m.contains("fleet_gateway_sessions{tenant=\"acme\"} 1") || tries == 50 {
            break (t, m);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        metrics.contains("fleet_gateway_sessions{tenant=\"acme\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    let (_, doc) = get_with_type(admin, "/openapi.json").await;
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let declared = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
        .as_object()
        .unwrap();
    assert_eq!(
        declared.keys().collect::<Vec<_>>(),
        [&metrics_type],
        "/metrics serves {metrics_type}"
    );
    assert!(
        doc.get("security").is_none(),
        "no token, no bearer auth: {doc}"
    );
    assert!(doc["components"].get("securitySchemes").is_none());
    assert!(
        !doc.to_string().contains("\"401\""),
        "no 401 answers without a token"
    );
    gw.stop().await;
}
