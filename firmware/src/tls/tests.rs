//! The client against rustls (the gateway's TLS) on a loopback port: handshakes with a client
//! certificate, data both ways, KeyUpdate, handshake messages split over many small records,
//! the chain cache, and refusals on both sides.

extern crate std;

use std::sync::Arc;
use std::vec::Vec;

use embedded_io_adapters::tokio_1::FromTokio;
use p256::pkcs8::DecodePrivateKey;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::socket::SplitSocket;
use crate::x509::tests::{pki, server_params, sign_keyed, Ca, Pki};

/// A deterministic RNG for tests (SHA-256 of a counter).
struct TestRng(u64);

impl rand_core::RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        use sha2::Digest;
        for chunk in dest.chunks_mut(32) {
            self.0 += 1;
            let block = sha2::Sha256::digest(self.0.to_be_bytes());
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for TestRng {}

/// The gateway's and a device's certificates under one root, as the station makes them.
struct Setup {
    pki: Pki,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    device_cert: Vec<u8>,
    device_key: Vec<u8>,
}

fn device_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "dev-1");
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = std::vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = std::vec![ExtendedKeyUsagePurpose::ClientAuth];
    p
}

/// A device certificate from `ca` and its key in the bundle's form (SEC1 DER).
fn device(ca: &Ca) -> (Vec<u8>, Vec<u8>) {
    let (cert, key) = sign_keyed(&device_params(), ca);
    let secret = p256::SecretKey::from_pkcs8_der(&key.serialize_der()).unwrap();
    let mut sec1 = [0u8; crate::csr::SEC1_KEY_LEN];
    let n = crate::csr::write_sec1_key(&secret, &mut sec1).unwrap();
    (cert, sec1[..n].to_vec())
}

fn setup() -> Setup {
    let pki = pki();
    let (server, key) = sign_keyed(&server_params(&["gateway.test"]), &pki.issuing);
    let (device_cert, device_key) = device(&pki.issuing);
    Setup {
        server_chain: std::vec![server.into(), pki.issuing.der.clone().into()],
        server_key: key.serialize_der(),
        device_cert,
        device_key,
        pki,
    }
}

impl Setup {
    fn bundle<'a>(&'a self, anchor: &'a [u8], host: &'a str) -> Bundle<'a> {
        Bundle {
            generation: 1,
            device_id: "dev-1",
            tenant: "acme",
            cert_der: &self.device_cert,
            private_key_der: Some(&self.device_key),
            trust_anchor_der: anchor,
            gateway_host: host,
            gateway_port: 8883,
            seed: None,
        }
    }

    /// A rustls server that requires a client certificate, TLS 1.3 only, with
    /// records of at most `fragment` bytes.
    fn server(&self, fragment: Option<usize>) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        // As the gateway: device certificates chain to the issuing CA it trusts (a device
        // sends its certificate alone).
        roots.add(self.pki.issuing.der.clone().into()).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), key)
            .unwrap();
        config.max_fragment_size = fragment;
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

type Socket = SplitSocket<
    FromTokio<tokio::net::tcp::OwnedReadHalf>,
    FromTokio<tokio::net::tcp::OwnedWriteHalf>,
>;

/// The device side of one test connection: its socket and its record buffers.
struct Client {
    socket: Socket,
    rbuf: [u8; READ_BUFFER],
    wbuf: [u8; WRITE_BUFFER],
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Client {
        let (rd, wr) = TcpStream::connect(addr).await.unwrap().into_split();
        Client {
            socket: SplitSocket::new(FromTokio::new(rd), FromTokio::new(wr)),
            rbuf: [0; READ_BUFFER],
            wbuf: [0; WRITE_BUFFER],
        }
    }

    async fn open<'c>(
        &'c mut self,
        bundle: &Bundle<'_>,
        cache: &ChainCache,
        seed: u64,
    ) -> Result<Connection<'c, &'c Socket>, TlsError> {
        let rng = &mut TestRng(seed);
        Connection::open(
            &self.socket,
            &mut self.rbuf,
            &mut self.wbuf,
            bundle,
            cache,
            rng,
        )
        .await
    }
}

/// Accepts one connection on a port-0 listener and runs `serve` on it; returns the address
/// and the server task (its handshake result).
async fn serve<F, Fut>(
    acceptor: tokio_rustls::TlsAcceptor,
    serve: F,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
)
where
    F: FnOnce(tokio_rustls::server::TlsStream<TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let tls = acceptor.accept(tcp).await?;
        serve(tls).await
    });
    (addr, task)
}

/// Reads until `want` bytes arrived.
async fn read_exact<R: Read>(r: &mut R, want: usize) -> Result<Vec<u8>, R::Error> {
    let mut out = std::vec![0u8; want];
    let mut got = 0;
    while got < want {
        let n = r.read(&mut out[got..]).await?;
        assert!(n > 0, "closed after {got} of {want} bytes");
        got += n;
    }
    Ok(out)
}

/// The server greets, asks for a KeyUpdate, greets again under the new keys, then echoes
/// what the device sends.
async fn greet_update_echo(
    mut tls: tokio_rustls::server::TlsStream<TcpStream>,
) -> std::io::Result<()> {
    tls.write_all(b"hello").await?;
    tls.flush().await?;
    tls.get_mut().1.refresh_traffic_keys().unwrap();
    tls.write_all(b"updated").await?;
    tls.flush().await?;
    let mut buf = [0u8; 4000];
    tls.read_exact(&mut buf).await?;
    tls.write_all(&buf).await?;
    tls.flush().await?;
    Ok(())
}

async fn exchange(
    setup: &Setup,
    fragment: Option<usize>,
    cache: &ChainCache,
) -> Result<(), TlsError> {
    let (addr, server) = serve(setup.server(fragment), greet_update_echo).await;
    let mut client = Client::connect(addr).await;
    let bundle = setup.bundle(&setup.pki.root.der, "gateway.test");
    let mut tls = client.open(&bundle, cache, 1).await?;
    assert_eq!(read_exact(&mut tls, 12).await?, b"helloupdated");
    // 4,000 bytes from the split halves (more than one record's room): the gateway can only
    // read them if the device's KeyUpdate went first.
    let message: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
    let (mut reader, mut writer) = tls.split();
    writer.write_all(&message).await?;
    writer.flush().await?;
    assert_eq!(read_exact(&mut reader, 4000).await?, message);
    server.await.unwrap().unwrap();
    Ok(())
}

#[tokio::test]
async fn handshake_data_and_key_update_against_rustls() {
    let setup = setup();
    exchange(&setup, None, &ChainCache::new(None))
        .await
        .unwrap();
}

#[tokio::test]
async fn handshake_messages_split_over_small_records() {
    let setup = setup();
    exchange(&setup, Some(64), &ChainCache::new(None))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_chain_cache_is_consulted_and_the_signature_always_checked() {
    let setup = setup();
    let cache = ChainCache::new(None);
    exchange(&setup, None, &cache).await.unwrap();
    let cached = cache.get().expect("a verified chain is remembered");
    // The cached key is what the next handshake uses: a marker key in its place makes the
    // gateway's CertificateVerify fail, so the cache was consulted and the signature checked.
    cache.set(Some(VerifiedChain {
        digest: cached.digest,
        key: crate::ec::public_key(&p256::SecretKey::from_slice(&[9u8; 32]).unwrap()),
    }));
    assert_eq!(
        exchange(&setup, None, &cache).await,
        Err(TlsError::BadSignature)
    );
    cache.set(Some(cached));
    exchange(&setup, None, &cache).await.unwrap();
}

/// The device's handshake against a server that does nothing after it, and what the server
/// made of it (its error, in words).
async fn handshake(
    setup: &Setup,
    anchor: &[u8],
    host: &str,
    cache: &ChainCache,
) -> (Result<(), TlsError>, Option<std::string::String>) {
    let (addr, server) = serve(setup.server(None), |_| async { Ok(()) }).await;
    let mut client = Client::connect(addr).await;
    let bundle = setup.bundle(anchor, host);
    let device = client.open(&bundle, cache, 2).await.map(|_| ());
    drop(client);
    let server = server.await.unwrap().err().map(|e| std::format!("{e}"));
    (device, server)
}

/// The device refuses the gateway for `why`, and tells it so: the gateway's error names the
/// `alert`.
async fn refused(
    setup: &Setup,
    cache: &ChainCache,
    anchor: &[u8],
    host: &str,
    why: CertError,
    alert: &str,
) {
    let (device, server) = handshake(setup, anchor, host, cache).await;
    assert_eq!(device, Err(TlsError::Certificate(why)));
    let server = server.unwrap_or_default();
    assert!(server.contains(alert), "{server}");
}

#[tokio::test]
async fn a_wrong_anchor_or_host_is_refused_and_does_not_replace_the_cached_chain() {
    let setup = setup();
    let cache = ChainCache::new(None);
    let (device, server) = handshake(&setup, &setup.pki.root.der, "gateway.test", &cache).await;
    assert_eq!((device, server), (Ok(()), None));
    let good = cache.get();
    // Another root with the same name: the issuing CA's signature is what fails.
    let other = pki();
    refused(
        &setup,
        &cache,
        &other.root.der,
        "gateway.test",
        CertError::BadSignature,
        "BadCertificate",
    )
    .await;
    refused(
        &setup,
        &cache,
        &setup.pki.root.der,
        "other.test",
        CertError::HostMismatch,
        "BadCertificate",
    )
    .await;
    // A root that signed nothing in the chain: unknown_ca.
    let unrelated = crate::x509::tests::root("Unrelated");
    refused(
        &setup,
        &cache,
        &unrelated.der,
        "gateway.test",
        CertError::UntrustedIssuer,
        "UnknownCA",
    )
    .await;
    assert_eq!(cache.get(), good);
}

#[tokio::test]
async fn a_device_the_gateway_does_not_trust_reads_its_alert() {
    let setup = setup();
    let foreign = pki();
    let (cert, key) = device(&foreign.issuing);
    let (addr, server) = serve(setup.server(None), |_| async { Ok(()) }).await;
    let mut client = Client::connect(addr).await;
    let mut bundle = setup.bundle(&setup.pki.root.der, "gateway.test");
    bundle.cert_der = &cert;
    bundle.private_key_der = Some(&key);
    let cache = ChainCache::new(None);
    let mut tls = client.open(&bundle, &cache, 3).await.unwrap();
    let mut buf = [0u8; 16];
    // The foreign issuing CA has our issuing CA's name, so rustls finds an issuer whose
    // signature does not verify: decrypt_error (51).
    assert_eq!(tls.read(&mut buf).await, Err(TlsError::Alert(51)));
    // Logs name the alerts a refused device most often gets.
    assert_eq!(
        std::format!("{}", TlsError::Alert(44)),
        "the gateway sent alert 44 (certificate_revoked)"
    );
    assert_eq!(
        std::format!("{}", TlsError::Alert(51)),
        "the gateway sent alert 51"
    );
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn a_bundle_without_a_key_cannot_connect() {
    let setup = setup();
    let mut bundle = setup.bundle(&setup.pki.root.der, "gateway.test");
    bundle.private_key_der = None;
    let (addr, _server) = serve(setup.server(None), |_| async { Ok(()) }).await;
    let mut client = Client::connect(addr).await;
    let cache = ChainCache::new(None);
    assert!(matches!(
        client.open(&bundle, &cache, 4).await,
        Err(TlsError::Key)
    ));
}

/// The gateway's bytes from memory, in reads of at most 7 bytes.
struct Incoming<'a>(&'a [u8]);

impl embedded_io::ErrorType for Incoming<'_> {
    type Error = core::convert::Infallible;
}

impl Read for Incoming<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let n = self.0.len().min(buf.len()).min(7);
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

fn record(kind: u8, content: &[u8]) -> Vec<u8> {
    let mut r = std::vec![kind, 3, 3];
    r.extend_from_slice(&(content.len() as u16).to_be_bytes());
    r.extend_from_slice(content);
    r
}

#[test]
fn records_are_reassembled_and_what_does_not_fit_is_an_error() {
    let pull = |bytes: &[u8], buf: &mut [u8]| {
        let mut records = Records {
            buf,
            plain: 0,
            filled: 0,
        };
        let mut socket = Incoming(bytes);
        let mut kinds = Vec::new();
        let result = embassy_futures::block_on(async {
            loop {
                kinds.push(records.pull(&mut socket, None).await?);
            }
        });
        (kinds, records.plain, result)
    };
    // A handshake message over three records: the content is kept in front, whole.
    let message = [wire::FINISHED, 0, 0, 4, 1, 2, 3, 4];
    let mut bytes = record(wire::HANDSHAKE, &message[..3]);
    bytes.extend(record(wire::HANDSHAKE, &message[3..6]));
    bytes.extend(record(wire::HANDSHAKE, &message[6..]));
    let mut buf = [0u8; 64];
    let (kinds, kept, result) = pull(&bytes, &mut buf);
    assert_eq!(kinds, [wire::HANDSHAKE; 3]);
    assert_eq!(&buf[..kept], &message);
    // The input ran out after them.
    assert_eq!(result, Err::<(), _>(TlsError::Closed));

    // A record longer than the buffer, alone or after kept content: "too large", not a
    // closed connection or a panic.
    let mut small = [0u8; 16];
    let (_, _, result) = pull(&record(wire::HANDSHAKE, &[0; 12]), &mut small);
    assert_eq!(result, Err(TlsError::RecordTooLarge));
    let mut bytes = record(wire::HANDSHAKE, &[0; 10]);
    bytes.extend(record(wire::HANDSHAKE, &[0; 2]));
    let (kinds, _, result) = pull(&bytes, &mut small);
    assert_eq!((kinds.len(), result), (1, Err(TlsError::RecordTooLarge)));
    // Longer than TLS allows at all.
    let mut huge = std::vec![wire::HANDSHAKE, 3, 3, 0x48, 0x01];
    huge.resize(100, 0);
    assert_eq!(
        pull(&huge, &mut buf).2,
        Err(TlsError::Decode("record longer than TLS allows"))
    );
}
