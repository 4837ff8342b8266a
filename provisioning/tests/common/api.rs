//! The station API over real mutual TLS, for the integration tests: a running server, client
//! identities, requests.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use fleet_provision::serve::{Options, Server};
use fleet_provision::{bundle_to_pem, Passphrase, RegistryLocation, RenewalPolicy, Station};
use http_body_util::{BodyExt, Full};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::oneshot;

/// A client identity as PEM (certificate, PKCS#8 key).
#[derive(Clone)]
pub struct Identity {
    pub cert: String,
    pub key: String,
}

pub fn service_identity(st: &Station, name: &str, tenant: &str) -> Identity {
    let files = st.issue_service_cert(name, tenant).unwrap();
    Identity {
        cert: std::fs::read_to_string(files.cert_path).unwrap(),
        key: std::fs::read_to_string(files.key_path).unwrap(),
    }
}

pub fn device_identity(bundle_path: &Path) -> Identity {
    let bytes = std::fs::read(bundle_path).unwrap();
    let b = fleet_protocol::bundle::Bundle::parse(&bytes).unwrap();
    let (cert, key) = bundle_to_pem(&b).unwrap();
    Identity { cert, key }
}

pub struct Running {
    pub addr: SocketAddr,
    root: Vec<u8>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn start(dir: &Path, grace: time::Duration) -> Running {
        Running::start_with(dir, grace, RenewalPolicy::default()).await
    }

    pub async fn start_with(dir: &Path, grace: time::Duration, policy: RenewalPolicy) -> Running {
        let station = Station::open(dir, None::<&Passphrase>).unwrap();
        Running::serve(station, grace, policy).await
    }

    /// A server on the station in `dir` with its registry at `registry`, opened here (in
    /// the async context, as an embedding application might).
    pub async fn start_at(dir: &Path, registry: &RegistryLocation) -> Running {
        let station = Station::open_at(dir, None::<&Passphrase>, registry).unwrap();
        Running::serve(station, time::Duration::hours(1), RenewalPolicy::default()).await
    }

    async fn serve(station: Station, grace: time::Duration, policy: RenewalPolicy) -> Running {
        let root = station.root_ca().cert_der.clone();
        let server = Server::bind_with(
            station,
            Options {
                listen: "127.0.0.1:0".parse().unwrap(),
                hosts: vec!["localhost".into()],
                grace,
                validity_days: 30,
            },
            policy,
        )
        .await
        .unwrap();
        let addr = server.local_addr();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Running {
            addr,
            root,
            stop: Some(tx),
            task,
        }
    }

    /// Stops the server and waits until it has let go of the station.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap();
    }

    /// One HTTPS request; `Err` when TLS or HTTP fails (e.g. a revoked client certificate).
    pub async fn call(
        &self,
        who: Option<&Identity>,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String), String> {
        let (status, _, body) = self.call_with_headers(who, method, path, body).await?;
        Ok((status, body))
    }

    /// One HTTPS request, with the response headers.
    pub async fn call_with_headers(
        &self,
        who: Option<&Identity>,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, hyper::HeaderMap, String), String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(self.root.clone())).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match who {
            Some(id) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(id.cert.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap(),
                    PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(conn);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
    }

    pub async fn json(
        &self,
        who: Option<&Identity>,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let (status, text) = self
            .call(who, method, path, body.to_string().into_bytes())
            .await
            .unwrap();
        let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, value)
    }
}

pub fn new_csr_pem() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    (key, csr)
}

/// A gateway's client identity (subject OU=gateway): it relays renewals.
pub fn gateway_identity(st: &Station, name: &str) -> Identity {
    let files = st.issue_gateway_client_cert(name).unwrap();
    Identity {
        cert: std::fs::read_to_string(files.cert_path).unwrap(),
        key: std::fs::read_to_string(files.key_path).unwrap(),
    }
}
