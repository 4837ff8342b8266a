//! "Fleet now": the gateway's counters sampled once a second, and the rates between samples.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::exposition::Counters;

/// Samples kept: five minutes at one a second.
pub const KEPT: usize = 300;
/// How far apart samples are.
pub const PERIOD: Duration = Duration::from_secs(1);

/// The counters at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Unix seconds.
    pub at: f64,
    pub counters: Counters,
}

/// Rates over one sampling interval, and the sessions at its end.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Unix seconds at the end of the interval.
    pub t: f64,
    /// Accepted connects per second.
    pub connects: f64,
    /// Refused handshakes and CONNECTs per second.
    pub refusals: f64,
    /// PUBLISH packets per second from clients.
    pub messages_in: f64,
    /// PUBLISH packets per second to clients.
    pub messages_out: f64,
    /// Live sessions by tenant.
    pub sessions: BTreeMap<String, u64>,
}

/// The last [`KEPT`] samples.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl History {
    /// Whether a new sample is due at `now` (Unix seconds).
    pub fn due(&self, now: f64) -> bool {
        self.samples
            .back()
            .is_none_or(|s| now - s.at >= PERIOD.as_secs_f64() * 0.95)
    }

    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() == KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Rates between consecutive samples that end after `since` (Unix seconds).
    pub fn points(&self, since: f64) -> Vec<Point> {
        self.samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .filter(|(_, b)| b.at > since)
            .map(|(a, b)| rate(a, b))
            .collect()
    }
}

fn rate(a: &Sample, b: &Sample) -> Point {
    let dt = (b.at - a.at).max(1e-3);
    // Counters only grow; a smaller value would mean a restart, shown as zero.
    let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 / dt;
    let (x, y) = (&a.counters, &b.counters);
    Point {
        t: b.at,
        connects: per_s(x.connects, y.connects),
        refusals: per_s(x.refused_total(), y.refused_total()),
        messages_in: per_s(x.messages_in, y.messages_in),
        messages_out: per_s(x.messages_out, y.messages_out),
        sessions: y.sessions.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: f64, connects: u64, refused: u64, messages_in: u64) -> Sample {
        let mut counters = Counters {
            connects,
            messages_in,
            ..Counters::default()
        };
        counters.refused.insert("unknown_ca".into(), refused);
        counters.sessions.insert("acme".into(), connects);
        Sample { at, counters }
    }

    #[test]
    fn rates_between_samples() {
        let mut h = History::default();
        assert!(h.due(100.0));
        h.push(sample(100.0, 0, 0, 0));
        assert!(!h.due(100.5));
        assert!(h.due(101.0));
        h.push(sample(101.0, 4, 1, 10));
        h.push(sample(103.0, 6, 5, 30));
        let p = h.points(0.0);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].t, p[0].connects, p[0].refusals, p[0].messages_in),
            (101.0, 4.0, 1.0, 10.0)
        );
        assert_eq!(
            (p[1].t, p[1].connects, p[1].refusals, p[1].messages_in),
            (103.0, 1.0, 2.0, 10.0)
        );
        assert_eq!(p[1].sessions["acme"], 6);
        assert_eq!(h.points(101.0).len(), 1, "only the points after `since`");
        // A counter that went backwards (a restart) is a zero rate, not a huge one.
        h.push(sample(104.0, 0, 0, 0));
        assert_eq!(h.points(103.0)[0].connects, 0.0);
    }

    #[test]
    fn keeps_a_bounded_window() {
        let mut h = History::default();
        for i in 0..KEPT + 50 {
            h.push(sample(i as f64, i as u64, 0, 0));
        }
        assert_eq!(h.points(0.0).len(), KEPT - 1);
        assert_eq!(h.latest().map(|s| s.at), Some((KEPT + 49) as f64));
    }
}
