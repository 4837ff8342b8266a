//! `fleet-gateway doctor`: why would this client certificate be refused?
//!
//! Runs the checks the gateway runs — the same rustls verifier with the same CAs and CRLs,
//! the identity rules — and says in plain words what passes and what fails.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::console::explain::explain;
use crate::identity::{Identity, Kind};
use crate::tls::{self, failure_reason};
use crate::Error;

/// One check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub ok: bool,
    pub text: String,
}

/// The outcome of all checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether the gateway would accept this certificate.
    pub fn accepted(&self) -> bool {
        self.findings.iter().all(|f| f.ok)
    }

    fn check(&mut self, ok: bool, text: impl Into<String>) {
        self.findings.push(Finding {
            ok,
            text: text.into(),
        });
    }
}

/// What to examine.
pub struct Inputs<'a> {
    /// PEM: the client certificate, optionally followed by intermediates.
    pub cert: &'a Path,
    /// PEM private key to check against the certificate.
    pub key: Option<&'a Path>,
    pub client_ca: &'a [PathBuf],
    /// CA certificates used only to check CRL signatures (`tls.crl_issuers`).
    pub crl_issuers: &'a [PathBuf],
    pub crl: &'a [PathBuf],
    pub service_ou: &'a str,
    /// Unix seconds to check validity at (now, unless testing).
    pub at: Option<i64>,
}

fn days(secs: i64) -> String {
    let d = secs.abs() as f64 / 86_400.0;
    if d >= 2.0 {
        format!("{d:.0} days")
    } else {
        format!("{:.1} hours", secs.abs() as f64 / 3600.0)
    }
}

/// Examines a client certificate the way the gateway would.
pub fn diagnose(input: &Inputs<'_>) -> Result<Report, Error> {
    let mut r = Report {
        findings: Vec::new(),
    };
    let chain = tls::load_certs(input.cert)?;
    let leaf = &chain[0];
    let Ok((_, cert)) = X509Certificate::from_der(leaf) else {
        r.check(
            false,
            "the certificate is not valid X.509 DER inside its PEM",
        );
        return Ok(r);
    };
    let now = input.at.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    });
    r.check(
        true,
        format!("subject: {}; issuer: {}", cert.subject(), cert.issuer()),
    );
    r.validity(&cert, now);
    r.key_strength(&cert);
    r.usage(&cert);
    match Identity::from_cert_der(leaf, input.service_ou) {
        Ok(id) => r.check(
            true,
            format!(
                "identity: {} {:?} of tenant {:?}; MQTT client id must be {:?} (or empty)",
                match id.kind {
                    Kind::Device => "device",
                    Kind::Service => "service",
                },
                id.id,
                id.tenant,
                id.id
            ),
        ),
        Err(e) => r.check(false, format!("identity: {e}")),
    }
    r.chain(input, &chain, &cert, now)?;
    if let Some(key_path) = input.key {
        r.key_match(key_path, &cert)?;
    }
    Ok(r)
}

impl Report {
    fn validity(&mut self, cert: &X509Certificate<'_>, now: i64) {
        let (nb, na) = (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        );
        if now < nb {
            self.check(false, format!(
                "not valid yet: valid from {} ({} from now) — check the issuing station's clock, or this host's",
                cert.validity().not_before, days(nb - now)
            ));
        } else if now > na {
            self.check(
                false,
                format!(
                    "expired on {} ({} ago) — renew the device",
                    cert.validity().not_after,
                    days(now - na)
                ),
            );
        } else {
            self.check(
                true,
                format!(
                    "valid now; expires {} (in {})",
                    cert.validity().not_after,
                    days(na - now)
                ),
            );
        }
    }

    fn key_strength(&mut self, cert: &X509Certificate<'_>) {
        use x509_parser::public_key::PublicKey;
        let key_kind = match cert.public_key().parsed() {
            Ok(PublicKey::EC(p)) => format!("EC key ({} bits)", p.key_size()),
            Ok(PublicKey::RSA(k)) => format!("RSA key ({} bits)", k.key_size()),
            Ok(_) => "other key type".into(),
            Err(_) => "unparsable public key".into(),
        };
        let weak_rsa =
            matches!(cert.public_key().parsed(), Ok(PublicKey::RSA(k)) if k.key_size() < 2048);
        self.check(
            !weak_rsa,
            if weak_rsa {
                format!("{key_kind}: too weak, at least 2048-bit RSA or P-256 is required")
            } else {
                key_kind
            },
        );
    }

    fn usage(&mut self, cert: &X509Certificate<'_>) {
        match cert.extended_key_usage() {
            Ok(Some(eku)) if !eku.value.client_auth && !eku.value.any => self.check(
                false,
                "extended key usage lacks clientAuth (e.g. a server certificate): it cannot log in as a client",
            ),
            Ok(_) => self.check(true, "extended key usage allows client authentication"),
            Err(_) => self.check(false, "the extended key usage extension cannot be parsed"),
        }
        if cert.is_ca() {
            self.check(
                false,
                "this is a CA certificate, not a device or service certificate",
            );
        }
    }

    /// The gateway's own verifier, with the configured CAs and CRLs.
    fn chain(
        &mut self,
        input: &Inputs<'_>,
        chain: &[CertificateDer<'static>],
        cert: &X509Certificate<'_>,
        now: i64,
    ) -> Result<(), Error> {
        let (verifier, revoked) =
            tls::client_verifier(input.client_ca, input.crl_issuers, input.crl)?;
        let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
        match verifier.verify_client_cert(&chain[0], &chain[1..], at) {
            Ok(_) => self.check(
                true,
                "chain verifies to a configured client CA, and no CRL revokes it",
            ),
            Err(e) => {
                let reason = failure_reason(&std::io::Error::other(e.clone()));
                let advice = explain(reason).unwrap_or("refused by the verifier");
                self.check(
                    false,
                    format!("chain check failed ({reason}): {advice}; rustls says: {e}"),
                );
            }
        }
        if revoked.contains(cert.issuer().as_raw(), cert.raw_serial()) {
            self.check(
                false,
                format!(
                    "serial {} is on a configured CRL",
                    fleet_host::hex(crate::crl::strip_zeros(cert.raw_serial()))
                ),
            );
        }
        Ok(())
    }

    fn key_match(&mut self, key_path: &Path, cert: &X509Certificate<'_>) -> Result<(), Error> {
        let key = tls::load_key(key_path)?;
        match tls::provider().key_provider.load_private_key(key) {
            Ok(signer) => {
                let matches = signer
                    .public_key()
                    .is_some_and(|spki| spki.as_ref() == cert.public_key().raw);
                self.check(
                    matches,
                    if matches {
                        "the private key matches the certificate".to_string()
                    } else {
                        format!(
                            "the private key in {} does not belong to this certificate",
                            key_path.display()
                        )
                    },
                );
            }
            Err(e) => self.check(false, format!("the private key cannot be used: {e}")),
        }
        Ok(())
    }
}
