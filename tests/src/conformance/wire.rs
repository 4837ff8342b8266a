//! A raw MQTT client over mutual TLS, driven packet by packet (so acknowledgements can be
//! withheld and connections dropped at any point), encoding and decoding with rumqttc's
//! `mqttbytes` (v4 = 3.1.1, v5) — a codec independent of the gateway's.
//!
//! Every wait is bounded; a timeout or an unexpected packet panics with what was awaited,
//! by which client, and what came instead.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::packet::{
    ack_fields, connack_reason5, connect4, connect5, filter5, is_ack, qos4, qos5, suback4, suback5,
    unsuback5, Ack, ConnAck, Msg, Options, Pkt, Sub, Version,
};
use super::Broker;

/// How long a client waits for a packet it expects.
pub const WAIT: Duration = Duration::from_secs(5);
/// Largest packet the client accepts.
const MAX_PACKET: usize = 1 << 20;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Why a read ended without a packet.
#[derive(Debug)]
pub enum Gone {
    Timeout,
    Closed,
    Malformed(String),
}

/// One client connection.
pub struct Conn {
    pub name: String,
    pub version: Version,
    tls: Tls,
    buf: BytesMut,
    backlog: VecDeque<Pkt>,
}

impl Conn {
    /// Mutual TLS to the broker as identity `name`; nothing sent yet.
    pub async fn open(broker: &Broker, name: &str, version: Version) -> Conn {
        Conn::open_with(broker, name, version, broker.client_config(name)).await
    }

    /// Mutual TLS to the broker with `config` (e.g. a device's identity), called `name` in
    /// failure messages; nothing sent yet.
    pub async fn open_with(
        broker: &Broker,
        name: &str,
        version: Version,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> Conn {
        let connector = tokio_rustls::TlsConnector::from(config);
        let tcp = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(broker.addr))
            .await
            .unwrap_or_else(|_| panic!("{name}: TCP connect to {} timed out", broker.kind))
            .unwrap_or_else(|e| panic!("{name}: TCP connect to {}: {e}", broker.kind));
        let server = ServerName::try_from("localhost").expect("server name");
        let tls = tokio::time::timeout(WAIT, connector.connect(server, tcp))
            .await
            .unwrap_or_else(|_| panic!("{name}: TLS handshake with {} timed out", broker.kind))
            .unwrap_or_else(|e| panic!("{name}: TLS handshake with {}: {e}", broker.kind));
        Conn {
            name: name.to_owned(),
            version,
            tls,
            buf: BytesMut::new(),
            backlog: VecDeque::new(),
        }
    }

    /// Opens, sends CONNECT and asserts an accepting CONNACK; returns it with the connection.
    pub async fn start(
        broker: &Broker,
        name: &str,
        version: Version,
        options: &Options,
    ) -> (Conn, ConnAck) {
        let mut c = Conn::open(broker, name, version).await;
        let ack = c.connect(options).await;
        assert_eq!(ack.code, 0, "{name} ({version}): CONNACK refused: {ack:?}");
        (c, ack)
    }

    /// A clean session with no will, connected.
    pub async fn clean(broker: &Broker, name: &str, version: Version) -> Conn {
        Conn::start(broker, name, version, &Options::default())
            .await
            .0
    }

    async fn write(&mut self, bytes: &[u8]) {
        let written = tokio::time::timeout(WAIT, async {
            self.tls.write_all(bytes).await?;
            self.tls.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{}: write failed: {e}", self.name),
            Err(_) => panic!("{}: write timed out", self.name),
        }
    }

    /// Sends a 3.1.1 packet (the connection must be 3.1.1).
    pub async fn send4(&mut self, p: v4::Packet) {
        assert_eq!(self.version, Version::V4, "{}: a 3.1.1 packet", self.name);
        let mut out = BytesMut::new();
        p.write(&mut out, MAX_PACKET)
            .unwrap_or_else(|e| panic!("{}: encode {p:?}: {e}", self.name));
        self.write(&out).await;
    }

    /// Sends a version 5 packet (the connection must be version 5).
    pub async fn send5(&mut self, p: v5::Packet) {
        assert_eq!(
            self.version,
            Version::V5,
            "{}: a version 5 packet",
            self.name
        );
        let mut out = BytesMut::new();
        p.write(&mut out, None)
            .unwrap_or_else(|e| panic!("{}: encode {p:?}: {e}", self.name));
        self.write(&out).await;
    }

    /// The next whole packet in the buffer, if there is one.
    fn decode(&mut self) -> Result<Option<Pkt>, Gone> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let decoded = match self.version {
            Version::V4 => match v4::Packet::read(&mut self.buf, MAX_PACKET) {
                Ok(p) => Ok(Pkt::V4(p)),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
                Err(e) => Err(format!("{e:?}")),
            },
            // rumqttc refuses a version 5 DISCONNECT without a reason code (remaining length
            // 0), which the spec allows for 0x00 (3.14.2.1).
            Version::V5 if self.buf.starts_with(&[0xE0, 0x00]) => {
                let _ = self.buf.split_to(2);
                Ok(Pkt::V5(v5::Packet::Disconnect(v5::Disconnect::new(
                    v5::DisconnectReasonCode::NormalDisconnection,
                ))))
            }
            Version::V5 => match v5::Packet::read(&mut self.buf, Some(MAX_PACKET as u32)) {
                Ok(p) => Ok(Pkt::V5(p)),
                Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => return Ok(None),
                Err(e) => Err(format!("{e:?}")),
            },
        };
        decoded.map(Some).map_err(Gone::Malformed)
    }

    /// The next packet within `within` (the backlog first).
    pub async fn recv(&mut self, within: Duration) -> Result<Pkt, Gone> {
        if let Some(p) = self.backlog.pop_front() {
            return Ok(p);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(p) = self.decode()? {
                return Ok(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.tls.read(&mut chunk)).await {
                Err(_) => return Err(Gone::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(Gone::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next packet; panics naming `what` on a timeout, a close or a malformed packet.
    pub async fn next(&mut self, what: &str) -> Pkt {
        match self.recv(WAIT).await {
            Ok(p) => p,
            Err(Gone::Timeout) => panic!(
                "{} ({}): nothing within {WAIT:?} while waiting for {what}",
                self.name, self.version
            ),
            Err(Gone::Closed) => panic!(
                "{} ({}): connection closed while waiting for {what}",
                self.name, self.version
            ),
            Err(Gone::Malformed(e)) => panic!(
                "{} ({}): malformed packet while waiting for {what}: {e}",
                self.name, self.version
            ),
        }
    }

    /// The next packet for which `pick` holds; others received meanwhile are kept, in
    /// order, for later reads.
    pub async fn next_where(&mut self, what: &str, pick: impl Fn(&Pkt) -> bool) -> Pkt {
        let mut skipped = VecDeque::new();
        let found = loop {
            let p = self.next(what).await;
            if pick(&p) {
                break p;
            }
            skipped.push_back(p);
        };
        skipped.append(&mut self.backlog);
        self.backlog = skipped;
        found
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn expect_publish(&mut self, what: &str) -> Msg {
        let p = self.next(what).await;
        p.publish()
            .unwrap_or_else(|| panic!("{}: expected PUBLISH ({what}), got {p:?}", self.name))
    }

    /// Nothing arrives for `quiet` (a packet that does is returned, for the failure message).
    pub async fn silent(&mut self, quiet: Duration) -> Result<(), Pkt> {
        match self.recv(quiet).await {
            Ok(p) => Err(p),
            Err(Gone::Timeout) => Ok(()),
            Err(Gone::Closed) => panic!("{}: connection closed while quiet", self.name),
            Err(Gone::Malformed(e)) => panic!("{}: malformed packet: {e}", self.name),
        }
    }

    /// Reads until the broker closes the connection; returns the packets it sent before.
    pub async fn expect_close(&mut self, what: &str) -> Vec<Pkt> {
        let mut before: Vec<Pkt> = self.backlog.drain(..).collect();
        loop {
            match self.recv(WAIT).await {
                Ok(p) => before.push(p),
                Err(Gone::Closed) => return before,
                Err(Gone::Timeout) => panic!(
                    "{}: not closed within {WAIT:?} ({what}); got {before:?}",
                    self.name
                ),
                Err(Gone::Malformed(e)) => panic!("{}: malformed packet ({what}): {e}", self.name),
            }
        }
    }

    /// Drops the network connection without DISCONNECT (an abnormal close for the broker).
    pub fn drop_connection(self) {
        drop(self.tls);
    }

    /// Sends CONNECT (the answer is for the caller to read).
    pub async fn send_connect(&mut self, o: &Options) {
        let id = o.client_id.clone().unwrap_or_else(|| self.name.clone());
        match self.version {
            Version::V4 => self.send4(v4::Packet::Connect(connect4(&id, o))).await,
            Version::V5 => {
                let (c, will) = connect5(&id, o);
                self.send5(v5::Packet::Connect(c, will, None)).await;
            }
        }
    }

    /// Sends CONNECT and returns the CONNACK.
    pub async fn connect(&mut self, o: &Options) -> ConnAck {
        self.send_connect(o).await;
        match self.next("CONNACK").await {
            Pkt::V4(v4::Packet::ConnAck(a)) => ConnAck {
                session_present: a.session_present,
                code: a.code as u8,
            },
            Pkt::V5(v5::Packet::ConnAck(a)) => ConnAck {
                session_present: a.session_present,
                code: connack_reason5(a.code),
            },
            p => panic!("{}: expected CONNACK, got {p:?}", self.name),
        }
    }

    /// Sends SUBSCRIBE and returns the SUBACK's return / reason codes (same packet id).
    pub async fn subscribe(&mut self, pkid: u16, subs: &[Sub]) -> Vec<u8> {
        match self.version {
            Version::V4 => {
                let filters = subs
                    .iter()
                    .map(|s| v4::SubscribeFilter::new(s.filter.clone(), qos4(s.qos)))
                    .collect();
                self.send4(v4::Packet::Subscribe(v4::Subscribe { pkid, filters }))
                    .await;
            }
            Version::V5 => {
                let filters = subs.iter().map(filter5);
                let mut s = v5::Subscribe::new_many(filters, None);
                s.pkid = pkid;
                self.send5(v5::Packet::Subscribe(s)).await;
            }
        }
        let is_suback = |p: &Pkt| {
            matches!(
                p,
                Pkt::V4(v4::Packet::SubAck(_)) | Pkt::V5(v5::Packet::SubAck(_))
            )
        };
        let (id, codes) = match self.next_where("SUBACK", is_suback).await {
            Pkt::V4(v4::Packet::SubAck(a)) => {
                (a.pkid, a.return_codes.iter().map(suback4).collect())
            }
            Pkt::V5(v5::Packet::SubAck(a)) => {
                (a.pkid, a.return_codes.iter().map(suback5).collect())
            }
            p => unreachable!("picked a SUBACK, got {p:?}"),
        };
        assert_eq!(id, pkid, "{}: SUBACK packet id", self.name);
        codes
    }

    /// Subscribes and asserts every filter was granted its requested QoS.
    pub async fn subscribe_ok(&mut self, pkid: u16, subs: &[Sub]) {
        let granted = self.subscribe(pkid, subs).await;
        let asked: Vec<u8> = subs.iter().map(|s| s.qos).collect();
        assert_eq!(granted, asked, "{}: SUBACK for {subs:?}", self.name);
    }

    /// Sends UNSUBSCRIBE and returns the UNSUBACK's reason codes (none in 3.1.1).
    pub async fn unsubscribe(&mut self, pkid: u16, filters: &[&str]) -> Vec<u8> {
        let topics: Vec<String> = filters.iter().map(|f| (*f).to_owned()).collect();
        match self.version {
            Version::V4 => {
                self.send4(v4::Packet::Unsubscribe(v4::Unsubscribe { pkid, topics }))
                    .await
            }
            Version::V5 => {
                self.send5(v5::Packet::Unsubscribe(v5::Unsubscribe {
                    pkid,
                    filters: topics,
                    properties: None,
                }))
                .await
            }
        }
        let is_unsuback = |p: &Pkt| {
            matches!(
                p,
                Pkt::V4(v4::Packet::UnsubAck(_)) | Pkt::V5(v5::Packet::UnsubAck(_))
            )
        };
        let (id, codes) = match self.next_where("UNSUBACK", is_unsuback).await {
            Pkt::V4(v4::Packet::UnsubAck(a)) => (a.pkid, Vec::new()),
            Pkt::V5(v5::Packet::UnsubAck(a)) => {
                (a.pkid, a.reasons.iter().map(|r| unsuback5(*r)).collect())
            }
            p => unreachable!("picked an UNSUBACK, got {p:?}"),
        };
        assert_eq!(id, pkid, "{}: UNSUBACK packet id", self.name);
        codes
    }

    /// Sends a PUBLISH exactly as `m` says (DUP, RETAIN, QoS, packet id).
    pub async fn send_publish(&mut self, m: &Msg) {
        match self.version {
            Version::V4 => {
                let mut p = v4::Publish::new(m.topic.clone(), qos4(m.qos), m.payload.clone());
                p.dup = m.dup;
                p.retain = m.retain;
                p.pkid = m.pkid;
                self.send4(v4::Packet::Publish(p)).await;
            }
            Version::V5 => {
                let mut p = v5::Publish::new(m.topic.clone(), qos5(m.qos), m.payload.clone(), None);
                p.dup = m.dup;
                p.retain = m.retain;
                p.pkid = m.pkid;
                self.send5(v5::Packet::Publish(p)).await;
            }
        }
    }

    /// Publishes `m` and completes its QoS flow as the sender (PUBACK; PUBREC, PUBREL,
    /// PUBCOMP); a QoS 0 publish is followed by a PINGREQ/PINGRESP round trip, so the
    /// broker has read it when this returns.
    pub async fn publish(&mut self, m: &Msg) {
        self.send_publish(m).await;
        match m.qos {
            0 => self.ping().await,
            1 => {
                let ack = self.next_where("PUBACK", is_ack(Ack::PubAck)).await;
                self.check_ack(&ack, m.pkid, "PUBACK");
            }
            _ => {
                let rec = self.next_where("PUBREC", is_ack(Ack::PubRec)).await;
                self.check_ack(&rec, m.pkid, "PUBREC");
                self.pubrel(m.pkid).await;
                let comp = self.next_where("PUBCOMP", is_ack(Ack::PubComp)).await;
                self.check_ack(&comp, m.pkid, "PUBCOMP");
            }
        }
    }

    /// An acknowledgement for `pkid` with a success reason (< 0x80 in version 5).
    pub fn check_ack(&self, p: &Pkt, pkid: u16, what: &str) {
        let (id, ok) =
            ack_fields(p).unwrap_or_else(|| panic!("{}: expected {what}, got {p:?}", self.name));
        assert_eq!(id, pkid, "{}: {what} packet id ({p:?})", self.name);
        assert!(ok, "{}: {what} refused: {p:?}", self.name);
    }

    /// Acknowledges a received message as its receiver (PUBACK; PUBREC, PUBREL, PUBCOMP).
    pub async fn ack(&mut self, m: &Msg) {
        match m.qos {
            0 => {}
            1 => self.puback(m.pkid).await,
            _ => {
                self.pubrec(m.pkid).await;
                let rel = self.next_where("PUBREL", is_ack(Ack::PubRel)).await;
                self.check_ack(&rel, m.pkid, "PUBREL");
                self.pubcomp(m.pkid).await;
            }
        }
    }

    /// The next PUBLISH, acknowledged.
    pub async fn receive(&mut self, what: &str) -> Msg {
        let m = self.expect_publish(what).await;
        self.ack(&m).await;
        m
    }

    pub async fn puback(&mut self, pkid: u16) {
        match self.version {
            Version::V4 => self.send4(v4::Packet::PubAck(v4::PubAck::new(pkid))).await,
            Version::V5 => {
                let ack = v5::PubAck::new(pkid, None);
                self.send5(v5::Packet::PubAck(ack)).await
            }
        }
    }

    pub async fn pubrec(&mut self, pkid: u16) {
        match self.version {
            Version::V4 => self.send4(v4::Packet::PubRec(v4::PubRec::new(pkid))).await,
            Version::V5 => {
                let rec = v5::PubRec::new(pkid, None);
                self.send5(v5::Packet::PubRec(rec)).await
            }
        }
    }

    pub async fn pubrel(&mut self, pkid: u16) {
        match self.version {
            Version::V4 => self.send4(v4::Packet::PubRel(v4::PubRel::new(pkid))).await,
            Version::V5 => {
                let rel = v5::PubRel::new(pkid, None);
                self.send5(v5::Packet::PubRel(rel)).await
            }
        }
    }

    pub async fn pubcomp(&mut self, pkid: u16) {
        match self.version {
            Version::V4 => {
                let comp = v4::PubComp { pkid };
                self.send4(v4::Packet::PubComp(comp)).await
            }
            Version::V5 => {
                let comp = v5::PubComp::new(pkid, None);
                self.send5(v5::Packet::PubComp(comp)).await
            }
        }
    }

    /// PINGREQ, then waits for the PINGRESP (packets before it are kept for later reads).
    pub async fn ping(&mut self) {
        match self.version {
            Version::V4 => self.send4(v4::Packet::PingReq).await,
            Version::V5 => self.send5(v5::Packet::PingReq(v5::PingReq)).await,
        }
        let is_pong = |p: &Pkt| {
            matches!(
                p,
                Pkt::V4(v4::Packet::PingResp) | Pkt::V5(v5::Packet::PingResp(_))
            )
        };
        self.next_where("PINGRESP", is_pong).await;
    }

    /// DISCONNECT (3.1.1), or DISCONNECT with this reason code (5: 0x00 or 0x04); then
    /// closes its side and waits until the broker has closed the connection, so the broker
    /// has handled the DISCONNECT when this returns.
    pub async fn disconnect(mut self, reason: u8) {
        match self.version {
            Version::V4 => self.send4(v4::Packet::Disconnect).await,
            Version::V5 => {
                let code = match reason {
                    0x00 => v5::DisconnectReasonCode::NormalDisconnection,
                    0x04 => v5::DisconnectReasonCode::DisconnectWithWillMessage,
                    r => panic!("a client DISCONNECT reason this suite does not send: {r:#x}"),
                };
                self.send5(v5::Packet::Disconnect(v5::Disconnect::new(code)))
                    .await
            }
        }
        let _ = self.tls.shutdown().await;
        // What was still unread (messages to this client) does not matter here.
        let _unread = self.expect_close("after DISCONNECT").await;
    }
}
