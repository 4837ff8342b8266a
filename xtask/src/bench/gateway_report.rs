//! The gateway section of BENCHMARKS.md and its chart, from one run's results.

use std::path::Path;

use super::cpu_model;
use super::gateway::{Flow, Measured, Rate, Results};

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// `1234567.8` → `1,234,568`.
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A rate cell: the rate, and the broker's CPU per operation; flagged when the load
/// generator's core was the limit (its CPU share at 95 % or more).
fn rate_cell(r: &Rate, unit: &str) -> String {
    let limit = if r.generator_cpu_share >= 0.95 {
        " (load generator at its core's limit)"
    } else {
        ""
    };
    format!(
        "{}/s · {:.1} µs CPU per {unit}{limit}",
        thousands(r.per_second),
        r.cpu_us_per_op
    )
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

fn mark(ok: bool) -> &'static str {
    if ok {
        " ✓"
    } else {
        " ✗"
    }
}

/// A row from an optional figure of each broker.
fn row<T>(
    out: &mut String,
    measure: &str,
    ours: Option<&T>,
    theirs: Option<&T>,
    cell: impl Fn(&T) -> String,
    value: impl Fn(&T) -> f64,
    target: impl Fn(f64, f64) -> String,
) {
    let (Some(a), Some(b)) = (ours, theirs) else {
        return;
    };
    out.push_str(&format!(
        "| {measure} | {} | {} | {} | {} |\n",
        cell(a),
        cell(b),
        ratio(value(a), value(b)),
        target(value(a), value(b))
    ));
}

fn flow_rate(f: &Flow) -> f64 {
    f.rate.per_second
}

fn idle_rows(s: &mut String, ours: &Results, theirs: &Results) {
    for (a, b) in ours.idle.iter().zip(&theirs.idle) {
        let n = thousands(a.sessions as f64);
        let kib = |x: f64| x / 1024.0;
        s.push_str(&format!(
            "| RSS per idle mTLS session at {n} sessions (keep-alive {} s) | {:.1} KiB | {:.1} KiB | {} | ≤ 12 KiB{} |\n",
            a.keep_alive,
            kib(a.bytes_per_session),
            kib(b.bytes_per_session),
            ratio(a.bytes_per_session, b.bytes_per_session),
            mark(kib(a.bytes_per_session) <= 12.0)
        ));
        let back = |i: &super::gateway::Idle| {
            format!(
                "{:.0} % given back ({:.1} KiB per session kept)",
                i.given_back * 100.0,
                i.rss_closed_kib.saturating_sub(i.rss_before_kib) as f64 * 1024.0
                    / i.sessions as f64
                    / 1024.0
            )
        };
        s.push_str(&format!(
            "| after those {n} sessions closed (5 s) | {} | {} | — | given back{} |\n",
            back(a),
            back(b),
            mark(a.given_back >= 0.9)
        ));
        s.push_str(&format!(
            "| CPU of {n} idle sessions over {} s | {:.1} % of a core | {:.1} % of a core | — | 0 %{} |\n",
            a.idle_seconds,
            a.idle_cpu_share * 100.0,
            b.idle_cpu_share * 100.0,
            mark(a.idle_cpu_share < 0.01)
        ));
    }
}

fn message_rows(s: &mut String, ours: &Results, theirs: &Results) {
    let at_least = |x: f64| move |a: f64, b: f64| format!("≥ {x}×{}", mark(a >= x * b));
    row(
        s,
        "QoS 0, 50 publishers → 1 subscriber, 256 B: deliveries",
        ours.qos0.as_ref(),
        theirs.qos0.as_ref(),
        |f| rate_cell(&f.rate, "message"),
        flow_rate,
        at_least(1.5),
    );
    let lost = |o: &Option<Flow>| o.as_ref().map_or(0, |f| f.lost);
    let ours_lost = lost(&ours.qos1);
    row(
        s,
        "QoS 1, 50 → 1, 256 B, closed loop (16 in flight each): deliveries, lost",
        ours.qos1.as_ref(),
        theirs.qos1.as_ref(),
        |f| {
            format!(
                "{}; {} lost of {} acknowledged",
                rate_cell(&f.rate, "message"),
                thousands(f.lost as f64),
                thousands(f.acknowledged as f64)
            )
        },
        flow_rate,
        |a, b| format!("0 lost, ≥ 1.5×{}", mark(ours_lost == 0 && a >= 1.5 * b)),
    );
    row(
        s,
        "fan-out, QoS 0, 1 publisher → 10 subscribers, 256 B: deliveries",
        ours.fanout.as_ref(),
        theirs.fanout.as_ref(),
        |f| rate_cell(&f.rate, "delivery"),
        flow_rate,
        at_least(1.5),
    );
    if let (Some(a), Some(b)) = (&ours.latency, &theirs.latency) {
        let cell = |l: &super::gateway::Latency| {
            format!(
                "p99 {:.2} ms (p50 {:.2} ms; {} of {} msg/s delivered)",
                l.p99_ms,
                l.p50_ms,
                thousands(l.delivered_per_second),
                thousands(l.offered_per_second)
            )
        };
        s.push_str(&format!(
            "| latency, QoS 0, 50 → 1 at {} msg/s open loop | {} | {} | {} | p99 ≤ Mosquitto's{} |\n",
            thousands(a.offered_per_second),
            cell(a),
            cell(b),
            ratio(a.p99_ms, b.p99_ms),
            mark(a.p99_ms <= b.p99_ms)
        ));
    }
}

/// One figure of a run, if the run measured it.
type Figure = fn(&Results) -> Option<f64>;

fn scaling(s: &mut String, ours: &Measured, theirs: &Measured) {
    let rows: [(&str, Figure); 2] = [
        ("full mTLS connects/s", |r| {
            r.connects.as_ref().map(|c| c.per_second)
        }),
        ("QoS 0, 50 → 1 deliveries/s", |r| {
            r.qos0.as_ref().map(|f| f.rate.per_second)
        }),
    ];
    let mut body = String::new();
    for (what, get) in rows {
        let cells = |m: &Measured| match (get(&m.one_core), get(&m.all_cores)) {
            (Some(one), Some(all)) => format!(
                "{} | {} | {:.2}×",
                thousands(one),
                thousands(all),
                all / one
            ),
            _ => "— | — | —".into(),
        };
        body.push_str(&format!(
            "| {what} | {} | {} |\n",
            cells(ours),
            cells(theirs)
        ));
    }
    if ours.all_cores.connects.is_none() && ours.all_cores.qos0.is_none() {
        return;
    }
    s.push_str(&format!(
        "\n**Multi-core scaling** (separate from the per-core figures above: the broker may use \
         all {} cores and shares them with the unpinned load generator):\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    s.push_str(
        "| measure | fleet-gateway, 1 core | all cores | scaling | mosquitto, 1 core | all cores | scaling |\n\
         |---|---|---|---|---|---|---|\n",
    );
    s.push_str(&body);
}

/// The BENCHMARKS.md section.
pub(super) fn report(ours: &Measured, theirs: &Measured) -> String {
    let (a, b) = (&ours.one_core, &theirs.one_core);
    let mut s = String::from("## Gateway vs Mosquitto, per core\n\n");
    s.push_str(&format!(
        "Written by `cargo xtask bench gateway`: our gateway and Debian's Mosquitto 2 in one run, \
         same P-256 PKI (root → issuing CA → clients; both brokers trust only the root and every \
         client sends a chain of two certificates), same load generator (`fleet-hil bench`, our \
         own MQTT 3.1.1 client on rustls), TLS 1.3 with client certificates required, all on \
         loopback. **Per core:** each broker is pinned to core 1 (`taskset -c 1`) and the load \
         generator to core 0; next to each rate is the broker's CPU time (user + system, from \
         /proc/<pid>/stat) per operation. A rate marked \"load generator at its core's limit\" \
         measures the load generator more than the broker. Each size of idle sessions is \
         measured against a freshly started broker (a process that had held sessions before \
         would lend them the memory it kept), with sessions from 127.0.0.2 onwards (20,000 per \
         source address) with the open-file limit of both processes raised \
         (1,048,576), our `max_connections` at 1,000,000 and Mosquitto's `max_connections -1`; \
         Mosquitto runs with `max_queued_messages 0` and `max_queued_bytes 0` (no limit: with its \
         default it drops QoS 1 messages to online subscribers) and our gateway likewise with \
         per-session queues large enough for the whole test (`queue_messages` 100,000,000, \
         `queue_bytes` 4 GiB; its defaults, 10,000 / 16 MiB, drop the overflow and count it). \
         Each message rate is counted at \
         the subscribers over a {}-second window after a 1-second warm-up. Machine: {}.\n\n",
        a.window_seconds,
        cpu_model()
    ));
    s.push_str(
        "| measure | fleet-gateway | mosquitto | ours / theirs | target (issue 16) |\n|---|---|---|---|---|\n",
    );
    row(
        &mut s,
        "full mTLS connects (TLS 1.3, P-256, client chain of 2; handshake + CONNECT + CONNACK + close, 16 clients)",
        a.connects.as_ref(),
        b.connects.as_ref(),
        |r| rate_cell(r, "connect"),
        |r| r.per_second,
        |x, _| format!("≥ 2,500/s{}", mark(x >= 2500.0)),
    );
    idle_rows(&mut s, a, b);
    message_rows(&mut s, a, b);
    if !a.revocation_ms.is_empty() {
        let p = |q: f64| percentile(&a.revocation_ms, q);
        s.push_str(&format!(
            "| revocation → live session closed, p50 / p99 ({} rounds) | {:.0} ms / {:.0} ms | not supported (CRLs are read at start; no live kick) | — | not worse than before (p99 39 ms){} |\n",
            a.revocation_ms.len(),
            p(50.0),
            p(99.0),
            mark(p(99.0) <= 1000.0)
        ));
    }
    scaling(&mut s, ours, theirs);
    s.push_str("\n![chart](bench/gateway.svg)\n");
    s
}

/// Three panels: connects/s per core, QoS 0 deliveries/s per core, KiB per idle session.
pub(super) fn chart(ours: &Results, theirs: &Results, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (900, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let connects = |r: &Results| r.connects.as_ref().map_or(0.0, |c| c.per_second);
    let qos0 = |r: &Results| r.qos0.as_ref().map_or(0.0, |f| f.rate.per_second);
    let idle = |r: &Results| r.idle.first().map_or(0.0, |i| i.bytes_per_session / 1024.0);
    let data = [
        (
            "mTLS connects/s, 1 core (higher is better)",
            connects(ours),
            connects(theirs),
        ),
        (
            "QoS 0 deliveries/s, 1 core (higher is better)",
            qos0(ours),
            qos0(theirs),
        ),
        (
            "KiB RSS per idle session (lower is better)",
            idle(ours),
            idle(theirs),
        ),
    ];
    for (panel, (title, a, b)) in panels.iter().zip(data) {
        let top = a.max(b) * 1.2 + 1e-9;
        let mut c = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 14))
            .margin(10)
            .x_label_area_size(25)
            .y_label_area_size(55)
            .build_cartesian_2d((0..1).into_segmented(), 0.0..top)?;
        c.configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(0) => "fleet-gateway".into(),
                SegmentValue::CenterOf(1) => "mosquitto".into(),
                _ => String::new(),
            })
            .draw()?;
        c.draw_series(
            [(0, a, BLUE), (1, b, RED)]
                .into_iter()
                .map(|(x, v, color)| {
                    let mut bar = Rectangle::new(
                        [
                            (SegmentValue::Exact(x), 0.0),
                            (SegmentValue::Exact(x + 1), v),
                        ],
                        color.mix(0.7).filled(),
                    );
                    bar.set_margin(0, 0, 12, 12);
                    bar
                }),
        )?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(thousands(1_522.4), "1,522");
        assert_eq!(thousands(53_800.0), "53,800");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(f64::NAN), "—");
        assert_eq!(ratio(3.0, 2.0), "1.50×");
        assert_eq!(ratio(1.0, 0.0), "—");
    }
}
