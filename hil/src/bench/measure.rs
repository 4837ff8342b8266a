//! What the load generator reads about the broker from /proc (its CPU time and resident
//! memory), and the progress line it shows while it runs.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::Error;

/// Clock ticks per second of /proc/<pid>/stat's utime and stime.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system, all threads) the process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64, Error> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| Error::Backend(format!("broker process {pid} is gone: {e}")))?;
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| Error::Backend(format!("/proc/{pid}/stat: no ')' in {stat:?}")))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let tick = |i: usize| -> Result<f64, Error> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| Error::Backend(format!("/proc/{pid}/stat: no field {}", i + 3)))
    };
    Ok((tick(11)? + tick(12)?) / ticks_per_second())
}

/// This process's open-file limit (the soft limit in force).
pub fn open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        0
    }
}

/// Resident memory of a process in KiB.
pub fn rss_kib(pid: u32) -> Result<u64, Error> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| Error::Backend(format!("broker process {pid} is gone: {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| Error::Backend(format!("/proc/{pid}/status has no VmRSS")))
}

/// The broker's CPU time and the wall time over one measurement window.
pub struct Window {
    pid: u32,
    cpu: f64,
    own_cpu: f64,
    started: Instant,
}

impl Window {
    pub fn start(pid: u32) -> Result<Window, Error> {
        Ok(Window {
            pid,
            cpu: cpu_seconds(pid)?,
            own_cpu: cpu_seconds(std::process::id())?,
            started: Instant::now(),
        })
    }

    /// `ops` operations happened in the window: their rate and the broker's CPU per one.
    pub fn finish(&self, ops: u64) -> Result<Rate, Error> {
        let seconds = self.started.elapsed().as_secs_f64();
        let cpu = cpu_seconds(self.pid)? - self.cpu;
        let own = cpu_seconds(std::process::id())? - self.own_cpu;
        Ok(Rate {
            ops,
            seconds,
            per_second: ops as f64 / seconds.max(1e-9),
            cpu_seconds: cpu,
            cpu_us_per_op: if ops == 0 {
                f64::NAN
            } else {
                cpu * 1e6 / ops as f64
            },
            cpu_share: cpu / seconds.max(1e-9),
            generator_cpu_share: own / seconds.max(1e-9),
        })
    }
}

/// A rate measured over a window, with the broker's CPU time in that window.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    pub ops: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// The broker's user + system CPU time in the window.
    pub cpu_seconds: f64,
    /// The broker's CPU time per operation, microseconds.
    pub cpu_us_per_op: f64,
    /// The broker's CPU time / wall time: 1.0 is one core busy.
    pub cpu_share: f64,
    /// The load generator's own CPU time / wall time: near 1.0 on its one core, the rate
    /// may be the load generator's limit rather than the broker's.
    pub generator_cpu_share: f64,
}

/// The progress line of one phase: a spinner with the phase's name, what it has done so far,
/// the time spent and the phase's bound.
pub struct Progress(ProgressBar);

impl Progress {
    pub fn phase(target: &str, what: &str, bound: Duration) -> Progress {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{prefix}] {msg} ({elapsed}, bound {len}s)")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_length(bound.as_secs());
        bar.set_prefix(format!("{target}: {what}"));
        if bar.is_hidden() {
            // Not a terminal (a log file, CI): one line per phase instead.
            eprintln!("[{target}] {what} (bound {} s)", bound.as_secs());
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress(bar)
    }

    pub fn say(&self, msg: impl Into<std::borrow::Cow<'static, str>>) {
        self.0.set_message(msg);
    }

    /// Ends the phase, leaving its last line with `result`.
    pub fn done(self, result: impl Into<std::borrow::Cow<'static, str>>) {
        let result = result.into();
        if self.0.is_hidden() {
            eprintln!(
                "[{}] {result} after {:.1} s",
                self.0.prefix(),
                self.0.elapsed().as_secs_f64()
            );
        }
        self.0.finish_with_message(result);
    }
}

/// The `p`th percentile (0–100) of `samples` (nearest rank); NaN when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cpu_time_and_memory() {
        let me = std::process::id();
        let before = cpu_seconds(me).unwrap();
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let used = cpu_seconds(me).unwrap() - before;
        assert!(used > 0.1 && used < 5.0, "{used}");
        assert!(rss_kib(me).unwrap() > 100);
        assert!(cpu_seconds(u32::MAX).is_err());
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
