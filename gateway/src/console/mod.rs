//! The fleet console: a web page served by the admin listener at `/`.
//!
//! The page itself (HTML, CSS and JavaScript from `gateway/console/`, embedded in the binary)
//! loads without a token: it holds no fleet data. Every byte of fleet data comes from the
//! JSON endpoints below, which sit behind the admin API's bearer token like every other
//! admin route:
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/console/stats` | counters and per-second rates (connects, refusals, messages in/out, sessions by tenant), sampled every second from the gateway's metrics; in a cluster, also every gateway's session count |
//! | `GET /v1/console/sessions` | live sessions, searched and paged, with their MQTT version; in a cluster, every gateway's, each with the gateway holding it |
//! | `GET /v1/console/devices/{device}` | a device's live sessions (in a cluster, on whichever gateway) and the audit records naming it |
//! | `GET /v1/console/certificates` | expiry histogram of connected clients, devices due for renewal |
//! | `GET /v1/console/reasons` | every refusal reason in plain words (the table `doctor` uses) |
//! | `GET /v1/console/station/devices/{device}` | the device's certificate history, from the station (`[console]`) |
//! | `POST /v1/console/station/devices/{device}/revoke` | revoke it through the station, as the `[console]` operator |
//! | `GET /v1/audit` | the audit log, newest first, filtered, bounded in bytes and lines |
//!
//! The console counts nothing itself: rates are differences of the counters `/metrics`
//! exposes (read back from their exposition), sessions come from the session registry (and,
//! in a cluster, from the location entries every gateway keeps in the control bucket) and
//! refusals from the audit file. A Kick of a session another gateway holds is forwarded to
//! it by the admin API's kick.

mod api;
mod assets;
pub mod explain;
pub mod exposition;
pub mod feed;
pub mod openapi;
pub mod rows;
mod station;
pub mod stats;

pub use station::ConsoleStation;

use std::sync::{Arc, Mutex, Weak};

use axum::Router;

use crate::state::Shared;
use exposition::Counters;
use stats::{History, Sample};

/// The console's state next to the gateway's.
pub struct Console {
    shared: Arc<Shared>,
    history: Mutex<History>,
    /// `None`: no station configured; `Some(Err)`: configured but unusable (why).
    station: Option<Result<station::Station, String>>,
}

impl Console {
    fn new(shared: &Arc<Shared>) -> Console {
        let station = shared.config.console.as_ref().map(station::Station::load);
        if let Some(Err(e)) = &station {
            tracing::error!(error = %e, "console: the station cannot be reached for certificate history and revocation");
        }
        Console {
            shared: shared.clone(),
            history: Mutex::default(),
            station,
        }
    }

    /// The gateway's counters now (the expiry histogram over `sessions`).
    fn counters(&self, sessions: &[crate::registry::SessionInfo]) -> Counters {
        Counters::read(&self.shared.render_metrics(sessions))
    }

    /// Takes a sample if the last one is a period old.
    fn sample_if_due(&self) {
        let now = stats::unix_now();
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.due(now) {
            history.push(Sample {
                at: now,
                counters: self.counters(&[]),
            });
        }
    }
}

/// Samples the counters every [`stats::PERIOD`] for as long as the console exists.
fn spawn_sampler(console: Weak<Console>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        // Without a runtime the stats endpoint samples on each request instead.
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(stats::PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match console.upgrade() {
                Some(c) => c.sample_if_due(),
                None => return,
            }
        }
    });
}

/// The console's JSON endpoints, to merge into the admin router before its token check.
pub fn api<S>(shared: &Arc<Shared>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let console = Arc::new(Console::new(shared));
    spawn_sampler(Arc::downgrade(&console));
    api::router(console)
}

/// The admin router with the console's page (HTML, CSS, JavaScript) added outside its token
/// check: the page holds no data and asks for the token itself.
pub fn with_shell(admin: Router) -> Router {
    admin.merge(assets::shell())
}
