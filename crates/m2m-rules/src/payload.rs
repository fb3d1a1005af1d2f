//! The payload as a rule reads it, parsed at most once per evaluation and only as far as the rule needs.
//!
//! Most rules read a few members (`payload.temp`, `payload.sensor.id`). Building a full
//! `serde_json::Value` allocates every key and string of the payload; instead the parser keeps only
//! the members on the rule's paths and skips the rest without allocating. Skipped parts are still
//! checked, so a payload is JSON for a rule exactly when it is JSON.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as _;
use serde_json::{Map, Value};

use crate::eval::{Base, Field, Node, Seg};

/// The payload as the rule reads it.
#[derive(Debug)]
pub(crate) enum Payload<'i> {
    /// Valid JSON, reduced to what the rule needs.
    Json(Value),
    /// Not JSON, but UTF-8.
    Text(&'i str),
    /// Neither JSON nor UTF-8.
    Bytes(&'i [u8]),
}

impl<'i> Payload<'i> {
    pub(crate) fn parse(bytes: &'i [u8], need: &Need) -> Payload<'i> {
        // Checked first so that a payload with invalid UTF-8 in a skipped string is bytes, as it is
        // for a rule that reads the whole payload.
        let Ok(text) = std::str::from_utf8(bytes) else { return Payload::Bytes(bytes) };
        let mut de = serde_json::Deserializer::from_str(text);
        match Pruned(need).deserialize(&mut de).and_then(|v| de.end().map(|()| v)) {
            Ok(v) => Payload::Json(v),
            Err(_) => Payload::Text(text),
        }
    }
}

/// The part of the payload a rule reads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Need {
    /// All of it.
    All,
    /// These members of an object, each as far as its own `Need` says; anything else is skipped.
    Members(Vec<(Box<str>, Need)>),
}

impl Need {
    /// What the rule's expressions read of the payload; `whole` when the rule outputs it all (`*`).
    pub(crate) fn of<'n>(nodes: impl IntoIterator<Item = &'n Node>, whole: bool) -> Need {
        let mut need = if whole { Need::All } else { Need::Members(Vec::new()) };
        for node in nodes {
            visit_fields(node, &mut |field| {
                if field.base == Base::Payload {
                    need.add(&field.path);
                }
            });
        }
        need
    }

    fn add(&mut self, path: &[Seg]) {
        let Need::Members(members) = self else { return };
        match path.split_first() {
            // The whole value, or an array element (arrays are kept whole).
            None | Some((Seg::Index(_), _)) => *self = Need::All,
            Some((Seg::Key(key), rest)) => match members.iter_mut().find(|(k, _)| k == key) {
                Some((_, need)) => need.add(rest),
                None => {
                    let mut need = Need::Members(Vec::new());
                    need.add(rest);
                    members.push((key.clone(), need));
                }
            },
        }
    }
}

/// Calls `f` on every field the expression reads.
fn visit_fields(node: &Node, f: &mut impl FnMut(&Field)) {
    match node {
        Node::Lit(_) => {}
        Node::Field(field) => f(field),
        Node::Access(e, _) | Node::Neg(e) | Node::Not(e) | Node::IsNull(e, _) | Node::IsBool(e, _, _) => {
            visit_fields(e, f)
        }
        Node::Arith(_, a, b) | Node::Concat(a, b) | Node::Cmp(_, a, b) | Node::And(a, b) | Node::Or(a, b) => {
            visit_fields(a, f);
            visit_fields(b, f);
        }
        Node::In { expr, list, .. } => {
            visit_fields(expr, f);
            list.iter().for_each(|e| visit_fields(e, f));
        }
        Node::Between { expr, low, high, .. } => {
            for e in [expr, low, high] {
                visit_fields(e, f);
            }
        }
        Node::Like { expr, pattern, .. } => {
            visit_fields(expr, f);
            if let crate::eval::Like::Dynamic { pattern, .. } = pattern {
                visit_fields(pattern, f);
            }
        }
        Node::Case { operand, whens, otherwise } => {
            operand.iter().chain(otherwise).for_each(|e| visit_fields(e, f));
            for (when, then) in whens.iter() {
                visit_fields(when, f);
                visit_fields(then, f);
            }
        }
        Node::Call(call) => call.args.iter().for_each(|e| visit_fields(e, f)),
    }
}

/// Deserializes a value as far as a [`Need`] says.
struct Pruned<'n>(&'n Need);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        match self.0 {
            Need::All => Value::deserialize(de),
            Need::Members(members) => de.deserialize_any(MembersVisitor(members)),
        }
    }
}

/// Keeps the needed members of an object. Anything that is not an object is read and dropped: no path
/// of the rule can go into it, so it reads as NULL.
struct MembersVisitor<'n>(&'n [(Box<str>, Need)]);

impl<'de> Visitor<'de> for MembersVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match self.0.iter().find(|(k, _)| **k == *key) {
                Some((_, need)) => {
                    let value = map.next_value_seed(Pruned(need))?;
                    out.insert(key.into_owned(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// An object key, borrowed from the payload unless it has escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        de.deserialize_str(KeySeed)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn need(paths: &[&[Seg]]) -> Need {
        let mut need = Need::Members(Vec::new());
        for path in paths {
            need.add(path);
        }
        need
    }

    fn key(k: &str) -> Seg {
        Seg::Key(k.into())
    }

    fn parsed(bytes: &[u8], need: &Need) -> Value {
        match Payload::parse(bytes, need) {
            Payload::Json(v) => v,
            other => panic!("not JSON: {other:?}"),
        }
    }

    #[test]
    fn only_the_members_on_the_rules_paths_are_kept() {
        let n = need(&[&[key("temp")], &[key("sensor"), key("id")]]);
        let payload = br#"{"temp": 21.5, "unit": "C", "sensor": {"id": "t-1", "fw": "1.2"}, "tags": [1, 2]}"#;
        assert_eq!(parsed(payload, &n), json!({"temp": 21.5, "sensor": {"id": "t-1"}}));
    }

    #[test]
    fn an_array_on_a_path_and_a_whole_member_are_kept_whole() {
        let n = need(&[&[key("tags"), Seg::Index(0)], &[key("sensor")], &[key("sensor"), key("id")]]);
        let payload = br#"{"tags": [{"a": 1}, 2], "sensor": {"id": "t-1", "fw": "1.2"}, "x": 1}"#;
        assert_eq!(parsed(payload, &n), json!({"tags": [{"a": 1}, 2], "sensor": {"id": "t-1", "fw": "1.2"}}));
        let whole = need(&[&[key("a")], &[]]);
        assert_eq!(whole, Need::All);
    }

    #[test]
    fn a_payload_is_json_for_a_pruned_parse_exactly_when_it_is_json() {
        let n = need(&[&[key("a")]]);
        let cases: &[&[u8]] = &[
            br#"{"a": 1, "b": [1, 2}"#,
            br#"{"a": 1, "b": "unterminated}"#,
            br#"{"a": 1} trailing"#,
            br#"{"a": 1, "b": tru}"#,
            b"{\"a\": 1, \"b\": \"ctrl\x01\"}",
            b"plain text",
            b"",
        ];
        for bytes in cases {
            assert!(
                matches!(Payload::parse(bytes, &n), Payload::Text(_)),
                "{}",
                String::from_utf8_lossy(bytes)
            );
            assert!(matches!(Payload::parse(bytes, &Need::All), Payload::Text(_)));
        }
        let invalid_utf8 = b"{\"a\": 1, \"b\": \"\xff\"}";
        assert!(matches!(Payload::parse(invalid_utf8, &n), Payload::Bytes(_)));
        assert!(matches!(Payload::parse(invalid_utf8, &Need::All), Payload::Bytes(_)));
    }

    #[test]
    fn non_object_payloads_read_as_null_for_member_paths() {
        let n = need(&[&[key("a")]]);
        for bytes in
            [&b"21.5"[..], b"-3", b"18446744073709551615", b"true", b"null", br#""s""#, b"[1, {\"a\": 2}]"]
        {
            assert_eq!(parsed(bytes, &n), Value::Null, "{}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn escaped_keys_and_repeated_keys_behave_as_in_a_full_parse() {
        let n = need(&[&[key("a b")], &[key("k")]]);
        assert_eq!(parsed(br#"{"a\u0020b": 1, "k": 1, "k": 2}"#, &n), json!({"a b": 1, "k": 2}));
    }
}
