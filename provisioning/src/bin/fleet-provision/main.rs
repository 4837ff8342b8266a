//! `fleet-provision`: the factory station's command line. `run` dispatches each subcommand to
//! its own function.

mod bundle;
mod publish;
mod registry;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use fleet_provision::{
    boards, serve, write_file, AuditError, BatchRequest, CsrAt, CsrInput, CsrRequest, Error,
    ImportFiles, KeyProtection, Passphrase, Reason, RegistryLocation, RenewalPolicy, Station,
};

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
    #[command(flatten)]
    registry: registry::RegistryArgs,
    #[command(flatten)]
    publish: publish::PublishArgs,
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
    Batch(BatchArgs),
    /// Certify keys generated on the devices (CSR flow: keys never leave the boards).
    Sign(SignArgs),
    /// Run the station's HTTPS API (mTLS): issue, look up, revoke, renew, CRL.
    Serve(ServeArgs),
    /// Measure issuance throughput (both flows) in a scratch station, its registry where
    /// --registry says (SQLite in the scratch directory by default); prints JSON.
    Bench(BenchArgs),
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
    /// Issue a fleet operator's client certificate for the station API (subject OU=operator),
    /// e.g. for the gateway's console (`[console]`): it looks up and revokes devices of
    /// every tenant, and may do nothing else.
    OperatorCert {
        #[arg(long, default_value = "console")]
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
    /// The device registry itself.
    Registry {
        #[command(subcommand)]
        command: registry::RegistryCommand,
    },
}

#[derive(Args)]
struct BatchArgs {
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
}

#[derive(Args)]
struct BenchArgs {
    /// Devices per flow.
    #[arg(long, default_value_t = 10000)]
    devices: u32,
    /// A station directory whose root CA (unencrypted key) signs the scratch station's
    /// issuing CA, as for several stations under one root.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Before each timed flow print `ready <flow>` and wait for a line on stdin (several
    /// stations started together).
    #[arg(long)]
    sync: bool,
}

#[derive(Args)]
struct SignArgs {
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
}

#[derive(Args)]
struct ServeArgs {
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
    /// A device's certificate is renewable once it ends within this many days (the
    /// gateway's default `[renewal] threshold_days`).
    #[arg(long, default_value_t = 30)]
    renew_window_days: u32,
    /// At most this many renewals of one device per `--renewal-period-hours`.
    #[arg(long, default_value_t = 3)]
    max_renewals: u32,
    #[arg(long, default_value_t = 24)]
    renewal_period_hours: u32,
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
    Import(ImportArgs),
}

#[derive(Args)]
struct ImportArgs {
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
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain, its anchor in the registry and every signed batch manifest
    /// (with a shared registry: also the registry's copy of every record).
    Verify {
        /// Check every station's chain in the shared registry (`--registry postgres://...`),
        /// from the records the stations copied there.
        #[arg(long)]
        all_stations: bool,
    },
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
    fleet_host::init_tracing("info");
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

/// What every subcommand may need: the station directory, the CA key passphrase and where
/// the registry is.
struct Context {
    dir: PathBuf,
    pass: Option<Passphrase>,
    registry: RegistryLocation,
    publisher: Option<fleet_provision::publish::Publisher>,
}

impl Context {
    /// Opens the station, telling the operator what an interrupted run left and how it was
    /// settled.
    fn open(&self) -> Result<Station, Error> {
        let mut station = Station::open_at(&self.dir, self.pass.as_ref(), &self.registry)?;
        station.publish_crls_to(self.publisher.clone());
        let r = station.recovered();
        if !r.aborted.is_empty() || r.torn_bytes > 0 {
            eprintln!(
                "fleet-provision: recovered from an interrupted run: {} undelivered certificate(s) aborted and put on the CRL, {} byte(s) of a torn audit record discarded",
                r.aborted.len(),
                r.torn_bytes
            );
        }
        Ok(station)
    }

    fn protection(&self, insecure: bool) -> Result<KeyProtection, Error> {
        protection(self.pass.clone(), insecure)
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let registry = match &cli.command {
        // `registry migrate` names its registry with --to.
        Command::Registry { .. } => RegistryLocation::StationDir,
        _ => cli.registry.location()?,
    };
    let ctx = Context {
        pass: passphrase(cli.passphrase_file.as_deref())?,
        registry,
        publisher: cli.publish.publisher()?,
        dir: cli.dir,
    };
    match cli.command {
        Command::Ca {
            command:
                CaCommand::Init {
                    org,
                    insecure_plaintext_keys,
                },
        } => ca_init(&ctx, &org, insecure_plaintext_keys),
        Command::Ca {
            command: CaCommand::Import(args),
        } => ca_import(&ctx, &args),
        Command::ServerCert { hosts } => server_cert(&ctx, &hosts),
        Command::Batch(args) => batch(&ctx, args),
        Command::Sign(args) => sign(&ctx, args),
        Command::Serve(args) => serve_api(&ctx, args),
        Command::Bench(args) => bench(&ctx, args),
        Command::ServiceCert { name, tenant } => service_cert(&ctx, &name, &tenant),
        Command::GatewayClientCert { name } => gateway_client_cert(&ctx, &name),
        Command::OperatorCert { name } => operator_cert(&ctx, &name),
        Command::Bundle { command } => bundle::bundle(command),
        Command::Revoke { device, reason } => revoke(&ctx, &device, &reason),
        Command::Audit {
            command: AuditCommand::Verify { all_stations },
        } => audit_verify(&ctx, all_stations),
        Command::Registry { command } => registry::registry(&cli.registry, command),
        Command::Crl { grace_hours } => crl(&ctx, grace_hours),
        Command::Devices { device } => devices(&ctx, device.as_deref()),
    }
}

/// `ca init`
fn ca_init(ctx: &Context, org: &str, insecure_plaintext_keys: bool) -> Result<(), Error> {
    let dir = &ctx.dir;
    Station::init_at(
        dir,
        org,
        ctx.protection(insecure_plaintext_keys)?,
        &ctx.registry,
    )?;
    println!("root CA     {}", dir.join("ca/root.pem").display());
    println!("issuing CA  {}", dir.join("ca/issuing.pem").display());
    println!(
        "gateway client trust anchor {}",
        dir.join("gateway/clients-ca.pem").display()
    );
    Ok(())
}

/// `ca import`
fn ca_import(ctx: &Context, args: &ImportArgs) -> Result<(), Error> {
    let files = ImportFiles {
        cert: &args.cert,
        key: &args.key,
        root: args.root.as_deref(),
    };
    Station::import_at(
        &ctx.dir,
        &files,
        ctx.protection(args.insecure_plaintext_keys)?,
        &ctx.registry,
    )?;
    println!(
        "issuing CA {} imported into {}",
        args.cert.display(),
        ctx.dir.display()
    );
    Ok(())
}

/// `server-cert`
fn server_cert(ctx: &Context, hosts: &[String]) -> Result<(), Error> {
    let station = ctx.open()?;
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let files = station.issue_server_cert(&hosts)?;
    println!(
        "gateway server chain {} (for {})",
        files.cert_path.display(),
        hosts.join(", ")
    );
    println!("gateway server key   {}", files.key_path.display());
    Ok(())
}

/// `batch`
fn batch(ctx: &Context, args: BatchArgs) -> Result<(), Error> {
    let board = args.hex_board.as_deref().map(boards::board).transpose()?;
    let mut station = ctx.open()?;
    let req = BatchRequest {
        tenant: args.tenant,
        count: args.count,
        gateway_host: args.gateway_host,
        gateway_port: args.gateway_port,
        validity_days: args.validity_days,
    };
    let bar = progress_bar(u64::from(args.count), "issuing");
    let issued = station.issue_devices_with(&req, args.out.as_deref(), |d| {
        bar.inc(1);
        if args.verbose {
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
            let bundle = bundle::read_bundle(&d.bundle_path)?;
            let hex = boards::to_ihex(&bundle, board, boards::Slot::A)?;
            write_file(&hex_path, hex.as_bytes(), true)?;
        }
        println!(
            "Intel HEX for {} at {:#010x} ({}) next to each bundle",
            board.name, board.slot_a, board.note
        );
    }
    println!("{} devices issued for tenant {}", issued.len(), req.tenant);
    Ok(())
}

/// The requests of `sign --csr ...`, read and converted to DER.
fn read_csrs(args: &SignArgs) -> Result<Vec<CsrInput>, Error> {
    if args.device_id.is_some() && args.csrs.len() != 1 {
        return Err(Error::InvalidInput {
            field: "device id",
            message: "--device-id names one device; give exactly one --csr".into(),
        });
    }
    let mut inputs = Vec::with_capacity(args.csrs.len());
    for path in &args.csrs {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let der = fleet_provision::pki::csr_der(&bytes).map_err(|e| match e {
            Error::Csr { reason, .. } => Error::Csr {
                at: CsrAt::File(path.clone()),
                reason,
            },
            other => other,
        })?;
        inputs.push(CsrInput {
            der,
            device_id: args.device_id.clone(),
        });
    }
    Ok(inputs)
}

/// `sign`
fn sign(ctx: &Context, args: SignArgs) -> Result<(), Error> {
    let inputs = read_csrs(&args)?;
    let mut station = ctx.open()?;
    let out = args.out.unwrap_or_else(|| ctx.dir.join("devices"));
    let bar = progress_bar(inputs.len() as u64, "certifying");
    let req = CsrRequest {
        tenant: args.tenant,
        validity_days: args.validity_days,
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
        if let Some(host) = &args.gateway_host {
            let bytes = station.keyless_bundle(c, host, args.gateway_port)?;
            let bin = out.join(format!("{}.bin", c.device_id));
            write_file(&bin, &bytes, false)?;
            print!("  {} (key-less bundle)", bin.display());
        }
        println!();
    }
    Ok(())
}

/// `serve`
fn serve_api(ctx: &Context, args: ServeArgs) -> Result<(), Error> {
    let station = ctx.open()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            path: PathBuf::from("tokio runtime"),
            source,
        })?;
    runtime.block_on(async move {
        let options = serve::Options {
            listen: args.listen,
            hosts: args.hosts,
            grace: time::Duration::hours(i64::from(args.grace_hours)),
            validity_days: args.validity_days,
        };
        let renewal = RenewalPolicy {
            window: time::Duration::days(i64::from(args.renew_window_days)),
            max_renewals: args.max_renewals,
            period: time::Duration::hours(i64::from(args.renewal_period_hours)),
        };
        let server = serve::Server::bind_with(station, options, renewal).await?;
        println!("fleet-provision serving on https://{}", server.local_addr());
        server.run(fleet_host::shutdown_signal()).await
    })
}

/// `bench`
fn bench(ctx: &Context, args: BenchArgs) -> Result<(), Error> {
    let opts = fleet_provision::bench::Options {
        devices: args.devices,
        registry: ctx.registry.clone(),
        root: args.root,
        sync: args.sync,
    };
    let bar = if args.sync {
        indicatif::ProgressBar::hidden()
    } else {
        progress_bar(u64::from(args.devices), "{msg}")
    };
    let report = fleet_provision::bench::run(&opts, &mut |phase, done, _| {
        bar.set_message(phase.to_owned());
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    println!(
        "{}",
        serde_json::to_string_pretty(&report).map_err(|source| Error::Json {
            what: "bench report",
            source
        })?
    );
    Ok(())
}

/// `service-cert`
fn service_cert(ctx: &Context, name: &str, tenant: &str) -> Result<(), Error> {
    let station = ctx.open()?;
    let files = station.issue_service_cert(name, tenant)?;
    println!(
        "service {name} ({tenant}) {} {}",
        files.cert_path.display(),
        files.key_path.display()
    );
    Ok(())
}

/// `gateway-client-cert`
fn gateway_client_cert(ctx: &Context, name: &str) -> Result<(), Error> {
    let station = ctx.open()?;
    let files = station.issue_gateway_client_cert(name)?;
    println!(
        "gateway client {name} {} {}",
        files.cert_path.display(),
        files.key_path.display()
    );
    Ok(())
}

/// `operator-cert`
fn operator_cert(ctx: &Context, name: &str) -> Result<(), Error> {
    let station = ctx.open()?;
    let files = station.issue_operator_cert(name)?;
    println!(
        "fleet operator {name} {} {}",
        files.cert_path.display(),
        files.key_path.display()
    );
    Ok(())
}

/// `revoke`
fn revoke(ctx: &Context, device: &str, reason: &str) -> Result<(), Error> {
    let reason = Reason::parse(reason)?;
    let mut station = ctx.open()?;
    let revoked = station.revoke(device, reason)?;
    for r in &revoked.records {
        println!(
            "revoked {} serial {} (reason {})",
            r.device_id,
            r.serial_hex,
            reason.name()
        );
    }
    println!("CRL written to {}", revoked.crl_path.display());
    publish::check(&mut station)
}

/// `audit verify`
fn audit_verify(ctx: &Context, all_stations: bool) -> Result<(), Error> {
    if all_stations {
        return registry::verify_all_stations(&ctx.dir, &ctx.registry);
    }
    match fleet_provision::verify_audit_dir_at(&ctx.dir, &ctx.registry) {
        Ok(v) => {
            println!(
                "audit log OK: {} records, {} signed batch manifests covering {} devices",
                v.records, v.manifests, v.devices
            );
            Ok(())
        }
        Err(problems) => {
            for p in &problems {
                println!("TAMPERED: {p}");
            }
            Err(AuditError::Tampered {
                path: ctx.dir.join("audit.log"),
                problems: problems.len(),
            }
            .into())
        }
    }
}

/// `crl`
fn crl(ctx: &Context, grace_hours: u32) -> Result<(), Error> {
    let mut station = ctx.open()?;
    let expired = station.expire_superseded(time::Duration::hours(i64::from(grace_hours)))?;
    for c in &expired {
        println!(
            "revoked {} serial {} (superseded, grace ended)",
            c.device_id, c.serial_hex
        );
    }
    println!("CRL written to {}", station.write_crl()?.display());
    publish::check(&mut station)
}

/// `devices`
fn devices(ctx: &Context, device: Option<&str>) -> Result<(), Error> {
    for d in fleet_provision::list_registry_at(&ctx.dir, &ctx.registry, device)? {
        println!(
            "{:<24} {:<10} {:<10} serial {} {}",
            d.device_id,
            d.tenant,
            d.status.name(),
            d.serial_hex,
            d.batch
        );
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
