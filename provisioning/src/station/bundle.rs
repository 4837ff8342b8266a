//! The identity bundle a device is flashed with: built here and nowhere else (the format
//! itself is `fleet_protocol::bundle`).

use fleet_protocol::bundle::{Bundle, SEED_LEN};
use rand_core::{OsRng, RngCore};

use super::{Certified, Station};
use crate::error::Error;
use crate::pki;

/// A device's identity to put in a bundle, besides the station's trust anchor.
pub(super) struct Identity<'a> {
    pub device_id: &'a str,
    pub tenant: &'a str,
    pub cert_der: &'a [u8],
    /// SEC1 DER; `None` when the device (or its secure element) holds the key.
    pub private_key_der: Option<&'a [u8]>,
    pub gateway_host: &'a str,
    pub gateway_port: u16,
}

impl Station {
    /// The encoded bundle (generation 1) for `identity`, anchored in the station's root; a
    /// bundle carrying a private key also gets a fresh per-device seed.
    pub(super) fn encode_bundle(&self, identity: &Identity<'_>) -> Result<Vec<u8>, Error> {
        let mut seed = [0u8; SEED_LEN];
        let seed = identity.private_key_der.map(|_| {
            OsRng.fill_bytes(&mut seed);
            &seed
        });
        let bundle = Bundle {
            generation: 1,
            device_id: identity.device_id,
            tenant: identity.tenant,
            cert_der: identity.cert_der,
            private_key_der: identity.private_key_der,
            trust_anchor_der: &self.root.cert_der,
            gateway_host: identity.gateway_host,
            gateway_port: identity.gateway_port,
            seed,
        };
        let mut bytes = vec![0u8; bundle.encoded_len()];
        bundle.emit(&mut bytes).map_err(|error| Error::Bundle {
            device_id: identity.device_id.to_owned(),
            error,
        })?;
        Ok(bytes)
    }

    /// A key-less identity bundle for a certificate the station signed for a device-held key
    /// (CSR flow): the board adds its key.
    pub fn keyless_bundle(
        &self,
        certified: &Certified,
        gateway_host: &str,
        gateway_port: u16,
    ) -> Result<Vec<u8>, Error> {
        self.encode_bundle(&Identity {
            device_id: &certified.device_id,
            tenant: &certified.tenant,
            cert_der: &certified.cert_der,
            private_key_der: None,
            gateway_host,
            gateway_port,
        })
    }
}

/// A device identity from its bundle as PEM text: (certificate, PKCS#8 private key), for
/// standard tools such as mosquitto_pub or openssl.
pub fn bundle_to_pem(bundle: &Bundle<'_>) -> Result<(String, String), Error> {
    let cert = pki::cert_to_pem(bundle.cert_der);
    let key_der = bundle.private_key_der.ok_or_else(|| Error::NoPrivateKey {
        device_id: bundle.device_id.to_owned(),
    })?;
    Ok((cert, pki::pkcs8_pem_from_sec1(key_der)?))
}
