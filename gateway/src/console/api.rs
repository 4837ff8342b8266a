//! The console's JSON endpoints (see the module table in [`super`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::explain::{Explanation, EXPLANATIONS};
use super::feed::{self, Feed, Filter};
use super::rows::{self, Bucket, Page, PageQuery, SessionRow};
use super::stats::{self, Point};
use super::Console;
use fleet_protocol::bundle::valid_name;

type Shared = State<Arc<Console>>;

pub fn router<S>(console: Arc<Console>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/v1/console/stats", get(stats))
        .route("/v1/console/sessions", get(sessions))
        .route("/v1/console/devices/{device}", get(device))
        .route("/v1/console/certificates", get(certificates))
        .route("/v1/console/reasons", get(reasons))
        .route("/v1/console/station/devices/{device}", get(station_device))
        .route(
            "/v1/console/station/devices/{device}/revoke",
            post(station_revoke),
        )
        .route("/v1/audit", get(audit))
        .layer(axum::middleware::map_response(no_store))
        .with_state(console)
}

/// Fleet data is not kept by browsers or proxies.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

#[derive(Deserialize)]
struct Since {
    /// Only rates after this moment (Unix seconds).
    since: Option<f64>,
}

/// `GET /v1/console/stats`.
#[derive(Serialize)]
struct StatsView {
    /// Unix seconds.
    now: f64,
    /// Live sessions by tenant, and in all.
    sessions: BTreeMap<String, u64>,
    sessions_total: u64,
    /// Totals since the gateway started.
    connects_total: u64,
    refused_total: u64,
    refused_by_reason: BTreeMap<String, u64>,
    messages_in_total: u64,
    messages_out_total: u64,
    /// Rates per sampling interval (one second), oldest first: the last five minutes.
    points: Vec<Point>,
    /// In a cluster: this gateway's name and every live gateway's sessions (the figures
    /// above are this gateway's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterView>,
}

#[derive(Serialize)]
struct ClusterView {
    /// This gateway's `[cluster] name`.
    gateway: String,
    /// Live sessions on each gateway whose heartbeat is current (this one's counted now,
    /// the others' as their last location write says).
    sessions: BTreeMap<String, u64>,
    sessions_total: u64,
}

fn cluster_view(console: &Console, local_sessions: u64) -> Option<ClusterView> {
    let c = console.shared.cluster.as_ref()?;
    let mut sessions: BTreeMap<String, u64> =
        c.control.gateways().into_iter().map(|g| (g, 0)).collect();
    for l in c.control.sessions() {
        if l.gateway != c.name {
            *sessions.entry(l.gateway).or_default() += 1;
        }
    }
    sessions.insert(c.name.clone(), local_sessions);
    Some(ClusterView {
        gateway: c.name.clone(),
        sessions_total: sessions.values().sum(),
        sessions,
    })
}

/// The sessions the console shows: this gateway's and, in a cluster unless `scope=local`,
/// every other live gateway's; with this gateway's cluster name. `Err`: a bad scope (the
/// status and why).
fn session_rows(
    console: &Console,
    scope: Option<&str>,
) -> Result<(Vec<SessionRow>, Option<String>), (StatusCode, String)> {
    let cluster = console.shared.cluster.as_ref();
    let everywhere = match (scope, cluster) {
        (None, _) => cluster.is_some(),
        (Some("local"), _) => false,
        (Some("cluster"), Some(_)) => true,
        (Some("cluster"), None) => {
            return Err((
                StatusCode::NOT_FOUND,
                "scope=cluster: this gateway has no [cluster]".into(),
            ))
        }
        (Some(other), _) => {
            return Err((
                StatusCode::BAD_REQUEST,
                format!("scope={other}: use local or cluster"),
            ))
        }
    };
    let me = cluster.map(|c| c.name.as_str());
    let mut rows: Vec<SessionRow> = console
        .shared
        .sessions
        .list()
        .iter()
        .map(|s| SessionRow::new(s, me))
        .collect();
    if let (Some(c), true) = (cluster, everywhere) {
        rows.extend(
            c.control
                .sessions()
                .iter()
                .filter(|l| l.gateway != c.name)
                .map(SessionRow::located),
        );
    }
    Ok((rows, me.map(str::to_owned)))
}

async fn stats(State(console): Shared, Query(q): Query<Since>) -> Json<StatsView> {
    console.sample_if_due();
    let history = console.history.lock().unwrap_or_else(|p| p.into_inner());
    let latest = history
        .latest()
        .map(|s| s.counters.clone())
        .unwrap_or_default();
    let sessions_total = latest.sessions.values().sum();
    Json(StatsView {
        now: stats::unix_now(),
        cluster: cluster_view(&console, sessions_total),
        sessions_total,
        connects_total: latest.connects,
        refused_total: latest.refused_total(),
        messages_in_total: latest.messages_in,
        messages_out_total: latest.messages_out,
        points: history.points(q.since.unwrap_or(0.0)),
        sessions: latest.sessions,
        refused_by_reason: latest.refused,
    })
}

async fn sessions(State(console): Shared, Query(q): Query<PageQuery>) -> Response {
    match session_rows(&console, q.scope.as_deref()) {
        Ok((all, gateway)) => Json(Page {
            gateway,
            ..rows::page(all, &q)
        })
        .into_response(),
        Err((status, why)) => error(status, why),
    }
}

#[derive(Deserialize)]
struct TenantQuery {
    tenant: Option<String>,
}

/// `GET /v1/console/devices/{device}`.
#[derive(Serialize)]
struct DeviceView {
    device: String,
    /// Its live sessions (one per tenant at most; in a cluster, on whichever gateway holds
    /// them — for a moment during a takeover, on two).
    sessions: Vec<SessionRow>,
    /// In a cluster: this gateway's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<String>,
    /// The newest audit records that name it.
    audit: Feed,
    /// The station's address when certificate history and revocation are available.
    station: Option<String>,
    /// Why they are not, when a station is configured but unusable.
    station_error: Option<String>,
}

async fn device(
    State(console): Shared,
    Path(device): Path<String>,
    Query(q): Query<TenantQuery>,
) -> Response {
    if !valid_name(&device) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{device:?} is not a device id"),
        );
    }
    let (mut sessions, gateway) = match session_rows(&console, None) {
        Ok(found) => found,
        Err((status, why)) => return error(status, why),
    };
    sessions.retain(|s| s.device == device && q.tenant.as_ref().is_none_or(|t| *t == s.tenant));
    sessions.sort_by(|a, b| (&a.tenant, &a.gateway).cmp(&(&b.tenant, &b.gateway)));
    let filter = Filter {
        device: Some(device.clone()),
        tenant: q.tenant,
        limit: Some(50),
        ..Filter::default()
    };
    let audit = match read_audit(&console, filter).await {
        Ok(feed) => feed,
        Err(response) => return response,
    };
    let (station, station_error) = match &console.station {
        None => (None, None),
        Some(Ok(s)) => (Some(s.address().to_owned()), None),
        Some(Err(e)) => (None, Some(e.clone())),
    };
    Json(DeviceView {
        device,
        sessions,
        gateway,
        audit,
        station,
        station_error,
    })
    .into_response()
}

/// `GET /v1/console/certificates`.
#[derive(Serialize)]
struct CertificatesView {
    /// Unix seconds.
    now: i64,
    /// Devices whose certificate ends within this many days are due for renewal.
    threshold_days: u64,
    /// Whether the threshold is `[renewal] threshold_days` (else the default, 30).
    threshold_configured: bool,
    /// Connected clients by days until their certificate expires.
    buckets: Vec<Bucket>,
    /// Connected devices due for renewal, soonest first (at most 500), and how many in all.
    due: Vec<SessionRow>,
    due_total: usize,
    /// The station's address when certificate history and revocation are available.
    station: Option<String>,
}

async fn certificates(State(console): Shared) -> Json<CertificatesView> {
    let sessions = console.shared.sessions.list();
    let counters = console.counters(&sessions);
    let renewal = console.shared.config.renewal.as_ref();
    let threshold = renewal.map_or(30 * 86_400, |r| r.threshold.as_secs());
    let now = stats::unix_now() as i64;
    let (due_total, due) = rows::due(&sessions, now, i64::try_from(threshold).unwrap_or(i64::MAX));
    Json(CertificatesView {
        now,
        threshold_days: threshold / 86_400,
        threshold_configured: renewal.is_some(),
        buckets: rows::buckets(&counters),
        due,
        due_total,
        station: match &console.station {
            Some(Ok(s)) => Some(s.address().to_owned()),
            _ => None,
        },
    })
}

async fn reasons() -> Json<&'static [Explanation]> {
    Json(EXPLANATIONS)
}

async fn audit(State(console): Shared, Query(filter): Query<Filter>) -> Response {
    match read_audit(&console, filter).await {
        Ok(feed) => Json(feed).into_response(),
        Err(response) => response,
    }
}

/// Reads the audit file off the async workers; an empty feed when there is no file.
async fn read_audit(console: &Console, filter: Filter) -> Result<Feed, Response> {
    let Some(path) = console.shared.config.audit_log.clone() else {
        return Ok(Feed::no_file());
    };
    let read = tokio::task::spawn_blocking(move || feed::read(&path, &filter)).await;
    match read {
        Ok(Ok(feed)) => Ok(feed),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(Feed {
            file: true,
            ..Feed::no_file()
        }),
        Ok(Err(e)) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the audit log: {e}"),
        )),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("audit log reader failed: {e}"),
        )),
    }
}

/// The station client, or the status and message saying why there is none.
fn station<'a>(
    console: &'a Console,
    device: &str,
) -> Result<&'a super::station::Station, (StatusCode, String)> {
    if !valid_name(device) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("{device:?} is not a device id"),
        ));
    }
    match &console.station {
        None => Err((
            StatusCode::NOT_FOUND,
            "no station is configured for the console: certificate history and revocation need [console] in the gateway config, with a fleet operator certificate from `fleet-provision operator-cert`".into(),
        )),
        Some(Err(e)) => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the station is configured but unusable: {e}"),
        )),
        Some(Ok(s)) => Ok(s),
    }
}

/// A station answer as the console's: its body when it succeeded, 502 with its status and
/// message when it refused.
fn relay(answer: Result<super::station::Answer, String>) -> Response {
    match answer {
        Ok(a) if (200..300).contains(&a.status) => Json(a.body).into_response(),
        Ok(a) => (
            StatusCode::BAD_GATEWAY,
            Json(serde_json::json!({
                "error": format!(
                    "the station refused ({}): {}",
                    a.status,
                    a.body["error"].as_str().unwrap_or("no reason given")
                ),
                "station_status": a.status,
            })),
        )
            .into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

async fn station_device(State(console): Shared, Path(device): Path<String>) -> Response {
    match station(&console, &device) {
        Ok(s) => relay(s.device(&device).await),
        Err((status, message)) => error(status, message),
    }
}

#[derive(Deserialize)]
struct RevokeBody {
    /// A CRL reason the station knows (`keyCompromise`, `cessationOfOperation`, …).
    reason: Option<String>,
}

async fn station_revoke(
    State(console): Shared,
    Path(device): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    // No body (or an empty one, whatever its content type): the reason is "unspecified".
    let body: Option<RevokeBody> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => Some(b),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not {{\"reason\": \"...\"}}: {e}"),
                )
            }
        }
    };
    let reason = body
        .and_then(|b| b.reason)
        .unwrap_or_else(|| "unspecified".into());
    if reason.len() > 64 || !reason.bytes().all(|c| c.is_ascii_alphabetic()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{reason:?} is not a revocation reason"),
        );
    }
    match station(&console, &device) {
        Ok(s) => {
            tracing::info!(device = %device, reason = %reason, "console: revocation requested from the station");
            relay(s.revoke(&device, &reason).await)
        }
        Err((status, message)) => error(status, message),
    }
}
