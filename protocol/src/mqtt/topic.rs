//! Topic names, topic filters and matching (MQTT 3.1.1 §4.7).

// Both checks look at bytes: `+`, `#`, `/` and U+0000 are ASCII, and no byte of a multi-byte
// UTF-8 sequence is ASCII. (Byte loops also keep the device image free of `char` searching.)

/// A topic a PUBLISH may use: non-empty, at most 65,535 bytes, no wildcards, no U+0000.
pub fn valid_topic_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 65_535 && !s.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// A filter a SUBSCRIBE may use: `#` only as the whole last level, `+` only as a whole level.
pub fn valid_topic_filter(s: &str) -> bool {
    let b = s.as_bytes();
    let level_starts = |i: usize| i == 0 || b[i - 1] == b'/';
    let level_ends = |i: usize| i + 1 == b.len() || b[i + 1] == b'/';
    !b.is_empty()
        && b.len() <= 65_535
        && b.iter().enumerate().all(|(i, &c)| match c {
            0 => false,
            b'#' => level_starts(i) && i + 1 == b.len(),
            b'+' => level_starts(i) && level_ends(i),
            _ => true,
        })
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

    /// The rule as the specification words it, level by level.
    fn filter_by_levels(s: &str) -> bool {
        let levels: std::vec::Vec<&str> = s.split('/').collect();
        !s.is_empty()
            && !s.contains('\0')
            && levels.iter().enumerate().all(|(i, l)| match *l {
                "#" => i + 1 == levels.len(),
                "+" => true,
                l => !l.contains(['+', '#']),
            })
    }

    extern crate std;

    proptest::proptest! {
        #[test]
        fn byte_checks_agree_with_the_level_rules(s in "[a+#/\0ä]{0,12}") {
            proptest::prop_assert_eq!(valid_topic_filter(&s), filter_by_levels(&s));
            proptest::prop_assert_eq!(
                valid_topic_name(&s),
                !s.is_empty() && !s.contains(['+', '#', '\0'])
            );
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
            ("+/+", true),
            ("a/+/#", true),
            ("/#", true),
            ("a+/b", false),
            ("+a", false),
            ("#/", false),
            ("a/#b", false),
            ("a/b#", false),
            ("ä/+/ö", true),
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
