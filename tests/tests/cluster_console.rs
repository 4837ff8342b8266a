//! The fleet console of a gateway cluster (issues 17 and 20): the console of gateway A shows
//! the whole cluster — every gateway's sessions, each with the gateway holding it, and the
//! session count of every live gateway — and a Kick from A's console closes a session that
//! gateway B holds.
//!
//! Needs nats-server (FLEET_NATS_SERVER, or the venv `cargo xtask test` makes) and chromium
//! with chromedriver; both are required under CI=true, FLEET_REQUIRE_NATS and
//! FLEET_REQUIRE_BROWSER (`cargo xtask test` sets them), so the test fails there rather than
//! skips. Screenshots go to `target/console-screenshots/cluster-*.png`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fleet_tests::browser::{browser_programs, eventually, Browser};
use fleet_tests::cluster::{closed_within, pair};
use fleet_tests::conformance::{Conn, Version};
use serde_json::Value;

async fn get_json(admin: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = fleet_tests::cluster::get(admin, path).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"));
    (status, json)
}

/// `(device, gateway)` of each row of a console sessions page.
fn held(page: &Value) -> Vec<(String, String)> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| {
            (
                r["device"].as_str().unwrap_or_default().to_owned(),
                r["gateway"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_of_one_gateway_shows_and_kicks_the_whole_clusters_sessions() {
    let Some((chromium, chromedriver)) = browser_programs() else {
        return;
    };
    let Some((_nats, gws)) = pair().await else {
        return;
    };
    let (a, b) = (&gws.gateways[0], &gws.gateways[1]);
    let admin_a = gws.admins[0];
    let _here = Conn::clean(a, "cc-here", Version::V5).await;
    let mut there = Conn::clean(b, "cc-there", Version::V4).await;

    // The JSON behind the page: A lists B's session with the gateway holding it and the
    // details the device table shows; the page says which gateway answered.
    let want = vec![
        ("cc-here".to_owned(), "gw-a".to_owned()),
        ("cc-there".to_owned(), "gw-b".to_owned()),
    ];
    eventually("A's console to list both sessions", || async {
        held(&get_json(admin_a, "/v1/console/sessions").await.1) == want
    })
    .await;
    let (status, page) = get_json(admin_a, "/v1/console/sessions?q=gw-b").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["gateway"], "gw-a", "{page}");
    assert_eq!(page["total"], 1, "a search by gateway name: {page}");
    let row = &page["items"][0];
    assert_eq!(
        (&row["device"], &row["protocol"], &row["tenant"]),
        (
            &Value::from("cc-there"),
            &Value::from("3.1.1"),
            &Value::from("acme")
        ),
        "{row}"
    );
    assert!(
        row["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{row}"
    );
    assert_eq!(row["fingerprint"].as_str().map(str::len), Some(64), "{row}");
    assert!(
        row["cert_not_after"].as_i64().is_some_and(|t| t > 0),
        "{row}"
    );
    let (_, local) = get_json(admin_a, "/v1/console/sessions?scope=local").await;
    assert_eq!(held(&local), want[..1], "scope=local: {local}");
    let (status, bad) = get_json(admin_a, "/v1/console/sessions?scope=everywhere").await;
    assert_eq!(status, 400, "{bad}");
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("scope=everywhere")),
        "{bad}"
    );
    let (_, stats) = get_json(admin_a, "/v1/console/stats").await;
    assert_eq!(
        stats["cluster"],
        serde_json::json!({ "gateway": "gw-a", "sessions": { "gw-a": 1, "gw-b": 1 }, "sessions_total": 2 }),
        "{stats}"
    );

    let browser = Browser::open(&chromium, &chromedriver, admin_a).await;
    browser.goto("#/devices").await;
    browser
        .until(
            "two rows with their gateways",
            "[...document.querySelectorAll('#sessions tbody tr')].map(r => r.dataset.device + '@' + \
             r.dataset.gateway).join() === 'cc-here@gw-a,cc-there@gw-b'",
        )
        .await;
    let headers = browser
        .js("return [...document.querySelectorAll('#sessions th')].map(t => t.textContent);")
        .await;
    assert_eq!(headers[2], "Gateway", "{headers}");
    browser.shot("cluster-devices").await;

    browser.goto("#/fleet").await;
    browser
        .until(
            "the cluster card",
            "document.querySelector('#cluster-total')?.textContent === '2' && \
             document.querySelectorAll('#gateways tbody tr').length === 2",
        )
        .await;
    browser.shot("cluster-fleet").await;

    // B's device, from A's console: the page says who holds it, and Kick reaches it.
    browser.goto("#/device/acme/cc-there").await;
    browser
        .until(
            "the holding gateway",
            "document.querySelector('#held-by')?.textContent === 'gw-b'",
        )
        .await;
    let text = browser.text().await;
    assert!(
        text.contains("Gateway gw-b holds this session"),
        "device page: {text}"
    );
    browser.shot("cluster-device").await;
    browser.click("#kick").await;
    browser
        .until(
            "the confirmation",
            "document.querySelector('#confirm').open",
        )
        .await;
    let kicked = Instant::now();
    browser.click("#confirm-ok").await;
    let took = closed_within(&mut there, Duration::from_secs(3)).await;
    assert!(
        kicked.elapsed() <= Duration::from_secs(2),
        "B closed the session {took:?} after A's console kicked it"
    );
    browser
        .until(
            "the forwarded kick to be reported",
            "document.querySelector('#status').textContent.includes('the kick went to gateway gw-b')",
        )
        .await;
    eventually("A's console to drop B's session", || async {
        held(&get_json(admin_a, "/v1/console/sessions").await.1) == want[..1]
    })
    .await;

    browser.driver.clone().quit().await.expect("quit chromium");
}
