//! Load generation for `cargo xtask bench gateway`: the same client code drives our gateway
//! and Mosquitto. Traffic goes to loopback only (idle sessions come from 127.0.0.2 onwards,
//! 20,000 per address); every phase is bounded in time and fails with a message when its
//! bound passes. Each rate comes with the broker's CPU time per operation, read from
//! /proc/<pid>/stat, so it can be compared per core when the broker is pinned to one.
//!
//! Phases: `connects` (full mTLS connects/s), `idle` (RSS per idle session at each size, CPU
//! while idle, RSS after close), `qos0` (50 → 1), `qos1` (50 → 1 closed loop, losses counted),
//! `fanout` (1 → 10), `latency` (p50/p99 at a fixed open-loop rate), `revocation` (CRL → kick).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

mod client;
mod measure;
mod mint;
mod sessions;
mod traffic;

pub use client::{mqtt_connect, wait_closed, Conn, Event};
pub use measure::{cpu_seconds, percentile, rss_kib, Progress, Rate, Window};
pub use mint::{Mint, Minted};
pub use sessions::{connect_rate, revocation_latency, Idle, IdlePlan};
pub use traffic::{Flow, Latency, Plan};

use crate::Error;

/// Open files the load generator needs besides the idle sessions.
pub const FD_MARGIN: u64 = 1000;

/// Every phase, in the order they run.
pub const PHASES: [&str; 7] = [
    "connects",
    "idle",
    "qos0",
    "qos1",
    "fanout",
    "latency",
    "revocation",
];

/// What one target measured (a phase not run is `None` or empty).
#[derive(Debug, Serialize)]
pub struct Results {
    pub target: String,
    pub connects: Option<Rate>,
    pub idle: Vec<Idle>,
    pub qos0: Option<Flow>,
    pub qos1: Option<Flow>,
    pub fanout: Option<Flow>,
    pub latency: Option<Latency>,
    /// Revocation → kick, milliseconds (empty for targets without live revocation).
    pub revocation_ms: Vec<f64>,
    /// Seconds of each message window.
    pub window_seconds: u64,
}

/// Where the load generator finds its inputs, and how long each phase runs.
pub struct Setup {
    pub target: SocketAddr,
    pub name: String,
    pub server_pid: u32,
    pub issuing_cert: PathBuf,
    pub issuing_key: PathBuf,
    pub root: PathBuf,
    pub tenant: String,
    /// The CRL file the target watches, when it supports live revocation.
    pub crl: Option<PathBuf>,
    /// Idle-session counts to measure at.
    pub sessions: Vec<usize>,
    pub connect_seconds: u64,
    /// Seconds of each message window (after a 1 s warm-up).
    pub window_seconds: u64,
    /// Seconds the idle sessions' CPU is measured over.
    pub idle_seconds: u64,
    /// Offered rate of the latency phase, messages per second.
    pub latency_rate: u64,
    /// QoS 1 messages each publisher keeps unacknowledged.
    pub in_flight: u16,
    /// Which of [`PHASES`] to run.
    pub phases: Vec<String>,
}

impl Setup {
    fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

/// Runs `phase` under its bound, with a progress line.
async fn bounded<T>(
    setup: &Setup,
    what: &str,
    bound: Duration,
    run: impl AsyncFnOnce(&Progress) -> Result<T, Error>,
) -> Result<T, Error> {
    let progress = Progress::phase(&setup.name, what, bound);
    match tokio::time::timeout(bound, run(&progress)).await {
        Ok(Ok(v)) => {
            progress.done("done");
            Ok(v)
        }
        Ok(Err(e)) => {
            progress.done(format!("failed: {e}"));
            Err(e)
        }
        Err(_) => {
            progress.done("over its time bound");
            Err(Error::Backend(format!(
                "{}: {what} did not finish within {bound:?}",
                setup.name
            )))
        }
    }
}

/// Runs the selected phases against one target.
pub async fn run(setup: &Setup) -> Result<Results, Error> {
    if let Some(unknown) = setup.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
        return Err(Error::Backend(format!(
            "unknown phase {unknown:?}; phases: {}",
            PHASES.join(", ")
        )));
    }
    let mint = Arc::new(Mint::new(
        &setup.issuing_cert,
        &setup.issuing_key,
        &setup.root,
        &setup.tenant,
    )?);
    let devices: Vec<Minted> = (0..50)
        .map(|i| mint.identity(&format!("bench-{i:03}"), false))
        .collect::<Result<_, _>>()?;
    let services: Vec<Minted> = (0..10)
        .map(|i| mint.identity(&format!("svc-{i:02}"), true))
        .collect::<Result<_, _>>()?;
    let (target, pid) = (setup.target, setup.server_pid);
    let mut results = Results {
        target: setup.name.clone(),
        connects: None,
        idle: Vec::new(),
        qos0: None,
        qos1: None,
        fanout: None,
        latency: None,
        revocation_ms: Vec::new(),
        window_seconds: setup.window_seconds,
    };
    if setup.runs("connects") {
        let bound = Duration::from_secs(setup.connect_seconds + 30);
        let what = format!(
            "full mTLS connects, {} s, 16 clients",
            setup.connect_seconds
        );
        results.connects = Some(
            bounded(setup, &what, bound, async |p| {
                connect_rate(target, pid, &devices[..16], setup.connect_seconds, p).await
            })
            .await?,
        );
    }
    if setup.runs("idle") {
        for &n in &setup.sessions {
            results.idle.push(idle_phase(setup, &mint, n).await?);
        }
    }
    messages(setup, &devices, &services, &mut results).await?;
    if let (true, Some(crl)) = (setup.runs("revocation"), &setup.crl) {
        let what = "revocation → kick, 20 rounds";
        results.revocation_ms = bounded(setup, what, Duration::from_secs(300), async |_| {
            revocation_latency(target, &mint, crl, 20).await
        })
        .await?;
    }
    Ok(results)
}

/// `n` idle sessions. Up to 10,000 they declare a keep-alive of 60 s (opened well within
/// it); more take minutes to open on one core, so they declare 600 s and nothing times out
/// while the rest connect.
async fn idle_phase(setup: &Setup, mint: &Arc<Mint>, n: usize) -> Result<Idle, Error> {
    let limit = measure::open_file_limit();
    if (n as u64) + FD_MARGIN > limit {
        return Err(Error::Backend(format!(
            "{n} idle sessions need an open-file limit of at least {} here (and in the broker); \
             this process has {limit}: raise the hard limit (root with CAP_SYS_RESOURCE) or \
             measure fewer sessions",
            n as u64 + FD_MARGIN
        )));
    }
    // Opening is bounded by 200 connects/s at worst, plus the measurement and close.
    let open_bound = Duration::from_secs(60 + n as u64 / 200);
    let plan = IdlePlan {
        sessions: n,
        keep_alive: if n <= 10_000 { 60 } else { 600 },
        idle_seconds: setup.idle_seconds,
        open_bound,
    };
    let bound = open_bound + Duration::from_secs(setup.idle_seconds + 30);
    let what = format!("{n} idle sessions");
    bounded(setup, &what, bound, async |p| {
        sessions::idle(setup.target, setup.server_pid, mint, &plan, p).await
    })
    .await
}

async fn messages(
    setup: &Setup,
    devices: &[Minted],
    services: &[Minted],
    results: &mut Results,
) -> Result<(), Error> {
    let plan = Plan {
        target: setup.target,
        pid: setup.server_pid,
        tenant: setup.tenant.clone(),
        warmup: Duration::from_secs(1),
        window: Duration::from_secs(setup.window_seconds),
    };
    let bound = Duration::from_secs(setup.window_seconds + 60);
    if setup.runs("qos0") {
        let what = "QoS 0, 50 publishers → 1 subscriber, 256 B";
        let flow = bounded(setup, what, bound, async |p| {
            traffic::qos0(&plan, devices, &services[..1], p).await
        });
        results.qos0 = Some(flow.await?);
    }
    if setup.runs("qos1") {
        let what = "QoS 1 closed loop, 50 → 1, 256 B";
        let flow = bounded(setup, what, bound, async |p| {
            traffic::qos1(&plan, devices, &services[0], setup.in_flight, p).await
        });
        results.qos1 = Some(flow.await?);
    }
    if setup.runs("fanout") {
        let what = "fan-out, QoS 0, 1 publisher → 10 subscribers";
        let flow = bounded(setup, what, bound, async |p| {
            traffic::qos0(&plan, &devices[..1], services, p).await
        });
        results.fanout = Some(flow.await?);
    }
    if setup.runs("latency") {
        let what = format!("latency at {} msg/s open loop, 50 → 1", setup.latency_rate);
        let l = bounded(setup, &what, bound, async |p| {
            traffic::latency(&plan, devices, &services[0], setup.latency_rate, p).await
        });
        results.latency = Some(l.await?);
    }
    Ok(())
}
