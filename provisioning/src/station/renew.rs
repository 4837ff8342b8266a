//! Renewal: a device that proved its current identity gets a new certificate for a new key.

use super::deliver::Signed;
use super::{positive, Certified, Station};
use crate::audit::Event;
use crate::error::{CsrError, Error, Forbidden};
use crate::pki::{self, CheckedCsr};
use crate::registry::{CertRecord, DeviceId, Registry, Reservation, Status};

impl Station {
    /// Renewal: a device that proved it holds the certificate `presented_serial_hex` (over
    /// mTLS) gets a new certificate for the same device id and the new key in its CSR. The
    /// presented certificate must be the device's active one, or one superseded by an
    /// earlier renewal whose answer the device never received, and not revoked. Every
    /// older certificate of the device becomes superseded (revoked when its grace ends).
    pub fn renew(
        &mut self,
        device_id: &str,
        presented_serial_hex: &str,
        csr_der: &[u8],
        validity_days: u32,
    ) -> Result<Certified, Error> {
        positive("validity days", validity_days)?;
        self.check_ca_valid()?;
        let presented = self.presented(device_id, presented_serial_hex)?;
        let key = pki::check_csr(csr_der)?;
        let old_der = self
            .registry
            .cert_der(presented_serial_hex)?
            .unwrap_or_default();
        let old_key = x509_parser::parse_x509_certificate(&old_der)
            .map(|(_, c)| c.public_key().subject_public_key.data.to_vec())
            .unwrap_or_default();
        if old_key == key.public_key {
            return Err(CsrError::SameKey.into());
        }
        let result = self.renew_inner(&presented, &key, validity_days);
        self.settle(result)
    }

    /// The certificate a device proved it holds: one of its own, active or superseded.
    fn presented(&self, device_id: &str, serial_hex: &str) -> Result<CertRecord, Error> {
        let presented = self
            .registry
            .cert(serial_hex)?
            .filter(|c| c.device_id == device_id)
            .ok_or_else(|| Forbidden::NotTheDevicesCertificate {
                device_id: device_id.to_owned(),
                serial_hex: serial_hex.to_owned(),
            })?;
        match presented.status {
            Status::Active | Status::Superseded => Ok(presented),
            other => Err(Forbidden::CertificateNotLive {
                device_id: device_id.to_owned(),
                serial_hex: serial_hex.to_owned(),
                status: other.name(),
            }
            .into()),
        }
    }

    fn renew_inner(
        &mut self,
        presented: &CertRecord,
        key: &CheckedCsr,
        validity_days: u32,
    ) -> Result<Certified, Error> {
        let serial = pki::random_serial();
        let serial_hex = hex::encode(&serial);
        self.registry.reserve(&[Reservation {
            tenant: presented.tenant.clone(),
            batch: presented.batch.clone(),
            serial_hex: serial_hex.clone(),
            device: DeviceId::Existing(presented.device_id.clone()),
        }])?;
        let der = pki::sign_device_key(
            &self.issuing,
            key,
            &presented.device_id,
            &presented.tenant,
            i64::from(validity_days),
            &serial,
        )?;
        let signed = Signed::new(
            &presented.device_id,
            serial_hex.clone(),
            der,
            |fingerprint| Event::Renew {
                device_id: presented.device_id.clone(),
                serial: serial_hex,
                fingerprint,
                presented: presented.serial_hex.clone(),
            },
        );
        let a = self.deliver_one(signed)?;
        Ok(Certified::new(&presented.tenant, a))
    }
}
