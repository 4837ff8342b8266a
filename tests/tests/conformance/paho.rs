//! An independent client library: paho-mqtt 2.x (Python, from PyPI, in the venv `cargo
//! xtask test` makes) publishes at QoS 0, 1 and 2 to subscribers at QoS 0, 1 and 2, in 3.1.1
//! and in 5, over mutual TLS; `tests/python/paho_qos.py` prints what each subscriber got.
//! Each must get every message once at min(publish QoS, subscription QoS), RETAIN=0, DUP=0
//! [MQTT-3.8.4-6 (3.1.1), 3.8.4-8 (5), 3.3.1-3, 3.3.1-9 (3.1.1) / 3.3.1-12 (5)].

use std::path::Path;
use std::time::Duration;

use fleet_tests::conformance::{Broker, Version};
use serde_json::{json, Value};

/// Runs the paho script against `broker` in version `v` and asserts what it received.
pub async fn qos(broker: &Broker, python: &Path, v: Version) {
    let tag = match v {
        Version::V4 => "paho-v4",
        Version::V5 => "paho-v5",
    };
    let topic = format!("tenants/acme/conf/{tag}/m");
    let who = |id: String| {
        let i = broker.identity(&id);
        json!({"id": id, "cert": i.cert, "key": i.key})
    };
    let subscribers: Vec<Value> = (0..=2u8)
        .map(|s| {
            let mut w = who(format!("{tag}-s{s}"));
            w["qos"] = json!(s);
            w
        })
        .collect();
    let conf = json!({
        "host": "localhost",
        "port": broker.addr.port(),
        "cafile": broker.root(),
        "version": v.to_string(),
        "topic": topic,
        "subscribers": subscribers,
        "publisher": who(format!("{tag}-p")),
    });
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), conf.to_string()).expect("write the paho config");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/paho_qos.py");
    let run = tokio::process::Command::new(python)
        .arg(&script)
        .arg(file.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{tag} on {}: paho_qos.py did not finish in 60 s",
                broker.kind
            )
        })
        .expect("paho_qos.py runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{tag}: paho_qos.py printed no JSON ({e}); stderr:\n{stderr}"));
    assert_eq!(
        report["error"],
        Value::Null,
        "{tag} on {}: paho failed; stderr:\n{stderr}",
        broker.kind
    );
    for s in 0..=2u8 {
        let id = format!("{tag}-s{s}");
        assert_eq!(
            report["granted"][&id],
            json!([s]),
            "{tag} on {}: SUBACK of {id}",
            broker.kind
        );
        let mut got = report["received"][&id]
            .as_array()
            .cloned()
            .unwrap_or_default();
        got.sort_by_key(|m| m["payload"].as_str().map(str::to_owned));
        let want: Vec<Value> = (0..=2u8)
            .map(|q| {
                json!({"topic": topic, "payload": format!("q{q}"), "qos": q.min(s),
                       "retain": false, "dup": false})
            })
            .collect();
        assert_eq!(
            got, want,
            "{tag} on {}: what paho's QoS {s} subscriber received",
            broker.kind
        );
    }
}
