//! The running device (QEMU, or a real board through probe-rs/espflash) and what its log
//! says.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use super::{Outcome, Target, SLOT_A};
use crate::probe;

/// Reads the device's `measure:` lines: the first connection's, and a reconnect's.
pub(super) fn measurements(vm: &Device, out: &mut Outcome) {
    let lines: Vec<String> = vm
        .log()
        .into_iter()
        .filter(|l| l.contains("measure: handshake"))
        .collect();
    let number_after = |line: &str, key: &str| -> Option<u64> {
        line.split(key)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    if let Some(first) = lines.first() {
        out.handshake_instructions = number_after(first, "busy ");
        out.peak_stack_bytes = number_after(first, "peak stack ");
    }
    out.reconnect_instructions = lines.get(1).and_then(|l| number_after(l, "busy "));
}

/// A running device — QEMU, or a real board through probe-rs/espflash — whose log (semihosting,
/// RTT or serial) is collected line by line.
pub struct Device {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    more: Arc<Notify>,
    reader: tokio::task::JoinHandle<()>,
}

impl Device {
    /// Starts the device on `target` with `bundle` as its identity (slot A). With
    /// `count_instructions`, QEMU runs with `-icount shift=0`: one instruction is one virtual
    /// nanosecond, so the firmware's busy-time figures are instruction counts (idle time
    /// then runs slower than real time, so only the measurement scenario uses it).
    pub async fn start(
        target: &Target,
        bundle: &Path,
        count_instructions: bool,
    ) -> std::io::Result<Device> {
        let mut command = match target {
            Target::Qemu { qemu, image } => {
                let mut c = Command::new(qemu);
                if count_instructions {
                    c.args(["-icount", "shift=0"]);
                }
                c.args(["-machine", "mps2-an386", "-cpu", "cortex-m4", "-nographic"])
                    .args(["-monitor", "none", "-serial", "null"])
                    .args(["-semihosting-config", "enable=on,target=native"])
                    // User-mode networking only: no tap device, nothing leaves the machine.
                    .args(["-nic", "user,model=lan9118"])
                    .arg("-device")
                    .arg(format!("loader,file={},addr={SLOT_A:#x}", bundle.display()))
                    .arg("-kernel")
                    .arg(image);
                c
            }
            Target::Probe { board, image, .. } => {
                probe::flash_and_run(board, image, bundle).await?
            }
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let more = Arc::new(Notify::new());
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (l, m) = (lines.clone(), more.clone());
        let reader = tokio::spawn(async move {
            let push = |line: String| {
                l.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), line));
                m.notify_waiters();
            };
            let mut out = stdout.map(|s| BufReader::new(s).lines());
            let mut err = stderr.map(|s| BufReader::new(s).lines());
            loop {
                tokio::select! {
                    Some(Ok(Some(line))) = async { match out.as_mut() { Some(o) => Some(o.next_line().await), None => None } } => push(line),
                    Some(Ok(Some(line))) = async { match err.as_mut() { Some(e) => Some(e.next_line().await), None => None } } => push(format!("stderr: {line}")),
                    else => break,
                }
            }
        });
        Ok(Device {
            child,
            lines,
            more,
            reader,
        })
    }

    /// The log so far.
    pub fn log(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, l)| l.clone())
            .collect()
    }

    pub(super) fn tail(&self, n: usize) -> Vec<String> {
        let all = self.log();
        all[all.len().saturating_sub(n)..].to_vec()
    }

    /// Waits for a log line at index `from` or later containing `needle`; returns its index,
    /// the line and when it arrived.
    pub async fn wait_for(
        &self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Option<(usize, String, Instant)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.more.notified();
            {
                let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((i, (at, l))) = lines
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, (_, l))| l.contains(needle))
                {
                    return Some((i, l.clone(), *at));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// Stops the device's process (QEMU or the probe tool we started, by its handle).
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        self.reader.abort();
    }
}

pub(super) fn count(vm: &Device, needle: &str) -> u32 {
    vm.log().iter().filter(|l| l.contains(needle)).count() as u32
}

pub(super) fn backoffs(vm: &Device) -> Vec<u64> {
    vm.log()
        .iter()
        .filter_map(|l| {
            l.split("reconnecting in ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect()
}
