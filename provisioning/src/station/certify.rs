//! The CSR flow: certificates for keys the devices generated themselves (the private keys
//! never leave them).

use super::deliver::Signed;
use super::{check_new_name, positive, Station, CHUNK};
use crate::audit::{Event, Manifest};
use crate::error::{CsrAt, Error};
use crate::pki::{self, CheckedCsr};
use crate::registry::{Activation, DeviceId, Reservation};

/// A certificate the station signed for a device-held key (CSR flow or renewal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    pub device_id: String,
    pub tenant: String,
    pub serial_hex: String,
    pub fingerprint_hex: String,
    /// Unix seconds.
    pub not_after: i64,
    pub cert_der: Vec<u8>,
}

impl Certified {
    pub fn cert_pem(&self) -> String {
        pki::cert_to_pem(&self.cert_der)
    }

    pub(super) fn new(tenant: &str, a: Activation) -> Certified {
        Certified {
            device_id: a.device_id,
            tenant: tenant.to_owned(),
            serial_hex: a.serial_hex,
            fingerprint_hex: a.fingerprint_hex,
            not_after: a.not_after,
            cert_der: a.cert_der,
        }
    }
}

/// Devices to certify from their own CSRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrRequest {
    pub tenant: String,
    pub validity_days: u32,
}

/// One CSR (DER) and, optionally, the device id to give it (else the tenant's next id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrInput {
    pub der: Vec<u8>,
    pub device_id: Option<String>,
}

impl Station {
    /// CSR flow: certifies keys the devices generated themselves (the private keys never
    /// leave them). Every request is checked before anything is reserved; a refused one
    /// fails the call with its position.
    pub fn certify_csrs(
        &mut self,
        req: &CsrRequest,
        csrs: &[CsrInput],
        progress: impl FnMut(&Certified),
    ) -> Result<Vec<Certified>, Error> {
        check_new_name("tenant", &req.tenant)?;
        positive("validity days", req.validity_days)?;
        self.check_ca_valid()?;
        let mut checked = Vec::with_capacity(csrs.len());
        for (i, input) in csrs.iter().enumerate() {
            let at = |e: Error| match e {
                Error::Csr { reason, .. } => Error::Csr {
                    at: CsrAt::Batch {
                        index: i + 1,
                        count: csrs.len(),
                    },
                    reason,
                },
                other => other,
            };
            if let Some(id) = &input.device_id {
                check_new_name("device id", id)?;
            }
            checked.push(pki::check_csr(&input.der).map_err(at)?);
        }
        let result = self.certify_inner(req, csrs, &checked, progress);
        self.settle(result)
    }

    fn certify_inner(
        &mut self,
        req: &CsrRequest,
        csrs: &[CsrInput],
        checked: &[CheckedCsr],
        mut progress: impl FnMut(&Certified),
    ) -> Result<Vec<Certified>, Error> {
        let batch = self.new_batch(None)?;
        let mut manifest = Manifest {
            batch: batch.clone(),
            tenant: req.tenant.clone(),
            devices: Vec::with_capacity(csrs.len()),
        };
        let mut out = Vec::with_capacity(csrs.len());
        for (inputs, keys) in csrs.chunks(CHUNK).zip(checked.chunks(CHUNK)) {
            let chunk = self.sign_csrs(req, &batch, inputs, keys)?;
            for a in self.deliver(chunk)? {
                manifest.devices.push((
                    a.device_id.clone(),
                    a.serial_hex.clone(),
                    a.fingerprint_hex.clone(),
                ));
                let c = Certified::new(&req.tenant, a);
                progress(&c);
                out.push(c);
            }
        }
        self.seal_batch(&manifest)?;
        Ok(out)
    }

    /// Reserves ids and serials for a chunk of checked requests, then signs them.
    fn sign_csrs(
        &mut self,
        req: &CsrRequest,
        batch: &str,
        inputs: &[CsrInput],
        keys: &[CheckedCsr],
    ) -> Result<Vec<Signed>, Error> {
        let serials: Vec<Vec<u8>> = inputs.iter().map(|_| pki::random_serial()).collect();
        let reservations: Vec<Reservation> = inputs
            .iter()
            .zip(&serials)
            .map(|(input, s)| Reservation {
                tenant: req.tenant.clone(),
                batch: batch.to_owned(),
                serial_hex: hex::encode(s),
                device: input
                    .device_id
                    .clone()
                    .map_or(DeviceId::Next, DeviceId::New),
            })
            .collect();
        let ids = self.registry.reserve(&reservations)?;
        let mut chunk = Vec::with_capacity(inputs.len());
        for ((device_id, serial), key) in ids.iter().zip(&serials).zip(keys) {
            let der = pki::sign_device_key(
                &self.issuing,
                key,
                device_id,
                &req.tenant,
                i64::from(req.validity_days),
                serial,
            )?;
            let serial_hex = hex::encode(serial);
            chunk.push(Signed::new(
                device_id,
                serial_hex.clone(),
                der,
                |fingerprint| Event::Issue {
                    device_id: device_id.clone(),
                    tenant: req.tenant.clone(),
                    serial: serial_hex,
                    fingerprint,
                    batch: batch.to_owned(),
                },
            ));
        }
        Ok(chunk)
    }
}
