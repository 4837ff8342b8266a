//! Revocations other stations make of this station's certificates, as they happen.
//!
//! In a shared registry a station revokes any device, but only the station holding the
//! issuing CA that signed a certificate can sign the CRL that lists it. So a revocation
//! notifies (`NOTIFY fleet_revoked`, sent when its transaction commits) every issuer it
//! touched, as `<issuer sha256 hex>:<station>`; `fleet-provision serve` listens
//! (`LISTEN fleet_revoked`) on a connection of its own and writes (and publishes) a fresh CRL
//! when a station other than itself revoked a certificate of its issuer — within the second.
//! A station that is not serving catches up at its next CRL (`crl`, or `serve`'s start).

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Transaction};

use super::postgres::{pg_err, StationIdentity};
use super::target::PostgresTarget;
use crate::error::Error;

/// The notification channel.
const CHANNEL: &str = "fleet_revoked";

/// Tells the stations listening that `device_id`'s certificates revoked at `at` were
/// revoked by `me` (one notification per issuer; delivered at commit).
pub(super) fn notify_revoked(
    tx: &mut Transaction<'_>,
    at_label: &str,
    me: &StationIdentity,
    device_id: &str,
    at: i64,
) -> Result<(), Error> {
    tx.execute(
        "SELECT pg_notify($4, i || ':' || $3::TEXT) FROM (
             SELECT DISTINCT issuer AS i FROM certs
             WHERE device_id = $1 AND status = 'revoked' AND revoked_at = $2) s",
        &[&device_id, &at, &me.station, &CHANNEL],
    )
    .map_err(pg_err(at_label))?;
    Ok(())
}

/// Where to listen for revocations of one station's issuer.
#[derive(Clone)]
pub struct RevocationWatch {
    pub(super) target: PostgresTarget,
    pub(super) me: StationIdentity,
}

/// A connection listening for revocations.
pub struct RevocationFeed {
    client: Client,
    me: StationIdentity,
    at: String,
}

impl RevocationWatch {
    /// Connects and listens. Blocking: call it off any async runtime's threads.
    pub fn connect(&self) -> Result<RevocationFeed, Error> {
        let at = self.target.to_string();
        let mut client = match &self.target.tls {
            Some(tls) => self.target.config.connect(tls.clone()),
            None => self.target.config.connect(postgres::NoTls),
        }
        .map_err(pg_err(&at))?;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .map_err(pg_err(&at))?;
        Ok(RevocationFeed {
            client,
            me: self.me.clone(),
            at,
        })
    }
}

impl RevocationFeed {
    /// Waits up to `within` for notifications; true when another station revoked a
    /// certificate of this station's issuer.
    pub fn wait(&mut self, within: Duration) -> Result<bool, Error> {
        let mut notifications = self.client.notifications();
        let err = pg_err(&self.at);
        let mut ours = false;
        // The first waits; the rest are those that arrived with it.
        let mut next = notifications.timeout_iter(within).next().map_err(&err)?;
        while let Some(n) = next {
            let (issuer, station) = n.payload().split_once(':').unwrap_or((n.payload(), ""));
            ours |= issuer == self.me.issuer && station != self.me.station;
            next = notifications.iter().next().map_err(&err)?;
        }
        Ok(ours)
    }
}
