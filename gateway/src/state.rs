//! The state every connection task, the admin API and the console share.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use tokio_rustls::TlsAcceptor;

use crate::acl::Policy;
use crate::audit::{AuditEvent, AuditLog};
use crate::config::Config;
use crate::hub::Hub;
use crate::identity::Identity;
use crate::limits::PerIp;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::reload::Live;
use crate::tls;

/// State every connection task shares.
pub struct Shared {
    pub config: Config,
    pub policy: Arc<Policy>,
    pub(crate) live: RwLock<Live>,
    /// Held while a reload runs: reloads happen one at a time.
    pub(crate) reloading: Mutex<()>,
    pub sessions: Registry,
    /// The broker core every connection routes through.
    pub hub: Arc<Hub>,
    /// This gateway's link to the cluster (`None`: a single gateway).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Certificate rotation through the station, when configured.
    pub renewal: Option<Arc<crate::renewal::RenewalClient>>,
    pub metrics: Metrics,
    pub audit: AuditLog,
    /// Slots for TLS handshakes in progress.
    pub handshakes: tokio::sync::Semaphore,
    pub(crate) per_ip: PerIp,
}

impl Shared {
    /// The TLS acceptor in force now (reloads replace it; handshakes in flight keep theirs).
    pub fn acceptor(&self) -> TlsAcceptor {
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .acceptor
            .clone()
    }

    /// The Prometheus exposition of the gateway's metrics, with the broker's totals brought
    /// up to date first (what `/metrics` and the console read).
    pub fn render_metrics(&self, sessions: &[crate::registry::SessionInfo]) -> String {
        self.hub.report(&self.metrics);
        if let Some(c) = &self.cluster {
            c.report(&self.metrics);
            self.metrics.crl_source_up.set(i64::from(c.crls.up()));
        }
        {
            let live = self.live.read().unwrap_or_else(|p| p.into_inner());
            for v in live.crls.iter() {
                let labels = crate::metrics::IssuerLabels {
                    issuer: v.issuer.clone(),
                };
                let number = v
                    .number
                    .as_ref()
                    .and_then(|n| i64::try_from(n.clone()).ok())
                    .unwrap_or(-1);
                self.metrics.crl_number.get_or_create(&labels).set(number);
                self.metrics
                    .crl_this_update
                    .get_or_create(&labels)
                    .set(v.this_update.timestamp());
            }
        }
        self.metrics.render(sessions)
    }

    /// Whether the CRLs in force (or, in a cluster, another gateway's) revoke this
    /// identity's certificate.
    pub fn is_revoked(&self, who: &Identity) -> bool {
        if let Some(c) = &self.cluster {
            if c.is_revoked(&who.issuer, &who.serial) {
                return true;
            }
        }
        self.live
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .revoked
            .contains(&who.issuer, &who.serial)
    }

    /// Whether a new connection from `peer` may proceed, given `open` connections; the
    /// refusal reason if not.
    pub(crate) fn admit(&self, peer: SocketAddr, open: usize) -> Option<&'static str> {
        if open >= self.config.limits.max_connections {
            Some("too_many_connections")
        } else if !self.per_ip.allow(peer.ip(), std::time::Instant::now()) {
            Some("ip_rate_limited")
        } else {
            None
        }
    }

    pub(crate) fn refuse_at_accept(&self, peer: SocketAddr, reason: &'static str) {
        self.metrics.connect(Some(reason));
        self.audit_refusal(&AuditEvent::new(
            "refused",
            reason,
            "connection closed at accept".into(),
            peer,
            None,
        ));
    }

    /// Audits a refusal (rate limited per source; see [`crate::audit`]). A handshake refused
    /// because the client's certificate is revoked is recorded with the device, tenant and
    /// serial of that certificate (see [`tls::noting_revoked_certificates`]).
    pub fn audit_refusal(&self, event: &AuditEvent<'_>) {
        let revoked = (event.reason == "revoked" && event.device.is_none())
            .then(tls::refused_as_revoked)
            .flatten()
            .and_then(|der| Identity::from_cert_der(&der, &self.config.service_ou).ok());
        let written = match &revoked {
            Some(who) => self.audit.refusal(&event.clone().with_identity(Some(who))),
            None => self.audit.refusal(event),
        };
        if !written {
            self.metrics.audit_suppressed.inc();
        }
    }
}
