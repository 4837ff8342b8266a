//! A small MQTT 3.1.1 client over mutual TLS for the load generator: our own codec
//! (`fleet-protocol`), so the same bytes go to every broker, with control over the source
//! address, the in-flight window and when acknowledgements are flushed.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fleet_protocol::mqtt::{Connect, Packet, Publish, QoS, Subscribe, SubscribeFilters};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::Minted;

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Largest packet the load generator accepts from a broker.
const MAX_PACKET: usize = 64 * 1024;

fn other(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// TCP from `source` (any loopback address; the port chosen by the kernel) to `target`.
async fn tcp(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let tcp = match source {
        None => TcpStream::connect(target).await?,
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(target).await?
        }
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// mTLS handshake, CONNECT (clean session, client id = the CN), CONNACK 0.
pub async fn mqtt_connect(
    target: SocketAddr,
    who: &Minted,
    keep_alive: u16,
    source: Option<IpAddr>,
) -> std::io::Result<Tls> {
    let tcp = tcp(target, source).await?;
    let name = ServerName::try_from("localhost").map_err(other)?;
    let mut tls = tokio_rustls::TlsConnector::from(who.config.clone())
        .connect(name, tcp)
        .await?;
    let connect = Packet::Connect(Connect {
        clean_session: true,
        keep_alive,
        client_id: &who.id,
        will: None,
        username: None,
        password: None,
    });
    let mut buf = [0u8; 128];
    let n = connect.emit(&mut buf).map_err(other)?;
    tls.write_all(&buf[..n]).await?;
    let mut ack = [0u8; 4];
    tls.read_exact(&mut ack).await?;
    if ack != [0x20, 2, 0, 0] {
        return Err(other(format!("CONNACK refused: {ack:?}")));
    }
    Ok(tls)
}

/// Reads (and discards) until the peer closes the connection or `timeout` passes; returns
/// how long it took, or `None` on timeout.
pub async fn wait_closed<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(timeout, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    closed.ok().map(|()| start.elapsed())
}

/// What a broker sent, as far as the load generator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    SubAck,
    PubAck(u16),
    /// A delivered message: its packet id (QoS 1) and the first 16 bytes of its payload
    /// (the sender's sequence number and send time).
    Publish {
        packet_id: Option<u16>,
        head: [u8; 16],
    },
    Other,
}

/// An open MQTT session with a read buffer; writes go out as they are made.
pub struct Conn {
    tls: Tls,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
}

impl Conn {
    pub async fn open(
        target: SocketAddr,
        who: &Minted,
        keep_alive: u16,
        source: Option<IpAddr>,
    ) -> std::io::Result<Conn> {
        Ok(Conn {
            tls: mqtt_connect(target, who, keep_alive, source).await?,
            buf: vec![0; MAX_PACKET * 2],
            start: 0,
            end: 0,
            out: Vec::with_capacity(16 * 1024),
        })
    }

    /// Queues a packet; [`Conn::flush`] sends what is queued.
    pub fn queue(&mut self, p: &Packet<'_>) -> std::io::Result<()> {
        let at = self.out.len();
        self.out.resize(at + p.encoded_len(), 0);
        p.emit(&mut self.out[at..]).map_err(other)?;
        Ok(())
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.tls.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Subscribes to `filter` and waits (up to 20 s) for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> std::io::Result<()> {
        let filters = [(filter, qos)];
        self.queue(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: SubscribeFilters::from_slice(&filters),
        }))?;
        self.flush().await?;
        let suback = async {
            loop {
                if self.next().await? == Event::SubAck {
                    return Ok::<_, std::io::Error>(());
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), suback)
            .await
            .map_err(|_| other("no SUBACK in 20 s"))?
    }

    /// Queues a PUBLISH of `payload` to `topic`.
    pub fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        packet_id: u16,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.queue(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
            payload,
        }))
    }

    /// The next packet from the broker; a QoS 1 delivery is acknowledged (the PUBACK is
    /// queued, and flushed once no whole packet is left in the read buffer).
    pub async fn next(&mut self) -> std::io::Result<Event> {
        loop {
            if let Some(event) = self.parse()? {
                return Ok(event);
            }
            self.flush().await?;
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = self.tls.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        }
    }

    fn parse(&mut self) -> std::io::Result<Option<Event>> {
        let window = &self.buf[self.start..self.end];
        let Some((packet, used)) = Packet::parse_from_server(window, MAX_PACKET).map_err(other)?
        else {
            return Ok(None);
        };
        let event = match packet {
            Packet::SubAck(_) => Event::SubAck,
            Packet::PubAck(id) => Event::PubAck(id),
            Packet::Publish(p) => {
                let mut head = [0u8; 16];
                let n = p.payload.len().min(16);
                head[..n].copy_from_slice(&p.payload[..n]);
                Event::Publish {
                    packet_id: p.packet_id,
                    head,
                }
            }
            _ => Event::Other,
        };
        self.start += used;
        if let Event::Publish {
            packet_id: Some(id),
            ..
        } = event
        {
            self.queue(&Packet::PubAck(id))?;
        }
        Ok(Some(event))
    }

    /// Sends DISCONNECT and closes.
    pub async fn close(mut self) {
        let _ = self.tls.write_all(&[0xE0, 0]).await;
        let _ = self.tls.shutdown().await;
    }
}
