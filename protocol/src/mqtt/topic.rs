//! Topic names, topic filters and matching (MQTT 3.1.1 §4.7).

/// A topic a PUBLISH may use: non-empty, at most 65,535 bytes, no wildcards, no U+0000.
pub fn valid_topic_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 65_535 && !s.contains(['+', '#', '\0'])
}

/// A filter a SUBSCRIBE may use: `#` only as the whole last level, `+` only as a whole level.
pub fn valid_topic_filter(s: &str) -> bool {
    if s.is_empty() || s.len() > 65_535 || s.contains('\0') {
        return false;
    }
    let mut levels = s.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "#" => last,
            "+" => true,
            l => !l.contains(['+', '#']),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `filter` matches the concrete `topic`. A leading wildcard does not match topics
/// that start with `$` (§4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_matching_examples() {
        for (f, t, m) in [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport/tennis", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/uptime", false),
            ("+/monitor/Clients", "$SYS/monitor/Clients", false),
            ("$SYS/#", "$SYS/uptime", true),
            ("$SYS/monitor/+", "$SYS/monitor/Clients", true),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
        ] {
            assert_eq!(matches(f, t), m, "{f} vs {t}");
        }
    }

    #[test]
    fn filter_and_name_validity() {
        for (f, ok) in [
            ("#", true),
            ("+", true),
            ("sport/#", true),
            ("sport/tennis/#", true),
            ("sport/tennis#", false),
            ("sport/tennis/#/ranking", false),
            ("+/tennis/#", true),
            ("sport+", false),
            ("sport/+/player1", true),
            ("/", true),
            ("", false),
            ("a\0b", false),
        ] {
            assert_eq!(valid_topic_filter(f), ok, "filter {f:?}");
        }
        for (t, ok) in [
            ("a/b", true),
            ("/", true),
            ("", false),
            ("a/+", false),
            ("a/#", false),
            ("a\0", false),
        ] {
            assert_eq!(valid_topic_name(t), ok, "name {t:?}");
        }
    }
}
