//! Connection-level measurements: full mTLS connects per second, idle sessions (memory per
//! session, CPU while idle, memory after they close) and revocation → kick.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::client::{mqtt_connect, wait_closed};
use super::measure::{rss_kib, Progress, Rate, Window};
use super::{Mint, Minted};
use crate::Error;

/// Connections per loopback source address: below the kernel's ephemeral port range
/// (32768–60999), so 100,000 sessions use 127.0.0.2 … 127.0.0.6.
const PER_SOURCE: usize = 20_000;

/// The source address of the `i`th idle session.
pub fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i / PER_SOURCE) as u8))
}

/// Full mTLS connects (handshake, CONNECT, CONNACK, DISCONNECT, close) for `seconds`, one
/// loop per identity.
pub async fn connect_rate(
    target: SocketAddr,
    pid: u32,
    ids: &[Minted],
    seconds: u64,
    progress: &Progress,
) -> Result<Rate, Error> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let window = Window::start(pid)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = JoinSet::new();
    for who in ids {
        let (who, done, failed) = (who.clone(), done.clone(), failed.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                match mqtt_connect(target, &who, 30, None).await {
                    Ok(mut tls) => {
                        let _ = tls.write_all(&[0xE0, 0]).await;
                        let _ = tls.shutdown().await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    while !tasks.is_empty() {
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(1), tasks.join_next()).await {
            continue;
        }
        progress.say(format!("{} connects", done.load(Ordering::Relaxed)));
    }
    let rate = window.finish(done.load(Ordering::Relaxed))?;
    let failed = failed.load(Ordering::Relaxed);
    if rate.ops == 0 || failed > rate.ops / 100 {
        return Err(Error::Backend(format!(
            "connects: {} done, {failed} failed",
            rate.ops
        )));
    }
    Ok(rate)
}

/// What idle sessions cost the broker.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub sessions: usize,
    pub keep_alive: u16,
    /// Seconds it took to open them all.
    pub open_seconds: f64,
    pub rss_before_kib: u64,
    pub rss_open_kib: u64,
    /// After every session closed and `settle` seconds.
    pub rss_closed_kib: u64,
    /// Broker RSS growth per open session, bytes.
    pub bytes_per_session: f64,
    /// Of the growth, the part given back after close (1.0: all of it).
    pub given_back: f64,
    /// The broker's CPU share (1.0 = one core) while the sessions sat idle.
    pub idle_cpu_share: f64,
    pub idle_cpu_seconds: f64,
    /// The window the idle CPU was measured over, seconds.
    pub idle_seconds: u64,
}

/// How the idle-session phase runs.
pub struct IdlePlan {
    pub sessions: usize,
    pub keep_alive: u16,
    pub idle_seconds: u64,
    /// Bound on opening them all.
    pub open_bound: Duration,
}

/// Opens `plan.sessions` idle sessions (fresh identities, minted as they go, from
/// 127.0.0.2 onwards), measures the broker's RSS, its CPU over `idle_seconds`, closes them
/// all and measures its RSS again. The client keeps only the TCP socket of each session
/// (the TLS state is dropped after CONNACK): the broker cannot tell, and the load generator
/// stays small at 100,000 sessions.
pub async fn idle(
    target: SocketAddr,
    pid: u32,
    mint: &Arc<Mint>,
    plan: &IdlePlan,
    progress: &Progress,
) -> Result<Idle, Error> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = rss_kib(pid)?;
    let started = Instant::now();
    let open = open_idle(target, mint, plan, progress).await?;
    let open_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_open_kib = rss_kib(pid)?;
    progress.say(format!(
        "{} sessions open; measuring CPU for {} s",
        open.len(),
        plan.idle_seconds
    ));
    let window = Window::start(pid)?;
    tokio::time::sleep(Duration::from_secs(plan.idle_seconds)).await;
    let cpu = window.finish(0)?;
    progress.say("closing");
    drop(open);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_closed_kib = rss_kib(pid)?;
    let grown = rss_open_kib.saturating_sub(rss_before_kib) as f64;
    Ok(Idle {
        sessions: plan.sessions,
        keep_alive: plan.keep_alive,
        open_seconds,
        rss_before_kib,
        rss_open_kib,
        rss_closed_kib,
        bytes_per_session: grown * 1024.0 / plan.sessions as f64,
        given_back: if grown > 0.0 {
            rss_open_kib.saturating_sub(rss_closed_kib) as f64 / grown
        } else {
            f64::NAN
        },
        idle_cpu_share: cpu.cpu_share,
        idle_cpu_seconds: cpu.cpu_seconds,
        idle_seconds: plan.idle_seconds,
    })
}

async fn open_idle(
    target: SocketAddr,
    mint: &Arc<Mint>,
    plan: &IdlePlan,
    progress: &Progress,
) -> Result<Vec<TcpStream>, Error> {
    let deadline = Instant::now() + plan.open_bound;
    let mut open = Vec::with_capacity(plan.sessions);
    let mut set = JoinSet::new();
    let mut next = 0;
    // 64 handshakes in flight at once.
    while open.len() < plan.sessions {
        while next < plan.sessions && set.len() < 64 {
            let (mint, keep_alive, i) = (mint.clone(), plan.keep_alive, next);
            set.spawn(async move {
                let who = mint.identity(&format!("idle-{i:06}"), false)?;
                let tls = mqtt_connect(target, &who, keep_alive, Some(source(i)))
                    .await
                    .map_err(|e| Error::Backend(format!("idle session {i}: {e}")))?;
                Ok::<_, Error>(tls.into_inner().0)
            });
            next += 1;
        }
        let joined = tokio::time::timeout_at(deadline.into(), set.join_next())
            .await
            .map_err(|_| {
                Error::Backend(format!(
                    "only {} of {} idle sessions open after {:?}",
                    open.len(),
                    plan.sessions,
                    plan.open_bound
                ))
            })?;
        match joined {
            Some(Ok(tcp)) => open.push(tcp?),
            Some(Err(e)) => return Err(Error::Backend(e.to_string())),
            None => break,
        }
        if open.len() % 1000 == 0 {
            progress.say(format!("{} of {} sessions open", open.len(), plan.sessions));
        }
    }
    Ok(open)
}

/// Revocation → kick latency, in milliseconds, over `rounds` rounds: a session is opened, the
/// CRL the broker watches is rewritten to revoke it, and the time until the connection is
/// closed is measured.
pub async fn revocation_latency(
    target: SocketAddr,
    mint: &Mint,
    crl_path: &Path,
    rounds: usize,
) -> Result<Vec<f64>, Error> {
    let mut revoked = Vec::new();
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let who = mint.identity(&format!("revoke-{i:04}"), false)?;
        let mut tls = mqtt_connect(target, &who, 600, None)
            .await
            .map_err(|e| Error::Backend(format!("revocation round {i}: {e}")))?;
        revoked.push(who.serial.clone());
        let started = Instant::now();
        mint.write_crl(&revoked, crl_path)?;
        if wait_closed(&mut tls, Duration::from_secs(10))
            .await
            .is_none()
        {
            return Err(Error::Backend(format!(
                "round {i}: the revoked session was not closed in 10 s"
            )));
        }
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_sessions_spread_over_source_addresses() {
        assert_eq!(source(0), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(source(PER_SOURCE - 1), source(0));
        assert_eq!(source(PER_SOURCE), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
        assert_eq!(source(99_999), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)));
        // Each address stays below the ephemeral ports the kernel hands out.
        const { assert!(PER_SOURCE < 60_999 - 32_768) };
    }
}
