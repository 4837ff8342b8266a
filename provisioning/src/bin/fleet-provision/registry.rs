//! Which registry the station uses: `--registry postgres://...` (or `FLEET_REGISTRY`) for
//! the one several stations share, else SQLite in the station directory.

use std::path::{Path, PathBuf};

use clap::Args;
use fleet_provision::{Error, PostgresTarget, RegistryLocation};

#[derive(Args)]
pub struct RegistryArgs {
    /// The registry several stations share: postgres://user@host:port/db (default: SQLite
    /// in the station directory). Never put the password in it.
    #[arg(long, global = true, env = "FLEET_REGISTRY")]
    registry: Option<String>,
    /// File holding the shared registry's password (else the PGPASSWORD environment variable).
    #[arg(long, global = true, env = "FLEET_REGISTRY_PASSWORD_FILE")]
    registry_password_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the database server's certificate: connect with
    /// TLS and verify the server against it (else plain TCP).
    #[arg(long, global = true, env = "FLEET_REGISTRY_CA_FILE")]
    registry_ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    pub fn location(&self) -> Result<RegistryLocation, Error> {
        let Some(url) = self.registry.as_deref().filter(|u| !u.is_empty()) else {
            if self.registry_password_file.is_some() || self.registry_ca_file.is_some() {
                return Err(Error::InvalidInput {
                    field: "registry",
                    message: "--registry-password-file and --registry-ca-file need --registry postgres://...".into(),
                });
            }
            return Ok(RegistryLocation::StationDir);
        };
        let password = match &self.registry_password_file {
            Some(path) => Some(read(path)?),
            None => std::env::var("PGPASSWORD").ok(),
        };
        let target =
            PostgresTarget::new(url, password.as_deref(), self.registry_ca_file.as_deref())?;
        Ok(RegistryLocation::Postgres(Box::new(target)))
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}
