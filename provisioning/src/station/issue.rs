//! Key injection: the station generates each device's key and writes it only into that
//! device's identity bundle.

use std::path::{Path, PathBuf};

use super::bundle::Identity;
use super::deliver::Signed;
use super::{check_new_name, positive, Station, CHUNK};
use crate::audit::{Event, Manifest};
use crate::error::Error;
use crate::pki;
use crate::registry::{DeviceId, Reservation};

/// A batch of devices to issue (key-injection flow: the station generates each key and
/// writes it only into that device's bundle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRequest {
    pub tenant: String,
    pub count: u32,
    pub gateway_host: String,
    pub gateway_port: u16,
    pub validity_days: u32,
}

/// One issued device (key-injection flow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIssued {
    pub device_id: String,
    pub serial_hex: String,
    pub bundle_path: PathBuf,
    pub cert_pem_path: PathBuf,
}

impl BatchRequest {
    fn check(&self) -> Result<(), Error> {
        check_new_name("tenant", &self.tenant)?;
        positive("count", self.count)?;
        positive("validity days", self.validity_days)?;
        if !fleet_protocol::bundle::valid_host(&self.gateway_host) {
            return Err(Error::InvalidInput {
                field: "gateway host",
                message: format!("{:?} is not a DNS name or IP address", self.gateway_host),
            });
        }
        positive("gateway port", u32::from(self.gateway_port))
    }
}

impl Station {
    /// Issues a batch of devices into `DIR/devices`.
    pub fn issue_devices(&mut self, req: &BatchRequest) -> Result<Vec<DeviceIssued>, Error> {
        self.issue_devices_with(req, None, |_| {})
    }

    /// Issues a batch of devices into `out` (default `DIR/devices`); `progress` is called
    /// after each one.
    pub fn issue_devices_with(
        &mut self,
        req: &BatchRequest,
        out: Option<&Path>,
        progress: impl FnMut(&DeviceIssued),
    ) -> Result<Vec<DeviceIssued>, Error> {
        req.check()?;
        self.check_ca_valid()?;
        let result = self.issue_devices_inner(req, out, progress);
        self.settle(result)
    }

    fn issue_devices_inner(
        &mut self,
        req: &BatchRequest,
        out: Option<&Path>,
        mut progress: impl FnMut(&DeviceIssued),
    ) -> Result<Vec<DeviceIssued>, Error> {
        let batch = self.new_batch(out)?;
        let out = out.map_or_else(|| self.dir.join("devices"), Path::to_owned);
        let mut issued = Vec::with_capacity(req.count as usize);
        let mut manifest = Manifest {
            batch: batch.clone(),
            tenant: req.tenant.clone(),
            devices: Vec::with_capacity(req.count as usize),
        };
        let mut left = req.count as usize;
        while left > 0 {
            let n = left.min(CHUNK);
            left -= n;
            let serials: Vec<Vec<u8>> = (0..n).map(|_| pki::random_serial()).collect();
            let reservations: Vec<Reservation> = serials
                .iter()
                .map(|s| Reservation {
                    tenant: req.tenant.clone(),
                    batch: batch.clone(),
                    serial_hex: hex::encode(s),
                    device: DeviceId::Next,
                })
                .collect();
            // Durable reservation first: a crash after this never reuses the ids or serials.
            let ids = self.registry.reserve(&reservations)?;
            let mut chunk = Vec::with_capacity(n);
            let mut done = Vec::with_capacity(n);
            for (device_id, serial) in ids.into_iter().zip(serials) {
                let (signed, device) = self.sign_injected(req, &batch, &out, device_id, &serial)?;
                chunk.push(signed);
                done.push(device);
            }
            for (a, device) in self.deliver(chunk)?.into_iter().zip(done) {
                manifest.devices.push((
                    device.device_id.clone(),
                    device.serial_hex.clone(),
                    a.fingerprint_hex,
                ));
                progress(&device);
                issued.push(device);
            }
        }
        self.seal_batch(&manifest)?;
        Ok(issued)
    }

    /// Key injection for one device: a fresh key, its certificate, and the bundle holding both.
    fn sign_injected(
        &self,
        req: &BatchRequest,
        batch: &str,
        out: &Path,
        device_id: String,
        serial: &[u8],
    ) -> Result<(Signed, DeviceIssued), Error> {
        let serial_hex = hex::encode(serial);
        let cert = pki::sign_device_with_serial(
            &self.issuing,
            &device_id,
            &req.tenant,
            i64::from(req.validity_days),
            serial,
        )?;
        let key = cert.key_sec1_der()?;
        let bundle = self.encode_bundle(&Identity {
            device_id: &device_id,
            tenant: &req.tenant,
            cert_der: &cert.cert_der,
            private_key_der: Some(&key),
            gateway_host: &req.gateway_host,
            gateway_port: req.gateway_port,
        })?;
        let device = DeviceIssued {
            bundle_path: out.join(format!("{device_id}.bin")),
            cert_pem_path: out.join(format!("{device_id}.pem")),
            device_id: device_id.clone(),
            serial_hex: serial_hex.clone(),
        };
        let der = pki::Signed {
            der: cert.cert_der,
            not_after: cert.not_after,
        };
        let mut signed = Signed::new(&device_id, serial_hex.clone(), der, |fingerprint| {
            Event::Issue {
                device_id: device_id.clone(),
                tenant: req.tenant.clone(),
                serial: serial_hex,
                fingerprint,
                batch: batch.to_owned(),
            }
        });
        signed.files = vec![
            (
                device.cert_pem_path.clone(),
                cert.cert_pem.into_bytes(),
                false,
            ),
            (device.bundle_path.clone(), bundle, true),
        ];
        Ok((signed, device))
    }
}
