//! The station API on the shared PostgreSQL registry, with the station created, opened,
//! served and dropped inside a single-threaded tokio runtime: the synchronous database
//! client must never block on its own runtime from inside this one.

mod common;

use common::api::{service_identity, Running};
use common::pg;
use fleet_provision::{KeyProtection, RegistryLocation, Station};

#[test]
fn the_station_api_issues_and_revokes_through_the_shared_registry() {
    let Some(pg) = pg::start() else { return };
    let registry = RegistryLocation::Postgres(Box::new(pg::target(&pg, "api")));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let st = Station::init_at(d, "Acme", KeyProtection::InsecurePlaintext, &registry).unwrap();
        let ops = service_identity(&st, "ops", "acme");
        drop(st);
        let server = Running::start_at(d, &registry).await;
        let (status, issued) = server
            .json(
                Some(&ops),
                "POST",
                "/v1/devices",
                serde_json::json!({ "generate": { "gateway_host": "gw.test" } }),
            )
            .await;
        assert_eq!(status, 201, "{issued}");
        assert_eq!(issued["device_id"], "acme-000001");
        let (status, body) = server
            .json(
                Some(&ops),
                "POST",
                "/v1/devices/acme-000001/revoke",
                serde_json::json!({ "reason": "keyCompromise" }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, device) = server
            .json(
                Some(&ops),
                "GET",
                "/v1/devices/acme-000001",
                serde_json::Value::Null,
            )
            .await;
        assert_eq!(status, 200, "{device}");
        assert!(device.to_string().contains("revoked"), "{device}");
        server.stop().await;
    });
    drop(runtime);
    // What the API did is in the database, as this station's.
    let name = fleet_provision::station_name(d, false).unwrap();
    let mut db = pg.client("api").unwrap();
    let rows = db
        .query(
            "SELECT device_id, status FROM certs WHERE station = $1 AND tenant = 'acme'",
            &[&name],
        )
        .unwrap();
    let rows: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(rows, [("acme-000001".to_owned(), "revoked".to_owned())]);
}
