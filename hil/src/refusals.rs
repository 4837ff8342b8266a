//! Clients the gateway must refuse before CONNACK: a device whose certificate comes from a
//! foreign CA, and a client that presents no certificate at all.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_firmware::device::{App, Device, Options, Stats};
use fleet_firmware::sim;
use fleet_protocol::bundle::Bundle;
use fleet_protocol::mqtt::{Connect, Packet};
use p256::pkcs8::DecodePrivateKey;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Error;

/// What a refused client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub got_connack: bool,
    /// The client-side error, e.g. the TLS alert the gateway sent.
    pub seen: String,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.got_connack {
            write!(f, "ACCEPTED (got CONNACK) — {}", self.seen)
        } else {
            write!(f, "refused before CONNACK — {}", self.seen)
        }
    }
}

/// Reads the gateway's trust anchor (first certificate of a PEM file), DER.
pub fn load_anchor(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    CertificateDer::pem_slice_iter(&bytes)
        .next()
        .and_then(Result::ok)
        .map(|c| c.to_vec())
        .ok_or_else(|| Error::Tls(format!("{}: no certificate", path.display())))
}

struct Silent;

impl App for Silent {
    fn telemetry(&mut self, _seq: u32, _out: &mut [u8]) -> usize {
        0
    }
    fn on_command(&mut self, _t: &str, _p: &[u8], _r: &mut [u8]) -> Option<usize> {
        None
    }
}

/// A device identity signed by a CA the gateway has never seen, with a bundle that trusts the
/// real gateway: the firmware connects, and the gateway must refuse it.
pub async fn foreign_ca_device(
    gateway: SocketAddr,
    host: &str,
    anchor_der: &[u8],
) -> Result<Outcome, Error> {
    let (cert_der, key_sec1) = foreign_identity("intruder-000001", "acme")?;
    let mut buf = vec![0u8; 8192];
    let bundle = Bundle {
        generation: 1,
        device_id: "intruder-000001",
        tenant: "acme",
        cert_der: &cert_der,
        private_key_der: Some(&key_sec1),
        trust_anchor_der: anchor_der,
        gateway_host: host,
        gateway_port: gateway.port(),
        seed: None,
    };
    let n = bundle
        .emit(&mut buf)
        .map_err(|e| Error::Tls(format!("foreign bundle: {e}")))?;
    let bundle = Bundle::parse(&buf[..n]).map_err(|e| Error::Tls(e.to_string()))?;
    let mut stats = Stats::default();
    let mut buffers = Box::new(fleet_firmware::device::Buffers::new());
    let mut outbox =
        fleet_firmware::outbox::Outbox::<1, { fleet_firmware::device::MAX_PAYLOAD }>::new();
    let device = Device {
        bundle: &bundle,
        options: Options::default(),
        app: &mut Silent,
        outbox: &mut outbox,
        buffers: &mut buffers,
        stats: &mut stats,
    };
    let attempt = sim::connect_once(Some(gateway), device);
    let seen = match tokio::time::timeout(Duration::from_secs(15), attempt).await {
        Ok(Ok(done)) => done.to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 15 s".into(),
    };
    Ok(Outcome {
        got_connack: stats.connects > 0,
        seen,
    })
}

/// A TLS client with no certificate sends CONNECT; the gateway must not answer with CONNACK.
pub async fn no_certificate(
    gateway: SocketAddr,
    host: &str,
    anchor_der: &[u8],
) -> Result<Outcome, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(anchor_der.to_vec()))
        .map_err(|e| Error::Tls(e.to_string()))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).map_err(|e| Error::Tls(e.to_string()))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(gateway).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let mut connect = [0u8; 64];
        let n = Packet::Connect(Connect {
            clean_session: true,
            keep_alive: 30,
            client_id: "no-certificate",
            will: None,
            username: None,
            password: None,
        })
        .emit(&mut connect)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        tls.write_all(&connect[..n]).await?;
        tls.flush().await?;
        let mut answer = [0u8; 4];
        let read = tls.read(&mut answer).await?;
        Ok::<_, std::io::Error>(read >= 2 && answer[0] == 0x20)
    };
    Ok(
        match tokio::time::timeout(Duration::from_secs(15), attempt).await {
            Ok(Ok(true)) => Outcome {
                got_connack: true,
                seen: "CONNACK received".into(),
            },
            Ok(Ok(false)) => Outcome {
                got_connack: false,
                seen: "connection closed without CONNACK".into(),
            },
            Ok(Err(e)) => Outcome {
                got_connack: false,
                seen: e.to_string(),
            },
            Err(_) => Outcome {
                got_connack: false,
                seen: "no answer within 15 s".into(),
            },
        },
    )
}

/// A throwaway CA and a device certificate it signed: (certificate DER, SEC1 key DER).
fn foreign_identity(device_id: &str, tenant: &str) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let e = |e: &dyn fmt::Display| Error::Tls(format!("foreign PKI: {e}"));
    let ca_key = KeyPair::generate().map_err(|x| e(&x))?;
    let mut ca = CertificateParams::new(Vec::new()).map_err(|x| e(&x))?;
    ca.distinguished_name
        .push(DnType::CommonName, "Foreign Root CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).map_err(|x| e(&x))?;
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let key = KeyPair::generate().map_err(|x| e(&x))?;
    let mut dev = CertificateParams::new(Vec::new()).map_err(|x| e(&x))?;
    dev.distinguished_name.push(DnType::CommonName, device_id);
    dev.distinguished_name
        .push(DnType::OrganizationName, tenant);
    dev.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = dev.signed_by(&key, &issuer).map_err(|x| e(&x))?;
    let _ = ca_cert;
    let secret = p256::SecretKey::from_pkcs8_der(&key.serialize_der()).map_err(|x| e(&x))?;
    let sec1 = secret.to_sec1_der().map_err(|x| e(&x))?;
    Ok((cert.der().to_vec(), sec1.to_vec()))
}
