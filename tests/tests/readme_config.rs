//! Every gateway configuration the documentation shows loads: each ```toml block of README.md
//! and the example in `fleet_gateway::config`'s documentation is written next to a station's
//! PKI (whose files are where the examples name them) and checked the way `fleet-gateway
//! check-config` checks a file; a block without `listen` is a part of a gateway.toml (say its
//! `[renewal]` table) and is checked after a minimal config. So the examples cannot drift
//! from what the gateway accepts.

use std::path::{Path, PathBuf};

use fleet_gateway::Config;
use fleet_tests::Pki;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// The bodies of the fenced blocks of `language` in Markdown text, with their first line.
fn fenced_blocks(markdown: &str, language: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start();
        match &mut open {
            None if fence.strip_prefix("```") == Some(language) => {
                open = Some((i + 2, String::new()))
            }
            Some(_) if fence.starts_with("```") => blocks.extend(open.take()),
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    assert!(open.is_none(), "an unclosed ```{language} block");
    blocks
}

/// The module documentation of a Rust file (its `//!` lines, without the marker).
fn module_doc(source: &str) -> String {
    source
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| format!("{}\n", l.strip_prefix(' ').unwrap_or(l)))
        .collect()
}

/// Writes `example` as `gateway.toml` into the PKI's directory and checks it like
/// `check-config`; the files it names besides the station's are made for it.
fn check(pki: &Pki, where_: &str, example: &str) -> Config {
    let token = pki.path("admin.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let path = pki.path("gateway.toml");
    std::fs::write(&path, example).unwrap();
    match Config::check(&path) {
        Ok(config) => config,
        Err(e) => panic!("{where_} does not load: {e}\n{example}"),
    }
}

/// What a part of a gateway.toml is appended to.
const MINIMAL: &str = r#"listen = "127.0.0.1:8883"
[tls]
server_cert = "gateway/server.pem"
server_key = "gateway/server.key"
client_ca = ["gateway/clients-ca.pem"]
"#;

/// The block as a whole config: itself if it sets `listen` before its first table, else
/// appended to [`MINIMAL`].
fn whole(block: &str) -> String {
    let sets_listen = block
        .lines()
        .map(str::trim_start)
        .take_while(|l| !l.starts_with('['))
        .any(|l| l.starts_with("listen"));
    if sets_listen {
        block.to_owned()
    } else {
        format!("{MINIMAL}{block}")
    }
}

#[test]
fn every_gateway_config_in_the_readme_loads() {
    let pki = Pki::new();
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let blocks = fenced_blocks(&readme, "toml");
    assert!(!blocks.is_empty(), "README.md shows no gateway config");
    for (line, block) in &blocks {
        let config = check(&pki, &format!("README.md line {line}"), &whole(block));
        // Relative paths resolve against the config file's directory, where the PKI is.
        assert!(config.tls.server_cert.starts_with(pki.dir.path()));
        if block.contains("audit_log") {
            assert!(
                config.audit_log.is_some(),
                "README line {line}: audit_log is not read as the top-level key"
            );
        }
    }
}

#[test]
fn the_config_module_example_loads() {
    let pki = Pki::new();
    let source = std::fs::read_to_string(repo_file("gateway/src/config.rs")).unwrap();
    let blocks = fenced_blocks(&module_doc(&source), "toml");
    assert_eq!(
        blocks.len(),
        1,
        "one example in the config module's documentation"
    );
    let config = check(&pki, "the config module's example", &blocks[0].1);
    assert!(config.renewal.is_some() && config.admin.is_some());
}

#[test]
fn the_block_finder_finds_blocks_and_their_lines() {
    let text = "intro\n```toml\na = 1\n```\n```sh\nls\n```\n  ```toml\nb = 2\n  ```\n";
    assert_eq!(
        fenced_blocks(text, "toml"),
        [(3, "a = 1\n".to_owned()), (9, "b = 2\n".to_owned())]
    );
    assert_eq!(whole("listen = 1\n[tls]\n"), "listen = 1\n[tls]\n");
    assert!(whole("[renewal]\nlisten = 1\n").starts_with(MINIMAL));
}
