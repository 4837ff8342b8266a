//! The fleet console in a real browser: Debian's chromium driven over WebDriver
//! (chromedriver on an ephemeral port) against the `fleet-gateway` binary with simulated
//! devices. Screenshots of every page go to `target/console-screenshots/`.
//!
//! Needs `chromium` and `chromedriver` (`cargo xtask test` installs them and sets
//! FLEET_REQUIRE_BROWSER, so the test fails rather than skips there, as it does with CI=true)
//! and the gateway binary: FLEET_GATEWAY_BIN, or `target/debug/fleet-gateway` (built by
//! `cargo build -p fleet-gateway`, and by `cargo test --workspace`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use fleet_firmware::device::Options;
use fleet_hil::fleet::{DeviceBundle, Fleet};
use fleet_hil::refusals;
use fleet_provision::BatchRequest;
use fleet_tests::browser::{browser_programs, eventually, free_port, Browser, Process};
use fleet_tests::{gateway_binary, http, Pki, TENANT};

const TOKEN: &str = "console-test-token-5f1d2c7a";

/// The gateway binary on port 0 with an admin token and an audit file.
struct Gateway {
    addr: SocketAddr,
    admin: SocketAddr,
    _process: Process,
}

impl Gateway {
    fn start(bin: &Path, pki: &Pki) -> Gateway {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = pki.path("gateway.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\naudit_log = \"audit.jsonl\"\n\n[tls]\n\
                 server_cert = \"gateway/server.pem\"\nserver_key = \"gateway/server.key\"\n\
                 client_ca = [\"gateway/clients-ca.pem\"]\ncrl = [\"crl/issuing.crl.pem\"]\n\n\
                 [admin]\nlisten = \"{admin}\"\ntoken = \"{TOKEN}\"\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(pki.path("gateway.log")).unwrap())
            .spawn()
            .expect("the gateway binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let process = Process(child);
        let addr = fleet_tests::gateway_address(stdout, &pki.path("gateway.log"));
        Gateway {
            addr,
            admin,
            _process: process,
        }
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        let (status, body) = http(self.admin, "GET", path, Some(TOKEN)).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// (peer, connected_at) of each live device session.
    async fn sessions(&self) -> Vec<(String, String, u64)> {
        let list = self.get("/v1/sessions").await;
        list.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["device"].as_str().unwrap().to_owned(),
                    s["peer"].as_str().unwrap().to_owned(),
                    s["connected_at"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

/// Devices of TENANT with these (validity in days, how many).
fn issue(pki: &mut Pki, batches: &[(u32, u32)]) -> Vec<DeviceBundle> {
    batches
        .iter()
        .flat_map(|&(validity_days, count)| {
            pki.station
                .issue_devices(&BatchRequest {
                    tenant: TENANT.into(),
                    count,
                    gateway_host: "localhost".into(),
                    gateway_port: 8883,
                    validity_days,
                })
                .expect("issue devices")
        })
        .map(|d| DeviceBundle::load(&d.bundle_path).expect("bundle"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_fleet_kicks_and_explains_refusals_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let bin = gateway_binary();
    let mut pki = Pki::new();
    // Expiry histogram: 2 devices with 5 days left, 3 with 30, 1 with 200.
    let bundles = issue(&mut pki, &[(5, 2), (30, 3), (200, 1)]);
    let gw = Gateway::start(&bin, &pki);
    let fleet = Fleet::start(&bundles, Some(gw.addr), Options::default());
    eventually("6 device sessions", || async {
        gw.sessions().await.len() == 6
    })
    .await;
    let anchor = refusals::load_anchor(&pki.path("ca/root.pem")).unwrap();
    let foreign = refusals::foreign_ca_device(gw.addr, "localhost", &anchor)
        .await
        .unwrap();
    assert!(!foreign.got_connack, "{foreign}");

    no_data_without_the_token(&gw).await;
    let b = Browser::open(&chromium, &chromedriver, gw.admin).await;
    the_page_asks_for_the_token_and_refuses_a_wrong_one(&b).await;
    let (victim, victim_index) =
        devices_are_listed_searched_and_kicked(&b, &gw, &bundles, &fleet).await;
    fleet_charts_render(&b).await;
    the_expiry_chart_has_the_right_counts(&b).await;
    refusals_explain_the_unknown_ca_attempt(&b).await;
    the_device_page_shows_its_session_and_audit(&b, &victim).await;
    readable_at_phone_width(&b, &victim).await;
    assert!(fleet.devices[victim_index].connects.load(Ordering::Relaxed) >= 2);

    b.driver.clone().quit().await.unwrap();
    fleet.stop().await;
}

async fn no_data_without_the_token(gw: &Gateway) {
    for path in [
        "/v1/console/sessions",
        "/v1/console/stats",
        "/v1/audit",
        "/v1/console/certificates",
    ] {
        for token in [None, Some("wrong-token-wrong-token")] {
            let (status, body) = http(gw.admin, "GET", path, token).await;
            assert_eq!(status, 401, "{path} with {token:?}");
            assert!(!body.contains("acme"), "{path} leaked data: {body}");
        }
    }
    // The page itself holds no data and loads without a token.
    let (status, body) = http(gw.admin, "GET", "/", None).await;
    assert_eq!(status, 200);
    assert!(body.contains("fleet console") && !body.contains("acme"));
    for asset in ["/console.js", "/console.css"] {
        assert_eq!(http(gw.admin, "GET", asset, None).await.0, 200, "{asset}");
    }
    let doc = gw.get("/openapi.json").await;
    for path in ["/v1/console/sessions", "/v1/audit", "/v1/console/stats"] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from /openapi.json"
        );
    }
}

async fn the_page_asks_for_the_token_and_refuses_a_wrong_one(b: &Browser) {
    b.goto("#/devices").await;
    b.until(
        "the token prompt",
        "!document.querySelector('#auth').hidden",
    )
    .await;
    let text = b.text().await;
    assert!(text.contains("requires an admin token"), "{text}");
    assert!(
        !text.contains("acme-"),
        "data shown without a token: {text}"
    );
    b.shot("token-missing").await;
    b.type_into("#token", "wrong-token-wrong-token").await;
    b.click("#token-form button[type=submit]").await;
    b.until(
        "the wrong-token message",
        "document.querySelector('#auth-message').textContent.includes('wrong token')",
    )
    .await;
    assert!(!b.text().await.contains("acme-"));
    b.shot("token-wrong").await;
    b.type_into("#token", TOKEN).await;
    b.click("#token-form button[type=submit]").await;
    b.until(
        "the auth box to close",
        "document.querySelector('#auth').hidden",
    )
    .await;
}

async fn devices_are_listed_searched_and_kicked(
    b: &Browser,
    gw: &Gateway,
    bundles: &[DeviceBundle],
    fleet: &Fleet,
) -> (String, usize) {
    b.until(
        "6 rows",
        "document.querySelectorAll('#sessions tbody tr').length === 6",
    )
    .await;
    let shown = b
        .js("return [...document.querySelectorAll('#sessions tbody tr')].map(r => r.dataset.device);")
        .await;
    let mut want: Vec<&str> = bundles.iter().map(|d| d.device_id.as_str()).collect();
    want.sort();
    assert_eq!(shown, serde_json::json!(want));
    let text = b.text().await;
    assert!(
        text.contains("3.1.1") && text.contains("6 live sessions match"),
        "{text}"
    );
    b.shot("devices").await;

    let index = 3;
    let victim = bundles[index].device_id.clone();
    b.type_into("#search", &victim).await;
    b.until(
        "the search to find one",
        &format!(
            "document.querySelectorAll('#sessions tbody tr').length === 1 && \
             document.querySelector('#sessions tbody tr').dataset.device === '{victim}'"
        ),
    )
    .await;
    b.shot("devices-search").await;

    let before = gw.sessions().await;
    let old = before.iter().find(|s| s.0 == victim).unwrap().clone();
    b.click("#sessions tbody tr button.kick").await;
    b.until(
        "the confirmation",
        "document.querySelector('#confirm').open",
    )
    .await;
    b.shot("kick-confirm").await;
    b.click("#confirm-ok").await;
    b.until(
        "the kick to be reported",
        "document.querySelector('#status').textContent.includes('Kicked')",
    )
    .await;
    // The admin API: that session is gone, the device came back on a new connection, and
    // the audit log says an operator kicked it.
    eventually("the device to reconnect", || async {
        fleet.devices[index].connects.load(Ordering::Relaxed) >= 2
            && gw
                .sessions()
                .await
                .iter()
                .any(|s| s.0 == victim && (s.1 != old.1 || s.2 != old.2))
    })
    .await;
    let audit = gw
        .get(&format!("/v1/audit?device={victim}&reason=admin_kick"))
        .await;
    assert_eq!(audit["records"].as_array().unwrap().len(), 1, "{audit}");
    (victim, index)
}

async fn fleet_charts_render(b: &Browser) {
    b.goto("#/fleet").await;
    b.until(
        "the charts",
        "document.querySelectorAll('svg.chart').length === 3 && \
         document.querySelector('#sessions-total')",
    )
    .await;
    // Rates need two samples; wait for a polyline with points.
    b.until(
        "chart lines",
        "[...document.querySelectorAll('polyline')].some(p => p.getAttribute('points').split(' ').length > 2)",
    )
    .await;
    // Sampled once a second and redrawn every two: the kicked device is back by now.
    b.until(
        "6 sessions online",
        "document.querySelector('#sessions-total').textContent === '6'",
    )
    .await;
    let text = b.text().await;
    assert!(
        text.contains("1 refused"),
        "the foreign-CA refusal is counted: {text}"
    );
    b.shot("fleet").await;
}

async fn the_expiry_chart_has_the_right_counts(b: &Browser) {
    b.goto("#/certificates").await;
    b.until(
        "the bars",
        "document.querySelectorAll('rect.bar').length === 8",
    )
    .await;
    let counts = b
        .js("return Object.fromEntries([...document.querySelectorAll('rect.bar')].map(r => [r.dataset.bucket, Number(r.dataset.count)]));")
        .await;
    assert_eq!(
        counts,
        serde_json::json!({
            "≤ 1": 0, "1–7": 2, "7–14": 0, "14–30": 3, "30–90": 0, "90–180": 0, "180–365": 1, "> 365": 0
        })
    );
    // Due within the default 30 days: the five with 5 and 30 days left.
    b.until(
        "the due table",
        "document.querySelectorAll('#due tbody tr').length === 5",
    )
    .await;
    b.shot("certificates").await;
}

async fn refusals_explain_the_unknown_ca_attempt(b: &Browser) {
    b.goto("#/refusals").await;
    b.until(
        "the reason list",
        "document.querySelectorAll('#reason option').length > 10",
    )
    .await;
    b.js("const s = document.querySelector('#reason'); s.value = 'unknown_ca'; s.dispatchEvent(new Event('change'));")
        .await;
    b.until(
        "an unknown_ca row",
        "document.querySelectorAll('#feed tbody tr').length === 1 && \
         document.querySelector('#feed tbody tr').dataset.reason === 'unknown_ca'",
    )
    .await;
    let row = b
        .js("return document.querySelector('#feed tbody tr').innerText;")
        .await;
    let words = fleet_gateway::console::explain::explain("unknown_ca").unwrap();
    assert!(row.as_str().unwrap().contains(words), "{row}");
    b.shot("refusals").await;
}

async fn the_device_page_shows_its_session_and_audit(b: &Browser, victim: &str) {
    b.goto(&format!("#/device/{TENANT}/{victim}")).await;
    b.until(
        "the device's audit",
        "document.querySelector('#device-audit tbody tr')",
    )
    .await;
    let text = b.text().await;
    for needed in [
        "MQTT version",
        "3.1.1",
        "admin_kick",
        "an operator closed the session",
        "No station is configured",
    ] {
        assert!(text.contains(needed), "{needed:?} missing: {text}");
    }
    b.shot("device").await;
}

async fn readable_at_phone_width(b: &Browser, victim: &str) {
    b.driver.set_window_rect(0, 0, 375, 812).await.unwrap();
    let pages = [
        ("#/fleet", "svg.chart", "phone-fleet"),
        ("#/devices", "#sessions tbody tr", "phone-devices"),
        (
            &format!("#/device/{TENANT}/{victim}") as &str,
            "#device-audit",
            "phone-device",
        ),
        ("#/certificates", "rect.bar", "phone-certificates"),
        ("#/refusals", "#feed tbody tr", "phone-refusals"),
    ];
    for (hash, ready, name) in pages {
        b.goto(hash).await;
        b.until(name, &format!("document.querySelector('{ready}')"))
            .await;
        assert_eq!(
            b.js("return window.innerWidth;")
                .await
                .as_u64()
                .map(|w| w <= 400),
            Some(true)
        );
        assert!(
            !b.scrolls_sideways().await,
            "{hash} scrolls sideways at 375 px"
        );
        b.shot(name).await;
    }
    b.driver.set_window_rect(0, 0, 1280, 1000).await.unwrap();
}

/// A `[renewal]` station alone gives the console no station actions: the relay's identity
/// (OU=gateway) may only relay renewals, so certificate history and revocation need
/// `[console]` with a fleet operator certificate (tests/tests/console_station.rs), and the
/// console says so instead of asking the station with the wrong identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_relay_alone_gives_the_console_no_station_actions() {
    use fleet_hil::rotation::{Renewer, RotationRig};
    let rig = RotationRig::start(
        "127.0.0.1:0".parse().unwrap(),
        "localhost",
        300,
        30,
        Renewer::Station,
    )
    .await
    .expect("station and gateway");
    let json = |body: &str| -> serde_json::Value { serde_json::from_str(body).unwrap() };

    let (status, body) = http(rig.admin, "GET", "/v1/console/certificates", None).await;
    assert_eq!(status, 200, "{body}");
    let certs = json(&body);
    assert!(certs["station"].is_null(), "{body}");
    assert_eq!(
        (
            certs["threshold_days"].as_u64(),
            certs["threshold_configured"].as_bool()
        ),
        (Some(30), Some(true))
    );

    let device = format!("/v1/console/devices/{}", rig.device_id);
    let (status, body) = http(rig.admin, "GET", &device, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["station"].is_null(), "{body}");

    let history = format!("/v1/console/station/devices/{}", rig.device_id);
    for (method, path) in [
        ("GET", history.clone()),
        ("POST", format!("{history}/revoke")),
    ] {
        let (status, body) = http(rig.admin, method, &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
        let error = json(&body)["error"].as_str().unwrap().to_owned();
        assert!(error.contains("[console]"), "{body}");
        assert!(error.contains("operator-cert"), "{body}");
    }
    let certificates = rig.certificates().unwrap();
    assert!(
        certificates.iter().all(|(_, status)| status == "active"),
        "{certificates:?}"
    );

    let (status, _) = http(
        rig.admin,
        "GET",
        "/v1/console/station/devices/not%2Fan-id",
        None,
    )
    .await;
    assert_eq!(status, 400);
    rig.stop().await;
}
