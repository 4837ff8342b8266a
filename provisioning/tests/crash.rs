//! Crash safety: `kill -9` mid-batch, torn audit records and a full disk never leave a device
//! without its certificate (or the reverse), never reuse an id or serial, and keep the audit
//! log verifiable.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{init_cli, request, stderr, stdout};
use fleet_provision::registry::Status;
use fleet_provision::Station;
use sha2::Digest;

/// Checks every invariant the registry promises, after recovery; returns the device ids.
fn check_consistent(dir: &Path) -> (Vec<String>, Vec<String>) {
    let st = Station::open(dir, None).unwrap();
    let certs = st.devices().unwrap();
    let mut by_device: HashMap<&str, usize> = HashMap::new();
    let mut serials = HashSet::new();
    for c in &certs {
        *by_device.entry(&c.device_id).or_default() += 1;
        assert!(
            serials.insert(c.serial_hex.clone()),
            "serial {} twice",
            c.serial_hex
        );
        assert_ne!(
            c.status,
            Status::Reserved,
            "recovery leaves nothing reserved"
        );
    }
    assert!(by_device.values().all(|&n| n == 1), "an id was reused");
    let mut aborted = Vec::new();
    for c in &certs {
        let bin = dir.join(format!("devices/{}.bin", c.device_id));
        let pem = dir.join(format!("devices/{}.pem", c.device_id));
        match c.status {
            Status::Active => {
                // The registry's certificate is the one in the bundle and the PEM file.
                let bundle =
                    std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
                let b = fleet_protocol::bundle::Bundle::parse(&bundle).unwrap();
                let fp = hex::encode(sha2::Sha256::digest(b.cert_der));
                assert_eq!(Some(&fp), c.fingerprint_hex.as_ref(), "{}", c.device_id);
                let pem_text = std::fs::read_to_string(&pem).unwrap();
                assert_eq!(pem::parse(pem_text).unwrap().contents(), b.cert_der);
            }
            Status::Aborted => {
                assert!(
                    !bin.exists() && !pem.exists(),
                    "{} was aborted but has files",
                    c.device_id
                );
                aborted.push(c.serial_hex.clone());
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
    // No certificate file without its device.
    let known: HashSet<String> = certs
        .iter()
        .filter(|c| c.status == Status::Active)
        .map(|c| c.device_id.clone())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir.join("devices")) {
        for e in entries {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let id = name.rsplit_once('.').map_or(name.as_str(), |(id, _)| id);
            assert!(
                known.contains(id),
                "devices/{name} has no active registry entry"
            );
        }
    }
    // Aborted serials are on the CRL, in case they were signed before the crash.
    let crl_pem = std::fs::read_to_string(st.crl_path()).unwrap();
    let crl_der = pem::parse(crl_pem).unwrap().into_contents();
    let (_, crl) = x509_parser::parse_x509_crl(&crl_der).unwrap();
    let listed: HashSet<String> = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    for s in &aborted {
        assert!(listed.contains(s), "aborted serial {s} not on the CRL");
    }
    st.verify_audit()
        .unwrap_or_else(|p| panic!("audit log after recovery: {p:?}"));
    let ids = certs.into_iter().map(|c| c.device_id).collect();
    (ids, aborted)
}

/// `fleet-provision batch` of 1,000 devices into `dir`.
fn batch(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleet-provision"));
    cmd.arg("--dir").arg(dir).args([
        "batch",
        "--count",
        "1000",
        "--tenant",
        "acme",
        "--gateway-host",
        "gw.test",
    ]);
    cmd
}

#[test]
fn kill_dash_nine_mid_batch_loses_nothing_and_reuses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    init_cli(d);
    let mut all_ids = HashSet::new();
    let mut killed_mid_batch = 0;
    let mut aborted_total = 0;
    // 20 batches of 1,000 devices, each killed at a different point of its progress: once it
    // has written `files` of its 2,000 files (0 = as soon as it runs), plus `extra` ms. The
    // points come from a fixed pseudo-random sequence, so a failure replays, and they follow
    // the batch's progress rather than the clock, so a faster or slower machine kills at the
    // same places: before the first chunk commits, between reservation and delivery,
    // mid-signing, mid-writing, late.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let points: Vec<(usize, u64)> = (0..20)
        .map(|_| ((next() % 2000) as usize, next() % 30))
        .collect();
    let devices = d.join("devices");
    let files_in = |dir: &Path| std::fs::read_dir(dir).map_or(0, |e| e.count());
    for (round, (files, extra)) in points.into_iter().enumerate() {
        let before = files_in(&devices);
        let mut child = batch(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while child.try_wait().unwrap().is_none()
            && files_in(&devices) < before + files
            && started.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(extra));
        // SIGKILL: no destructor, no flush, exactly like a power cut for the process.
        child.kill().unwrap();
        let status = child.wait().unwrap();
        if !status.success() {
            killed_mid_batch += 1;
        }
        let (ids, aborted) = check_consistent(d);
        aborted_total = aborted.len();
        for id in ids {
            all_ids.insert(id);
        }
        eprintln!(
            "round {round}: {} after {files} files + {extra} ms, {} device ids so far",
            if status.success() {
                "finished"
            } else {
                "killed"
            },
            all_ids.len()
        );
    }
    assert!(
        killed_mid_batch >= 10,
        "only {killed_mid_batch} of 20 batches were still running at the kill"
    );
    assert!(
        aborted_total > 0,
        "no kill landed between reservation and delivery"
    );

    // The station carries on: new ids come after every id ever handed out.
    let max_before = all_ids.iter().max().cloned().unwrap_or_default();
    let mut st = Station::open(d, None).unwrap();
    let new = st.issue_devices(&request("acme", 3)).unwrap();
    for n in &new {
        assert!(
            n.device_id > max_before,
            "{} reused or went backwards",
            n.device_id
        );
    }
    drop(st);
    check_consistent(d);
}

#[test]
fn a_torn_audit_record_is_cut_off_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut st = common::station(d);
    // Enough records that the station reads only the end of the log when it opens.
    st.issue_devices(&request("acme", 1000)).unwrap();
    drop(st);
    assert!(std::fs::metadata(d.join("audit.log")).unwrap().len() > 256 * 1024);
    // A crash in the middle of writing a record: half a line, no newline, never anchored.
    use std::io::Write;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("audit.log"))
        .unwrap();
    log.write_all(br#"{"seq":99,"ts":1,"prev":"ab"#).unwrap();
    drop(log);
    let st = Station::open(d, None).unwrap();
    assert_eq!(
        st.recovered().torn_bytes,
        br#"{"seq":99,"ts":1,"prev":"ab"#.len()
    );
    assert!(st.verify_audit().is_ok());
    let text = std::fs::read_to_string(d.join("audit.log")).unwrap();
    assert!(
        text.lines().last().unwrap().contains("\"recovery\""),
        "{text}"
    );
}

/// The station on a 1 MiB filesystem that fills up mid-batch, then gets room again.
#[test]
fn a_full_disk_fails_cleanly_and_the_station_recovers() {
    let root = Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        eprintln!(
            "skipped: mounting a small tmpfs needs root (cargo xtask test runs as root in CI)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("station");
    std::fs::create_dir(&mnt).unwrap();
    let bin = env!("CARGO_BIN_EXE_fleet-provision");
    let m = mnt.to_str().unwrap();
    // A private mount namespace: the tmpfs disappears with the shell, nobody else sees it.
    let script = format!(
        "set -u
         mount -t tmpfs -o size=1m tmpfs {m} || exit 90
         {bin} --dir {m} ca init --org Acme --insecure-plaintext-keys >/dev/null || exit 91
         {bin} --dir {m} batch --count 5000 --tenant acme --gateway-host gw.test 2>{o}/full.err
         echo $? >{o}/full.code
         mount -o remount,size=64m {m} || exit 92
         {bin} --dir {m} batch --count 3 --tenant acme --gateway-host gw.test >{o}/after.out 2>{o}/after.err || exit 93
         {bin} --dir {m} audit verify >{o}/verify.out 2>&1 || exit 94
         {bin} --dir {m} devices >{o}/devices.out || exit 95
         ls {m}/devices > {o}/files.out",
        o = dir.path().display()
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare (util-linux) runs");
    assert!(
        out.status.success(),
        "script failed with {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    assert_ne!(
        read("full.code").trim(),
        "0",
        "a batch bigger than the disk cannot succeed"
    );
    let err = read("full.err");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.contains("No space left on device") || last.contains("disk is full"),
        "{err}"
    );
    assert!(
        read("after.err").contains("recovered from an interrupted run")
            || read("after.err").is_empty()
    );
    assert!(
        read("after.out").contains("3 devices issued"),
        "{}",
        read("after.out")
    );
    assert!(
        read("verify.out").contains("audit log OK"),
        "{}",
        read("verify.out")
    );
    // Every active device has both files and nothing else is left.
    let devices = read("devices.out");
    let active = devices.lines().filter(|l| l.contains(" active ")).count();
    let files = read("files.out").lines().count();
    assert!(active >= 3);
    assert_eq!(files, 2 * active, "{devices}\n{}", read("files.out"));
    let _ = stdout(&out);
}
