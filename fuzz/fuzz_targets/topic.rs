//! Topic names, topic filters and the two trees of `m2m-topic` against a reference written here.
//!
//! The input is text, one command per line; the first character picks the command and the second
//! a subscriber (`0`–`3`), the rest is a topic or filter:
//!
//! - every line: [`TopicName`] and [`TopicFilter`] accept exactly what the reference validators
//!   accept (MQTT 5.0 §4.7.1, §4.7.3: 1–65 535 bytes, no U+0000; `+` and `#` only as whole levels,
//!   `#` last; no wildcard at all in a name), and a filter matches a name (of the same input) exactly
//!   when the reference matcher says so;
//! - `s`: subscribe (plain or `$share/{group}/{filter}`), `u`: unsubscribe, on a
//!   [`SubscriptionTrie`] and on a plain list; `p`: publish, whose matches in the trie (plain
//!   subscribers and shared groups with their members) equal the list's, filtered by the reference
//!   matcher; `r`: retain a topic in a [`TopicTree`] and a set, and `s` also checks that the tree's
//!   matches for the filter equal the set's.

#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use libfuzzer_sys::fuzz_target;
use m2m_topic::{parse_subscription, Match, SubscriptionTrie, TopicFilter, TopicName, TopicTree};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.split('\n').collect();
    if lines.len() > 64 {
        return;
    }
    check_validation_and_matching(&lines);
    check_trees(&lines);
});

/// Reference: a valid topic name (MQTT 5.0 §4.7.1.1, §4.7.3).
fn valid_name(s: &str) -> bool {
    (1..=65_535).contains(&s.len()) && !s.contains(['\0', '+', '#'])
}

/// Reference: a valid topic filter (MQTT 5.0 §4.7.1.2–4.7.1.3, §4.7.3).
fn valid_filter(s: &str) -> bool {
    if !(1..=65_535).contains(&s.len()) || s.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = s.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| match *level {
        "#" => i == levels.len() - 1,
        "+" => true,
        other => !other.contains(['+', '#']),
    })
}

/// Reference matcher, level by level and recursive (MQTT 5.0 §4.7.1, §4.7.2).
fn reference_matches(filter: &str, topic: &str) -> bool {
    fn levels(f: &[&str], t: &[&str]) -> bool {
        match (f.split_first(), t.split_first()) {
            (Some((&"#", _)), _) => true,
            (Some((&"+", f_rest)), Some((_, t_rest))) => levels(f_rest, t_rest),
            (Some((f0, f_rest)), Some((t0, t_rest))) => f0 == t0 && levels(f_rest, t_rest),
            (None, None) => true,
            _ => false,
        }
    }
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    levels(&f, &t)
}

fn check_validation_and_matching(lines: &[&str]) {
    let mut names = Vec::new();
    let mut filters = Vec::new();
    for line in lines {
        let name = TopicName::try_from(*line);
        assert_eq!(name.is_ok(), valid_name(line), "topic name {line:?}: {name:?}");
        let filter = TopicFilter::try_from(*line);
        assert_eq!(filter.is_ok(), valid_filter(line), "topic filter {line:?}: {filter:?}");
        names.extend(name);
        filters.extend(filter);
    }
    for filter in &filters {
        for name in &names {
            assert_eq!(
                filter.matches(name),
                reference_matches(filter.as_str(), name.as_str()),
                "filter {filter:?} on topic {name:?}"
            );
        }
    }
}

/// What a publish must reach: plain subscribers, and each shared group with its members.
type Reached = (Vec<(u8, u32)>, BTreeMap<String, BTreeSet<(u8, u32)>>);

fn check_trees(lines: &[&str]) {
    let mut trie = SubscriptionTrie::new();
    // (subscription as written, subscriber) → value, and the filter part (shared or not).
    let mut model: BTreeMap<(String, u8), (u32, String, bool)> = BTreeMap::new();
    let mut tree = TopicTree::new();
    let mut retained: BTreeSet<(String, u32)> = BTreeSet::new();
    for (n, line) in lines.iter().enumerate() {
        let mut chars = line.chars();
        let (Some(op), Some(who)) = (chars.next(), chars.next()) else { continue };
        let key = (who as u32 % 4) as u8;
        let rest = chars.as_str();
        let value = n as u32;
        match op {
            's' => {
                let Ok(sub) = parse_subscription(rest) else { continue };
                let filter = sub.filter().as_str().to_owned();
                if sub.is_shared() {
                    let after =
                        rest.strip_prefix("$share/").expect("a shared subscription starts with $share/");
                    let (_, f) = after.split_once('/').expect("a shared subscription has a group");
                    assert_eq!(f, filter, "the filter of {rest:?}");
                } else {
                    assert_eq!(rest, filter);
                }
                let previous = trie.insert(&sub, key, value);
                let old = model.insert((rest.to_owned(), key), (value, filter.clone(), sub.is_shared()));
                assert_eq!(previous, old.map(|o| o.0), "insert {rest:?} for {key}");
                assert_eq!(trie.len(), model.len());
                let mut found = BTreeSet::new();
                tree.match_filter(sub.filter(), |topic, v: &u32| {
                    found.insert((topic.as_str().to_owned(), *v));
                });
                let expected: BTreeSet<_> =
                    retained.iter().filter(|(t, _)| reference_matches(&filter, t)).cloned().collect();
                assert_eq!(found, expected, "retained matches of {filter:?}");
            }
            'u' => {
                let Ok(sub) = parse_subscription(rest) else { continue };
                let removed = trie.remove(&sub, &key);
                let old = model.remove(&(rest.to_owned(), key));
                assert_eq!(removed, old.map(|o| o.0), "remove {rest:?} for {key}");
                assert_eq!(trie.len(), model.len());
            }
            'p' => {
                let Ok(topic) = TopicName::try_from(rest) else { continue };
                let mut got: Reached = Default::default();
                trie.for_each_match(&topic, |m| match m {
                    Match::Plain(k, v) => got.0.push((*k, *v)),
                    Match::Shared(group, members) => {
                        assert!(!members.is_empty(), "a shared group without members");
                        let fresh =
                            got.1.insert(group.as_str().to_owned(), members.iter().copied().collect());
                        assert!(fresh.is_none(), "group {group:?} visited twice");
                    }
                });
                got.0.sort_unstable();
                let mut expected: Reached = Default::default();
                for ((written, k), (v, filter, shared)) in &model {
                    if !reference_matches(filter, rest) {
                        continue;
                    }
                    if *shared {
                        expected.1.entry(written.clone()).or_default().insert((*k, *v));
                    } else {
                        expected.0.push((*k, *v));
                    }
                }
                expected.0.sort_unstable();
                assert_eq!(got, expected, "subscribers reached by {rest:?}");
            }
            'r' => {
                let Ok(topic) = TopicName::try_from(rest) else { continue };
                if let Some(old) = tree.insert(&topic, value) {
                    retained.remove(&(rest.to_owned(), old));
                }
                retained.insert((rest.to_owned(), value));
                assert_eq!(tree.len(), retained.len());
            }
            _ => {}
        }
    }
}
