//! `fleet-host`: what every host-side binary of the fleet (the gateway, the station) starts
//! with, written once: the shutdown signal, the tracing set-up, and hex for serials and
//! fingerprints.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM: the future a server's `run` takes to
/// shut down gracefully. If SIGTERM cannot be listened for, Ctrl-C alone ends it.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Logs to stderr, filtered by `RUST_LOG` or else by `default_filter` (e.g.
/// `"info,rumqttd=warn"`), with colours only when stderr is a terminal. Call once, first thing
/// in `main`; a second call (or another subscriber already set) leaves the first in place.
pub fn init_tracing(default_filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Lowercase hex of `bytes`, as CRL tools, the registry and the audit log print serials and
/// fingerprints.
pub fn hex(bytes: impl AsRef<[u8]>) -> String {
    hex::encode(bytes)
}

/// The bytes a hex string stands for; upper and lower case are both accepted.
pub fn from_hex(text: &str) -> Result<Vec<u8>, hex::FromHexError> {
    hex::decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_in_either_case() {
        assert_eq!(hex([0x00, 0x12, 0xab, 0xff]), "0012abff");
        assert_eq!(hex([]), "");
        assert_eq!(from_hex("0012ABff").unwrap(), [0x00, 0x12, 0xab, 0xff]);
        assert!(from_hex("abc").is_err(), "odd length");
        assert!(from_hex("zz").is_err(), "not hex");
    }

    /// One test, not two: a SIGTERM raised by one test would end another's wait too.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_shutdown_signal_waits_for_sigterm() {
        let mut signal = tokio::spawn(shutdown_signal());
        let early = tokio::time::timeout(std::time::Duration::from_millis(100), &mut signal).await;
        assert!(early.is_err(), "resolved without a signal");
        // SAFETY: raise(3) only sends a signal to this process, and the task above has
        // installed tokio's SIGTERM handler by now (it ran while the timeout waited), so the
        // process is not terminated.
        let raised = unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(raised, 0);
        tokio::time::timeout(std::time::Duration::from_secs(5), signal)
            .await
            .expect("SIGTERM ends the wait")
            .unwrap();
    }
}
