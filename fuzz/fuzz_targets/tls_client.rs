//! The device's TLS 1.3 client on whatever the "gateway" sends: the handshake message parsers
//! on the raw input, then the whole client — record layer, alerts, the handshake state
//! machine — with the input as the byte stream from the server. No panic, and the client
//! ends with an error once the input runs out.
#![no_main]

use core::convert::Infallible;

use embedded_io_async::{ErrorType, Read, Write};
use fleet_firmware::socket::SplitSocket;
use fleet_firmware::tls::{wire, ChainCache, Connection, READ_BUFFER, WRITE_BUFFER};
use fleet_protocol::bundle::Bundle;
use libfuzzer_sys::fuzz_target;

/// The server's bytes, handed out in reads of 1 to 256 bytes (the first byte picks the size).
struct Incoming<'a> {
    rest: &'a [u8],
    chunk: usize,
}

impl ErrorType for Incoming<'_> {
    type Error = Infallible;
}

impl Read for Incoming<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Infallible> {
        let n = self.rest.len().min(buf.len()).min(self.chunk);
        buf[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Ok(n)
    }
}

/// Where the client's bytes go: nowhere.
struct Sink;

impl ErrorType for Sink {
    type Error = Infallible;
}

impl Write for Sink {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, Infallible> {
        Ok(buf.len())
    }

    async fn flush(&mut self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// A fixed RNG: the client's ephemeral key and random are the same on every run.
struct FixedRng(u8);

impl rand_core::RngCore for FixedRng {
    fn next_u32(&mut self) -> u32 {
        rand_core::impls::next_u32_via_fill(self)
    }
    fn next_u64(&mut self) -> u64 {
        rand_core::impls::next_u64_via_fill(self)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for b in dest {
            self.0 = self.0.wrapping_mul(31).wrapping_add(7);
            *b = self.0;
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl rand_core::CryptoRng for FixedRng {}

fuzz_target!(|data: &[u8]| {
    // Each parser of the gateway's handshake messages, on the raw bytes.
    let _ = wire::parse_handshake(data);
    let _ = wire::parse_server_hello(data);
    let _ = wire::parse_certificate_request(data);
    let _ = wire::parse_certificate_verify(data);
    if let Ok(chain) = wire::parse_certificate(data) {
        chain.for_each(drop);
    }

    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let key = p256::SecretKey::from_slice(&[7u8; 32]).expect("a valid scalar");
    let mut key_der = [0u8; fleet_firmware::csr::SEC1_KEY_LEN];
    let n = fleet_firmware::csr::write_sec1_key(&key, &mut key_der).expect("fits");
    let bundle = Bundle {
        generation: 1,
        device_id: "dev-1",
        tenant: "acme",
        cert_der: b"not a certificate: the gateway never sees it parsed here",
        private_key_der: Some(&key_der[..n]),
        trust_anchor_der: b"no anchor",
        gateway_host: "gateway.test",
        gateway_port: 8883,
        seed: None,
    };
    let socket = SplitSocket::new(
        Incoming {
            rest: stream,
            chunk: usize::from(first) + 1,
        },
        Sink,
    );
    let cache = ChainCache::new(None);
    let (mut rbuf, mut wbuf) = ([0u8; READ_BUFFER], [0u8; WRITE_BUFFER]);
    let opened = embassy_futures::block_on(Connection::open(
        &socket,
        &mut rbuf,
        &mut wbuf,
        &bundle,
        &cache,
        &mut FixedRng(1),
    ));
    // Without the gateway's key the handshake cannot complete: the input runs out or breaks
    // a rule first.
    assert!(opened.is_err());
});
