use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_firmware::bundle::Bundle;
use fleet_provision::{
    boards, bundle_to_pem, serve, write_file, BatchRequest, CsrInput, CsrRequest, Error,
    KeyProtection, Passphrase, Reason, Station,
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
    /// File holding the CA key passphrase (else the FLEET_CA_PASSPHRASE environment variable).
    #[arg(long, global = true, env = "FLEET_CA_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
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
        /// Where the bundles go (default: DIR/devices).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Certify keys generated on the devices (CSR flow: keys never leave the boards).
    Sign {
        /// PKCS#10 request, PEM or DER (repeat for several).
        #[arg(long = "csr", required = true)]
        csrs: Vec<PathBuf>,
        #[arg(long)]
        tenant: String,
        /// The device id to give a single request (default: the tenant's next id).
        #[arg(long)]
        device_id: Option<String>,
        #[arg(long, default_value_t = 365)]
        validity_days: u32,
        /// Also write a key-less identity bundle for this gateway (the board adds its key).
        #[arg(long)]
        gateway_host: Option<String>,
        #[arg(long, default_value_t = 8883)]
        gateway_port: u16,
        /// Where the certificates go (default: DIR/devices).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the station's HTTPS API (mTLS): issue, look up, revoke, renew, CRL.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// Host name or IP address clients reach the station at (repeat for several).
        #[arg(long = "host", default_value = "localhost")]
        hosts: Vec<String>,
        /// How long a certificate replaced by a renewal keeps working.
        #[arg(long, default_value_t = 168)]
        grace_hours: u32,
        /// Validity of certificates issued and renewed through the API.
        #[arg(long, default_value_t = 365)]
        validity_days: u32,
    },
    /// Measure issuance throughput (both flows) in a scratch station; prints JSON.
    Bench {
        /// Devices per flow.
        #[arg(long, default_value_t = 10000)]
        devices: u32,
    },
    /// Issue a backend service certificate (subject OU=service).
    ServiceCert {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tenant: String,
    },
    /// Issue the gateway's client certificate for the station API (subject OU=gateway): it
    /// relays device certificate renewals.
    GatewayClientCert {
        #[arg(long, default_value = "gateway")]
        name: String,
    },
    /// Inspect or export an identity bundle.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// List the device registry (every certificate).
    Devices {
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
    },
    /// Revoke a device and write a new CRL (the gateway picks it up within a second).
    Revoke {
        device: String,
        /// keyCompromise, cessationOfOperation, superseded, affiliationChanged,
        /// privilegeWithdrawn or unspecified.
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// Revoke certificates whose renewal grace period ended, and write a fresh CRL (run it
    /// before the current one's nextUpdate; `serve` does both on its own).
    Crl {
        #[arg(long, default_value_t = 168)]
        grace_hours: u32,
    },
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
    /// Take over an issuing CA made by another PKI (P-256).
    Import {
        /// The issuing CA certificate (PEM).
        #[arg(long)]
        cert: PathBuf,
        /// Its private key (PEM: PKCS#8, encrypted PKCS#8 or SEC1).
        #[arg(long)]
        key: PathBuf,
        /// The root it chains to, the devices' trust anchor (default: the CA itself).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Store the key unencrypted (development only).
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-provision: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// The CA key passphrase: `--passphrase-file`, else `FLEET_CA_PASSPHRASE`.
fn passphrase(file: Option<&Path>) -> Result<Option<Passphrase>, Error> {
    if let Some(file) = file {
        return Ok(Some(Passphrase::new(&read(file)?)));
    }
    Ok(std::env::var("FLEET_CA_PASSPHRASE")
        .ok()
        .map(|p| Passphrase::new(&p)))
}

fn protection(pass: Option<Passphrase>, insecure: bool) -> Result<KeyProtection, Error> {
    match (pass, insecure) {
        (_, true) => Ok(KeyProtection::InsecurePlaintext),
        (Some(p), false) => Ok(KeyProtection::Encrypted(p)),
        (None, false) => Err(Error::PlaintextKeysNotAllowed),
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let dir = &cli.dir;
    let pass = passphrase(cli.passphrase_file.as_deref())?;
    let open = || -> Result<Station, Error> {
        let station = Station::open(dir, pass.as_ref())?;
        let r = station.recovered();
        if !r.aborted.is_empty() || r.torn_bytes > 0 {
            eprintln!(
                "fleet-provision: recovered from an interrupted run: {} undelivered certificate(s) aborted and put on the CRL, {} byte(s) of a torn audit record discarded",
                r.aborted.len(),
                r.torn_bytes
            );
        }
        Ok(station)
    };
    match cli.command {
        Command::Ca {
            command:
                CaCommand::Init {
                    org,
                    insecure_plaintext_keys,
                },
        } => {
            Station::init(
                dir,
                &org,
                protection(pass.clone(), insecure_plaintext_keys)?,
            )?;
            println!("root CA     {}", dir.join("ca/root.pem").display());
            println!("issuing CA  {}", dir.join("ca/issuing.pem").display());
            println!(
                "gateway client trust anchor {}",
                dir.join("gateway/clients-ca.pem").display()
            );
        }
        Command::Ca {
            command:
                CaCommand::Import {
                    cert,
                    key,
                    root,
                    insecure_plaintext_keys,
                },
        } => {
            Station::import(
                dir,
                &cert,
                &key,
                root.as_deref(),
                protection(pass.clone(), insecure_plaintext_keys)?,
            )?;
            println!(
                "issuing CA {} imported into {}",
                cert.display(),
                dir.display()
            );
        }
        Command::ServerCert { hosts } => {
            let station = open()?;
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
            out,
        } => {
            let board = hex_board.as_deref().map(boards::board).transpose()?;
            let mut station = open()?;
            let req = BatchRequest {
                tenant,
                count,
                gateway_host,
                gateway_port,
                validity_days,
            };
            let bar = progress_bar(u64::from(count), "issuing");
            let issued = station.issue_devices_with(&req, out.as_deref(), |d| {
                bar.inc(1);
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
        Command::Sign {
            csrs,
            tenant,
            device_id,
            validity_days,
            gateway_host,
            gateway_port,
            out,
        } => {
            if device_id.is_some() && csrs.len() != 1 {
                return Err(Error::InvalidInput {
                    field: "device id",
                    message: "--device-id names one device; give exactly one --csr".into(),
                });
            }
            let mut inputs = Vec::with_capacity(csrs.len());
            for path in &csrs {
                let bytes = std::fs::read(path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                let der = fleet_provision::pki::csr_der(&bytes)
                    .map_err(|e| Error::Csr(format!("{}: {}", path.display(), e)))?;
                inputs.push(CsrInput {
                    der,
                    device_id: device_id.clone(),
                });
            }
            let mut station = open()?;
            let out = out.unwrap_or_else(|| dir.join("devices"));
            let bar = progress_bar(inputs.len() as u64, "certifying");
            let req = CsrRequest {
                tenant,
                validity_days,
            };
            let certified = station.certify_csrs(&req, &inputs, |_| bar.inc(1))?;
            bar.finish_and_clear();
            for c in &certified {
                let pem_path = out.join(format!("{}.pem", c.device_id));
                write_file(&pem_path, c.cert_pem().as_bytes(), false)?;
                print!(
                    "{}  serial {}  {}",
                    c.device_id,
                    c.serial_hex,
                    pem_path.display()
                );
                if let Some(host) = &gateway_host {
                    let bytes = station.keyless_bundle(c, host, gateway_port)?;
                    let bin = out.join(format!("{}.bin", c.device_id));
                    write_file(&bin, &bytes, false)?;
                    print!("  {} (key-less bundle)", bin.display());
                }
                println!();
            }
        }
        Command::Serve {
            listen,
            hosts,
            grace_hours,
            validity_days,
        } => {
            let station = open()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|source| Error::Io {
                    path: PathBuf::from("tokio runtime"),
                    source,
                })?;
            runtime.block_on(async move {
                let options = serve::Options {
                    listen,
                    hosts,
                    grace: time::Duration::hours(i64::from(grace_hours)),
                    validity_days,
                };
                let server = serve::Server::bind(station, options).await?;
                println!("fleet-provision serving on https://{}", server.local_addr());
                server.run(shutdown_signal()).await
            })?;
        }
        Command::Bench { devices } => {
            let bar = progress_bar(u64::from(devices), "{msg}");
            let report = fleet_provision::bench::run(devices, &mut |phase, done, _| {
                bar.set_message(phase.to_owned());
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
            println!(
                "{}",
                serde_json::to_string_pretty(&report).map_err(|e| Error::Audit(e.to_string()))?
            );
        }
        Command::ServiceCert { name, tenant } => {
            let station = open()?;
            let files = station.issue_service_cert(&name, &tenant)?;
            println!(
                "service {name} ({tenant}) {} {}",
                files.cert_path.display(),
                files.key_path.display()
            );
        }
        Command::GatewayClientCert { name } => {
            let station = open()?;
            let files = station.issue_gateway_client_cert(&name)?;
            println!(
                "gateway client {name} {} {}",
                files.cert_path.display(),
                files.key_path.display()
            );
        }
        Command::Bundle { command } => bundle(command)?,
        Command::Revoke { device, reason } => {
            let reason = Reason::parse(&reason)?;
            let mut station = open()?;
            let revoked = station.revoke(&device, reason)?;
            for r in &revoked.records {
                println!(
                    "revoked {} serial {} (reason {})",
                    r.device_id,
                    r.serial_hex,
                    reason.name()
                );
            }
            println!("CRL written to {}", revoked.crl_path.display());
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => match fleet_provision::verify_audit_dir(dir) {
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
        },
        Command::Crl { grace_hours } => {
            let mut station = open()?;
            let expired =
                station.expire_superseded(time::Duration::hours(i64::from(grace_hours)))?;
            for c in &expired {
                println!(
                    "revoked {} serial {} (superseded, grace ended)",
                    c.device_id, c.serial_hex
                );
            }
            println!("CRL written to {}", station.write_crl()?.display());
        }
        Command::Devices { device } => {
            let rows = fleet_provision::list_registry(dir, device.as_deref())?;
            for d in rows {
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

/// A progress bar on stderr (drawn only when it is a terminal).
fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {{pos}}/{{len}} [{{bar:30}}] {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    )
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
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
                    println!("serial         {}", hex::encode(cert.raw_serial()));
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
