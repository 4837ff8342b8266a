//! A PostgreSQL 15 server of the test's own: `initdb` into a temp dir, run as an unprivileged
//! user when the tests run as root (PostgreSQL refuses root), on 127.0.0.1 and a free port,
//! with password (SCRAM) authentication, stopped by its PID when dropped. It never uses a
//! cluster the Debian package may have started.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_provision::PostgresTarget;
use postgres::error::SqlState;

/// Where Debian's `postgresql-15` puts the server binaries.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The superuser the tests connect as.
pub const USER: &str = "fleet";

/// PostgreSQL is required (a missing server fails the test) under CI=true or when
/// FLEET_REQUIRE_POSTGRES is set; otherwise a missing one skips it.
pub fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var_os("FLEET_REQUIRE_POSTGRES").is_some()
}

pub struct PgServer {
    dir: tempfile::TempDir,
    pub port: u16,
    pub password: String,
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
            "running as root, but there is no user `nobody` to run PostgreSQL as"
        );
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn chown(path: &Path, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to the server's user");
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl PgServer {
    /// Starts a fresh server; `None` (the test skips) when PostgreSQL 15 is missing and not
    /// [`required`].
    pub fn start() -> Option<PgServer> {
        PgServer::start_inner(None)
    }

    /// [`PgServer::start`] with TLS only (plain TCP connections are rejected): its server
    /// certificate (for 127.0.0.1 and localhost) comes from `ca`.
    pub fn start_tls(ca: &fleet_provision::pki::Ca) -> Option<PgServer> {
        PgServer::start_inner(Some(ca))
    }

    fn start_inner(tls_ca: Option<&fleet_provision::pki::Ca>) -> Option<PgServer> {
        let bin = Path::new(PG_BIN);
        if !bin.join("postgres").exists() {
            assert!(
                !required(),
                "PostgreSQL 15 is required (CI or FLEET_REQUIRE_POSTGRES) but {PG_BIN}/postgres is missing: \
                 `cargo xtask test` installs it (apt-get install postgresql-15)"
            );
            eprintln!("skipped: PostgreSQL 15 is not installed ({PG_BIN}); `cargo xtask test` installs it");
            return None;
        }
        let owner = server_user();
        let dir = tempfile::tempdir().expect("temp dir");
        chown(dir.path(), owner);
        let mut secret = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
        let password = hex::encode(secret);
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &password).expect("password file");
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        chown(&pwfile, owner);
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
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&pwfile).expect("remove the password file");
        let mut tls_args = Vec::new();
        if let Some(ca) = tls_ca {
            tls_args = tls_only(&data, ca, owner);
        }
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log file");
        chown(&dir.path().join("postgres.log"), owner);
        let child = as_server_user(Command::new(bin.join("postgres")), owner, dir.path())
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(["-c", "fsync=off", "-c", "max_connections=60"])
            .args(&tls_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        let mut server = PgServer {
            dir,
            port,
            password,
            child,
        };
        server.wait_ready();
        Some(server)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Waits (at most 30 s) until the server takes connections.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for postgres") {
                panic!("postgres exited with {status}: {}", self.log());
            }
            // Any answer of the server's own (a TLS-only one refuses this plain connection).
            match self.client("postgres") {
                Ok(_) => return,
                Err(e)
                    if e.as_db_error()
                        .is_some_and(|d| *d.code() != SqlState::CANNOT_CONNECT_NOW) =>
                {
                    return
                }
                Err(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "postgres not ready after 30 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn config(&self, db: &str) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.port)
            .user(USER)
            .password(&self.password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(5));
        c
    }

    /// A direct connection to database `db` (to look at what the stations wrote).
    pub fn client(&self, db: &str) -> Result<postgres::Client, postgres::Error> {
        self.config(db).connect(postgres::NoTls)
    }

    /// Creates database `db` and returns its URL (without the password).
    pub fn database(&self, db: &str) -> String {
        let mut c = self.client("postgres").expect("connect to postgres");
        c.batch_execute(&format!("CREATE DATABASE {db}"))
            .expect("create database");
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The registry target for database `db` (created first).
    pub fn target(&self, db: &str) -> PostgresTarget {
        PostgresTarget::new(&self.database(db), Some(&self.password), None).expect("target")
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

/// Writes the server's certificate and key into `data`, lets only TLS connections in
/// (pg_hba.conf), and returns the server arguments that switch TLS on.
fn tls_only(data: &Path, ca: &fleet_provision::pki::Ca, owner: Option<(u32, u32)>) -> Vec<String> {
    let server = fleet_provision::pki::sign_server(ca, &["127.0.0.1", "localhost"], 30)
        .expect("database server certificate");
    let cert = data.join("server.crt");
    let key = data.join("server.key");
    std::fs::write(&cert, &server.cert_pem).expect("server.crt");
    std::fs::write(&key, server.key.serialize_pem()).expect("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    chown(&cert, owner);
    chown(&key, owner);
    let hba = data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(&hba, format!("hostnossl all all 0.0.0.0/0 reject\n{rules}"))
        .expect("pg_hba.conf");
    [
        "ssl=on",
        "ssl_cert_file=server.crt",
        "ssl_key_file=server.key",
    ]
    .iter()
    .flat_map(|c| ["-c".to_owned(), (*c).to_owned()])
    .collect()
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
