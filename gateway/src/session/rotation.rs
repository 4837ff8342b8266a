//! The certificate rotation topics the gateway answers itself: a device's own
//! `cert/status/get` and `cert/csr` (relayed to the station), and the `cert/...` messages the
//! gateway sends it.

use fleet_protocol::mqtt::v5::{reason, Properties};
use fleet_protocol::mqtt::{self, QoS};
use fleet_protocol::topic::{self, Cert};

use super::{wire, Inbound, Session};

impl Session {
    /// A QoS 0 PUBLISH from the gateway to this device on one of its rotation topics
    /// (nothing for services, which have none).
    pub fn cert_message(&self, which: Cert, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut topic = String::new();
        let who = &self.identity;
        if who.kind == crate::identity::Kind::Device
            && topic::cert(&mut topic, &who.tenant, &who.id, which).is_ok()
        {
            let publish = mqtt::Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: &topic,
                packet_id: None,
                payload,
            };
            wire::put_publish(self.version, &mut out, publish, Properties::EMPTY);
        }
        out
    }

    /// The rotation topics the gateway answers itself (`cert/status/get` and `cert/csr` of a
    /// device's own prefix); `None` for anything else.
    pub(super) fn rotation(&mut self, p: &mqtt::Publish<'_>) -> Option<Inbound> {
        let who = &self.identity;
        if who.kind != crate::identity::Kind::Device {
            return None;
        }
        let which = topic::cert_topic(p.topic, &who.tenant, &who.id).filter(|c| c.from_device())?;
        let mut ack = Vec::new();
        self.ack_publish(&mut ack, p, reason::SUCCESS);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        // Without a station to renew through, never ask for a renewal.
        let threshold = self.renew_threshold.unwrap_or(i64::MIN / 2);
        if which == Cert::Csr {
            // Only certificates near their end are renewed through the gateway: a device
            // cannot churn the registry and the CRL by asking again and again.
            if self.identity.not_after - now > threshold {
                ack.extend(self.cert_message(
                    Cert::Error,
                    b"not due for renewal: the certificate is not near its end",
                ));
                return Some(Inbound::Reply(ack));
            }
            return Some(Inbound::Renew {
                csr: p.payload.to_vec(),
                ack,
            });
        }
        let status = crate::renewal::status_payload(&self.identity, now, threshold);
        ack.extend(self.cert_message(Cert::Status, &status));
        Some(Inbound::Reply(ack))
    }
}
