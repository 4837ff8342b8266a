//! Certificate revocation lists: reading them, the index of the certificates they revoke,
//! and the rule that an older CRL never replaces a newer one.
//!
//! Every CRL must be signed by a configured client CA or by a configured CRL issuer
//! (`tls.crl_issuers`, see [`issuers`]: intermediates that chain to a client CA, used only to
//! check CRL signatures, never as trust anchors). For each issuer the newest CRL loaded
//! is remembered (its CRL number and thisUpdate); a reload whose CRL of that issuer has a lower
//! number or an earlier thisUpdate — a validly signed but outdated CRL copied over the
//! configured file, which would un-revoke every device revoked since — is refused as a whole,
//! and the CRL in force stays. So is a reload that drops the CRL of an issuer that is still a
//! client CA or CRL issuer.
//!
//! What is checked for revocation: at the handshake, rustls-webpki checks every certificate of
//! the client's chain (the device certificate and each intermediate up to the trust anchor)
//! against the CRL of its issuer, when one is loaded; with none, the status is unknown and
//! allowed. So a CRL of the root that revokes an intermediate refuses every device under it.
//! Live sessions are closed at a reload when their own certificate is revoked, or when their
//! issuer is a configured CRL issuer that a loaded CRL revokes. A session knows its issuer by
//! name only, so that second rule applies only while no other configured CA certificate
//! (client CA or CRL issuer) has the same name: a re-keyed intermediate under the old name is
//! not mistaken for the revoked one. New handshakes are always checked exactly (above).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::time::ASN1Time;

use crate::error::PemProblem;
use crate::identity::Identity;
use crate::Error;

pub(crate) mod from_cluster;
pub mod issuers;

/// Certificates revoked by the loaded CRLs, as (issuer name DER, serial without leading
/// zeros), and the names (DER) of the revoked CRL issuers: the index that finds live sessions
/// to close when a CRL changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked(HashSet<(Vec<u8>, Vec<u8>)>, HashSet<Vec<u8>>);

impl Revoked {
    /// Whether a loaded CRL revokes the certificate of this issuer and serial.
    pub fn contains(&self, issuer: &[u8], serial: &[u8]) -> bool {
        self.0
            .contains(&(issuer.to_vec(), strip_zeros(serial).to_vec()))
    }

    /// Whether this identity's certificate is revoked, or its issuer is a revoked CRL issuer
    /// (see the module documentation).
    pub fn revokes(&self, who: &Identity) -> bool {
        self.contains(&who.issuer, &who.serial) || self.1.contains(&who.issuer)
    }

    /// How many CRL issuers (`tls.crl_issuers`) the loaded CRLs revoke.
    pub fn revoked_cas(&self) -> usize {
        self.1.len()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The (issuer, serial) pairs revoked here and not in `before`.
    pub fn added_since(&self, before: &Revoked) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.0.difference(&before.0).cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `b` without its leading zero bytes.
pub(crate) fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// Which CRL of one issuer is in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlVersion {
    /// The issuer's name, as text (for messages).
    pub issuer: String,
    /// The CRL number extension (RFC 5280 §5.2.3), if the CRL has one.
    pub number: Option<BigUint>,
    pub this_update: ASN1Time,
    /// The file it came from.
    pub path: PathBuf,
}

impl CrlVersion {
    /// Newer: a higher number, or the same number (or none) and a later thisUpdate.
    fn is_newer_than(&self, other: &CrlVersion) -> bool {
        (&self.number, self.this_update.timestamp())
            > (&other.number, other.this_update.timestamp())
    }

    /// Why `self` may not replace `in_force`, if it may not.
    fn rollback_from(&self, in_force: &CrlVersion) -> Option<CrlRollback> {
        if self.number < in_force.number {
            Some(CrlRollback::LowerNumber {
                issuer: self.issuer.clone(),
                loaded: number_text(&self.number),
                in_force: number_text(&in_force.number),
            })
        } else if self.this_update.timestamp() < in_force.this_update.timestamp() {
            Some(CrlRollback::OlderThisUpdate {
                issuer: self.issuer.clone(),
                loaded: self.this_update.to_string(),
                in_force: in_force.this_update.to_string(),
            })
        } else {
            None
        }
    }
}

fn number_text(n: &Option<BigUint>) -> String {
    n.as_ref()
        .map_or_else(|| "none".to_owned(), BigUint::to_string)
}

/// Why a reload's CRLs may not replace the ones in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrlRollback {
    #[error("the CRL of {issuer} has number {loaded}, lower than {in_force} of the CRL in force")]
    LowerNumber {
        issuer: String,
        loaded: String,
        in_force: String,
    },
    #[error("the CRL of {issuer} was issued {loaded} (thisUpdate), before the CRL in force ({in_force})")]
    OlderThisUpdate {
        issuer: String,
        loaded: String,
        in_force: String,
    },
    #[error("there is no CRL of {issuer} any more, though it is still a client CA and its CRL is in force")]
    IssuerMissing { issuer: String },
}

impl CrlRollback {
    /// Stable label for metrics and the audit log.
    pub fn label(&self) -> &'static str {
        match self {
            CrlRollback::LowerNumber { .. } => "lower_number",
            CrlRollback::OlderThisUpdate { .. } => "older_this_update",
            CrlRollback::IssuerMissing { .. } => "issuer_missing",
        }
    }
}

/// The newest CRL of every issuer in a load, and the client CAs of that load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrlVersions {
    /// By issuer name DER.
    newest: BTreeMap<Vec<u8>, CrlVersion>,
    /// Subject name DER of every client CA.
    client_cas: BTreeSet<Vec<u8>>,
}

impl CrlVersions {
    /// No CRLs yet, for these client CA certificates.
    pub fn for_cas(cas: &[CertificateDer<'_>]) -> CrlVersions {
        let client_cas = cas
            .iter()
            .filter_map(|ca| X509Certificate::from_der(ca).ok())
            .map(|(_, ca)| ca.subject().as_raw().to_vec())
            .collect();
        CrlVersions {
            newest: BTreeMap::new(),
            client_cas,
        }
    }

    fn record(&mut self, issuer: &[u8], version: CrlVersion) {
        match self.newest.get(issuer) {
            Some(known) if !version.is_newer_than(known) => {}
            _ => {
                self.newest.insert(issuer.to_vec(), version);
            }
        }
    }

    /// The newest CRL of every issuer.
    pub fn iter(&self) -> impl Iterator<Item = &CrlVersion> {
        self.newest.values()
    }

    /// The newest CRL of an issuer (by name DER), if there is one.
    pub fn get(&self, issuer: &[u8]) -> Option<&CrlVersion> {
        self.newest.get(issuer)
    }

    /// Whether these CRLs may replace `in_force`: for every issuer with a CRL in force, a CRL
    /// that is not older (or none, if the issuer is no longer a client CA).
    pub fn check_replaces(&self, in_force: &CrlVersions) -> Result<(), Error> {
        for (issuer, old) in &in_force.newest {
            let refused = match self.newest.get(issuer) {
                Some(new) => new.rollback_from(old).map(|r| (new.path.clone(), r)),
                None if self.client_cas.contains(issuer) => Some((
                    old.path.clone(),
                    CrlRollback::IssuerMissing {
                        issuer: old.issuer.clone(),
                    },
                )),
                None => None,
            };
            if let Some((path, rollback)) = refused {
                return Err(Error::CrlRollback { path, rollback });
            }
        }
        Ok(())
    }
}

/// The CRLs of one load: what rustls checks (the newest CRL of each issuer: rustls-webpki
/// uses the first CRL of an issuer it finds, so an older one must not be in the list), the
/// revoked index, and the newest per issuer.
pub struct LoadedCrls {
    /// By issuer name DER: the newest CRL's DER.
    der: BTreeMap<Vec<u8>, CertificateRevocationListDer<'static>>,
    pub revoked: Revoked,
    pub versions: CrlVersions,
}

impl LoadedCrls {
    pub fn new(cas: &[CertificateDer<'_>]) -> LoadedCrls {
        LoadedCrls {
            der: BTreeMap::new(),
            revoked: Revoked::default(),
            versions: CrlVersions::for_cas(cas),
        }
    }

    /// The newest CRL of every issuer, for the verifier.
    pub fn der(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.der.values().cloned().collect()
    }

    /// Notes the names of the CRL issuers (`issuers`) a loaded CRL revokes, unless another
    /// certificate of `cas` (client CAs and CRL issuers) that is not revoked has the same
    /// name; call once every CRL file is added.
    pub fn note_revoked_cas(&mut self, issuers: &[CertificateDer<'_>], cas: &[CertificateDer<'_>]) {
        let parse = |der: &CertificateDer<'_>| {
            X509Certificate::from_der(der).ok().map(|(_, c)| {
                let revoked = self.revoked.contains(c.issuer().as_raw(), c.raw_serial());
                (c.subject().as_raw().to_vec(), revoked)
            })
        };
        let known: Vec<(Vec<u8>, bool)> = cas.iter().filter_map(parse).collect();
        let names: Vec<Vec<u8>> = issuers
            .iter()
            .filter_map(parse)
            .filter(|(name, revoked)| *revoked && !known.iter().any(|(n, r)| n == name && !r))
            .map(|(name, _)| name)
            .collect();
        self.revoked.1.extend(names);
    }

    /// Adds every CRL of a PEM file (`bytes`, read from `path`), each of which must be signed
    /// by one of `cas` (the client CAs and CRL issuers).
    pub fn add_file(
        &mut self,
        path: &Path,
        bytes: &[u8],
        cas: &[CertificateDer<'_>],
    ) -> Result<(), Error> {
        let problem = |problem| Error::Pem {
            path: path.to_owned(),
            problem,
        };
        let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| problem(PemProblem::Crl(e)))?;
        if crls.is_empty() {
            return Err(problem(PemProblem::NoCrl));
        }
        for (i, der) in crls.iter().enumerate() {
            let (_, crl) = CertificateRevocationList::from_der(der).map_err(|error| {
                problem(PemProblem::CrlUnparsable {
                    index: i + 1,
                    error,
                })
            })?;
            if !signed_by_one_of(&crl, cas) {
                return Err(problem(PemProblem::CrlNotSigned {
                    index: i + 1,
                    issuer: crl.issuer().to_string(),
                }));
            }
            self.add(path, &crl, der);
        }
        Ok(())
    }

    fn add(
        &mut self,
        path: &Path,
        crl: &CertificateRevocationList<'_>,
        der: &CertificateRevocationListDer<'static>,
    ) {
        let issuer = crl.issuer().as_raw();
        let version = version_of(crl, path);
        let newest = self
            .versions
            .get(issuer)
            .is_none_or(|known| version.is_newer_than(known));
        if newest {
            self.der.insert(issuer.to_vec(), der.clone());
        }
        for entry in crl.iter_revoked_certificates() {
            self.revoked
                .0
                .insert((issuer.to_vec(), strip_zeros(entry.raw_serial()).to_vec()));
        }
        self.versions.record(issuer, version);
    }
}

fn version_of(crl: &CertificateRevocationList<'_>, path: &Path) -> CrlVersion {
    CrlVersion {
        issuer: crl.issuer().to_string(),
        number: crl.crl_number().cloned(),
        this_update: crl.last_update(),
        path: path.to_owned(),
    }
}

/// Why a CRL from outside the configured files (the cluster's CRL bucket) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrlRefused {
    #[error("not a DER CRL: {0}")]
    Unparsable(String),
    #[error("the CRL of {issuer} is not signed by a configured client CA or CRL issuer")]
    BadSignature { issuer: String },
    #[error(transparent)]
    Rollback(CrlRollback),
}

impl CrlRefused {
    /// Stable label for metrics and the audit log.
    pub fn label(&self) -> &'static str {
        match self {
            CrlRefused::Unparsable(_) => "unparsable",
            CrlRefused::BadSignature { .. } => "bad_signature",
            CrlRefused::Rollback(r) => r.label(),
        }
    }
}

/// One DER CRL, parsed whole (nothing may follow it).
fn parse_der(der: &[u8]) -> Result<CertificateRevocationList<'_>, CrlRefused> {
    let (rest, crl) = CertificateRevocationList::from_der(der)
        .map_err(|e| CrlRefused::Unparsable(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CrlRefused::Unparsable(format!(
            "{} bytes after the CRL",
            rest.len()
        )));
    }
    Ok(crl)
}

/// The issuer (name DER) and version of one DER CRL from `source` (a label for messages),
/// its signature not checked.
pub fn parse_one(der: &[u8], source: &Path) -> Result<(Vec<u8>, CrlVersion), CrlRefused> {
    let crl = parse_der(der)?;
    Ok((crl.issuer().as_raw().to_vec(), version_of(&crl, source)))
}

/// Checks one DER CRL from `source`: it parses whole and is signed by one of `signers`
/// (client CAs and CRL issuers). Returns its issuer name DER and version.
pub fn check_one(
    der: &[u8],
    source: &Path,
    signers: &[CertificateDer<'_>],
) -> Result<(Vec<u8>, CrlVersion), CrlRefused> {
    let crl = parse_der(der)?;
    if !signed_by_one_of(&crl, signers) {
        return Err(CrlRefused::BadSignature {
            issuer: crl.issuer().to_string(),
        });
    }
    Ok((crl.issuer().as_raw().to_vec(), version_of(&crl, source)))
}

impl CrlVersion {
    /// Whether `self` may replace `in_force` (see [`CrlVersions::check_replaces`]).
    pub fn may_replace(&self, in_force: &CrlVersion) -> Result<(), CrlRollback> {
        self.rollback_from(in_force).map_or(Ok(()), Err)
    }

    /// Whether this is the same CRL as `other` (number and thisUpdate).
    pub fn same_as(&self, other: &CrlVersion) -> bool {
        (&self.number, self.this_update.timestamp())
            == (&other.number, other.this_update.timestamp())
    }
}

fn signed_by_one_of(crl: &CertificateRevocationList<'_>, cas: &[CertificateDer<'_>]) -> bool {
    let issuer = crl.issuer().as_raw();
    cas.iter().any(|ca| {
        X509Certificate::from_der(ca).is_ok_and(|(_, ca)| {
            ca.subject().as_raw() == issuer && crl.verify_signature(ca.public_key()).is_ok()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(number: Option<u32>, this_update: i64) -> CrlVersion {
        CrlVersion {
            issuer: "CN=issuing".into(),
            number: number.map(BigUint::from),
            this_update: ASN1Time::from_timestamp(this_update).unwrap(),
            path: PathBuf::from("crl.pem"),
        }
    }

    fn versions(v: Option<CrlVersion>, cas: &[&[u8]]) -> CrlVersions {
        let mut all = CrlVersions {
            newest: BTreeMap::new(),
            client_cas: cas.iter().map(|c| c.to_vec()).collect(),
        };
        if let Some(v) = v {
            all.record(b"issuing", v);
        }
        all
    }

    fn refusal(new: Option<CrlVersion>, old: CrlVersion) -> Option<&'static str> {
        let new = versions(new, &[b"issuing"]);
        match new.check_replaces(&versions(Some(old), &[b"issuing"])) {
            Ok(()) => None,
            Err(Error::CrlRollback { rollback, .. }) => Some(rollback.label()),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn only_a_crl_at_least_as_new_replaces_the_one_in_force() {
        let t = 1_700_000_000;
        let in_force = version(Some(5), t);
        assert_eq!(refusal(Some(version(Some(5), t)), in_force.clone()), None);
        assert_eq!(
            refusal(Some(version(Some(6), t + 1)), in_force.clone()),
            None
        );
        assert_eq!(
            refusal(Some(version(Some(4), t + 60)), in_force.clone()),
            Some("lower_number"),
            "a later thisUpdate does not excuse a lower number"
        );
        assert_eq!(
            refusal(Some(version(None, t + 60)), in_force.clone()),
            Some("lower_number"),
            "no number is lower than any"
        );
        assert_eq!(
            refusal(Some(version(Some(5), t - 1)), in_force.clone()),
            Some("older_this_update")
        );
        assert_eq!(
            refusal(Some(version(Some(9), t - 1)), in_force.clone()),
            Some("older_this_update")
        );
        assert_eq!(refusal(None, in_force.clone()), Some("issuer_missing"));
        // An issuer that is no longer a client CA may lose its CRL.
        let no_longer_a_ca = versions(None, &[b"another"]);
        assert!(no_longer_a_ca
            .check_replaces(&versions(Some(in_force), &[b"issuing"]))
            .is_ok());
    }

    #[test]
    fn the_newest_crl_of_an_issuer_is_the_one_remembered() {
        let mut all = versions(None, &[]);
        all.record(b"issuing", version(Some(3), 100));
        all.record(b"issuing", version(Some(7), 50));
        all.record(b"issuing", version(Some(5), 200));
        assert_eq!(all.get(b"issuing"), Some(&version(Some(7), 50)));
        let messages = [
            CrlRollback::LowerNumber {
                issuer: "CN=x".into(),
                loaded: "4".into(),
                in_force: "5".into(),
            }
            .to_string(),
            CrlRollback::IssuerMissing {
                issuer: "CN=x".into(),
            }
            .to_string(),
        ];
        assert!(
            messages[0].contains("number 4, lower than 5"),
            "{}",
            messages[0]
        );
        assert!(messages[1].contains("no CRL of CN=x"), "{}", messages[1]);
    }

    /// A root, two intermediates of the same name (the second re-keyed), a root CRL revoking
    /// the first, and the identity of a device whose issuer has that name.
    fn revoked_intermediate() -> (Vec<CertificateDer<'static>>, String, Identity) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca = |name: &str| {
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p
        };
        let root_key = KeyPair::generate().unwrap();
        let root = ca("Root").self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(ca("Root"), root_key);
        let mut old = ca("Issuing");
        old.serial_number = Some(rcgen::SerialNumber::from_slice(&[7]));
        let old = old
            .signed_by(&KeyPair::generate().unwrap(), &root_issuer)
            .unwrap();
        let new = ca("Issuing")
            .signed_by(&KeyPair::generate().unwrap(), &root_issuer)
            .unwrap();
        let now = rcgen::date_time_ymd(2024, 1, 1);
        let crl = rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&[7]),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&root_issuer)
        .unwrap();
        let (_, parsed) = X509Certificate::from_der(old.der()).unwrap();
        let who = Identity {
            id: "d1".into(),
            tenant: "acme".into(),
            kind: crate::identity::Kind::Device,
            serial: vec![1],
            issuer: parsed.subject().as_raw().to_vec(),
            fingerprint: [0; 32],
            not_after: 0,
        };
        let certs = vec![root.der().clone(), old.der().clone(), new.der().clone()];
        (certs, crl.pem().unwrap(), who)
    }

    #[test]
    fn a_revoked_crl_issuer_revokes_its_sessions_unless_its_name_is_ambiguous() {
        let (certs, crl, who) = revoked_intermediate();
        let load = |issuers: &[CertificateDer<'static>]| {
            let signers: Vec<_> = std::iter::once(certs[0].clone())
                .chain(issuers.iter().cloned())
                .collect();
            let mut loaded = LoadedCrls::new(&signers);
            loaded
                .add_file(Path::new("root.crl.pem"), crl.as_bytes(), &signers)
                .unwrap();
            loaded.note_revoked_cas(issuers, &signers);
            loaded.revoked
        };
        let revoked = load(&certs[1..2]);
        assert_eq!(revoked.revoked_cas(), 1);
        assert!(revoked.revokes(&who), "the revoked intermediate's device");
        assert!(
            !revoked.contains(&who.issuer, &who.serial),
            "not its own serial"
        );
        // A re-keyed intermediate under the same name is configured too: names are ambiguous.
        let revoked = load(&certs[1..3]);
        assert_eq!(revoked.revoked_cas(), 0);
        assert!(!revoked.revokes(&who));
    }
}

#[cfg(test)]
mod one_crl_tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    /// A CA named "Issuing" (a fresh key each call): its certificate and what signs for it.
    fn ca() -> (CertificateDer<'static>, Issuer<'static, KeyPair>) {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "Issuing");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = p.clone().self_signed(&key).unwrap();
        (cert.der().clone(), Issuer::new(p, key))
    }

    fn crl(by: &Issuer<'_, KeyPair>, number: u8, serial: u8) -> Vec<u8> {
        let now = rcgen::date_time_ymd(2024, 1, number);
        rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: rcgen::date_time_ymd(2099, 1, 1),
            crl_number: rcgen::SerialNumber::from_slice(&[number]),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&[serial]),
                revocation_time: now,
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(by)
        .unwrap()
        .der()
        .to_vec()
    }

    #[test]
    fn only_the_newest_crl_of_an_issuer_goes_to_the_verifier() {
        let (cert, issuer) = ca();
        let signers = [cert];
        let pem = |der: &[u8]| pem::encode(&pem::Pem::new("X509 CRL", der.to_vec()));
        let (older, newer) = (crl(&issuer, 2, 7), crl(&issuer, 5, 8));
        let mut loaded = LoadedCrls::new(&signers);
        // The newer one first, as when the cluster's CRL comes after an older file.
        for der in [&newer, &older] {
            loaded
                .add_file(Path::new("x.pem"), pem(der).as_bytes(), &signers)
                .unwrap();
        }
        assert_eq!(loaded.der().len(), 1);
        assert_eq!(loaded.der()[0].as_ref(), newer.as_slice());
        let name = X509Certificate::from_der(&signers[0]).unwrap().1;
        let name = name.subject().as_raw();
        assert!(loaded.revoked.contains(name, &[7]) && loaded.revoked.contains(name, &[8]));
    }

    #[test]
    fn one_crl_is_checked_for_its_signature_and_shape() {
        let (cert, issuer) = ca();
        let (_, forger) = ca();
        let signers = [cert];
        let at = Path::new("fleet-crl/key");
        let (_, version) = check_one(&crl(&issuer, 3, 1), at, &signers).unwrap();
        assert_eq!(version.number, Some(BigUint::from(3u8)));
        let forged = check_one(&crl(&forger, 9, 1), at, &signers).unwrap_err();
        assert_eq!(forged.label(), "bad_signature", "same name, another key");
        let garbage = check_one(b"not a CRL", at, &signers).unwrap_err();
        assert_eq!(garbage.label(), "unparsable");
        let mut trailing = crl(&issuer, 3, 1);
        trailing.push(0);
        assert_eq!(
            check_one(&trailing, at, &signers).unwrap_err().label(),
            "unparsable"
        );
    }
}
