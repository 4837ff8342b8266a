//! In a shared registry: a fresh CRL (written and published) within the second when another
//! station revokes a certificate this station's issuing CA signed (see
//! [`crate::registry::RevocationWatch`]). The listening connection is blocking, so it runs
//! on a thread of its own, which signals the server's loop.

use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::registry::RevocationWatch;

/// How long one wait for notifications lasts (the thread notices the server stopped within
/// it).
const WAIT: Duration = Duration::from_millis(500);
/// How long to wait before connecting again after a failure.
const RETRY: Duration = Duration::from_secs(1);

/// Starts the listening thread: it sends on `wake` when a CRL is due, and ends when `wake`
/// is closed (the server stopped). After a lost connection it reconnects and asks for a CRL
/// at once: a revocation may have come while it was not listening.
pub(super) fn listen(watch: RevocationWatch, wake: UnboundedSender<()>) {
    std::thread::spawn(move || {
        let mut reconnecting = false;
        while !wake.is_closed() {
            match watch.connect() {
                Ok(mut feed) => {
                    if reconnecting && wake.send(()).is_err() {
                        return;
                    }
                    tracing::info!("listening for revocations of this station's certificates by other stations");
                    while !wake.is_closed() {
                        match feed.wait(WAIT) {
                            Ok(true) => {
                                if wake.send(()).is_err() {
                                    return;
                                }
                            }
                            Ok(false) => {}
                            Err(e) => {
                                tracing::error!("listening for revocations: {e}; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::error!("listening for revocations: {e}; retrying"),
            }
            reconnecting = true;
            std::thread::sleep(RETRY);
        }
    });
}
