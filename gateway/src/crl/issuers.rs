//! CRL issuers that are not trust anchors (`tls.crl_issuers`).
//!
//! The usual PKI has the root as the only trust anchor and an issuing (intermediate) CA that
//! devices send in their chain and that signs the CRL of the device certificates. The
//! gateway needs that CA's certificate to check the CRL's signature when it loads it, but
//! listing it among the client CAs would make it a trust anchor of its own (trusted even if
//! the root revoked it). A CRL issuer is only used to check CRL signatures, so it must
//! itself be vouched for: a CA certificate signed by a client CA, or by another CRL issuer
//! that is (through any number of them). It must also be allowed to sign CRLs (no KeyUsage,
//! or one with cRLSign): rustls-webpki refuses a CRL from an issuer whose KeyUsage lacks it.

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate cannot be used as a CRL issuer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrlIssuerProblem {
    #[error("certificate {index} cannot be parsed")]
    Unparsable { index: usize },
    #[error("certificate {index} ({subject}) is not a CA (basicConstraints cA is not set)")]
    NotACa { index: usize, subject: String },
    #[error("certificate {index} ({subject}) may not sign CRLs (its KeyUsage lacks cRLSign)")]
    NoCrlSign { index: usize, subject: String },
    #[error(
        "certificate {index} ({subject}, issued by {issuer}) is not signed by any configured \
         client CA (tls.client_ca) nor by a CRL issuer that is: a CRL issuer must chain to a \
         trust anchor"
    )]
    Unchained {
        index: usize,
        subject: String,
        issuer: String,
    },
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Option<X509Certificate<'a>> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c)
}

/// Whether `cert` was signed by `by`: the names match and the signature verifies.
fn signed_by(cert: &X509Certificate<'_>, by: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == by.subject().as_raw()
        && cert.verify_signature(Some(by.public_key())).is_ok()
}

/// Checks every CRL issuer of one file (`index` counts from 1 within `issuers`) against the
/// client CAs (`anchors`) and the CRL issuers of every file (`all`, which `issuers` is part of).
pub fn check(
    anchors: &[CertificateDer<'_>],
    all: &[CertificateDer<'_>],
    issuers: &[CertificateDer<'_>],
) -> Result<(), CrlIssuerProblem> {
    let anchors: Vec<X509Certificate<'_>> = anchors.iter().filter_map(|d| parse(d)).collect();
    let others: Vec<X509Certificate<'_>> = all.iter().filter_map(|d| parse(d)).collect();
    // The CRL issuers that chain to an anchor, found by rounds: each round adds those signed
    // by an anchor or by one found before; at most one round per CRL issuer.
    let mut chained = vec![false; others.len()];
    for _ in 0..others.len() {
        let before = chained.clone();
        for (i, cert) in others.iter().enumerate() {
            chained[i] = chained[i]
                || anchors.iter().any(|a| signed_by(cert, a))
                || others
                    .iter()
                    .zip(&before)
                    .any(|(by, &ok)| ok && signed_by(cert, by));
        }
        if chained == before {
            break;
        }
    }
    for (i, der) in issuers.iter().enumerate() {
        let index = i + 1;
        let cert = parse(der).ok_or(CrlIssuerProblem::Unparsable { index })?;
        let subject = cert.subject().to_string();
        if !cert.is_ca() {
            return Err(CrlIssuerProblem::NotACa { index, subject });
        }
        if let Ok(Some(ku)) = cert.key_usage() {
            if !ku.value.crl_sign() {
                return Err(CrlIssuerProblem::NoCrlSign { index, subject });
            }
        }
        let ok = others
            .iter()
            .zip(&chained)
            .any(|(c, &ok)| ok && c.as_raw() == cert.as_raw());
        if !ok {
            return Err(CrlIssuerProblem::Unchained {
                index,
                subject,
                issuer: cert.issuer().to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    fn ca(
        name: &str,
        signer: Option<&Issuer<'_, KeyPair>>,
        usages: &[KeyUsagePurpose],
    ) -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = usages.to_vec();
        let cert = match signer {
            Some(s) => p.signed_by(&key, s).unwrap(),
            None => p.self_signed(&key).unwrap(),
        };
        (cert.der().clone(), Issuer::new(p, key))
    }

    #[test]
    fn crl_issuers_must_be_cas_that_chain_to_an_anchor() {
        let signs = [KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let (root, root_issuer) = ca("Root", None, &signs);
        let (issuing, issuing_issuer) = ca("Issuing", Some(&root_issuer), &signs);
        let (sub, _) = ca("Sub", Some(&issuing_issuer), &signs);
        let (foreign_root, foreign_issuer) = ca("Foreign", None, &signs);
        let (foreign, _) = ca("Foreign Issuing", Some(&foreign_issuer), &signs);
        let (no_crl_sign, _) = ca(
            "No CRL",
            Some(&root_issuer),
            &[KeyUsagePurpose::KeyCertSign],
        );
        let anchors = [root.clone()];
        let one = |c: &CertificateDer<'static>| {
            check(&anchors, std::slice::from_ref(c), std::slice::from_ref(c))
        };

        assert_eq!(one(&issuing), Ok(()));
        // Through another CRL issuer, in either order.
        let both = [sub.clone(), issuing.clone()];
        assert_eq!(check(&anchors, &both, &both), Ok(()));
        assert!(matches!(
            one(&sub),
            Err(CrlIssuerProblem::Unchained { index: 1, .. })
        ));
        let err = one(&foreign).unwrap_err();
        assert!(
            err.to_string()
                .contains("CN=Foreign Issuing, issued by CN=Foreign"),
            "{err}"
        );
        // A self-signed CA is not vouched for by anything.
        assert!(one(&foreign_root).is_err());
        assert!(matches!(
            one(&no_crl_sign),
            Err(CrlIssuerProblem::NoCrlSign { .. })
        ));
        assert_eq!(
            check(
                &anchors,
                &[b"junk".to_vec().into()],
                &[b"junk".to_vec().into()]
            ),
            Err(CrlIssuerProblem::Unparsable { index: 1 })
        );
    }

    #[test]
    fn an_end_entity_is_no_crl_issuer() {
        let signs = [KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let (root, root_issuer) = ca("Root", None, &signs);
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "leaf");
        p.is_ca = IsCa::ExplicitNoCa;
        let leaf = p.signed_by(&key, &root_issuer).unwrap().der().clone();
        assert!(matches!(
            check(
                &[root],
                std::slice::from_ref(&leaf),
                std::slice::from_ref(&leaf)
            ),
            Err(CrlIssuerProblem::NotACa { .. })
        ));
    }
}
