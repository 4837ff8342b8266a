//! Certificate rotation inside a session, without a device clock: the device asks the gateway
//! about its certificate (`…/cert/status/get`); when the answer on `…/cert/status` says
//! `"renew":true` it makes a new key and publishes a request for it (`…/cert/csr`); the
//! gateway relays the request to the station and sends the new certificate on `…/cert/new`
//! (or why not on `…/cert/error`). A certificate for the new key becomes a bundle like the
//! current one, with the new certificate, the new key and the next generation, written into
//! the bundle buffer: the session's [`Outcome::Renewed`].

use p256::SecretKey;
use rand_core::CryptoRngCore;

use super::{Outcome, Topics};
use crate::bundle::Bundle;
use crate::csr::{self, MAX_CSR, SEC1_KEY_LEN};
use crate::device::{App, RotationEvent};
use crate::Error;

/// What the status message carries when the gateway wants a new certificate.
const RENEW: &[u8] = b"\"renew\":true";

/// A rotation's state over one session.
pub(super) struct Rotation<'a> {
    /// Ask the gateway for the certificate's status (set once subscribed).
    pub(super) ask: bool,
    /// The gateway said renew and no key was made for it yet.
    renew: bool,
    /// The key the request was made for.
    key: Option<SecretKey>,
    /// Where the renewed bundle is written.
    bundle_out: &'a mut [u8],
}

impl<'a> Rotation<'a> {
    pub(super) fn new(bundle_out: &'a mut [u8]) -> Self {
        Rotation {
            ask: false,
            renew: false,
            key: None,
            bundle_out,
        }
    }

    /// A message on `…/cert/{leaf}`. A certificate for the new key ends the session.
    pub(super) fn on_message<A: App>(
        &mut self,
        leaf: &str,
        payload: &[u8],
        current: &Bundle<'_>,
        app: &mut A,
    ) -> Option<Outcome> {
        match leaf {
            "status" => {
                let renew = payload.windows(RENEW.len()).any(|w| w == RENEW);
                self.renew |= renew && self.key.is_none();
                app.on_rotation(RotationEvent::Status { renew });
                None
            }
            "new" => {
                // A certificate nobody asked for is ignored.
                let key = self.key.as_ref()?;
                match renewed_bundle(current, payload, key, self.bundle_out) {
                    Some((generation, len)) => {
                        app.on_rotation(RotationEvent::Renewed { generation });
                        Some(Outcome::Renewed { generation, len })
                    }
                    None => {
                        app.on_rotation(RotationEvent::Rejected);
                        None
                    }
                }
            }
            "error" => {
                let why = core::str::from_utf8(payload).unwrap_or("(not text)");
                app.on_rotation(RotationEvent::Refused(why));
                None
            }
            _ => None,
        }
    }

    /// What the rotation has to send: the status question, or a new key's request. Writes
    /// it into `out` and returns its length.
    pub(super) fn poll<A: App, G: CryptoRngCore>(
        &mut self,
        topics: &Topics,
        bundle: &Bundle<'_>,
        out: &mut [u8],
        app: &mut A,
        rng: &mut G,
    ) -> Result<Option<usize>, Error> {
        if core::mem::take(&mut self.ask) {
            return topics.publish("cert/status/get", &[], out).map(Some);
        }
        if !core::mem::take(&mut self.renew) {
            return Ok(None);
        }
        let key = SecretKey::random(rng);
        let mut csr = [0u8; MAX_CSR];
        let n = csr::write_csr(&key, bundle.device_id, bundle.tenant, &mut csr)
            .map_err(|_| Error::Protocol("certificate request does not fit"))?;
        let len = topics.publish("cert/csr", &csr[..n], out)?;
        self.key = Some(key);
        app.on_rotation(RotationEvent::Requested);
        Ok(Some(len))
    }
}

/// A bundle like `current` with the new certificate and key and the next generation, written
/// into `out`; `None` unless `cert` is a certificate for `key`. Returns (generation, length).
fn renewed_bundle(
    current: &Bundle<'_>,
    cert: &[u8],
    key: &SecretKey,
    out: &mut [u8],
) -> Option<(u32, usize)> {
    // The certificate must carry our new public key (its uncompressed point).
    let point = crate::ec::public_key(key);
    if !cert.windows(point.len()).any(|w| w == point) {
        return None;
    }
    let mut key_der = [0u8; SEC1_KEY_LEN];
    let key_len = csr::write_sec1_key(key, &mut key_der).ok()?;
    let generation = current.generation.checked_add(1)?;
    let next = Bundle {
        generation,
        cert_der: cert,
        private_key_der: Some(&key_der[..key_len]),
        ..*current
    };
    let len = next.emit(out).ok()?;
    Some((generation, len))
}
