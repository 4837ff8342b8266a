//! Helpers shared by the station's integration tests.
#![allow(dead_code)]

pub mod api;
pub mod pg;

use std::path::Path;
use std::process::{Command, Output};

use fleet_provision::{BatchRequest, KeyProtection, Station};

pub fn request(tenant: &str, count: u32) -> BatchRequest {
    BatchRequest {
        tenant: tenant.into(),
        count,
        gateway_host: "gateway.test".into(),
        gateway_port: 8883,
        validity_days: 30,
    }
}

pub fn station(dir: &Path) -> Station {
    Station::init(dir, "Acme Corp", KeyProtection::InsecurePlaintext).expect("init")
}

/// The arguments of `batch` issuing `count` devices of tenant acme for gateway gw.test.
pub fn batch_args(count: &str) -> [&str; 7] {
    [
        "batch",
        "--count",
        count,
        "--tenant",
        "acme",
        "--gateway-host",
        "gw.test",
    ]
}

/// Runs the `fleet-provision` binary on `dir`.
pub fn cli(dir: &Path, args: &[&str]) -> Output {
    cli_env(dir, args, &[])
}

/// `ca init` through the command line, with development (plaintext) keys.
pub fn init_cli(dir: &Path) {
    let out = cli(
        dir,
        &["ca", "init", "--org", "Acme", "--insecure-plaintext-keys"],
    );
    assert!(out.status.success(), "ca init: {}", stderr(&out));
}

pub fn cli_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet-provision"));
    cmd.arg("--dir").arg(dir).args(args);
    cmd.env_remove("FLEET_CA_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("fleet-provision runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs openssl (installed by `cargo xtask test`) in `dir`; panics with its output on failure.
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is installed (cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

/// A P-256 key and a CSR for it made by openssl, with extra `req` arguments; returns the DER.
pub fn openssl_csr(dir: &Path, name: &str, curve: &str, extra: &[&str]) -> Vec<u8> {
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    if curve == "rsa" {
        openssl(dir, &["genrsa", "-out", &key, "2048"]);
    } else {
        openssl(
            dir,
            &["ecparam", "-name", curve, "-genkey", "-noout", "-out", &key],
        );
    }
    let mut args = vec!["req", "-new", "-key", &key, "-out", &csr, "-outform", "DER"];
    args.extend_from_slice(extra);
    if !extra.contains(&"-subj") {
        args.extend_from_slice(&["-subj", "/CN=whatever-the-device-says"]);
    }
    openssl(dir, &args);
    std::fs::read(dir.join(csr)).unwrap()
}
