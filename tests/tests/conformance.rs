//! An MQTT 3.1.1 / 5 conformance suite, run against the reference broker (Debian's
//! mosquitto 2) and against the `fleet-gateway` binary, both over mutual TLS on loopback.
//!
//! Each case drives raw connections packet by packet (acknowledgements withheld, connections
//! dropped where the case needs it) and asserts the exact packets the broker sends — QoS,
//! DUP, RETAIN, packet id, reason codes, session present — decoded by rumqttc's `mqttbytes`,
//! a codec independent of the gateway's. `paho.rs` does the same with paho-mqtt (Python).
//! Every case cites the clause it checks; a case that fails on mosquitto is a wrong case.
//!
//! The cases of one broker run concurrently (each with its own topics and client ids), so a
//! run takes about as long as its slowest case. `FLEET_CONFORMANCE_CASE=substring` runs only
//! the matching cases (of `mosquitto_conforms` and `gateway_conforms`). Needs mosquitto
//! (`cargo xtask test` installs it; required under CI=true or FLEET_REQUIRE_MOSQUITTO), the
//! gateway binary (FLEET_GATEWAY_BIN or `target/debug/fleet-gateway`) and, for the paho
//! tests, a venv with paho-mqtt (FLEET_PAHO_PYTHON or `target/conformance-venv`, made by
//! `cargo xtask test`; required under CI=true or FLEET_REQUIRE_PAHO).

mod conformance {
    pub mod delivery;
    pub mod options;
    pub mod paho;
    pub mod sessions;
    pub mod wills;
}

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_tests::conformance::broker::paho_python;
use fleet_tests::conformance::{Broker, Kind, Version};

use conformance::{delivery, options, paho, sessions, wills};

/// A case's future.
pub type Run = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a case gets: the broker, and names (topics, client ids) of its own.
#[derive(Clone)]
pub struct Ctx {
    pub broker: Arc<Broker>,
    pub case: &'static str,
}

impl Ctx {
    /// A topic of this case's own, below a prefix both brokers let the clients use.
    pub fn topic(&self, rest: &str) -> String {
        format!("tenants/acme/conf/{}/{rest}", self.case)
    }

    /// A client id (and certificate CN) of this case's own.
    pub fn client(&self, who: &str) -> String {
        format!("{}-{who}", self.case)
    }
}

/// One case: a name (client ids and topics derive from it) and what it runs.
pub struct Case {
    pub name: &'static str,
    pub run: fn(Ctx) -> Run,
    /// Where the reference broker itself breaks the clause the case checks (then the case
    /// runs against the gateway only).
    pub mosquitto_deviates: Option<&'static str>,
}

macro_rules! case {
    ($name:literal, $f:path) => {
        Case {
            name: $name,
            run: |ctx| Box::pin($f(ctx)),
            mosquitto_deviates: None,
        }
    };
    ($name:literal, $f:path, $v:expr) => {
        Case {
            name: $name,
            run: |ctx| Box::pin($f(ctx, $v)),
            mosquitto_deviates: None,
        }
    };
}

/// Every case, run against both brokers.
fn cases() -> Vec<Case> {
    use Version::{V4, V5};
    vec![
        case!("qos-matrix-v4", delivery::qos_matrix, V4),
        case!("qos-matrix-v5", delivery::qos_matrix, V5),
        case!("retained-v4", delivery::retained, V4),
        case!("retained-v5", delivery::retained, V5),
        case!("will-qos-v4", wills::will_qos, V4),
        case!("will-qos-v5", wills::will_qos, V5),
        case!("resend-qos1-v4", sessions::resend_qos1, V4),
        case!("resend-qos1-v5", sessions::resend_qos1, V5),
        case!("resend-pubrel-v4", sessions::resend_pubrel, V4),
        case!("resend-pubrel-v5", sessions::resend_pubrel, V5),
        case!("qos2-inbound-dup-v4", delivery::qos2_inbound_duplicate, V4),
        case!("qos2-inbound-dup-v5", delivery::qos2_inbound_duplicate, V5),
        case!("unsub-unknown-v4", options::unsubscribe_unknown, V4),
        case!("unsub-unknown-v5", options::unsubscribe_unknown, V5),
        case!("unsub-three-v5", options::unsubscribe_three),
        case!("no-local-v5", options::no_local),
        case!("retain-handling-0-v5", options::retain_handling, 0),
        case!("retain-handling-1-v5", options::retain_handling, 1),
        case!("retain-handling-2-v5", options::retain_handling, 2),
        case!("retain-as-published-v5", options::retain_as_published),
        case!("receive-maximum-v5", sessions::receive_maximum),
        case!("session-expiry-v5", sessions::session_expiry),
        case!("will-delay-v5", wills::will_delay),
        case!("will-delay-cancel-v5", wills::will_delay_cancelled),
        case!("will-disconnect-v4", wills::will_on_disconnect, V4),
        case!("will-disconnect-v5", wills::will_on_disconnect, V5),
        case!("empty-id-persistent-v4", sessions::empty_id_persistent),
        case!("takeover-v4", sessions::takeover, V4),
        Case {
            // Debian 12's mosquitto 2.0.11 closes the taken-over connection without the
            // DISCONNECT 0x8E that [MQTT-3.1.4-3] requires; fixed in 2.0.15
            // (eclipse-mosquitto/mosquitto#2607).
            mosquitto_deviates: Some("closes a taken-over connection without DISCONNECT 0x8E"),
            ..case!("takeover-v5", sessions::takeover, V5)
        },
        case!("dollar-topics-v4", delivery::dollar_topics, V4),
        case!("dollar-topics-v5", delivery::dollar_topics, V5),
        case!("overlapping-v4", delivery::overlapping, V4),
        case!("overlapping-v5", delivery::overlapping, V5),
    ]
}

/// A case that has not finished by then has hung: a failure, not a wait.
const CASE_LIMIT: Duration = Duration::from_secs(40);

/// Runs every (selected) case concurrently against `broker`; one line per case, and a
/// failure naming every case that failed and why.
async fn run_all(broker: Broker) {
    let kind = broker.kind;
    let broker = Arc::new(broker);
    let only = std::env::var("FLEET_CONFORMANCE_CASE").unwrap_or_default();
    let started = Instant::now();
    let selected: Vec<Case> = cases()
        .into_iter()
        .filter(|c| c.name.contains(only.as_str()))
        .collect();
    let (skipped, selected): (Vec<Case>, Vec<Case>) = selected
        .into_iter()
        .partition(|c| kind == Kind::Mosquitto && c.mosquitto_deviates.is_some());
    for c in &skipped {
        let why = c.mosquitto_deviates.unwrap_or_default();
        println!("skip  {kind:<13} {}: mosquitto {why}", c.name);
    }
    let running: Vec<_> = selected
        .into_iter()
        .map(|c| {
            let ctx = Ctx {
                broker: broker.clone(),
                case: c.name,
            };
            let task = tokio::spawn(async move {
                let t = Instant::now();
                tokio::time::timeout(CASE_LIMIT, (c.run)(ctx))
                    .await
                    .map(|()| t.elapsed())
            });
            (c.name, task)
        })
        .collect();
    assert!(
        !running.is_empty() || !skipped.is_empty(),
        "no case matches {only:?}"
    );
    let mut failed = Vec::new();
    let total = running.len();
    for (name, task) in running {
        let verdict = match task.await {
            Ok(Ok(took)) => {
                println!("pass  {kind:<13} {name} ({:.1} s)", took.as_secs_f64());
                continue;
            }
            Ok(Err(_)) => format!("did not finish within {CASE_LIMIT:?}"),
            Err(e) if e.is_panic() => panic_message(e.into_panic()),
            Err(e) => format!("{e}"),
        };
        println!("FAIL  {kind:<13} {name}: {verdict}");
        failed.push(format!("{name}: {verdict}"));
    }
    println!(
        "{kind}: {} of {total} cases pass ({:.1} s)",
        total - failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        let log = broker.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "{} of {total} conformance cases fail on {kind}:\n{}\n--- {kind} log (tail) ---\n{}",
            failed.len(),
            failed.join("\n"),
            tail.join("\n")
        );
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_conforms() {
    let Some(broker) = Broker::mosquitto() else {
        return;
    };
    assert_eq!(broker.kind, Kind::Mosquitto);
    run_all(broker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_conforms() {
    run_all(Broker::gateway()).await;
}

/// paho-mqtt in both versions against `broker`; a failure names each version that failed.
async fn paho_both(broker: Broker, python: std::path::PathBuf) {
    let kind = broker.kind;
    let broker = Arc::new(broker);
    let runs = [Version::V4, Version::V5].map(|v| {
        let (broker, python) = (broker.clone(), python.clone());
        (
            v,
            tokio::spawn(async move { paho::qos(&broker, &python, v).await }),
        )
    });
    let mut failed = Vec::new();
    for (v, run) in runs {
        match run.await {
            Ok(()) => println!("pass  {kind:<13} paho-mqtt {v}"),
            Err(e) if e.is_panic() => failed.push(panic_message(e.into_panic())),
            Err(e) => failed.push(format!("paho-mqtt {v}: {e}")),
        }
    }
    assert!(
        failed.is_empty(),
        "paho-mqtt on {kind}:\n{}",
        failed.join("\n")
    );
}

/// paho-mqtt against mosquitto (the reference for `paho_on_gateway`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_on_mosquitto() {
    let Some(python) = paho_python() else {
        return;
    };
    let Some(broker) = Broker::mosquitto() else {
        return;
    };
    paho_both(broker, python).await;
}

/// paho-mqtt against the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_on_gateway() {
    let Some(python) = paho_python() else {
        return;
    };
    paho_both(Broker::gateway(), python).await;
}
