//! The TLS files are reloaded when their content changes, and only then: reading them (a
//! checksum, `check-config`) or an admin reload (which reads them itself) used to make an idle
//! gateway reload ~31 times a second, forever. Counted with the reload metric, by trigger.

use std::path::Path;
use std::time::Duration;

use fleet_gateway::Config;
use fleet_provision::Reason;
use fleet_tests::{http, raw, Pki, RunningGateway, TENANT};

/// Long enough for a reload loop to show (it ran every ~30 ms) and for the watcher to settle.
const WATCH: Duration = Duration::from_millis(1500);

/// `fleet_gateway_tls_reloads_total` by `trigger="…",result="…"` label pair.
fn reloads(gw: &RunningGateway) -> Vec<(String, u64)> {
    let text = gw.shared.metrics.render(&[]);
    let mut series: Vec<(String, u64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("fleet_gateway_tls_reloads_total{"))
        .filter_map(|l| l.split_once("} "))
        .map(|(labels, n)| (labels.to_owned(), n.trim().parse().unwrap()))
        .collect();
    series.sort();
    series
}

fn total(series: &[(String, u64)]) -> u64 {
    series.iter().map(|(_, n)| n).sum()
}

/// A gateway.toml for the PKI, with the admin API on a free loopback port.
fn write_config(pki: &Pki) -> std::path::PathBuf {
    let path = pki.path("gateway.toml");
    std::fs::write(
        &path,
        "listen = \"127.0.0.1:0\"\n\
         [tls]\n\
         server_cert = \"gateway/server.pem\"\n\
         server_key = \"gateway/server.key\"\n\
         client_ca = [\"gateway/clients-ca.pem\"]\n\
         crl = [\"crl/issuing.crl.pem\"]\n\
         [admin]\n\
         listen = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    path
}

/// What `sha256sum FILE…` does to the files: opens and reads each one.
fn checksum(files: &[&Path]) {
    let out = std::process::Command::new("sha256sum")
        .args(files)
        .output()
        .expect("sha256sum runs");
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_reloads_do_not_reload_again_and_a_change_reloads_once() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 2);
    let config_file = write_config(&pki);
    let config = Config::from_file(&config_file).expect("config loads");
    let files: Vec<std::path::PathBuf> = config.tls.all().cloned().collect();
    let files: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let gw = RunningGateway::start(config).await;
    let admin = gw.admin.expect("admin listener");
    // Real TLS: both devices are in.
    let mut sessions = Vec::new();
    for b in &bundles {
        sessions.push(raw::connect(&gw, &pki, b, 60).await);
    }
    tokio::time::sleep(WATCH).await;
    assert_eq!(reloads(&gw), [], "an idle gateway does not reload");

    checksum(&files);
    for f in &files {
        std::fs::read(f).unwrap();
    }
    tokio::time::sleep(WATCH).await;
    assert_eq!(reloads(&gw), [], "reading the files is not a change");

    Config::check(&config_file).expect("check-config passes");
    tokio::time::sleep(WATCH).await;
    assert_eq!(reloads(&gw), [], "check-config is not a change");

    let (status, _) = http(admin, "POST", "/v1/reload", None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(WATCH).await;
    assert_eq!(
        reloads(&gw),
        [("trigger=\"admin\",result=\"ok\"".to_owned(), 1)],
        "the admin reload, and nothing after it"
    );

    // Rewriting a file with the same bytes is a write, but not a change of content.
    let key = std::fs::read(files[1]).unwrap();
    std::fs::write(files[1], &key).unwrap();
    tokio::time::sleep(WATCH).await;
    assert_eq!(total(&reloads(&gw)), 1, "same content, no reload");

    // A real change: the station revokes a device and writes a new CRL (atomically).
    let victim = &bundles[0].device_id;
    pki.station.revoke(victim, Reason::KeyCompromise).unwrap();
    let mut kicked = sessions.remove(0);
    raw::closed_within(&mut kicked).await;
    tokio::time::sleep(WATCH).await;
    assert_eq!(
        reloads(&gw),
        [
            ("trigger=\"admin\",result=\"ok\"".to_owned(), 1),
            ("trigger=\"file_change\",result=\"ok\"".to_owned(), 1),
        ],
        "one reload for one change"
    );
    assert!(!gw.has_device(victim));
    assert!(
        gw.has_device(&bundles[1].device_id),
        "the other device stays"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crl_written_in_place_in_pieces_is_reloaded_once() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let config = Config::from_file(&write_config(&pki)).unwrap();
    let crl = config.tls.crl[0].clone();
    // The CRL revoking the device, made now and put in place later.
    let first = std::fs::read(&crl).unwrap();
    pki.station
        .revoke(&bundles[0].device_id, Reason::KeyCompromise)
        .unwrap();
    let revoking = std::fs::read(&crl).unwrap();
    std::fs::write(&crl, &first).unwrap();

    let gw = RunningGateway::start(config).await;
    let mut session = raw::connect(&gw, &pki, &bundles[0], 60).await;
    // Like `cp` or an editor: truncate, then write in more than one piece.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&crl)
        .unwrap();
    let (head, tail) = revoking.split_at(revoking.len() / 2);
    std::io::Write::write_all(&mut f, head).unwrap();
    std::io::Write::flush(&mut f).unwrap();
    // Longer than the watcher's quiet period: a file still open for writing is waited for.
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::io::Write::write_all(&mut f, tail).unwrap();
    drop(f);
    raw::closed_within(&mut session).await;
    tokio::time::sleep(WATCH).await;
    assert_eq!(
        reloads(&gw),
        [("trigger=\"file_change\",result=\"ok\"".to_owned(), 1)],
        "the pieces settle into one reload, of the whole file"
    );
    assert!(gw.sessions.is_empty());
    gw.stop().await;
}
