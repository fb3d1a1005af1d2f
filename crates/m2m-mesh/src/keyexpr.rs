//! MQTT topics and filters as zenoh key expressions, and back.
//!
//! A zenoh key is `/`-separated chunks like an MQTT topic, but a chunk may not be empty, may not
//! hold `*`, `$`, `?` or `#` (wildcards and reserved characters), and a chunk starting with `@` is
//! "verbatim": no wildcard matches it. MQTT allows all of these in a topic level. So each level is
//! escaped on its own:
//!
//! - an empty level is the chunk `%` (a real `%` is always escaped, so a lone `%` is unambiguous);
//! - `%`, `*`, `$`, `?`, `#`, a leading `@`, spaces, control characters and every byte that is not
//!   ASCII are written `%XX` (upper-case hexadecimal of the UTF-8 bytes);
//! - everything else is kept as it is.
//!
//! In a filter, a `+` level becomes `*` (exactly one chunk) and a `#` level `**` (zero or more chunks:
//! `a/#` matches `a` too, as in MQTT). The escaped forms are canonical key expressions, and an MQTT
//! filter matches a topic exactly when its key expression includes the topic's key — with one
//! exception MQTT makes: a filter starting with a wildcard does not match a topic starting with `$`,
//! while `*` and `**` include the escaped `%24…` chunk. The mesh never carries `$` topics.

use std::fmt::Write as _;

/// Why a key does not come from [`topic_to_key`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A `%` not followed by two hexadecimal digits.
    #[error("bad escape in key chunk {0:?}")]
    BadEscape(String),
    /// The unescaped bytes are not UTF-8.
    #[error("key chunk {0:?} is not UTF-8 once unescaped")]
    NotUtf8(String),
    /// A wildcard or reserved character where a topic level was expected.
    #[error("key chunk {0:?} is not an escaped topic level")]
    NotALevel(String),
}

/// Whether byte `b` at `index` in a level must be escaped.
fn must_escape(b: u8, index: usize) -> bool {
    matches!(b, b'%' | b'*' | b'$' | b'?' | b'#') || (index == 0 && b == b'@') || b <= b' ' || b >= 0x7F
}

fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('%');
        return;
    }
    for (i, &b) in level.as_bytes().iter().enumerate() {
        if must_escape(b, i) {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
}

/// The key of an MQTT topic name (levels escaped), without a prefix.
pub fn topic_to_key(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        push_level(&mut out, level);
    }
    out
}

/// The key expression of an MQTT topic filter (`+` → `*`, `#` → `**`, other levels escaped), without
/// a prefix. The filter is taken as valid (a `+` or `#` is a whole level, `#` last).
pub fn filter_to_key(filter: &str) -> String {
    let mut out = String::with_capacity(filter.len() + 8);
    for (i, level) in filter.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        match level {
            "+" => out.push('*'),
            "#" => out.push_str("**"),
            level => push_level(&mut out, level),
        }
    }
    out
}

/// The MQTT topic name of a key made by [`topic_to_key`] (without its prefix).
///
/// # Errors
/// A chunk that is not an escaped level: a wildcard, a bad escape, bytes that are not UTF-8.
pub fn key_to_topic(key: &str) -> Result<String, KeyError> {
    let mut out = String::with_capacity(key.len());
    for (i, chunk) in key.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        if chunk == "%" {
            continue;
        }
        if chunk.is_empty() || chunk.bytes().any(|b| matches!(b, b'*' | b'$' | b'?' | b'#')) {
            return Err(KeyError::NotALevel(chunk.to_owned()));
        }
        if !chunk.contains('%') {
            out.push_str(chunk);
            continue;
        }
        let mut bytes = Vec::with_capacity(chunk.len());
        let raw = chunk.as_bytes();
        let mut j = 0;
        while j < raw.len() {
            if raw[j] == b'%' {
                let hex = raw.get(j + 1..j + 3).ok_or_else(|| KeyError::BadEscape(chunk.to_owned()))?;
                let hex = std::str::from_utf8(hex).map_err(|_| KeyError::BadEscape(chunk.to_owned()))?;
                let b = u8::from_str_radix(hex, 16).map_err(|_| KeyError::BadEscape(chunk.to_owned()))?;
                bytes.push(b);
                j += 3;
            } else {
                bytes.push(raw[j]);
                j += 1;
            }
        }
        out.push_str(&String::from_utf8(bytes).map_err(|_| KeyError::NotUtf8(chunk.to_owned()))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use m2m_topic::{TopicFilter, TopicName};
    use proptest::prelude::*;
    use zenoh::key_expr::KeyExpr;

    fn ke(s: &str) -> KeyExpr<'static> {
        KeyExpr::try_from(s.to_owned()).unwrap_or_else(|e| panic!("{s:?} is not a key expression: {e}"))
    }

    #[test]
    fn levels_zenoh_refuses_are_escaped() {
        assert_eq!(topic_to_key("plant/line-1/temp"), "plant/line-1/temp");
        assert_eq!(topic_to_key("a//b/"), "a/%/b/%");
        assert_eq!(topic_to_key("/"), "%/%");
        assert_eq!(topic_to_key("$SYS/x"), "%24SYS/x");
        assert_eq!(topic_to_key("a*b/?/#x/100%/@home/e@mail"), "a%2Ab/%3F/%23x/100%25/%40home/e@mail");
        assert_eq!(topic_to_key("caf\u{e9} au lait"), "caf%C3%A9%20au%20lait");
        assert_eq!(filter_to_key("a/+/#"), "a/*/**");
        assert_eq!(filter_to_key("#"), "**");
        assert_eq!(filter_to_key("+/+"), "*/*");
        assert_eq!(filter_to_key("/+/"), "%/*/%");
        for key in ["a/%/b/%", "%24SYS/x", "a%2Ab/%3F/%23x/100%25/%40home/e@mail", "a/*/**", "**", "%/*/%"] {
            ke(key);
        }
    }

    #[test]
    fn keys_that_are_not_escaped_levels_are_refused() {
        assert_eq!(key_to_topic("a/*"), Err(KeyError::NotALevel("*".into())));
        assert_eq!(key_to_topic("a/%2"), Err(KeyError::BadEscape("%2".into())));
        assert_eq!(key_to_topic("a/%zz"), Err(KeyError::BadEscape("%zz".into())));
        assert_eq!(key_to_topic("%FF"), Err(KeyError::NotUtf8("%FF".into())));
        assert_eq!(key_to_topic("a//b"), Err(KeyError::NotALevel(String::new())));
    }

    /// Topic levels from an alphabet heavy in what needs escaping.
    fn level() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just("a".to_owned()),
                Just("b".to_owned()),
                Just("%".to_owned()),
                Just("*".to_owned()),
                Just("$".to_owned()),
                Just("?".to_owned()),
                Just("@".to_owned()),
                Just(" ".to_owned()),
                Just("\u{e9}".to_owned()),
                Just("**".to_owned()),
                Just("%2A".to_owned()),
            ],
            0..4,
        )
        .prop_map(|parts| parts.concat())
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5).prop_map(|levels| levels.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        (prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_owned())], 0..5), any::<bool>())
            .prop_filter_map("a filter has at least one level", |(mut levels, hash)| {
                if hash {
                    levels.push("#".to_owned());
                }
                (!levels.is_empty()).then(|| levels.join("/"))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn a_topic_round_trips_through_a_canonical_key(t in topic()) {
            let key = topic_to_key(&t);
            let parsed = ke(&key);
            prop_assert_eq!(parsed.as_str(), key.as_str(), "canonical");
            prop_assert_eq!(key_to_topic(&key), Ok(t));
        }

        #[test]
        fn a_filter_matches_a_topic_iff_its_key_expression_includes_the_topic_key(
            f in filter(),
            t in topic(),
        ) {
            let (Ok(mqtt_filter), Ok(name)) = (TopicFilter::try_from(f.as_str()), TopicName::try_from(t.as_str()))
            else {
                return Ok(());
            };
            let (fk, tk) = (filter_to_key(&f), topic_to_key(&t));
            let (fke, tke) = (ke(&fk), ke(&tk));
            prop_assert_eq!(fke.as_str(), fk.as_str(), "canonical");
            let includes = fke.includes(&tke);
            if t.starts_with('$') {
                // MQTT keeps `$` topics from leading wildcards; the key expression does not.
                prop_assert!(!mqtt_filter.matches(&name) || includes);
            } else {
                prop_assert_eq!(mqtt_filter.matches(&name), includes, "{} vs {} ({} vs {})", f, t, fk, tk);
            }
        }
    }
}
