//! MQTT topics and filters as NATS subjects and KV keys, reversibly.
//!
//! Each MQTT level becomes one NATS token. A token may hold only `[A-Za-z0-9_-]` and the
//! escape `=` (the characters both a NATS subject token and a JetStream KV key accept, so
//! the same text serves as a subject and as a retained message's key):
//!
//! - a byte outside `[A-Za-z0-9_-]` is written `=XX` (two upper-case hex digits), so `.`
//!   (NATS's separator), `*` and `>` (its wildcards), spaces and UTF-8 never reach NATS raw;
//! - an empty level (`a//b`, a leading or trailing `/`) is the token `=` alone, which no
//!   escape produces;
//! - in a filter, a level `+` is `*` and a level `#` is `>`.
//!
//! Decoding reverses it exactly. MQTT `a/#` also matches `a` itself [MQTT-4.7.1-2] where
//! NATS `a.>` does not: [`nats_filters`] adds the parent subject for it.

use std::fmt::Write as _;

/// The escape character of a token.
const ESCAPE: u8 = b'=';

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// One topic level as a token.
fn encode_level(level: &str, out: &mut String) {
    if level.is_empty() {
        out.push('=');
        return;
    }
    for &b in level.as_bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "={b:02X}");
        }
    }
}

/// Any text (a tenant, a client id, `/` included) as one token.
pub fn token(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    encode_level(text, &mut out);
    out
}

/// A topic name (no wildcards) as subject tokens: `a/b.c//d` → `a.b=2Ec.=.d`.
pub fn topic_to_tokens(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        encode_level(level, &mut out);
    }
    out
}

/// A topic filter as subject tokens, `+` as `*` and `#` as `>`.
pub fn filter_to_tokens(filter: &str) -> String {
    let mut out = String::with_capacity(filter.len() + 8);
    for (i, level) in filter.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        match level {
            "+" => out.push('*'),
            "#" => out.push('>'),
            _ => encode_level(level, &mut out),
        }
    }
    out
}

/// Why subject tokens are not ones [`topic_to_tokens`] or [`filter_to_tokens`] made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("NATS subject tokens {tokens:?} do not encode an MQTT topic: {why}")]
pub struct BadSubject {
    pub tokens: String,
    pub why: &'static str,
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

fn decode_level(token: &str, out: &mut Vec<u8>) -> Result<(), &'static str> {
    match token {
        "=" => return Ok(()),
        "" => return Err("an empty token"),
        "*" => {
            out.push(b'+');
            return Ok(());
        }
        ">" => {
            out.push(b'#');
            return Ok(());
        }
        _ => {}
    }
    let bytes = token.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == ESCAPE {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err("an escape without two hex digits");
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else if plain(b) {
            out.push(b);
            i += 1;
        } else {
            return Err("a character that is never written raw");
        }
    }
    Ok(())
}

/// Subject tokens back to the topic (or filter) they encode.
pub fn tokens_to_topic(tokens: &str) -> Result<String, BadSubject> {
    let bad = |why| BadSubject {
        tokens: tokens.to_owned(),
        why,
    };
    let mut out = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.split('.').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        decode_level(token, &mut out).map_err(bad)?;
    }
    String::from_utf8(out).map_err(|_| bad("bytes that are not UTF-8"))
}

/// The NATS subjects (under `prefix`) whose messages an MQTT `filter` may match: the
/// filter's own, and for `…/#` also its parent's (`a/#` matches `a`). `volatile` and
/// `durable` kinds both match through the `*` after the prefix.
pub fn nats_filters(prefix: &str, filter: &str) -> Vec<String> {
    let mut subjects = vec![format!("{prefix}.*.{}", filter_to_tokens(filter))];
    if let Some(parent) = filter.strip_suffix("/#") {
        subjects.push(format!("{prefix}.*.{}", filter_to_tokens(parent)));
    }
    subjects
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (MQTT topic, tokens) pairs both ways.
    const TOPICS: &[(&str, &str)] = &[
        ("a", "a"),
        ("a/b/c", "a.b.c"),
        (
            "tenants/acme/devices/d-1/telemetry",
            "tenants.acme.devices.d-1.telemetry",
        ),
        ("a.b/c", "a=2Eb.c"),
        ("/", "=.="),
        ("a//b", "a.=.b"),
        ("/a/", "=.a.="),
        ("$SYS/x", "=24SYS.x"),
        ("sp ace/*/>", "sp=20ace.=2A.=3E"),
        ("=/%", "=3D.=25"),
        ("température", "temp=C3=A9rature"),
        ("A_Z-09", "A_Z-09"),
    ];

    #[test]
    fn topics_map_to_tokens_and_back() {
        for (topic, tokens) in TOPICS {
            assert_eq!(topic_to_tokens(topic), *tokens, "{topic}");
            assert_eq!(tokens_to_topic(tokens).as_deref(), Ok(*topic), "{tokens}");
        }
    }

    #[test]
    fn tokens_hold_only_what_a_subject_and_a_kv_key_accept() {
        for (topic, _) in TOPICS {
            let t = topic_to_tokens(topic);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=.".contains(&b)),
                "{t}"
            );
            assert!(t.split('.').all(|tok| !tok.is_empty()), "{t}");
        }
    }

    #[test]
    fn filters_map_wildcards_and_back() {
        let vectors = [
            ("#", ">"),
            ("+", "*"),
            ("a/+/c", "a.*.c"),
            ("a/#", "a.>"),
            ("+/+/#", "*.*.>"),
            ("a/+x/#x", "a.=2Bx.=23x"),
            ("//#", "=.=.>"),
        ];
        for (filter, tokens) in vectors {
            assert_eq!(filter_to_tokens(filter), tokens, "{filter}");
            assert_eq!(tokens_to_topic(tokens).as_deref(), Ok(filter), "{tokens}");
        }
    }

    #[test]
    fn any_text_is_one_token() {
        assert_eq!(token("acme"), "acme");
        assert_eq!(token("a/b.c"), "a=2Fb=2Ec");
        assert_eq!(token(""), "=");
        assert_eq!(tokens_to_topic(&token("a/b.c")).as_deref(), Ok("a/b.c"));
    }

    #[test]
    fn a_literal_plus_in_a_topic_is_not_a_wildcard() {
        // Not a valid topic name, but the mapping must still not turn it into `*`.
        assert_eq!(topic_to_tokens("+"), "=2B");
        assert_eq!(topic_to_tokens("#"), "=23");
    }

    #[test]
    fn foreign_tokens_are_refused() {
        for bad in ["a..b", "a.=4", "a.=ZZ", "a b", "a.%41", "=FF"] {
            let e = tokens_to_topic(bad).expect_err(bad);
            assert_eq!(e.tokens, bad);
        }
        assert!(tokens_to_topic("a.=4")
            .unwrap_err()
            .to_string()
            .contains("hex"));
    }

    #[test]
    fn hash_filters_also_listen_on_the_parent() {
        assert_eq!(nats_filters("fleet", "a/#"), ["fleet.*.a.>", "fleet.*.a"]);
        assert_eq!(nats_filters("fleet", "#"), ["fleet.*.>"]);
        assert_eq!(nats_filters("fleet", "a/+"), ["fleet.*.a.*"]);
    }
}
