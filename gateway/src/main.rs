#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_gateway::{Config, Gateway};

/// jemalloc: its size classes fit the many small per-connection allocations (TLS state,
/// buffers, the session) closely. `cargo xtask bench gateway` measures the bytes per idle
/// session and how much of them is given back after the sessions close.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at its first allocation. tikv-jemalloc-sys builds jemalloc
/// with the `_rjem_` prefix, so this is the symbol it reads in place of `malloc_conf`
/// (the `_RJEM_MALLOC_CONF` environment variable still overrides it).
///
/// - `background_thread:true`: a jemalloc thread of its own returns freed pages to the
///   system on time. Without it jemalloc purges only inside the gateway's own allocation
///   calls, and a gateway whose sessions just closed makes few: 10,000 idle sessions closed,
///   5 s later only 2 % of their memory had been given back.
/// - `max_background_threads:1`: one such thread is enough for the gateway's few arenas.
/// - `dirty_decay_ms:1000`: freed pages go back within about a second instead of ten; a
///   burst of reconnects within that second reuses them without faulting pages in again.
///   (`muzzy_decay_ms` is 0 by default: decayed pages are returned with MADV_DONTNEED, so the
///   resident size drops at once.)
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 68] =
    b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000\0";

/// The fleet MQTT gateway: mutual TLS from every device, identity from its certificate.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MQTT over mutual TLS until SIGTERM or Ctrl-C.
    Serve {
        /// TOML config file.
        #[arg(long, env = "FLEET_GATEWAY_CONFIG")]
        config: PathBuf,
        /// Override the config's listen address (e.g. 127.0.0.1:0).
        #[arg(long, env = "FLEET_GATEWAY_LISTEN")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Validate a config file and the TLS material it names, without serving.
    CheckConfig {
        #[arg(long, env = "FLEET_GATEWAY_CONFIG")]
        config: PathBuf,
    },
    /// Explain whether (and why not) the gateway would accept a client certificate.
    Doctor {
        /// Client certificate PEM (leaf first, then any intermediates).
        #[arg(long)]
        cert: PathBuf,
        /// Private key PEM, to check that it belongs to the certificate.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Client CA PEM file(s); taken from --config when absent.
        #[arg(long = "ca")]
        ca: Vec<PathBuf>,
        /// CRL PEM file(s); taken from --config when absent.
        #[arg(long = "crl")]
        crl: Vec<PathBuf>,
        /// CA certificate PEM file(s) used only to check CRL signatures (`tls.crl_issuers`);
        /// taken from --config when absent.
        #[arg(long = "crl-issuer")]
        crl_issuer: Vec<PathBuf>,
        /// Gateway config whose client CAs, CRLs and service OU to use.
        #[arg(long, env = "FLEET_GATEWAY_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    fleet_host::init_tracing("info");
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-gateway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleet-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), fleet_gateway::Error> {
    match command {
        Command::CheckConfig { config } => {
            let cfg = Config::check(&config)?;
            println!("{}: OK (listen {})", config.display(), cfg.listen);
            Ok(())
        }
        Command::Doctor {
            cert,
            key,
            mut ca,
            mut crl,
            crl_issuer: mut crl_issuers,
            config,
        } => {
            let mut service_ou = "service".to_owned();
            if let Some(path) = config {
                let cfg = Config::from_file(&path)?;
                ca.extend(cfg.tls.client_ca);
                crl_issuers.extend(cfg.tls.crl_issuers);
                crl.extend(cfg.tls.crl);
                service_ou = cfg.service_ou;
            }
            if ca.is_empty() {
                return Err(fleet_gateway::Error::DoctorWithoutCa);
            }
            let report = fleet_gateway::doctor::diagnose(&fleet_gateway::doctor::Inputs {
                cert: &cert,
                key: key.as_deref(),
                client_ca: &ca,
                crl_issuers: &crl_issuers,
                crl: &crl,
                service_ou: &service_ou,
                at: None,
            })?;
            for f in &report.findings {
                println!("{} {}", if f.ok { "ok  " } else { "FAIL" }, f.text);
            }
            if report.accepted() {
                println!("=> the gateway would ACCEPT this certificate");
                Ok(())
            } else {
                println!("=> the gateway would REFUSE this certificate");
                std::process::exit(1);
            }
        }
        Command::Serve { config, listen } => {
            let mut cfg = Config::from_file(&config)?;
            if let Some(addr) = listen {
                cfg.listen = addr;
            }
            let gateway = Gateway::bind(cfg).await?;
            // Scripts and tests read this line to learn the bound port.
            println!("fleet-gateway listening on {}", gateway.local_addr());
            gateway.run(fleet_host::shutdown_signal()).await;
            Ok(())
        }
    }
}
