//! `cargo xtask bench provisioning`: the station's issuance throughput, both flows, with
//! its registry in SQLite (one station on one core) and in PostgreSQL 15 (fsync on, a
//! server of the bench's own, fleet-pgserver): one station, then three stations at once on
//! one database, each its own process, station directory and issuing CA under one root.
//! Writes its section of BENCHMARKS.md.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fleet_pgserver::{Options, PgServer};
use serde::Deserialize;

use super::{cpu_model, write_section};
use crate::sh::{self, step};

const BIN: &str = "target/release/fleet-provision";
/// How long one bench process may take before it is killed.
const DEADLINE: Duration = Duration::from_secs(20 * 60);

#[derive(Debug, Deserialize)]
struct Flow {
    devices: u32,
    per_second: f64,
    started_at: f64,
    ended_at: f64,
}

impl Flow {
    fn seconds(&self) -> f64 {
        self.ended_at - self.started_at
    }
}

#[derive(Debug, Deserialize)]
struct Report {
    csr_flow: Flow,
    key_injection: Flow,
    storage_bytes_per_device: Option<f64>,
}

/// Certificates/s of several stations together: all their devices over the span from the
/// first start to the last end.
fn together(flows: &[&Flow]) -> f64 {
    let first = flows.iter().map(|f| f.started_at).fold(f64::MAX, f64::min);
    let last = flows.iter().map(|f| f.ended_at).fold(f64::MIN, f64::max);
    let devices: u32 = flows.iter().map(|f| f.devices).sum();
    f64::from(devices) / (last - first).max(1e-9)
}

/// `fleet-provision` with `args`, pinned to `cores` (taskset) when given.
fn command(cores: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = match cores {
        Some(c) if Path::new("/usr/bin/taskset").exists() => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c, BIN]);
            cmd
        }
        _ => Command::new(BIN),
    };
    cmd.args(args);
    cmd
}

fn parse(out: &[u8]) -> anyhow::Result<Report> {
    serde_json::from_slice(out).context("fleet-provision bench printed no report")
}

/// One station, its progress bar on the terminal.
fn one_station(cores: &str, args: &[&str], password: Option<&str>) -> anyhow::Result<Report> {
    let mut cmd = command(Some(cores), args);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run fleet-provision bench")?;
    if !out.status.success() {
        bail!("fleet-provision bench failed: {}", out.status);
    }
    parse(&out.stdout)
}

/// Pins a PostgreSQL server (its postmaster, the processes it has started and, since they
/// inherit it, every backend it starts later) to `cores`.
fn pin_server(pid: u32, cores: &str) -> anyhow::Result<()> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            if let Ok(child) = entry.file_name().to_string_lossy().parse() {
                pids.push(child);
            }
        }
    }
    for p in pids {
        let ok = Command::new("taskset")
            .args(["-a", "-p", "-c", cores, &p.to_string()])
            .stdout(Stdio::null())
            .status()?
            .success();
        if !ok {
            bail!("taskset could not pin the PostgreSQL process {p} to core(s) {cores}");
        }
    }
    Ok(())
}

/// A bench process of a run of several stations.
struct Station {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Station {
    /// Waits for `ready <what>`.
    fn ready(&mut self, n: usize, what: &str, log: &Path) -> anyhow::Result<()> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.trim() != format!("ready {what}") {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            bail!("station {n}: expected `ready {what}`, got {line:?}\n{log}");
        }
        Ok(())
    }
}

/// Kills the children (by PID) if they are still running after [`DEADLINE`].
fn watchdog(pids: Vec<u32>, done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let until = Instant::now() + DEADLINE;
        while Instant::now() < until {
            if done.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for pid in pids {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    });
}

/// `count` stations at once on `url`, each under the root CA of `root`, started together
/// for each flow; their reports.
fn stations_at_once(
    count: usize,
    devices: u32,
    url: &str,
    password: &str,
    root: &Path,
) -> anyhow::Result<Vec<Report>> {
    let mut stations = Vec::new();
    for n in 1..=count {
        let log = root.join(format!("station-{n}.log"));
        let mut child = command(None, &[])
            .args(["--dir", &root.to_string_lossy(), "--registry", url, "bench"])
            .args(["--devices", &devices.to_string(), "--sync", "--root"])
            .arg(root)
            .env("PGPASSWORD", password)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot run fleet-provision bench")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("station {n}: no pipes");
        };
        stations.push(Station {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        });
    }
    let done = Arc::new(AtomicBool::new(false));
    watchdog(
        stations.iter().map(|s| s.child.id()).collect(),
        done.clone(),
    );
    for (what, label) in [("csr", "CSR flow"), ("keys", "key injection")] {
        for (n, s) in stations.iter_mut().enumerate() {
            s.ready(n + 1, what, &root.join(format!("station-{}.log", n + 1)))?;
        }
        println!("    {count} stations ready: {label}, {devices} devices each, go");
        for s in &mut stations {
            writeln!(s.stdin, "go")?;
            s.stdin.flush()?;
        }
    }
    let mut reports = Vec::new();
    for (n, mut s) in stations.into_iter().enumerate() {
        // The report follows the last `ready` line on the stdout this run reads.
        let mut report = Vec::new();
        std::io::Read::read_to_end(&mut s.stdout, &mut report)?;
        drop(s.stdin);
        let status = s.child.wait()?;
        if !status.success() {
            let log = std::fs::read_to_string(root.join(format!("station-{}.log", n + 1)))
                .unwrap_or_default();
            bail!("station {}: bench failed: {status}\n{log}", n + 1);
        }
        reports.push(parse(&report)?);
    }
    done.store(true, Ordering::Relaxed);
    Ok(reports)
}

/// One statement's share of the one-station PostgreSQL run (pg_stat_statements).
struct Statement {
    calls: u64,
    total_ms: f64,
    mean_ms: f64,
    query: String,
}

/// The server's statements of database `db` since the last reset, most time first.
fn profile(pg: &PgServer, db: &str) -> anyhow::Result<Vec<Statement>> {
    let out = pg
        .psql(
            db,
            "SELECT calls, total_exec_time, mean_exec_time, \
                 left(regexp_replace(query, '\\s+', ' ', 'g'), 90) \
             FROM pg_stat_statements \
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             ORDER BY total_exec_time DESC LIMIT 10",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '|').collect();
            let [calls, total, mean, query] = f[..] else {
                bail!("pg_stat_statements: unexpected line {l:?}");
            };
            Ok(Statement {
                calls: calls.parse()?,
                total_ms: total.parse()?,
                mean_ms: mean.parse()?,
                query: query.to_owned(),
            })
        })
        .collect()
}

/// The figures of one run.
struct Figures {
    sqlite: Report,
    pg_one: Report,
    pg_three: Vec<Report>,
    profile: Vec<Statement>,
}

/// Issuance throughput with SQLite and with PostgreSQL (1 and 3 stations).
pub fn provisioning(devices: u32) -> anyhow::Result<()> {
    step("building fleet-provision (release)");
    sh::cargo(&["build", "--release", "--quiet", "-p", "fleet-provision"])?;
    step(&format!(
        "SQLite: one station on core 0, {devices} devices per flow"
    ));
    let sqlite = one_station("0", &["bench", "--devices", &devices.to_string()], None)?;

    step("PostgreSQL 15: starting a server of the bench's own (fsync on)");
    let pg = PgServer::start(Options {
        fsync: true,
        settings: vec!["shared_preload_libraries=pg_stat_statements".into()],
        ..Options::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    pin_server(pg.pid(), "1")?;
    step(&format!(
        "PostgreSQL: one station on core 0, the server on core 1, {devices} devices per flow"
    ));
    let url = pg.database("one").map_err(|e| anyhow::anyhow!("{e}"))?;
    pg.psql(
        "one",
        "CREATE EXTENSION pg_stat_statements; SELECT pg_stat_statements_reset()",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let args = [
        "--registry",
        &url,
        "bench",
        "--devices",
        &devices.to_string(),
    ];
    let pg_one = one_station("0", &args, Some(&pg.password))?;
    let profile = profile(&pg, "one")?;

    step(&format!(
        "PostgreSQL: 3 stations at once on one database, {devices} devices per flow each (both cores, shared with the server)"
    ));
    pin_server(pg.pid(), "0,1")?;
    let url = pg.database("three").map_err(|e| anyhow::anyhow!("{e}"))?;
    let scratch = std::env::temp_dir().join(format!("fleet-bench-root-{}", std::process::id()));
    let init = command(None, &["--dir", &scratch.to_string_lossy()])
        .args(["ca", "init", "--org", "Bench", "--insecure-plaintext-keys"])
        .output()?;
    if !init.status.success() {
        bail!(
            "ca init of the shared root: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    let pg_three = stations_at_once(3, devices, &url, &pg.password, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let figures = Figures {
        sqlite,
        pg_one,
        pg_three: pg_three?,
        profile,
    };
    let s = section(&figures);
    println!("\n{s}");
    write_section("provisioning", &s)?;
    println!("written: BENCHMARKS.md");
    Ok(())
}

fn section(f: &Figures) -> String {
    let host = cpu_model();
    let csr3: Vec<&Flow> = f.pg_three.iter().map(|r| &r.csr_flow).collect();
    let keys3: Vec<&Flow> = f.pg_three.iter().map(|r| &r.key_injection).collect();
    let (csr3, keys3) = (together(&csr3), together(&keys3));
    let per = |r: &Report| (r.csr_flow.per_second, r.key_injection.per_second);
    let (sqlite, one) = (per(&f.sqlite), per(&f.pg_one));
    let devices = f.sqlite.csr_flow.devices;
    let mut s = String::from("## Provisioning station\n\n");
    s.push_str(&format!(
        "Written by `cargo xtask bench provisioning` on a 2-core {host}: `fleet-provision bench` in scratch \
         stations on the local disk, {devices} devices per flow and station. Every certificate is fully issued: \
         checks, signature, registry transactions (reserve before signing, activate after delivery), \
         hash-chained audit records and the signed batch manifest, committed in groups of 256 (one filesystem \
         sync, one audit fsync and two registry transactions per group). The CSR flow excludes device key \
         generation (it happens on the devices); key injection includes the station's key generation and \
         writing each bundle and PEM file. No competitor to compare with here: AWS IoT Core, EMQX and \
         Mosquitto have no factory station.\n\n\
         PostgreSQL is Debian's 15, a server of the bench's own with fsync on (every guarantee of a production \
         server), on loopback. Three stations are three processes, each with its own station directory and \
         issuing CA under one root, on one database and one tenant per flow (so they take turns on the \
         tenant's id counter), started together; their figure is all their certificates over the span from \
         the first start to the last end. A group of 256 costs a fixed handful of statements, not one per \
         certificate: reserve looks the candidate ids up in one query and claims them, the renewals and the \
         certificates each with one multi-row INSERT over arrays (`unnest`); activate is one UPDATE \
         superseding and one activating the group.\n\n"
    ));
    s.push_str("| measure | certificates/s | cores | target |\n|---|---|---|---|\n");
    let rows = [
        ("CSR flow, SQLite, 1 station", sqlite.0, "1", "—"),
        (
            "CSR flow, PostgreSQL, 1 station",
            one.0,
            "2 (station on core 0, server on core 1)",
            "—",
        ),
        (
            "CSR flow, PostgreSQL, 3 stations at once, in total",
            csr3,
            "2 (stations and server share both)",
            "≥ 10,000 (issue 18; it assumed more cores)",
        ),
        (
            "CSR flow, PostgreSQL, 3 stations at once, per core",
            csr3 / 2.0,
            "1",
            "—",
        ),
        ("key injection, SQLite, 1 station", sqlite.1, "1", "—"),
        (
            "key injection, PostgreSQL, 1 station",
            one.1,
            "2 (station on core 0, server on core 1)",
            "—",
        ),
        (
            "key injection, PostgreSQL, 3 stations at once, in total",
            keys3,
            "2 (stations and server share both)",
            "—",
        ),
        (
            "key injection, PostgreSQL, 3 stations at once, per core",
            keys3 / 2.0,
            "1",
            "—",
        ),
    ];
    for (what, value, cores, target) in rows {
        s.push_str(&format!("| {what} | {value:.0} | {cores} | {target} |\n"));
    }
    let groups = 2.0 * (f64::from(devices) / 256.0).ceil();
    let wall_ms = 1000.0 * (f.pg_one.csr_flow.seconds() + f.pg_one.key_injection.seconds());
    s.push_str(&format!(
        "\nWhere the server's time goes, one station, both flows ({wall_ms:.0} ms of wall time for \
         {groups} groups of 256; pg_stat_statements, the statements that set up the station \
         included; COMMIT holds the WAL flush):\n\n\
         | statement | calls per group | mean ms | total ms |\n|---|---|---|---|\n"
    ));
    for st in &f.profile {
        s.push_str(&format!(
            "| `{}` | {:.1} | {:.3} | {:.0} |\n",
            st.query.replace('|', "\\|"),
            st.calls as f64 / groups,
            st.mean_ms,
            st.total_ms
        ));
    }
    if let Some(bytes) = f.sqlite.storage_bytes_per_device {
        s.push_str(&format!(
            "\nSQLite registry + audit log: {bytes:.0} bytes per device.\n"
        ));
    }
    s
}
