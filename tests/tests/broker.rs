//! The gateway's broker core over real mutual TLS, with raw 3.1.1 and 5 clients: what issue
//! 16 lists as broken under rumqttd, each with the clause it follows.
//!
//! A device may publish under its own prefix and subscribe to its own `cmd/#`, so a device
//! publishing to its own `cmd/...` topic is both publisher and subscriber; wills and ACL
//! filtering are observed by the tenant's service identity.

use std::sync::Arc;
use std::time::Duration;

use fleet_gateway::acl::{Action, Effect, Rule};
use fleet_gateway::broker::Overflow;
use fleet_hil::fleet::DeviceBundle;
use fleet_protocol::mqtt::v5::{reason, Ack5, Connect5, Packet5, Properties, Property, Reason5};
use fleet_protocol::mqtt::{
    Connect, Packet, Publish, QoS, Subscribe, SubscribeFilters, Unsubscribe, UnsubscribeFilters,
    Will,
};
use fleet_tests::raw::{self, Tls};
use fleet_tests::{Pki, RunningGateway, TENANT};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw client of either version: packets written with our codec, read back as bytes.
struct Raw {
    tls: Tls,
    buf: Vec<u8>,
    v5: bool,
}

impl Raw {
    async fn device(gw: &RunningGateway, pki: &Pki, b: &DeviceBundle, v5: bool) -> Raw {
        Raw {
            tls: raw::open(gw, pki, b).await,
            buf: Vec::new(),
            v5,
        }
    }

    /// The tenant's service identity (it may subscribe anywhere in the tenant).
    async fn service(gw: &RunningGateway, pki: &Pki) -> Raw {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let (cert, key, ca) = pki.service_identity();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<_> = CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(&key).unwrap())
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        Raw {
            tls,
            buf: Vec::new(),
            v5: false,
        }
    }

    async fn send(&mut self, p: &Packet<'_>) {
        self.tls.write_all(&raw::encode(p)).await.unwrap();
    }

    async fn send5(&mut self, p: &Packet5<'_>) {
        let mut out = vec![0u8; p.encoded_len()];
        p.emit(&mut out).unwrap();
        self.tls.write_all(&out).await.unwrap();
    }

    fn whole(&self) -> Option<usize> {
        if self.v5 {
            Packet5::parse(&self.buf, 1 << 20).unwrap().map(|(_, n)| n)
        } else {
            Packet::parse(&self.buf, 1 << 20).unwrap().map(|(_, n)| n)
        }
    }

    /// The next whole packet within `wait`, or `None`.
    async fn within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(n) = self.whole() {
                return Some(self.buf.drain(..n).collect());
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, self.tls.read(&mut chunk)).await;
            match read {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    async fn next(&mut self) -> Vec<u8> {
        self.within(Duration::from_secs(5))
            .await
            .expect("a packet from the gateway")
    }

    /// Sends a 3.1.1 CONNECT and returns the CONNACK (session present, code).
    async fn connect311(
        &mut self,
        client_id: &str,
        clean: bool,
        will: Option<Will<'_>>,
    ) -> (bool, u8) {
        self.send(&Packet::Connect(Connect {
            clean_session: clean,
            keep_alive: 60,
            client_id,
            will,
            username: None,
            password: None,
        }))
        .await;
        match Packet::parse(&self.next().await, 64).unwrap().unwrap().0 {
            Packet::ConnAck(a) => (a.session_present, a.code as u8),
            p => panic!("expected CONNACK, got {p:?}"),
        }
    }

    /// Sends a version 5 CONNECT and returns the CONNACK (session present, reason).
    async fn connect5(
        &mut self,
        clean_start: bool,
        props: &[Property<'_>],
        will: Option<(Will<'_>, &[Property<'_>])>,
    ) -> (bool, u8) {
        let (will, will_props) = match will {
            Some((w, p)) => (Some(w), Properties::from_slice(p)),
            None => (None, Properties::EMPTY),
        };
        self.send5(&Packet5::Connect(Connect5 {
            connect: Connect {
                clean_session: clean_start,
                keep_alive: 60,
                client_id: "",
                will,
                username: None,
                password: None,
            },
            properties: Properties::from_slice(props),
            will_properties: will_props,
        }))
        .await;
        match Packet5::parse(&self.next().await, 1 << 20)
            .unwrap()
            .unwrap()
            .0
        {
            Packet5::ConnAck(a) => (a.session_present, a.reason),
            p => panic!("expected CONNACK, got {p:?}"),
        }
    }

    /// SUBSCRIBE one filter with a whole options byte; returns the SUBACK's code.
    async fn subscribe(&mut self, id: u16, filter: &str, options: u8) -> u8 {
        // The 3.1.1 view carries the QoS; the version 5 option bits are patched in on the wire.
        let qos = QoS::from_bits(options & 0b11).unwrap();
        let filters = [(filter, qos)];
        let s = Subscribe {
            packet_id: id,
            filters: SubscribeFilters::from_slice(&filters),
        };
        let mut bytes = if self.v5 {
            let p = Packet5::Subscribe(s, Properties::EMPTY);
            let mut out = vec![0u8; p.encoded_len()];
            p.emit(&mut out).unwrap();
            out
        } else {
            raw::encode(&Packet::Subscribe(s))
        };
        *bytes.last_mut().unwrap() = options;
        self.tls.write_all(&bytes).await.unwrap();
        // Acknowledgements of our own publishes may come first.
        let ack = loop {
            let p = self.next().await;
            if !matches!(p[0] & 0xF0, 0x40 | 0x50 | 0x60 | 0x70) {
                break p;
            }
        };
        // SUBACK: fixed header (2), packet id (2), [v5: properties length 0], codes.
        assert_eq!(ack[0], 0x90, "SUBACK");
        *ack.last().unwrap()
    }

    async fn publish(&mut self, topic: &str, qos: QoS, id: u16, retain: bool, payload: &[u8]) {
        let p = Publish {
            dup: false,
            qos,
            retain,
            topic,
            packet_id: (qos != QoS::AtMostOnce).then_some(id),
            payload,
        };
        if self.v5 {
            self.send5(&Packet5::Publish(p, Properties::EMPTY)).await;
        } else {
            self.send(&Packet::Publish(p)).await;
        }
    }

    /// The next PUBLISH to this client, skipping acknowledgements for its own publishes:
    /// (topic, payload, qos, dup, retain, packet id).
    async fn delivery(&mut self, wait: Duration) -> Option<Delivered> {
        loop {
            let bytes = self.within(wait).await?;
            let publish = if self.v5 {
                match Packet5::parse(&bytes, 1 << 20).unwrap().unwrap().0 {
                    Packet5::Publish(p, _) => p,
                    _ => continue,
                }
            } else {
                match Packet::parse(&bytes, 1 << 20).unwrap().unwrap().0 {
                    Packet::Publish(p) => p,
                    _ => continue,
                }
            };
            return Some(Delivered {
                topic: publish.topic.to_owned(),
                payload: publish.payload.to_vec(),
                qos: publish.qos,
                dup: publish.dup,
                retain: publish.retain,
                packet_id: publish.packet_id,
            });
        }
    }

    async fn ack(&mut self, packet: Packet<'_>) {
        if self.v5 {
            let id = match packet {
                Packet::PubAck(id)
                | Packet::PubRec(id)
                | Packet::PubRel(id)
                | Packet::PubComp(id) => id,
                _ => unreachable!(),
            };
            let a = Ack5::success(id);
            let p = match packet {
                Packet::PubAck(_) => Packet5::PubAck(a),
                Packet::PubRec(_) => Packet5::PubRec(a),
                Packet::PubRel(_) => Packet5::PubRel(a),
                _ => Packet5::PubComp(a),
            };
            self.send5(&p).await;
        } else {
            self.send(&packet).await;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Delivered {
    topic: String,
    payload: Vec<u8>,
    qos: QoS,
    dup: bool,
    retain: bool,
    packet_id: Option<u16>,
}

const SHORT: Duration = Duration::from_millis(400);
const LONG: Duration = Duration::from_secs(5);

fn cmd(b: &DeviceBundle, rest: &str) -> String {
    format!("tenants/{TENANT}/devices/{}/cmd/{rest}", b.device_id)
}

/// Delivery at min(publish QoS, granted QoS) [MQTT-3.8.4-6 (3.1.1), MQTT 5 §3.8.4], live and
/// retained, in both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_qos_is_the_minimum_of_publish_and_subscription() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 2);
    let gw = RunningGateway::start(pki.gateway_config()).await;
    for (b, v5) in [(&bundles[0], false), (&bundles[1], true)] {
        let mut c = Raw::device(&gw, &pki, b, v5).await;
        if v5 {
            c.connect5(true, &[], None).await;
        } else {
            c.connect311(&b.device_id, true, None).await;
        }
        assert_eq!(c.subscribe(1, &cmd(b, "two/#"), 2).await, 2);
        assert_eq!(c.subscribe(2, &cmd(b, "one/#"), 1).await, 1);
        for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let id = 10 + i as u16;
            c.publish(&cmd(b, "two/x"), qos, id, false, b"2").await;
            let d = c.delivery(LONG).await.expect("delivered");
            assert_eq!(d.qos, qos, "QoS {qos:?} to a QoS 2 subscription (v5: {v5})");
            c.publish(&cmd(b, "one/x"), qos, id + 10, false, b"1").await;
            let d = c.delivery(LONG).await.expect("delivered");
            assert_eq!(
                d.qos,
                qos.min(QoS::AtLeastOnce),
                "QoS {qos:?} to a QoS 1 subscription"
            );
        }
        // Retained on subscribe: at min(QoS 2 message, QoS 1 subscription), RETAIN=1.
        c.publish(&cmd(b, "kept/r"), QoS::ExactlyOnce, 30, true, b"r")
            .await;
        assert_eq!(c.subscribe(3, &cmd(b, "kept/#"), 1).await, 1);
        let d = loop {
            let d = c.delivery(LONG).await.expect("retained message");
            if d.topic.ends_with("kept/r") {
                break d;
            }
        };
        assert_eq!((d.qos, d.retain), (QoS::AtLeastOnce, true));
    }
    gw.stop().await;
}

/// After a reconnect with a kept session, an unacknowledged QoS 1 PUBLISH is resent with
/// DUP=1 [MQTT-3.3.1-1] and a QoS 2 flow past PUBREC is resumed with PUBREL [MQTT-4.4.0-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_sessions_resend_with_dup_and_resume_with_pubrel() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let b = &bundles[0];
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let mut c = Raw::device(&gw, &pki, b, false).await;
    assert_eq!(c.connect311(&b.device_id, false, None).await, (false, 0));
    c.subscribe(1, &cmd(b, "#"), 2).await;
    c.publish(&cmd(b, "q1"), QoS::AtLeastOnce, 5, false, b"one")
        .await;
    let first = c.delivery(LONG).await.unwrap();
    assert!(!first.dup);
    c.publish(&cmd(b, "q2"), QoS::ExactlyOnce, 6, false, b"two")
        .await;
    let second = c.delivery(LONG).await.unwrap();
    c.ack(Packet::PubRec(second.packet_id.unwrap())).await;
    loop {
        let bytes = c.next().await;
        if Packet::parse(&bytes, 64).unwrap().unwrap().0
            == Packet::PubRel(second.packet_id.unwrap())
        {
            break;
        }
    }
    drop(c);
    let mut c = Raw::device(&gw, &pki, b, false).await;
    assert_eq!(c.connect311(&b.device_id, false, None).await, (true, 0));
    let again = c.delivery(LONG).await.expect("resent");
    assert_eq!(
        (again.dup, again.packet_id, again.payload.as_slice()),
        (true, first.packet_id, &b"one"[..])
    );
    let bytes = c.next().await;
    assert_eq!(
        Packet::parse(&bytes, 64).unwrap().unwrap().0,
        Packet::PubRel(second.packet_id.unwrap()),
        "QoS 2 resumed with PUBREL"
    );
    gw.stop().await;
}

/// UNSUBSCRIBE of a filter never subscribed is answered [MQTT-3.10.4-5]; version 5 gets one
/// reason per filter, 0x11 for the unknown one [MQTT-3.11.3].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsuback_for_unknown_filters_in_both_versions() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 2);
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let b = &bundles[0];
    let mut c = Raw::device(&gw, &pki, b, false).await;
    c.connect311(&b.device_id, true, None).await;
    let never = [cmd(b, "never")];
    let never: Vec<&str> = never.iter().map(String::as_str).collect();
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 7,
        filters: UnsubscribeFilters::from_slice(&never),
    }))
    .await;
    assert_eq!(
        Packet::parse(&c.next().await, 64).unwrap().unwrap().0,
        Packet::UnsubAck(7)
    );

    let b = &bundles[1];
    let mut c = Raw::device(&gw, &pki, b, true).await;
    c.connect5(true, &[], None).await;
    c.subscribe(1, &cmd(b, "held"), 1).await;
    let filters = [cmd(b, "held"), cmd(b, "never")];
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    c.send5(&Packet5::Unsubscribe(
        Unsubscribe {
            packet_id: 8,
            filters: UnsubscribeFilters::from_slice(&filters),
        },
        Properties::EMPTY,
    ))
    .await;
    match Packet5::parse(&c.next().await, 64).unwrap().unwrap().0 {
        Packet5::UnsubAck(l) => assert_eq!(
            l.reasons,
            [reason::SUCCESS, reason::NO_SUBSCRIPTION_EXISTED]
        ),
        p => panic!("expected UNSUBACK, got {p:?}"),
    }
    gw.stop().await;
}

/// No Local [MQTT-3.8.3-3], Retain Handling 2 [MQTT-3.3.1-11], Retain As Published
/// [MQTT-3.3.1-12]; Receive Maximum [MQTT-3.3.4-9].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_5_subscription_options_and_receive_maximum() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let b = &bundles[0];
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let mut c = Raw::device(&gw, &pki, b, true).await;
    c.connect5(true, &[Property::ReceiveMaximum(1)], None).await;
    c.publish(&cmd(b, "rh/x"), QoS::AtMostOnce, 0, true, b"kept")
        .await;
    // No Local (bit 2): our own publication is not delivered.
    c.subscribe(1, &cmd(b, "nl"), 0b0000_0101).await;
    c.publish(&cmd(b, "nl"), QoS::AtLeastOnce, 2, false, b"own")
        .await;
    assert_eq!(
        c.delivery(SHORT).await,
        None,
        "No Local delivered our own message"
    );
    // Retain Handling 2: no retained message at subscribe; Retain As Published keeps RETAIN.
    c.subscribe(3, &cmd(b, "rh/#"), 0b0010_1000).await;
    assert_eq!(
        c.delivery(SHORT).await,
        None,
        "Retain Handling 2 sent the retained message"
    );
    c.publish(&cmd(b, "rh/y"), QoS::AtMostOnce, 0, true, b"live")
        .await;
    let d = c.delivery(LONG).await.unwrap();
    assert!(d.retain, "Retain As Published cleared RETAIN");
    // Receive Maximum 1: a second QoS 1 message waits for the first one's PUBACK.
    c.subscribe(4, &cmd(b, "rm"), 1).await;
    c.publish(&cmd(b, "rm"), QoS::AtLeastOnce, 5, false, b"a")
        .await;
    c.publish(&cmd(b, "rm"), QoS::AtLeastOnce, 6, false, b"b")
        .await;
    let a = c.delivery(LONG).await.unwrap();
    assert_eq!(a.payload, b"a");
    assert_eq!(
        c.delivery(SHORT).await,
        None,
        "two unacknowledged with Receive Maximum 1"
    );
    c.ack(Packet::PubAck(a.packet_id.unwrap())).await;
    assert_eq!(c.delivery(LONG).await.unwrap().payload, b"b");
    gw.stop().await;
}

/// Session Expiry Interval [MQTT-3.1.2-23]: kept for its interval, gone after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_interval() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let b = &bundles[0];
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let keep = [Property::SessionExpiryInterval(2)];
    let mut c = Raw::device(&gw, &pki, b, true).await;
    assert_eq!(c.connect5(true, &keep, None).await, (false, 0));
    drop(c);
    let mut c = Raw::device(&gw, &pki, b, true).await;
    assert_eq!(
        c.connect5(false, &keep, None).await,
        (true, 0),
        "kept on immediate reconnect"
    );
    drop(c);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let mut c = Raw::device(&gw, &pki, b, true).await;
    assert_eq!(
        c.connect5(false, &[], None).await,
        (false, 0),
        "gone after 2 s"
    );
    gw.stop().await;
}

/// Will Delay Interval [MQTT-3.1.3-9]: published after the delay, not at all when the
/// session resumes in time; delivered at min(will QoS, granted QoS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_interval() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let b = &bundles[0];
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let mut svc = Raw::service(&gw, &pki).await;
    svc.connect311("", true, None).await;
    svc.subscribe(1, &format!("tenants/{TENANT}/devices/+/cmd/will"), 1)
        .await;
    let topic = cmd(b, "will");
    let will = || Will {
        topic: &topic,
        payload: b"gone",
        qos: QoS::ExactlyOnce,
        retain: false,
    };
    let keep = [Property::SessionExpiryInterval(30)];
    let delay = [Property::WillDelayInterval(1)];
    let mut c = Raw::device(&gw, &pki, b, true).await;
    c.connect5(true, &keep, Some((will(), &delay))).await;
    drop(c);
    assert_eq!(
        svc.delivery(Duration::from_millis(500)).await,
        None,
        "will sent before its delay"
    );
    let d = svc.delivery(LONG).await.expect("will after its delay");
    assert_eq!(
        (d.payload.as_slice(), d.qos),
        (&b"gone"[..], QoS::AtLeastOnce)
    );
    svc.ack(Packet::PubAck(d.packet_id.unwrap())).await;
    // Resumed within the delay: no will.
    let mut c = Raw::device(&gw, &pki, b, true).await;
    c.connect5(false, &keep, Some((will(), &delay))).await;
    drop(c);
    let mut c = Raw::device(&gw, &pki, b, true).await;
    assert!(c.connect5(false, &keep, None).await.0, "session kept");
    assert_eq!(
        svc.delivery(Duration::from_millis(1500)).await,
        None,
        "will despite the resumption"
    );
    gw.stop().await;
}

/// 3.1.1: an empty client id with CleanSession=0 is refused with CONNACK 0x02 and closed
/// [MQTT-3.1.3-8]; with CleanSession=1 the certificate's CN is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_client_id_may_not_keep_a_session_in_3_1_1() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let gw = RunningGateway::start(pki.gateway_config()).await;
    let mut c = Raw::device(&gw, &pki, &bundles[0], false).await;
    assert_eq!(c.connect311("", false, None).await, (false, 2));
    assert_eq!(c.within(LONG).await, None, "closed after CONNACK 0x02");
    let mut c = Raw::device(&gw, &pki, &bundles[0], false).await;
    assert_eq!(c.connect311("", true, None).await, (false, 0));
    gw.stop().await;
}

/// ACL, Subscribe versus Receive: a wildcard filter that overlaps a deny rule is granted and
/// the denied topics are filtered out at delivery (counted); a filter wholly inside the deny
/// rule is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_deny_rules_filter_at_delivery() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let b = &bundles[0];
    let mut config = pki.gateway_config();
    config.policy.service.push(Rule {
        effect: Effect::Deny,
        action: Action::Subscribe,
        pattern: "tenants/{tenant}/devices/+/secret/#".into(),
    });
    let gw = RunningGateway::start(config).await;
    let mut svc = Raw::service(&gw, &pki).await;
    svc.connect311("", true, None).await;
    assert_eq!(
        svc.subscribe(1, &format!("tenants/{TENANT}/devices/+/secret/#"), 1)
            .await,
        0x80
    );
    assert_eq!(svc.subscribe(2, &format!("tenants/{TENANT}/#"), 1).await, 1);
    let mut dev = Raw::device(&gw, &pki, b, false).await;
    dev.connect311(&b.device_id, true, None).await;
    let base = format!("tenants/{TENANT}/devices/{}", b.device_id);
    dev.publish(
        &format!("{base}/secret/key"),
        QoS::AtMostOnce,
        0,
        false,
        b"s",
    )
    .await;
    dev.publish(
        &format!("{base}/telemetry"),
        QoS::AtMostOnce,
        0,
        false,
        b"t",
    )
    .await;
    let d = svc.delivery(LONG).await.unwrap();
    assert_eq!(
        d.topic,
        format!("{base}/telemetry"),
        "the denied topic was delivered"
    );
    gw.shared.hub.report(&gw.shared.metrics);
    let text = gw.shared.metrics.render(&[]);
    assert!(
        text.contains("fleet_gateway_dropped_messages_total{reason=\"denied\"} 1"),
        "{text}"
    );
    gw.stop().await;
}

/// The overflow policy comes from the config: `disconnect` closes a client whose queue
/// overflows with DISCONNECT 0x97, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_overflow_policy_disconnect() {
    let mut pki = Pki::new();
    let bundles = pki.devices(TENANT, 1);
    let b = &bundles[0];
    let mut config = pki.gateway_config();
    config.limits.queue_messages = 2;
    config.limits.queue_overflow = Overflow::Disconnect;
    let gw = RunningGateway::start(config).await;
    let mut c = Raw::device(&gw, &pki, b, true).await;
    c.connect5(true, &[Property::ReceiveMaximum(1)], None).await;
    c.subscribe(1, &cmd(b, "q"), 1).await;
    // One in flight (never acknowledged), two queued, the fourth overflows.
    for id in 1..=4 {
        c.publish(&cmd(b, "q"), QoS::AtLeastOnce, id, false, b"m")
            .await;
    }
    let disconnect = loop {
        let bytes = c.next().await;
        if let Packet5::Disconnect(Reason5 { reason, .. }) =
            Packet5::parse(&bytes, 1 << 20).unwrap().unwrap().0
        {
            break reason;
        }
    };
    assert_eq!(disconnect, reason::QUOTA_EXCEEDED);
    gw.shared.hub.report(&gw.shared.metrics);
    let text = gw.shared.metrics.render(&[]);
    assert!(
        text.contains("fleet_gateway_broker_events_total{event=\"overflow_disconnect\"} 1"),
        "{text}"
    );
    gw.stop().await;
}
