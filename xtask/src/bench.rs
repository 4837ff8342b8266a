//! `cargo xtask bench gateway`: our gateway against Debian's Mosquitto 2, same PKI, same load
//! generator, one run, per core (see [`gateway`]). Writes its section of BENCHMARKS.md and
//! bench/gateway.svg.
//!
//! `cargo xtask bench provisioning`: the station's issuance throughput, both flows, on SQLite
//! and on PostgreSQL with one and three stations (see [`provisioning`]).

mod gateway;
mod gateway_report;
mod provisioning;

pub use gateway::{gateway, gateway_report_only, GatewayOptions};
pub use provisioning::provisioning;

/// Replaces one bench's section of BENCHMARKS.md (between its markers), keeping the others.
pub fn write_section(name: &str, body: &str) -> anyhow::Result<()> {
    let (start, end) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let block = format!("{start}\n{}\n{end}", body.trim_end());
    let old = std::fs::read_to_string("BENCHMARKS.md").unwrap_or_default();
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &old[..a], &old[b + end.len()..]),
        _ if old.trim().is_empty() => format!("# Benchmarks\n\n{block}\n"),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    std::fs::write("BENCHMARKS.md", new)?;
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
