//! `fleet-provision`: the factory station.
//!
//! A station directory holds the CA hierarchy, the device registry and everything issued:
//!
//! ```text
//! DIR/ca/root.pem, root.key              root CA (keep offline in production)
//! DIR/ca/issuing.pem, issuing.key        issuing CA, signs everything below
//! DIR/gateway/server.pem, server.key     gateway server chain (leaf, issuing CA) and key
//! DIR/gateway/clients-ca.pem             the CA the gateway trusts for client certificates
//! DIR/devices/{id}.bin, {id}.pem         identity bundle to flash, certificate for humans
//! DIR/services/{name}.pem, {name}.key    backend service identities
//! DIR/registry.sqlite3                   device registry
//! DIR/audit.log, batches/                tamper-evident audit log, signed batch manifests
//! DIR/crl/issuing.crl.pem                the CRL the gateway watches (and, with
//!                                        `--publish-crl`, the cluster's CRL bucket: [`publish`])
//! DIR/station.lock                       held by the one process issuing from DIR
//! ```
//!
//! Modules: [`Station`] and its operations (`station/`, one concept per file); [`pki`]
//! (certificates, keys, CSRs, CRLs); [`registry`]; [`audit`]; [`serve`] (the HTTPS API);
//! files and the writer lock (`fs`); [`migrate`] (a SQLite station into a shared registry); the one [`Error`] type and its typed reasons (`error`).

pub mod audit;
pub mod bench;
pub mod boards;
mod digest;
mod error;
mod fs;
pub mod migrate;
pub mod pki;
pub mod publish;
pub mod registry;
pub mod serve;
mod station;

pub use error::{
    AuditError, Busy, Conflict, CrlError, CsrAt, CsrError, Error, Forbidden, KeyError,
    RenewalRefused, TlsError,
};
pub use fs::write_file;
pub use pki::Passphrase;
pub use registry::{CertRecord, PostgresTarget, RegistryLocation};
pub use station::{
    bundle_to_pem, in_tenant_namespace, list_registry, list_registry_at, station_name,
    verify_all_stations, verify_audit_dir, verify_audit_dir_at, BatchRequest, Certified, CsrInput,
    CsrRequest, DeviceIssued, ImportFiles, IssuedFiles, KeyProtection, Reason, Recovered,
    RenewalPolicy, Revoked, Station,
};
