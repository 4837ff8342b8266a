//! A PostgreSQL 15 server of our own, for tests and benchmarks: `initdb` into a temp dir, run
//! as an unprivileged user when we are root (PostgreSQL refuses root; CI runs as root), on
//! 127.0.0.1 and a free port, with password (SCRAM) authentication, stopped by its PID when
//! dropped. It never uses a cluster the Debian package may have started.
//!
//! Tests start it with [`Options::default`] (`fsync=off`: their data is thrown away); the
//! benchmarks with `fsync: true`, every guarantee of a production server kept.

use std::fmt;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's `postgresql-15` puts the server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The superuser the clients connect as.
pub const USER: &str = "fleet";

/// PostgreSQL is required (a missing server fails the test) under CI=true or when
/// FLEET_REQUIRE_POSTGRES is set; otherwise a missing one skips it.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var_os("FLEET_REQUIRE_POSTGRES").is_some()
}

/// Whether Debian's PostgreSQL 15 server binaries are installed.
pub fn installed() -> bool {
    Path::new(PG_BIN).join("postgres").exists()
}

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// TLS only (plain TCP connections are refused): the server's certificate and key, PEM.
    pub tls: Option<(String, String)>,
    /// `fsync=on` (benchmarks); off by default (tests).
    pub fsync: bool,
    /// `max_connections` (default 60).
    pub max_connections: Option<u32>,
    /// More server settings, `name=value` each (e.g. `shared_preload_libraries=pg_stat_statements`).
    pub settings: Vec<String>,
}

/// Why the server could not be started.
#[derive(Debug)]
pub struct StartError(String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn fail(what: &str) -> impl Fn(std::io::Error) -> StartError + '_ {
    move |e| StartError(format!("postgres: {what}: {e}"))
}

pub struct PgServer {
    dir: tempfile::TempDir,
    pub port: u16,
    pub password: String,
    args: Vec<String>,
    owner: Option<(u32, u32)>,
    child: Child,
}

/// The uid and gid to run the server as: ours, or `nobody`'s when we are root.
fn server_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions; getpwnam returns a pointer into static storage
    // that is read at once, before any other call could overwrite it.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"nobody".as_ptr());
        assert!(
            !pw.is_null(),
            "running as root and there is no user `nobody` to run postgres as"
        );
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), StartError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(fail("chown of its directory"))?;
    }
    Ok(())
}

fn free_port() -> Result<u16, StartError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(fail("a free loopback port"))
}

impl PgServer {
    /// Starts a fresh server for a test: `None` (the test skips) when PostgreSQL 15 is missing
    /// and not [`required`]; panics with the reason when it cannot start.
    pub fn for_test(options: Options) -> Option<PgServer> {
        if !installed() {
            assert!(
                !required(),
                "PostgreSQL 15 is required (CI or FLEET_REQUIRE_POSTGRES) but {PG_BIN}/postgres is missing: \
                 `cargo xtask test` installs it (apt-get install postgresql-15)"
            );
            eprintln!("skipped: PostgreSQL 15 is not installed ({PG_BIN}); `cargo xtask test` installs it");
            return None;
        }
        Some(PgServer::start(options).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts a fresh server and waits (at most 30 s) until it takes connections.
    pub fn start(options: Options) -> Result<PgServer, StartError> {
        let bin = Path::new(PG_BIN);
        let owner = server_user();
        let dir = tempfile::tempdir().map_err(fail("temp dir"))?;
        chown(dir.path(), owner)?;
        let mut secret = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
        let password = hex::encode(secret);
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &password).map_err(fail("password file"))?;
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))
            .map_err(fail("password file"))?;
        chown(&pwfile, owner)?;
        let data = dir.path().join("data");
        let out = as_server_user(Command::new(bin.join("initdb")), owner, dir.path())
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            .args((!options.fsync).then_some("--no-sync"))
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(fail("initdb"))?;
        if !out.status.success() {
            return Err(StartError(format!(
                "initdb: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        std::fs::remove_file(&pwfile).map_err(fail("password file"))?;
        let port = free_port()?;
        let mut args: Vec<String> = [
            "-p".to_owned(),
            port.to_string(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            format!("unix_socket_directories={}", dir.path().display()),
            "-c".into(),
            format!("fsync={}", if options.fsync { "on" } else { "off" }),
            "-c".into(),
            format!("max_connections={}", options.max_connections.unwrap_or(60)),
        ]
        .into();
        for setting in &options.settings {
            args.extend(["-c".to_owned(), setting.clone()]);
        }
        if let Some((cert, key)) = &options.tls {
            args.extend(tls_only(&data, cert, key, owner)?);
        }
        let child = spawn(dir.path(), &args, owner)?;
        let mut server = PgServer {
            dir,
            port,
            password,
            args,
            owner,
            child,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Waits (at most 30 s) until the server takes connections (`pg_isready`).
    fn wait_ready(&mut self) -> Result<(), StartError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().map_err(fail("wait"))? {
                return Err(StartError(format!(
                    "postgres exited with {status}: {}",
                    self.log()
                )));
            }
            let ready = Command::new(Path::new(PG_BIN).join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map_err(fail("pg_isready"))?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StartError(format!(
                    "postgres not ready after 30 s: {}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server at once (SIGKILL, as a crash or a power cut would) and starts it again
    /// on the same data and port; returns when it takes connections again.
    pub fn crash_and_restart(&mut self) -> Result<(), StartError> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed postmaster leaves its backends exiting; the new one waits for the shared
        // memory they hold, so retry the start for a few seconds.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.child = spawn(self.dir.path(), &self.args, self.owner)?;
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Creates database `db` (with `psql`) and returns its URL (without the password).
    pub fn database(&self, db: &str) -> Result<String, StartError> {
        self.psql("postgres", &format!("CREATE DATABASE {db}"))?;
        Ok(self.url(db))
    }

    /// Runs `sql` on database `db` with `psql`; returns what it printed, unaligned, tuples
    /// only, fields separated by `|`.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, StartError> {
        let out = Command::new(Path::new(PG_BIN).join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER])
            .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-q", "-A", "-t", "-c"])
            .arg(sql)
            .env("PGPASSWORD", &self.password)
            .env("PGSSLMODE", "prefer")
            .output()
            .map_err(fail("psql"))?;
        if !out.status.success() {
            return Err(StartError(format!(
                "{sql}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The URL of database `db` (without the password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The PID of the server's postmaster (its backends are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's temp directory (its data directory is `data` in it).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// A direct connection to database `db`, without TLS.
    #[cfg(feature = "client")]
    pub fn client(&self, db: &str) -> Result<postgres::Client, postgres::Error> {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user(USER)
            .password(&self.password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(5));
        c.connect(postgres::NoTls)
    }
}

fn spawn(dir: &Path, args: &[String], owner: Option<(u32, u32)>) -> Result<Child, StartError> {
    let log_path = dir.join("postgres.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(fail("log file"))?;
    chown(&log_path, owner)?;
    as_server_user(Command::new(Path::new(PG_BIN).join("postgres")), owner, dir)
        .arg("-D")
        .arg(dir.join("data"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(fail("log file"))?)
        .stderr(log)
        .spawn()
        .map_err(fail("start"))
}

/// Writes the server's certificate and key into `data`, lets only TLS connections in
/// (pg_hba.conf), and returns the server arguments that switch TLS on.
fn tls_only(
    data: &Path,
    cert_pem: &str,
    key_pem: &str,
    owner: Option<(u32, u32)>,
) -> Result<Vec<String>, StartError> {
    let cert = data.join("server.crt");
    let key = data.join("server.key");
    std::fs::write(&cert, cert_pem).map_err(fail("server.crt"))?;
    std::fs::write(&key, key_pem).map_err(fail("server.key"))?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(fail("server.key"))?;
    chown(&cert, owner)?;
    chown(&key, owner)?;
    let hba = data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).map_err(fail("pg_hba.conf"))?;
    std::fs::write(&hba, format!("hostnossl all all 0.0.0.0/0 reject\n{rules}"))
        .map_err(fail("pg_hba.conf"))?;
    Ok([
        "ssl=on",
        "ssl_cert_file=server.crt",
        "ssl_key_file=server.key",
    ]
    .iter()
    .flat_map(|c| ["-c".to_owned(), (*c).to_owned()])
    .collect())
}

fn as_server_user(mut cmd: Command, owner: Option<(u32, u32)>, cwd: &Path) -> Command {
    cmd.current_dir(cwd);
    if let Some((uid, gid)) = owner {
        // std drops the supplementary groups when a root parent sets the uid.
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGPASSWORD");
    cmd
}

impl Drop for PgServer {
    /// A fast shutdown (SIGINT) of our own server by its PID; SIGKILL after 10 s.
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill on the PID of our own child, which we have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
