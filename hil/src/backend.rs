//! A backend service: rumqttc over mutual TLS with a service certificate. It subscribes to the
//! tenant's telemetry and acknowledgements and sends commands to devices.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet_protocol::topic::{self, Kind, TooLong};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// A topic of the scheme ([`fleet_protocol::topic`]). `+` as the device builds a filter over
/// every device of a tenant.
pub fn scheme_topic(build: impl FnOnce(&mut String) -> Result<(), TooLong>) -> String {
    let mut topic = String::new();
    // A `String` never runs out of room, so there is no `TooLong` to handle.
    let _ = build(&mut topic);
    topic
}

/// What the backend has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Telemetry messages per device id.
    pub telemetry: HashMap<String, u64>,
    /// Payloads of telemetry messages in arrival order, per device (kept up to 1,000 each).
    pub payloads: HashMap<String, Vec<Vec<u8>>>,
    /// Devices whose command was acknowledged, with the round-trip time.
    pub acked: HashMap<String, Duration>,
    /// Commands sent, by device, with when.
    pub sent: HashMap<String, Instant>,
}

/// A connected backend.
pub struct Backend {
    client: AsyncClient,
    tenant: String,
    observed: Arc<Mutex<Observed>>,
    task: tokio::task::JoinHandle<()>,
}

/// Files of a service identity.
pub struct ServiceIdentity<'a> {
    pub cert_pem: &'a Path,
    pub key_pem: &'a Path,
    /// The CA that issued the gateway's server certificate chain (the root).
    pub server_ca_pem: &'a Path,
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// A rustls client config presenting `cert`/`key` and trusting `ca`.
pub fn client_config(id: &ServiceIdentity<'_>) -> Result<Arc<rustls::ClientConfig>, Error> {
    let tls = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(id.server_ca_pem)?) {
        roots.add(cert.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let chain = CertificateDer::pem_slice_iter(&read(id.cert_pem)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(&read(id.key_pem)?).map_err(|e| tls(&e))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| tls(&e))?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| tls(&e))?;
    Ok(Arc::new(config))
}

impl Backend {
    /// Connects as `client_id` (must equal the service certificate's CN) and subscribes to the
    /// tenant's telemetry and acknowledgements. Returns once the subscription is acknowledged.
    pub async fn connect(
        host: &str,
        port: u16,
        client_id: &str,
        tenant: &str,
        id: &ServiceIdentity<'_>,
    ) -> Result<Backend, Error> {
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                client_config(id)?,
            )));
        let (client, mut events) = AsyncClient::new(options, 1024);
        for filter in [
            scheme_topic(|s| topic::telemetry(s, tenant, "+")),
            scheme_topic(|s| topic::ack(s, tenant, "+")),
        ] {
            client
                .subscribe(filter, QoS::AtLeastOnce)
                .await
                .map_err(|e| Error::Backend(e.to_string()))?;
        }
        // Wait for CONNACK and both SUBACKs before handing the backend out.
        let mut subacks = 0;
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            while subacks < 2 {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        if ack
                            .return_codes
                            .iter()
                            .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                        {
                            return Err(Error::Backend(
                                "gateway refused a backend subscription".into(),
                            ));
                        }
                        subacks += 1;
                    }
                    Ok(_) => {}
                    Err(e) => return Err(Error::Backend(e.to_string())),
                }
            }
            Ok(())
        })
        .await;
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Error::Backend("no SUBACK within 10 s".into())),
        }

        let observed = Arc::new(Mutex::new(Observed::default()));
        let seen = observed.clone();
        let our_tenant = tenant.to_owned();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Some(t) = topic::split(&p.topic).filter(|t| t.tenant == our_tenant)
                        else {
                            continue;
                        };
                        let device = t.device;
                        let mut o = seen.lock().unwrap_or_else(|e| e.into_inner());
                        match t.kind {
                            Kind::Telemetry("") => {
                                *o.telemetry.entry(device.to_owned()).or_default() += 1;
                                let list = o.payloads.entry(device.to_owned()).or_default();
                                if list.len() < 1000 {
                                    list.push(p.payload.to_vec());
                                }
                            }
                            Kind::Ack => {
                                if let Some(at) = o.sent.get(device).copied() {
                                    o.acked.entry(device.to_owned()).or_insert(at.elapsed());
                                }
                            }
                            _ => {}
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Ok(Backend {
            client,
            tenant: tenant.to_owned(),
            observed,
            task,
        })
    }

    /// Sends one command to a device (QoS 1) and records when.
    pub async fn command(&self, device: &str, payload: &[u8]) -> Result<(), Error> {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sent
            .insert(device.to_owned(), Instant::now());
        self.client
            .publish(
                scheme_topic(|s| topic::command(s, &self.tenant, device, "ping")),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .await
            .map_err(|e| Error::Backend(e.to_string()))
    }

    /// Sends a command with a payload of `size` bytes (QoS 0), for load and back-pressure tests.
    pub async fn command_sized(&self, device: &str, size: usize) {
        let _ = self
            .client
            .publish(
                scheme_topic(|s| topic::command(s, &self.tenant, device, "bulk")),
                QoS::AtMostOnce,
                false,
                vec![0x5A; size],
            )
            .await;
    }

    /// A copy of what has been observed so far.
    pub fn observed(&self) -> Observed {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Disconnects cleanly.
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
    }
}
