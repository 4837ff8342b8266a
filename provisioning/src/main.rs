use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_firmware::bundle::Bundle;
use fleet_provision::{
    boards, bundle_to_pem, hex, write_file, BatchRequest, Error, KeyProtection, Reason, Station,
};
use x509_parser::prelude::{FromDer, X509Certificate};

/// The factory station: CA, per-device identities, identity bundles, registry.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Station directory.
    #[arg(
        long,
        global = true,
        default_value = "fleet-data",
        env = "FLEET_STATION_DIR"
    )]
    dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Certificate authority.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Issue the gateway's server certificate.
    ServerCert {
        /// DNS name or IP address (repeat for several); the first is also the CN.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
    /// Issue a batch of devices (key injection: keys exist only in their bundles).
    Batch {
        #[arg(long)]
        count: u32,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        gateway_host: String,
        #[arg(long, default_value_t = 8883)]
        gateway_port: u16,
        #[arg(long, default_value_t = 365)]
        validity_days: u32,
        /// Print one line per issued device.
        #[arg(long)]
        verbose: bool,
        /// Also write each bundle as Intel HEX at this board's slot A
        /// (qemu-mps2-an386, esp32c3, stm32f767zi).
        #[arg(long)]
        hex_board: Option<String>,
    },
    /// Issue a backend service certificate (subject OU=service).
    ServiceCert {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tenant: String,
    },
    /// Inspect or export an identity bundle.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// List the device registry.
    Devices,
    /// Revoke a device and write a new CRL (the gateway picks it up within a second).
    Revoke {
        device: String,
        /// keyCompromise, cessationOfOperation, superseded, affiliationChanged,
        /// privilegeWithdrawn or unspecified.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Write a fresh CRL (e.g. before the current one's nextUpdate).
    Crl,
    /// The tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a root CA and an issuing CA.
    Init {
        #[arg(long)]
        org: String,
        /// Store CA keys unencrypted (development only).
        #[arg(long)]
        insecure_plaintext_keys: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain, its anchor in the registry and every signed batch manifest.
    Verify,
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Print a bundle's fields (never the key).
    Show { file: PathBuf },
    /// Write the bundle as Intel HEX at a board's identity slot.
    Hex {
        file: PathBuf,
        #[arg(long)]
        board: String,
        /// Slot `a` or `b`.
        #[arg(long, default_value = "a")]
        slot: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write the device certificate and key as PEM, for standard MQTT clients.
    Export {
        file: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        key: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-provision: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let dir = &cli.dir;
    match cli.command {
        Command::Ca {
            command:
                CaCommand::Init {
                    org,
                    insecure_plaintext_keys,
                },
        } => {
            if !insecure_plaintext_keys {
                return Err(Error::PlaintextKeysNotAllowed);
            }
            Station::init(dir, &org, KeyProtection::InsecurePlaintext)?;
            println!("root CA     {}", dir.join("ca/root.pem").display());
            println!("issuing CA  {}", dir.join("ca/issuing.pem").display());
            println!(
                "gateway client trust anchor {}",
                dir.join("gateway/clients-ca.pem").display()
            );
        }
        Command::ServerCert { hosts } => {
            let station = Station::open(dir)?;
            let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
            let files = station.issue_server_cert(&hosts)?;
            println!(
                "gateway server chain {} (for {})",
                files.cert_path.display(),
                hosts.join(", ")
            );
            println!("gateway server key   {}", files.key_path.display());
        }
        Command::Batch {
            count,
            tenant,
            gateway_host,
            gateway_port,
            validity_days,
            hex_board,
            verbose,
        } => {
            let board = hex_board.as_deref().map(boards::board).transpose()?;
            let mut station = Station::open(dir)?;
            let req = BatchRequest {
                tenant,
                count,
                gateway_host,
                gateway_port,
                validity_days,
            };
            // Drawn on stderr, and only when it is a terminal.
            let bar = indicatif::ProgressBar::new(u64::from(count)).with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} issuing {pos}/{len} [{bar:30}] {per_sec} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let issued = station.issue_devices_with(&req, |d| {
                bar.inc(1);
                bar.set_message(d.device_id.clone());
                if verbose {
                    bar.println(format!(
                        "issued {}  serial {}  {}",
                        d.device_id,
                        d.serial_hex,
                        d.bundle_path.display()
                    ));
                }
            })?;
            bar.finish_and_clear();
            if let Some(board) = board {
                for d in &issued {
                    let hex_path = d.bundle_path.with_extension("hex");
                    let hex =
                        boards::to_ihex(&read_bundle(&d.bundle_path)?, board, boards::Slot::A)?;
                    write_file(&hex_path, hex.as_bytes(), true)?;
                }
                println!(
                    "Intel HEX for {} at {:#010x} ({}) next to each bundle",
                    board.name, board.slot_a, board.note
                );
            }
            println!("{} devices issued for tenant {}", issued.len(), req.tenant);
        }
        Command::ServiceCert { name, tenant } => {
            let station = Station::open(dir)?;
            let files = station.issue_service_cert(&name, &tenant)?;
            println!(
                "service {name} ({tenant}) {} {}",
                files.cert_path.display(),
                files.key_path.display()
            );
        }
        Command::Bundle { command } => bundle(command)?,
        Command::Revoke { device, reason } => {
            let reason = Reason::parse(&reason)?;
            let mut station = Station::open(dir)?;
            let revoked = station.revoke(&device, reason)?;
            println!(
                "revoked {} (serial {}, reason {}); CRL written to {}",
                revoked.record.device_id,
                revoked.record.serial_hex,
                reason.name(),
                revoked.crl_path.display()
            );
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let station = Station::open(dir)?;
            match station.verify_audit() {
                Ok(v) => println!(
                    "audit log OK: {} records, {} signed batch manifests covering {} devices",
                    v.records, v.manifests, v.devices
                ),
                Err(problems) => {
                    for p in &problems {
                        println!("TAMPERED: {p}");
                    }
                    return Err(Error::Audit(format!(
                        "{} problem(s) in {}",
                        problems.len(),
                        dir.join("audit.log").display()
                    )));
                }
            }
        }
        Command::Crl => {
            let mut station = Station::open(dir)?;
            println!("CRL written to {}", station.write_crl()?.display());
        }
        Command::Devices => {
            let station = Station::open(dir)?;
            for d in station.devices()? {
                println!(
                    "{:<24} {:<10} {:<10} serial {} {}",
                    d.device_id,
                    d.tenant,
                    d.status.name(),
                    d.serial_hex,
                    d.batch
                );
            }
        }
    }
    Ok(())
}

fn read_bundle(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn bundle(command: BundleCommand) -> Result<(), Error> {
    let path = match &command {
        BundleCommand::Show { file }
        | BundleCommand::Export { file, .. }
        | BundleCommand::Hex { file, .. } => file.clone(),
    };
    let bytes = read_bundle(&path)?;
    let b = Bundle::parse(&bytes).map_err(|e| Error::Bundle(format!("{}: {e}", path.display())))?;
    match command {
        BundleCommand::Show { .. } => {
            println!("device id      {}", b.device_id);
            println!("tenant         {}", b.tenant);
            println!("generation     {}", b.generation);
            println!("gateway        {}:{}", b.gateway_host, b.gateway_port);
            println!(
                "private key    {}",
                if b.private_key_der.is_some() {
                    "present (not shown)"
                } else {
                    "absent (secure element)"
                }
            );
            match X509Certificate::from_der(b.cert_der) {
                Ok((_, cert)) => {
                    println!("subject        {}", cert.subject());
                    println!("issuer         {}", cert.issuer());
                    println!("serial         {}", hex(cert.raw_serial()));
                    println!(
                        "valid          {} .. {}",
                        cert.validity().not_before,
                        cert.validity().not_after
                    );
                }
                Err(e) => println!("certificate    unparsable: {e}"),
            }
        }
        BundleCommand::Hex {
            board, slot, out, ..
        } => {
            let board = boards::board(&board)?;
            let slot = match slot.to_ascii_lowercase().as_str() {
                "a" => boards::Slot::A,
                "b" => boards::Slot::B,
                other => {
                    return Err(Error::InvalidInput {
                        field: "slot",
                        message: format!("{other:?} is not a or b"),
                    })
                }
            };
            write_file(&out, boards::to_ihex(&bytes, board, slot)?.as_bytes(), true)?;
            println!(
                "{} for {} written to {}",
                path.display(),
                board.name,
                out.display()
            );
        }
        BundleCommand::Export { cert, key, .. } => {
            let (cert_pem, key_pem) = bundle_to_pem(&b)?;
            write_file(&cert, cert_pem.as_bytes(), false)?;
            write_file(&key, key_pem.as_bytes(), true)?;
            println!("certificate {}", cert.display());
            println!("private key {} (mode 0600)", key.display());
        }
    }
    Ok(())
}
