//! Which registry the station uses: `--registry postgres://...` (or `FLEET_REGISTRY`) for
//! the one several stations share, else SQLite in the station directory; `registry migrate`
//! and `audit verify --all-stations`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use fleet_provision::{AuditError, Error, PostgresTarget, RegistryLocation};

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
        Ok(RegistryLocation::Postgres(Box::new(self.target(url)?)))
    }

    /// The shared registry at `url`, with the password and TLS CA these arguments give.
    pub fn target(&self, url: &str) -> Result<PostgresTarget, Error> {
        let password = match &self.registry_password_file {
            Some(path) => Some(read(path)?),
            None => std::env::var("PGPASSWORD").ok(),
        };
        PostgresTarget::new(url, password.as_deref(), self.registry_ca_file.as_deref())
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Move a station's SQLite registry and audit log into a shared PostgreSQL registry, in
    /// one transaction (refused, with nothing written, when the station was migrated before
    /// or any of its device ids or serials is already there). From then on the station runs
    /// with --registry.
    Migrate {
        /// The station directory (its registry.sqlite3 and audit.log).
        #[arg(long)]
        from: PathBuf,
        /// The shared registry: postgres://user@host:port/db (password and TLS as for
        /// --registry: --registry-password-file or PGPASSWORD, --registry-ca-file).
        #[arg(long)]
        to: String,
    },
}

/// `registry ...`
pub fn registry(args: &RegistryArgs, command: RegistryCommand) -> Result<(), Error> {
    match command {
        RegistryCommand::Migrate { from, to } => {
            let target = args.target(&to)?;
            let m = fleet_provision::migrate::migrate(&from, &target)?;
            println!(
                "migrated {} as station {} into {target}: {} devices, {} certificates, {} audit records",
                from.display(),
                m.station,
                m.devices,
                m.certs,
                m.records
            );
            println!(
                "from now on run this station with --registry {target} (its registry.sqlite3 is no longer used)"
            );
            Ok(())
        }
    }
}

/// `audit verify --all-stations`
pub fn verify_all_stations(dir: &Path, at: &RegistryLocation) -> Result<(), Error> {
    let RegistryLocation::Postgres(target) = at else {
        return Err(Error::InvalidInput {
            field: "registry",
            message: "audit verify --all-stations needs --registry postgres://...".into(),
        });
    };
    match fleet_provision::verify_all_stations(dir, target) {
        Ok(stations) => {
            for v in &stations {
                println!(
                    "station {}: audit log OK, {} records, {} signed batch manifests covering {} devices checked",
                    v.station, v.records, v.manifests, v.devices
                );
            }
            println!("{} stations verified", stations.len());
            Ok(())
        }
        Err(problems) => {
            for p in &problems {
                println!("TAMPERED: {p}");
            }
            Err(AuditError::Tampered {
                path: PathBuf::from(target.to_string()),
                problems: problems.len(),
            }
            .into())
        }
    }
}
