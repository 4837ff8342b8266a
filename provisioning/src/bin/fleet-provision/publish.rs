//! Publishing every CRL the station writes to the gateway cluster's NATS:
//! `--publish-crl nats://host:port` (or `FLEET_PUBLISH_CRL`), with `--nats-ca` for TLS and
//! `--nats-cert`/`--nats-key` for mutual TLS (see `fleet_provision::publish`).

use std::path::PathBuf;

use clap::Args;
use fleet_provision::publish::Publisher;
use fleet_provision::{Error, Station};

#[derive(Args)]
pub struct PublishArgs {
    /// Also publish every CRL written to this NATS server's JetStream KV bucket, where the
    /// gateways of a cluster watch it (nats://host:port or tls://host:port).
    #[arg(long, global = true, env = "FLEET_PUBLISH_CRL")]
    publish_crl: Option<String>,
    /// The KV bucket the CRLs go to (the gateways' `[cluster] crl_bucket`).
    #[arg(
        long,
        global = true,
        env = "FLEET_PUBLISH_BUCKET",
        default_value = "fleet-crl"
    )]
    publish_bucket: String,
    /// The CA (PEM) of the NATS server's certificate: connect with TLS.
    #[arg(long, global = true, env = "FLEET_NATS_CA")]
    nats_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS to NATS (with --nats-key).
    #[arg(long, global = true, env = "FLEET_NATS_CERT")]
    nats_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS to NATS (with --nats-cert).
    #[arg(long, global = true, env = "FLEET_NATS_KEY")]
    nats_key: Option<PathBuf>,
}

impl PublishArgs {
    /// Where CRLs are published, if anywhere.
    pub fn publisher(&self) -> Result<Option<Publisher>, Error> {
        let invalid = |message: &str| Error::InvalidInput {
            field: "publish-crl",
            message: message.into(),
        };
        let Some(server) = self.publish_crl.as_deref().filter(|s| !s.is_empty()) else {
            if self.nats_ca.is_some() || self.nats_cert.is_some() || self.nats_key.is_some() {
                return Err(invalid(
                    "--nats-ca, --nats-cert and --nats-key need --publish-crl nats://host:port",
                ));
            }
            return Ok(None);
        };
        if !["nats://", "tls://"].iter().any(|s| server.starts_with(s)) {
            return Err(invalid(&format!(
                "{server:?} is not a NATS URL (nats://host:port or tls://host:port)"
            )));
        }
        let client_auth = match (&self.nats_cert, &self.nats_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return Err(invalid("--nats-cert and --nats-key go together")),
        };
        let mut publisher = Publisher::new(server);
        publisher.bucket = self.publish_bucket.clone();
        publisher.ca = self.nats_ca.clone();
        publisher.client_auth = client_auth;
        Ok(Some(publisher))
    }
}

/// Fails (non-zero exit) when the CRL just written was not published, saying that the
/// revocation stands anyway.
pub fn check(station: &mut Station) -> Result<(), Error> {
    match station.take_publish_failure() {
        None => Ok(()),
        Some(e) => {
            eprintln!(
                "fleet-provision: the CRL is written and the registry has every revocation, but the gateways of the cluster do not have it yet; run `fleet-provision crl` with --publish-crl once NATS is reachable"
            );
            Err(e.into())
        }
    }
}
