//! A real browser for the console tests: Debian's chromium, headless, driven over WebDriver
//! by chromedriver on an ephemeral port. Screenshots go to `target/console-screenshots/`.
//!
//! Needs `chromium` and `chromedriver` (`cargo xtask test` installs them and sets
//! FLEET_REQUIRE_BROWSER, so a test fails rather than skips there, as it does with CI=true).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thirtyfour::prelude::*;

use crate::workspace_target;

/// A child process stopped (SIGKILL, by its PID) when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (for a program that takes its port on the command line).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// chromium and chromedriver, or `None` (a skip) when they are missing and not required.
pub fn browser_programs() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| {
        names.iter().find_map(|n| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join(n))
                .find(|p| p.is_file())
        })
    };
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var_os("FLEET_REQUIRE_BROWSER").is_some();
    match (
        find(&["chromium", "chromium-browser"]),
        find(&["chromedriver"]),
    ) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ if required => panic!(
            "chromium and chromedriver are required (CI or FLEET_REQUIRE_BROWSER) but missing: \
             apt-get install chromium chromium-driver (cargo xtask test does)"
        ),
        _ => {
            eprintln!("skipped: chromium or chromedriver missing (cargo xtask test installs them)");
            None
        }
    }
}

/// Waits (20 s at most) until `check` holds; panics naming `what` otherwise.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The browser side: chromedriver, a headless chromium session, and helpers.
pub struct Browser {
    pub driver: WebDriver,
    pub base: String,
    shots: PathBuf,
    _chromedriver: Process,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn open(chromium: &Path, chromedriver: &Path, admin: SocketAddr) -> Browser {
        let port = free_port();
        let process = Process(
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver starts"),
        );
        eventually("chromedriver to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let mut caps = DesiredCapabilities::chrome();
        caps.set_binary(chromium.to_str().unwrap()).unwrap();
        for arg in [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            &format!("--user-data-dir={}", profile.path().display()),
        ] {
            caps.add_arg(arg).unwrap();
        }
        let driver = WebDriver::new(format!("http://127.0.0.1:{port}"), caps)
            .await
            .expect("a chromium session");
        let shots = workspace_target().join("console-screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            base: format!("http://{admin}/"),
            shots,
            _chromedriver: process,
            _profile: profile,
        }
    }

    pub async fn goto(&self, hash: &str) {
        self.driver
            .goto(format!("{}{hash}", self.base))
            .await
            .unwrap();
    }

    pub async fn js(&self, script: &str) -> serde_json::Value {
        self.driver
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|e| panic!("{script}: {e}"))
            .json()
            .clone()
    }

    /// Waits until the JavaScript expression is true.
    pub async fn until(&self, what: &str, expression: &str) {
        let script = format!("return Boolean({expression});");
        eventually(what, || async { self.js(&script).await == true }).await;
    }

    pub async fn text(&self) -> String {
        self.js("return document.body.innerText;")
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn click(&self, css: &str) {
        self.driver
            .find(By::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    pub async fn type_into(&self, css: &str, text: &str) {
        let e = self.driver.find(By::Css(css)).await.unwrap();
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    pub async fn shot(&self, name: &str) {
        let png = self.driver.screenshot_as_png().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Whether the page is wider than the window (it would scroll sideways).
    pub async fn scrolls_sideways(&self) -> bool {
        self.js("return document.documentElement.scrollWidth > window.innerWidth;")
            .await
            == true
    }
}
