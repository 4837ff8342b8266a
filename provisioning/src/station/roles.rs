//! Certificates for the parts around the devices: the gateway's server certificate, backend
//! service identities (OU=service), the gateway's client identity (OU=gateway) and fleet
//! operators (OU=operator).

use std::path::PathBuf;

use super::{check_name, check_new_name, Station, SERVER_DAYS};
use crate::audit::Event;
use crate::digest::sha256_hex;
use crate::error::Error;
use crate::fs::write_file;
use crate::pki;

/// Files written for a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedFiles {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Station {
    /// The gateway server certificate for these host names / IP addresses.
    pub fn issue_server_cert(&self, hosts: &[&str]) -> Result<IssuedFiles, Error> {
        self.check_ca_valid()?;
        let issued = pki::sign_server(&self.issuing, hosts, SERVER_DAYS)?;
        let files = IssuedFiles {
            cert_path: self.dir.join("gateway/server.pem"),
            key_path: self.dir.join("gateway/server.key"),
        };
        let chain = format!("{}{}", issued.cert_pem, self.issuing.cert_pem);
        write_file(&files.key_path, issued.key.serialize_pem().as_bytes(), true)?;
        write_file(&files.cert_path, chain.as_bytes(), false)?;
        self.audit_server_cert(hosts, &issued)?;
        Ok(files)
    }

    /// A server certificate held in memory (e.g. for `fleet-provision serve`), recorded in
    /// the audit log: (chain PEM, PKCS#8 key PEM).
    pub fn issue_server_identity(&self, hosts: &[&str]) -> Result<(String, String), Error> {
        self.check_ca_valid()?;
        let issued = pki::sign_server(&self.issuing, hosts, SERVER_DAYS)?;
        self.audit_server_cert(hosts, &issued)?;
        let chain = format!("{}{}", issued.cert_pem, self.issuing.cert_pem);
        Ok((chain, issued.key.serialize_pem()))
    }

    fn audit_server_cert(&self, hosts: &[&str], issued: &pki::Issued) -> Result<(), Error> {
        self.audit.append(Event::ServerCert {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            fingerprint: sha256_hex(&issued.cert_der),
        })
    }

    /// A backend service identity (it keeps its key: it runs in the cloud, not on a board).
    pub fn issue_service_cert(&self, name: &str, tenant: &str) -> Result<IssuedFiles, Error> {
        self.issue_role_cert(name, tenant, "service")
    }

    /// The gateway's client identity towards the station API (subject OU=gateway): it may
    /// renew certificates on behalf of the devices it authenticated, nothing else.
    pub fn issue_gateway_client_cert(&self, name: &str) -> Result<IssuedFiles, Error> {
        self.issue_role_cert(name, "fleet-gateway", "gateway")
    }

    /// A fleet operator's client identity towards the station API (subject OU=operator,
    /// O=fleet), e.g. for the gateway's console: it may look up and revoke any tenant's
    /// device, nothing else (no issuing, no renewal).
    pub fn issue_operator_cert(&self, name: &str) -> Result<IssuedFiles, Error> {
        self.issue_role_cert(name, "fleet", "operator")
    }

    fn issue_role_cert(&self, name: &str, tenant: &str, role: &str) -> Result<IssuedFiles, Error> {
        check_name("service name", name, true)?;
        check_new_name("tenant", tenant)?;
        self.check_ca_valid()?;
        let issued = pki::sign_role(&self.issuing, name, tenant, role, SERVER_DAYS)?;
        let files = IssuedFiles {
            cert_path: self.dir.join(format!("services/{name}.pem")),
            key_path: self.dir.join(format!("services/{name}.key")),
        };
        write_file(&files.key_path, issued.key.serialize_pem().as_bytes(), true)?;
        write_file(&files.cert_path, issued.cert_pem.as_bytes(), false)?;
        self.audit.append(Event::ServiceCert {
            name: name.to_owned(),
            tenant: tenant.to_owned(),
            fingerprint: sha256_hex(&issued.cert_der),
        })?;
        Ok(files)
    }
}
