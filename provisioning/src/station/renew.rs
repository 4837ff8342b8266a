//! Renewal: a device that proved its current identity gets a new certificate for a new key,
//! near the end of its current one and not more often than the [`RenewalPolicy`] allows.

use super::deliver::Signed;
use super::{positive, Certified, Station};
use crate::audit::Event;
use crate::error::{CsrError, Error, Forbidden, RenewalRefused};
use crate::pki::{self, CheckedCsr};
use crate::registry::{CertRecord, DeviceId, Reservation, Status};

/// When the station renews a device: whoever asks (the device itself or a gateway relaying
/// for it), the station enforces this itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalPolicy {
    /// A certificate is renewable once it ends within this. The default is the gateway's
    /// default `[renewal] threshold_days` (30 days), so a device the gateway tells to renew
    /// is renewable.
    pub window: time::Duration,
    /// At most this many renewals of one device within `period` (counted in the registry,
    /// so across restarts).
    pub max_renewals: u32,
    pub period: time::Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        RenewalPolicy {
            window: time::Duration::days(30),
            max_renewals: 3,
            period: time::Duration::days(1),
        }
    }
}

impl RenewalPolicy {
    /// Checks the values a command line or config gave (all positive).
    pub fn check(&self) -> Result<(), Error> {
        let bad = |field, what: &str| Error::InvalidInput {
            field,
            message: format!("{what} must be positive"),
        };
        if !self.window.is_positive() {
            return Err(bad("renewal window", "the renewal window"));
        }
        if self.max_renewals == 0 {
            return Err(bad("renewals per period", "the number of renewals"));
        }
        if !self.period.is_positive() {
            return Err(bad("renewal period", "the renewal period"));
        }
        Ok(())
    }
}

impl Station {
    /// Renewal: a device that proved it holds the certificate `presented_serial_hex` (hex,
    /// either case; over mTLS) gets a new certificate for the same device id and the new
    /// key in its CSR. The presented certificate must be the device's active one (or the one
    /// it was renewed from, when that answer was lost: see `answer_was_lost`; never a revoked
    /// one), end within the policy's window, and the device must not
    /// have renewed `max_renewals` times within the policy's period. Every older
    /// certificate of the device becomes superseded (revoked when its grace ends).
    pub fn renew(
        &mut self,
        device_id: &str,
        presented_serial_hex: &str,
        csr_der: &[u8],
        validity_days: u32,
        policy: &RenewalPolicy,
    ) -> Result<Certified, Error> {
        positive("validity days", validity_days)?;
        self.check_ca_valid()?;
        let serial_hex = presented_serial_hex.to_ascii_lowercase();
        let presented = self.presented(device_id, &serial_hex)?;
        self.check_policy(&presented, policy)?;
        let key = pki::check_csr(csr_der)?;
        let old_der = self.registry.cert_der(&serial_hex)?.unwrap_or_default();
        let old_key = x509_parser::parse_x509_certificate(&old_der)
            .map(|(_, c)| c.public_key().subject_public_key.data.to_vec())
            .unwrap_or_default();
        if old_key == key.public_key {
            return Err(CsrError::SameKey.into());
        }
        let result = self.renew_inner(&presented, &key, validity_days);
        self.settle(result)
    }

    /// The certificate a device proved it holds: its own active one.
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
            Status::Active => Ok(presented),
            Status::Superseded if self.answer_was_lost(&presented)? => Ok(presented),
            Status::Superseded => Err(RenewalRefused::Superseded {
                device_id: device_id.to_owned(),
                serial_hex: serial_hex.to_owned(),
            }
            .into()),
            other => Err(Forbidden::CertificateNotLive {
                device_id: device_id.to_owned(),
                serial_hex: serial_hex.to_owned(),
                status: other.name(),
            }
            .into()),
        }
    }

    /// A renewal whose answer never reached the device: it still holds the certificate it
    /// renewed from, and the one certificate issued after it is the active one it never
    /// received. It may ask again once (the window and the rate still apply), so a lost
    /// answer does not strand a device with a certificate that retires after its grace
    /// period; a certificate two renewals old may not.
    fn answer_was_lost(&self, presented: &CertRecord) -> Result<bool, Error> {
        let certs = self.registry.device(&presented.device_id)?;
        let newer = certs
            .iter()
            .skip_while(|c| c.serial_hex != presented.serial_hex)
            .skip(1)
            .filter(|c| !matches!(c.status, Status::Reserved | Status::Aborted))
            .collect::<Vec<_>>();
        Ok(matches!(newer[..], [only] if only.status == Status::Active))
    }

    /// The renewal window and rate: is `presented` renewable now?
    fn check_policy(&self, presented: &CertRecord, policy: &RenewalPolicy) -> Result<(), Error> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let window = policy.window.whole_seconds();
        if let Some(not_after) = presented.not_after {
            if not_after.saturating_sub(now) > window {
                return Err(RenewalRefused::NotYetRenewable {
                    device_id: presented.device_id.clone(),
                    serial_hex: presented.serial_hex.clone(),
                    not_after,
                    renewable_after: not_after.saturating_sub(window),
                }
                .into());
            }
        }
        let period = policy.period.whole_seconds();
        let recent = self
            .registry
            .renewals_since(&presented.device_id, now.saturating_sub(period) + 1)?;
        if recent.len() >= policy.max_renewals as usize {
            // The oldest counted renewal leaves the period first.
            let oldest = recent.first().copied().unwrap_or(now);
            return Err(RenewalRefused::RateLimited {
                device_id: presented.device_id.clone(),
                count: recent.len(),
                max: policy.max_renewals,
                period_secs: period,
                retry_after: oldest.saturating_add(period),
            }
            .into());
        }
        Ok(())
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
