//! The console's station actions end to end, over real TLS: a gateway with `[console]` (a
//! fleet operator certificate from `fleet-provision operator-cert`) shows a device's
//! certificate history from the station and revokes it there through the admin route the
//! page calls; the station audits who revoked, the CRL changes, and the gateway closes the
//! device's live session and refuses it from then on. Without `[console]` the console says
//! what is missing.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleet_firmware::device::Options;
use fleet_gateway::config::Admin;
use fleet_gateway::console::ConsoleStation;
use fleet_hil::fleet::Fleet;
use fleet_provision::serve::{Options as StationOptions, Server};
use fleet_tests::{wait_for, Pki, RunningGateway, TENANT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "console-station-token-0c4e9a1b";

/// One admin request with a JSON body: (status, body as JSON).
async fn admin(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let text = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = serde_json::from_str(text).unwrap_or(serde_json::Value::String(text.into()));
    (status, json)
}

/// The gateway config of `dir`'s PKI with an admin listener (token) and an audit file.
fn gateway_config(pki: &Pki, dir: &Path) -> fleet_gateway::Config {
    let mut config = pki.gateway_config();
    config.admin = Some(Admin {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some(TOKEN.into()),
    });
    config.audit_log = Some(dir.join("gateway-audit.jsonl"));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consoles_revoke_revokes_at_the_station_and_the_gateway_closes_the_session() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 2);
    let operator = pki.station.issue_operator_cert("console").unwrap();
    let dir = pki.dir.path().to_owned();
    let mut config = gateway_config(&pki, &dir);
    let without_console = config.clone();

    // The station API, in process, with the station's CA and CRL.
    let Pki {
        dir: _keep,
        station,
    } = pki;
    let server = Server::bind(
        station,
        StationOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            hosts: vec!["localhost".into()],
            grace: time::Duration::hours(1),
            validity_days: 30,
        },
    )
    .await
    .unwrap();
    let station_addr = server.local_addr();
    let (stop_station, stopped) = tokio::sync::oneshot::channel::<()>();
    let station_task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    config.console = Some(ConsoleStation {
        station: station_addr.to_string(),
        server_name: "localhost".into(),
        client_cert: operator.cert_path.clone(),
        client_key: operator.key_path.clone(),
        station_ca: dir.join("ca/root.pem"),
    });
    let gw = RunningGateway::start(config).await;
    let admin_addr = gw.admin.unwrap();
    let fleet = Fleet::start(&bundles, Some(gw.addr), Options::default());
    wait_for("2 device sessions", Duration::from_secs(20), || {
        gw.device_sessions() == 2
    })
    .await;
    let (victim, bystander) = (&bundles[0].device_id, &bundles[1].device_id);

    // The device page offers the station; its history comes from the station.
    let (status, page) = admin(
        admin_addr,
        "GET",
        &format!("/v1/console/devices/{victim}"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["station"], station_addr.to_string().as_str());
    let history = format!("/v1/console/station/devices/{victim}");
    let (status, _) = admin(admin_addr, "GET", &history, None, "").await;
    assert_eq!(status, 401, "no data without the token");
    let (status, before) = admin(admin_addr, "GET", &history, Some(TOKEN), "").await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["status"], "active", "{before}");
    let serial = before["certificates"][0]["serial"]
        .as_str()
        .unwrap()
        .to_owned();

    // Revoke, as the page does.
    let crl = std::fs::read(dir.join("crl/issuing.crl.pem")).unwrap();
    let started = Instant::now();
    let (status, revoked) = admin(
        admin_addr,
        "POST",
        &format!("{history}/revoke"),
        Some(TOKEN),
        r#"{"reason":"keyCompromise"}"#,
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["revoked_serials"], serde_json::json!([serial]));
    assert_eq!(revoked["reason"], "keyCompromise");
    wait_for(
        "the revoked session to close",
        Duration::from_secs(5),
        || !gw.has_device(victim),
    )
    .await;
    eprintln!("console revoke → session closed in {:?}", started.elapsed());
    assert!(gw.has_device(bystander), "other devices are untouched");
    assert_ne!(
        std::fs::read(dir.join("crl/issuing.crl.pem")).unwrap(),
        crl,
        "a new CRL"
    );
    let (status, after) = admin(admin_addr, "GET", &history, Some(TOKEN), "").await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["certificates"][0]["status"], "revoked", "{after}");
    assert_eq!(
        after["certificates"][0]["revocation_reason"],
        "keyCompromise"
    );

    // The device keeps retrying and is refused.
    let connects = fleet.devices[0].connects.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!gw.has_device(victim));
    assert_eq!(
        fleet.devices[0].connects.load(Ordering::Relaxed),
        connects,
        "no new session"
    );

    // The station audited the revocation with the operator's name.
    let log = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    let record: serde_json::Value = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["kind"] == "revoke")
        .expect("a revoke record");
    assert_eq!(record["device_id"], victim.as_str());
    assert_eq!(record["by"], "console (operator)");
    fleet.stop().await;
    gw.stop().await;

    // Without [console] the console says what is needed, and asks no station.
    let gw = RunningGateway::start(without_console).await;
    let admin_addr = gw.admin.unwrap();
    let (status, page) = admin(
        admin_addr,
        "GET",
        &format!("/v1/console/devices/{bystander}"),
        Some(TOKEN),
        "",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert!(page["station"].is_null(), "{page}");
    for (method, path) in [
        ("GET", format!("/v1/console/station/devices/{bystander}")),
        (
            "POST",
            format!("/v1/console/station/devices/{bystander}/revoke"),
        ),
    ] {
        let (status, body) = admin(admin_addr, method, &path, Some(TOKEN), "").await;
        assert_eq!(status, 404, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("[console]"),
            "{body}"
        );
    }
    gw.stop().await;
    let _ = stop_station.send(());
    station_task.await.unwrap().unwrap();
}
