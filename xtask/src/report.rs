//! `cargo xtask report`: runs the hardening tests and the fuzz targets, then writes
//! `SECURITY.md` — the figures of this run and the threat model on one page.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_json::Value;

use crate::fuzz::{self, Outcome};
use crate::sh;

/// The hardening suites: (cargo test arguments, what they prove).
const SUITES: [(&[&str], &str); 4] = [
    (
        &[
            "-p",
            "fleet-gateway",
            "--test",
            "flood",
            "--test",
            "storm",
            "--test",
            "restart",
        ],
        "slow-handshake flood, connect storm, gateway kill -9",
    ),
    (
        &["-p", "fleet-tests", "--test", "bad_certificates"],
        "bad-certificate matrix",
    ),
    (
        &["-p", "fleet-tests", "--test", "abuse", "--test", "mqtt5"],
        "authenticated abuse, MQTT 5 refusals",
    ),
    (
        &["-p", "fleet-provision", "--test", "crash"],
        "station kill -9, torn audit record, full disk",
    ),
];

pub fn run(fuzz_seconds: u64) -> anyhow::Result<()> {
    let figures = std::path::absolute("target/report")?;
    let _ = std::fs::remove_dir_all(&figures);
    std::fs::create_dir_all(&figures)?;
    for (args, what) in SUITES {
        sh::step(&format!("{what}: cargo test {}", args.join(" ")));
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        sh::run(
            Command::new(cargo)
                .arg("test")
                .args(args)
                .env("FLEET_REPORT_DIR", &figures)
                .env("FLEET_REQUIRE_MOSQUITTO", "1"),
        )?;
    }
    let outcomes = if fuzz_seconds > 0 {
        let budget = fuzz::Budget {
            seconds: fuzz_seconds,
            executions: None,
        };
        fuzz::run(budget, &[], fuzz::Build::Thorough)?
    } else {
        sh::step("fuzz: the last run's results (target/fuzz-results.json)");
        let text = std::fs::read_to_string(fuzz::results_path(fuzz::Build::Thorough))
            .context("no earlier fuzz run: use --fuzz-seconds N")?;
        serde_json::from_str(&text)?
    };
    let advisories = crate::deny::run()?;
    let page = security_md(&figures, &outcomes, advisories.as_deref())?;
    std::fs::write("SECURITY.md", page)?;
    println!("\nwritten: SECURITY.md");
    Ok(())
}

fn figures(dir: &Path, name: &str) -> anyhow::Result<Value> {
    let path: PathBuf = dir.join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{} was not written by its test", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn security_md(dir: &Path, fuzz: &[Outcome], advisories: Option<&str>) -> anyhow::Result<String> {
    let flood = figures(dir, "flood")?;
    let flood_audit = figures(dir, "flood_audit")?;
    let storm = figures(dir, "storm")?;
    let restart = figures(dir, "restart")?;
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let mut s = String::from("# Security\n\n");
    s.push_str(
        "Written by `cargo xtask report` from one run of the hardening tests and the fuzz \
         targets on this machine (2 cores, everything on loopback). Every row is a test that \
         passed in that run; the numbers are what it measured.\n\n",
    );
    s.push_str("## Figures\n\n| check | cases | result |\n|---|---|---|\n");
    s.push_str(
        "| Bad-certificate matrix (`tests/tests/bad_certificates.rs`) | 12: expired, not yet \
         valid, serverAuth-only EKU, KeyUsage without digitalSignature, foreign CA, revoked, \
         no certificate, CA:false certificate as issuer, RSA-1024 key, TLS 1.0, TLS 1.1, TLS \
         1.2 with CBC (non-AEAD) suites only | 12 refused before CONNACK, each with its own \
         audit reason and metric label (`expired`, `not_yet_valid`, `bad_eku`, \
         `bad_key_usage`, `unknown_ca`, `revoked`, \
         `no_client_certificate`, `issuer_not_a_ca`, `weak_key`, `unsupported_tls_version` ×2, \
         `no_shared_cipher_suite`) |\n",
    );
    s.push_str(&format!(
        "| Slow-handshake flood (`gateway/tests/flood.rs`) | {} silent TCP connections + {} \
         trickling one byte a second, from 40 other loopback addresses | a device connecting \
         meanwhile: p50 {:.1} ms, p99 {:.1} ms (quiet: p50 {:.1} ms); gateway RSS {:.0} → {:.0} \
         MiB; every slow connection cut at the 4 s handshake timeout; its {} refusals \
         accounted for in {} audit records (rate limited per source, the rest counted in \
         summaries) |\n",
        flood["silent"],
        flood["trickling"],
        f(&flood, "device_p50_ms"),
        f(&flood, "device_p99_ms"),
        f(&flood, "quiet_p50_ms"),
        f(&flood, "rss_before_kib") / 1024.0,
        f(&flood, "rss_flood_kib") / 1024.0,
        flood_audit["refusals"],
        flood_audit["records"],
    ));
    s.push_str(&format!(
        "| Connect storm (`gateway/tests/storm.rs`) | {} devices reconnecting at once from {} \
         addresses, default per-IP limits | {} back; all within {:.1} s (p50 {:.1} s); {} \
         retried; {} turned away by the per-IP limit |\n",
        storm["devices"],
        storm["addresses"],
        storm["back"],
        f(&storm, "all_back_ms") / 1000.0,
        f(&storm, "p50_ms") / 1000.0,
        storm["retried"],
        storm["ip_rate_limited"],
    ));
    s.push_str(
        "| Authenticated abuse (`tests/tests/abuse.rs`) | a valid device: 300 KiB packet, \
         1,000-publish burst, SUBSCRIBE `#`, 2,000 subscriptions, 300 open QoS 2 exchanges, \
         MQTT 5 topic alias | closed (packet too large), closed (rate limited), refused, 100 \
         granted / 1,900 refused, closed (rate limited), DISCONNECT 0x94; a bystander's 160 \
         QoS 1 messages during all of it: 160 acknowledged, 160 delivered |\n",
    );
    s.push_str(&format!(
        "| Gateway `kill -9` under load (`gateway/tests/restart.rs`) | {} devices sending {} QoS 1 \
         messages each, a backend subscribed, the gateway killed mid-load and restarted | {} devices \
         reconnected on their own; every message acknowledged in the end ({:.1} s); all {} \
         messages acknowledged after the backend resubscribed were delivered; no session received \
         another device's commands. Not delivered: {} messages acknowledged before the backend \
         was back (held in memory when the gateway died, or published with no subscriber) — the \
         guarantee is at-least-once to the gateway, delivery to subscribers online at publish time, \
         no persistence across a crash |\n",
        restart["devices"],
        restart["messages"],
        restart["reconnected"],
        f(&restart, "all_acked_ms") / 1000.0,
        restart["required"],
        restart["lost_before"],
    ));
    s.push_str(
        "| Station crash consistency (`provisioning/tests/crash.rs`) | 20 batches of 1,000 \
         devices killed with SIGKILL at pseudo-random points; a torn audit record; a full disk \
         | after each: registry, audit chain, bundles and CRL consistent; no device id or \
         serial reused; aborted serials on the CRL |\n",
    );
    s.push_str(&format!(
        "| Supply chain (`cargo xtask deny`, policy `deny.toml`) | the workspace, the three board \
         images and the fuzz crate: RustSec advisories, licenses (permissive only), bans (no \
         OpenSSL), sources (crates.io only) | {} |\n",
        match advisories {
            Some(date) => format!(
                "all pass; advisories against the database as of {date}; 4 advisories of \
                 rustls-webpki 0.102 ignored with written reasons (only rumqttc, the test and \
                 backend client, links it, and calls none of its code)"
            ),
            None => "licenses, bans and sources pass; advisories NOT checked (the advisory \
                     database could not be fetched)"
                .to_owned(),
        }
    ));
    s.push_str(&fuzz_table(fuzz));
    s.push_str(THREAT_MODEL);
    Ok(s)
}

/// The fuzzing row of the figures and the table of fuzz targets.
fn fuzz_table(fuzz: &[Outcome]) -> String {
    let mut s = String::new();
    let total: u64 = fuzz.iter().map(|o| o.executions).sum();
    let crashes = fuzz.iter().filter(|o| o.crashed).count();
    s.push_str(&format!(
        "| Fuzzing (`cargo xtask fuzz`) | {} targets | {total} executions, {crashes} crashes |\n\n",
        fuzz.len()
    ));
    s.push_str("| fuzz target | what it feeds | seconds | executions | crashes |\n|---|---|---:|---:|---:|\n");
    for o in fuzz {
        let what = match o.target.as_str() {
            "mqtt_decode" => "MQTT 3.1.1 + 5 codec (gateway and device): no panic, parse → emit → parse round trip",
            "tls_client" => "the device's TLS 1.3 client on a server byte stream: records, alerts, handshake messages",
            "gateway_session" => "client bytes through the gateway session's rules, both versions",
            "bundle" => "identity bundle parser (also with the CRC made right)",
            "gateway_config" => "gateway TOML config loader",
            "csr_intake" => "station CSR intake (PEM/DER) and checks",
            _ => "",
        };
        s.push_str(&format!(
            "| `{}` | {what} | {} | {} | {} |\n",
            o.target,
            o.seconds,
            o.executions,
            u8::from(o.crashed)
        ));
    }
    s
}

const THREAT_MODEL: &str = "
## Threat model

**An attacker on the network** (anyone who can reach the gateway's port).
- Cannot get a session without a certificate from a configured CA: mutual TLS is required
  (TLS 1.3/1.2, ECDHE + AEAD only), the chain, validity, EKU (clientAuth), KeyUsage
  (digitalSignature, when the extension is present), key strength and revocation (of the
  device certificate and of intermediates whose issuer's CRL is configured) are checked
  before any MQTT byte is read.
- Cannot exhaust handshakes by connecting and stalling: the ClientHello is awaited without a
  handshake slot and every handshake has its own timeout; connections are capped in total and
  rate-limited per source address. Can still use bandwidth and, at the connection cap, delay
  new connections — as with any TCP service; put the gateway behind a SYN-cookie capable edge.
- Cannot read or forge traffic (TLS); cannot crash the gateway with malformed MQTT (every
  decoder is fuzzed; a bad packet closes that one connection).
- Cannot use the admin API (sessions, kicks, reloads, metrics) without its bearer token where
  it listens off loopback: the gateway does not start there without a token, nor with a token
  shorter than 16 characters anywhere; the token is compared in constant time.

**A stolen device** (its flash, key and certificate in the attacker's hands).
- Can act as that one device only: the client id must equal the certificate's CN, the ACL
  confines it to `tenants/{tenant}/devices/{device}/…` (publish) and its own `cmd/` topics
  (subscribe); it can never see another device's or tenant's messages.
- Is contained while connected: packet size, publish rate and subscription count are limited
  per session, abuse closes its session, other devices are unaffected (measured above).
- Is cut off by revocation: `fleet-provision revoke` writes a CRL; the gateway reloads it
  within a second and closes the live session (p99 ≈ 30 ms in `BENCHMARKS.md`); reconnects are
  refused with reason `revoked`, and each refusal is audited with the device, tenant and
  serial of the certificate. It cannot renew itself out of revocation, nor churn the registry
  and the CRL: whether it asks the station directly or the gateway relays, the station itself
  renews only the device's current certificate (or, once, the one it was renewed from when
  that answer was lost: a retry that counts against the rate; never an older or revoked one), only
  within the renewal window before it ends (30 days by default, the gateway's threshold;
  else `not_yet_renewable`, 409), and at most 3 times per device in 24 h (counted in the
  registry, so across restarts; else `renewal_rate_limited`, 429 with Retry-After).
- Is not let back in by an older CRL: a validly signed CRL with a lower CRL number or an
  earlier thisUpdate than the one in force from the same issuer (a restored backup, a stale
  sync, someone able to write only that file) is refused as a whole — logged, audited
  (`crl_refused`), counted (`fleet_gateway_crl_rollbacks_total`) — and the newer one stays in
  force; so is dropping the CRL of an issuer that is still a client CA. The comparison is with
  the CRL in force in the running gateway: a restarted gateway takes the CRL on disk as it is.
  The station's own API refuses such a CRL too (and one of another issuer or badly signed),
  even across a restart (the registry knows the last CRL number it wrote): it logs it, keeps
  the newer one in force for its TLS and writes a fresh CRL over the file.
- TLS files are reloaded when their content changes (a write, a rename or a create, settled
  and compared by SHA-256 with what is loaded), on SIGHUP and on an admin reload; reading the
  files (a checksum, a backup, `check-config`) or a reload never triggers another one.
- Cannot pose as the gateway to other devices: devices accept only a certificate for TLS
  servers (serverAuth, not a CA) naming the gateway host, chained to their trust anchor.
- Keys on a board are as safe as the board's flash: without a secure element, a physical
  attacker reads them. Bundles can omit the key for boards that keep it in a secure element.

**An operator at the station API** (a client certificate of the station's CA).
- A tenant's operator (OU=service) acts on its own tenant only: another tenant's device id
  gets exactly the answer of an absent one (404, same body), so it learns nothing about other
  tenants' ids; it names new ids only in its own namespace, `{tenant}-{suffix}` with no `-` in
  the suffix (so `acme` never owns `acme-eu-…`), so it can neither take nor reserve another
  tenant's ids nor move another tenant's counter; generated ids (`{tenant}-000001`, …) never
  collide across tenants, and the gateway, which keys sessions by device id, never sees one
  id in two tenants.
- A fleet operator (OU=operator, `fleet-provision operator-cert`, e.g. the gateway console's
  `[console]` identity) looks up and revokes devices of every tenant and can do nothing else;
  a gateway's relay identity (OU=gateway, on an internet-facing host) can only relay
  renewals. Every revocation through the API is audited with who asked.

**A compromised factory station.**
- Holds the issuing CA key (encrypted at rest with a passphrase; the root key is meant to be
  offline): while compromised it can issue certificates for any device id of its tenants. It
  cannot issue under a root it does not hold, and cannot create a CA (the issuing CA has
  pathlen 0; webpki refuses a CA:false certificate as an issuer — tested above).
- Cannot rewrite history unnoticed: the audit log is hash-chained and anchored;
  `fleet-provision audit verify` reports any edited, removed, reordered or truncated record.
  An attacker with the station *and* the anchor can append convincingly — keep a copy of the
  anchor elsewhere.
- Recovery: revoke the issuing CA at the root, import a new issuing CA (`ca import`), re-issue.

**Not covered here**: denial of service beyond one machine's connection capacity; side
channels on the boards; a review of our dependencies' code beyond `cargo deny` (advisories,
licenses, bans, sources). The RustSec database is fetched from GitHub, which the CI machines
cannot reach: there the test command checks licenses, bans and sources and says that
advisories were not checked.
";
