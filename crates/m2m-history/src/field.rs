//! JSON fields of payloads: `payload.engine.temp`, `payload.values[2]`, or `payload` for a payload
//! that is itself a number. Extraction scans the payload's bytes without building a document, so an
//! aggregate over millions of points stays fast.

use std::fmt;

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A path into a JSON payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    steps: Vec<Step>,
    text: String,
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FieldPath {
    /// Parses `payload.a.b[0].c` (the leading `payload` is optional; `payload` alone is the whole
    /// payload). Keys are separated by dots; `[n]` indexes an array.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("field {s:?}: {why} (e.g. payload.engine.temp or payload.values[0])");
        let trimmed = s.trim();
        let rest = match trimmed.strip_prefix("payload") {
            Some("") => "",
            Some(r) if r.starts_with('.') || r.starts_with('[') => r.strip_prefix('.').unwrap_or(r),
            _ => trimmed,
        };
        let mut steps = Vec::new();
        for part in rest.split('.').filter(|_| !rest.is_empty()) {
            let (name, mut indexes) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if name.is_empty() && indexes.is_empty() {
                return Err(bad("empty key"));
            }
            if !name.is_empty() {
                steps.push(Step::Key(name.to_owned()));
            }
            while !indexes.is_empty() {
                let close = indexes.find(']').ok_or_else(|| bad("unclosed ["))?;
                let n = indexes[1..close].parse::<usize>().map_err(|_| bad("an index must be a number"))?;
                steps.push(Step::Index(n));
                indexes = &indexes[close + 1..];
                if !indexes.is_empty() && !indexes.starts_with('[') {
                    return Err(bad("unexpected text after ]"));
                }
            }
        }
        Ok(Self { steps, text: trimmed.to_owned() })
    }

    /// The name the writer's per-minute rollups know this field by: `""` for the payload itself, the
    /// key for a top-level field; `None` for deeper paths (aggregated from the points).
    pub(crate) fn rollup_name(&self) -> Option<&str> {
        match self.steps.as_slice() {
            [] => Some(""),
            [Step::Key(k)] => Some(k),
            _ => None,
        }
    }

    /// The raw JSON text of the field in `payload`, if the payload is JSON and has it.
    pub fn raw<'a>(&self, payload: &'a [u8]) -> Option<&'a [u8]> {
        let mut at = skip_ws(payload, 0);
        for step in &self.steps {
            at = match step {
                Step::Key(key) => find_key(payload, at, key.as_bytes())?,
                Step::Index(n) => find_index(payload, at, *n)?,
            };
        }
        let end = skip_value(payload, at)?;
        Some(&payload[at..end])
    }

    /// The field as a number: a JSON number, or a string holding one, or `true`/`false` as 1/0.
    pub fn number(&self, payload: &[u8]) -> Option<f64> {
        as_number(self.raw(payload)?)
    }

    /// The field as a JSON value.
    pub fn value(&self, payload: &[u8]) -> Option<serde_json::Value> {
        serde_json::from_slice(self.raw(payload)?).ok()
    }
}

/// The numbers a payload holds where rollups look for them, as [`FieldPath::number`] reads them: the
/// payload itself (`""`), or each top-level field of a JSON object (at most `max`; keys written with
/// escapes are left out).
pub(crate) fn top_level_numbers(payload: &[u8], max: usize, mut f: impl FnMut(&str, f64)) {
    let start = skip_ws(payload, 0);
    if payload.get(start) != Some(&b'{') {
        if let Some(v) = skip_value(payload, start).and_then(|end| as_number(&payload[start..end])) {
            f("", v);
        }
        return;
    }
    let mut j = skip_ws(payload, start + 1);
    let mut seen = 0;
    while seen < max && payload.get(j) == Some(&b'"') {
        let Some(end) = skip_string(payload, j) else { return };
        let name = &payload[j + 1..end - 1];
        j = skip_ws(payload, end);
        if payload.get(j) != Some(&b':') {
            return;
        }
        j = skip_ws(payload, j + 1);
        let Some(value_end) = skip_value(payload, j) else { return };
        if !name.contains(&b'\\') {
            if let (Ok(name), Some(v)) = (std::str::from_utf8(name), as_number(&payload[j..value_end])) {
                f(name, v);
                seen += 1;
            }
        }
        j = skip_ws(payload, value_end);
        match payload.get(j) {
            Some(b',') => j = skip_ws(payload, j + 1),
            _ => return,
        }
    }
}

/// A raw JSON value as a number, as [`FieldPath::number`] reads it.
fn as_number(raw: &[u8]) -> Option<f64> {
    {
        match raw.first()? {
            b'"' => {
                let inner = &raw[1..raw.len() - 1];
                std::str::from_utf8(inner).ok()?.trim().parse::<f64>().ok().filter(|v| v.is_finite())
            }
            b't' => Some(1.0),
            b'f' => Some(0.0),
            _ => std::str::from_utf8(raw).ok()?.parse::<f64>().ok().filter(|v| v.is_finite()),
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string starting at `i` (at its opening quote).
fn skip_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The end (exclusive) of the JSON value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => skip_string(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The start of the value of `key` in the object starting at `i`.
fn find_key(b: &[u8], i: usize, key: &[u8]) -> Option<usize> {
    if *b.get(i)? != b'{' {
        return None;
    }
    let mut j = skip_ws(b, i + 1);
    if b.get(j) == Some(&b'}') {
        return None;
    }
    loop {
        if *b.get(j)? != b'"' {
            return None;
        }
        let end = skip_string(b, j)?;
        let name = &b[j + 1..end - 1];
        let same = if name.contains(&b'\\') {
            serde_json::from_slice::<String>(&b[j..end]).ok().is_some_and(|n| n.as_bytes() == key)
        } else {
            name == key
        };
        j = skip_ws(b, end);
        if *b.get(j)? != b':' {
            return None;
        }
        j = skip_ws(b, j + 1);
        if same {
            return Some(j);
        }
        j = skip_ws(b, skip_value(b, j)?);
        match *b.get(j)? {
            b',' => j = skip_ws(b, j + 1),
            _ => return None,
        }
    }
}

/// The start of element `n` of the array starting at `i`.
fn find_index(b: &[u8], i: usize, n: usize) -> Option<usize> {
    if *b.get(i)? != b'[' {
        return None;
    }
    let mut j = skip_ws(b, i + 1);
    if b.get(j) == Some(&b']') {
        return None;
    }
    for _ in 0..n {
        j = skip_ws(b, skip_value(b, j)?);
        match *b.get(j)? {
            b',' => j = skip_ws(b, j + 1),
            _ => return None,
        }
    }
    Some(j)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(path: &str, payload: &str) -> Option<f64> {
        FieldPath::parse(path).unwrap().number(payload.as_bytes())
    }

    #[test]
    fn paths_reach_nested_keys_and_array_elements() {
        let p =
            r#" {"id":"x","engine":{"rpm":[1,2,{"a":3.5}],"temp": 81.25 ,"ok":true},"s":"4.5","n\"q":7} "#;
        assert_eq!(num("payload.engine.temp", p), Some(81.25));
        assert_eq!(num("engine.temp", p), Some(81.25));
        assert_eq!(num("payload.engine.rpm[1]", p), Some(2.0));
        assert_eq!(num("payload.engine.rpm[2].a", p), Some(3.5));
        assert_eq!(num("payload.engine.ok", p), Some(1.0));
        assert_eq!(num("payload.s", p), Some(4.5), "a numeric string");
        assert_eq!(num("payload.n\"q", p), Some(7.0), "an escaped key");
        assert_eq!(num("payload.id", p), None, "not a number");
        assert_eq!(num("payload.engine.rpm[3]", p), None);
        assert_eq!(num("payload.missing", p), None);
        assert_eq!(num("payload", "21.5"), Some(21.5), "a bare number");
        assert_eq!(num("payload.a", "not json"), None);
        assert_eq!(num("payload.a", r#"{"a":"#), None, "truncated");
        assert_eq!(num("payload[1]", "[10, 20]"), Some(20.0));
        let v = FieldPath::parse("payload.engine.rpm").unwrap().value(p.as_bytes()).unwrap();
        assert_eq!(v, serde_json::json!([1, 2, {"a": 3.5}]));
    }

    #[test]
    fn top_level_numbers_are_those_paths_read() {
        let mut got = Vec::new();
        let p = br#"{"t": 21.5, "s": "3", "deep": {"x": 1}, "on": true, "name": "pump", "a\"b": 4}"#;
        top_level_numbers(p, 16, |k, v| got.push((k.to_owned(), v)));
        assert_eq!(got, [("t".to_owned(), 21.5), ("s".to_owned(), 3.0), ("on".to_owned(), 1.0)]);
        for (k, v) in &got {
            assert_eq!(FieldPath::parse(&format!("payload.{k}")).unwrap().number(p), Some(*v));
        }
        got.clear();
        top_level_numbers(b" 42 ", 16, |k, v| got.push((k.to_owned(), v)));
        assert_eq!(got, [(String::new(), 42.0)]);
        got.clear();
        top_level_numbers(br#"{"a":1,"b":2,"c":3}"#, 2, |k, v| got.push((k.to_owned(), v)));
        assert_eq!(got.len(), 2, "at most max");
        assert_eq!(FieldPath::parse("payload.a").unwrap().rollup_name(), Some("a"));
        assert_eq!(FieldPath::parse("payload").unwrap().rollup_name(), Some(""));
        assert_eq!(FieldPath::parse("payload.a.b").unwrap().rollup_name(), None);
    }

    #[test]
    fn bad_paths_are_named() {
        for bad in ["payload..a", "a[", "a[x]", "a[1]b"] {
            assert!(FieldPath::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(FieldPath::parse("payload.a.b").unwrap().to_string(), "payload.a.b");
    }
}
