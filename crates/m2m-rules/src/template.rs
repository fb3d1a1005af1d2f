//! [`Template`]: text with `${name}` placeholders filled from a rule's output, for the topics and
//! payloads of actions.

use serde_json::{Map, Value};

use crate::TemplateError;

/// A parsed template such as `devices/${clientid}/alarm` or `{"t": ${payload.temp}}`.
///
/// - `${name}` is the output column `name`; `${a.b.c}` is the column `a.b.c` if the output has one,
///   else the path `b.c` inside column `a` (numbers index arrays: `${payload.items.0}`).
///   A column holding a string of JSON is decoded when the path goes inside it.
/// - Strings are inserted as they are, numbers and booleans as JSON writes them, arrays and objects as
///   JSON text; NULL and anything missing as nothing.
/// - `$${` is a literal `${`; a `$` not followed by `{` is itself.
///
/// ```
/// use m2m_rules::Template;
/// use serde_json::json;
///
/// let template = Template::parse("devices/${clientid}/alarm/${payload.level}")?;
/// let output = json!({"clientid": "lamp-7", "payload": {"level": 3}});
/// assert_eq!(template.render(output.as_object().unwrap()), "devices/lamp-7/alarm/3");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Box<[Part]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(Box<str>),
    /// The name as written; the path is the name split at dots.
    Var {
        name: Box<str>,
        path: Box<[Box<str>]>,
    },
}

impl Template {
    /// Parses a template.
    ///
    /// # Errors
    /// [`TemplateError`] for a `${` without `}` and for an empty `${}`.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(i) = rest.find('$') {
            let after = &rest[i + 1..];
            if let Some(tail) = after.strip_prefix("${") {
                // `$${` is a literal `${`.
                literal.push_str(&rest[..i]);
                literal.push_str("${");
                rest = tail;
                offset += i + 3;
            } else if let Some(inner) = after.strip_prefix('{') {
                let at = offset + i;
                let end = inner.find('}').ok_or(TemplateError::Unclosed { at })?;
                let name = inner[..end].trim();
                if name.is_empty() {
                    return Err(TemplateError::EmptyName { at });
                }
                literal.push_str(&rest[..i]);
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal).into()));
                }
                parts.push(Part::Var { name: name.into(), path: name.split('.').map(Into::into).collect() });
                rest = &inner[end + 1..];
                offset += i + 2 + end + 1;
            } else {
                literal.push_str(&rest[..=i]);
                rest = after;
                offset += i + 1;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal.into()));
        }
        Ok(Template { parts: parts.into() })
    }

    /// The template filled from `output`.
    pub fn render(&self, output: &Map<String, Value>) -> String {
        let mut out = String::new();
        self.render_into(output, &mut out);
        out
    }

    /// Appends the template filled from `output` to `out`.
    pub fn render_into(&self, output: &Map<String, Value>, out: &mut String) {
        for part in self.parts.iter() {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Var { name, path } => match output.get(&**name) {
                    Some(value) => write_value(value, out),
                    None => lookup(output, path, out),
                },
            }
        }
    }

    /// Whether the template has no placeholders.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The placeholders' names, in order (`clientid`, `payload.temp`).
    pub fn variables(&self) -> impl Iterator<Item = &str> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Var { name, .. } => Some(&**name),
            Part::Text(_) => None,
        })
    }
}

/// Follows `path` from the output's columns and writes what it finds (nothing when it is missing).
fn lookup(output: &Map<String, Value>, path: &[Box<str>], out: &mut String) {
    if let Some((first, rest)) = path.split_first() {
        if let Some(value) = output.get(&**first) {
            write_path(value, rest, out);
        }
    }
}

fn write_path(mut value: &Value, mut steps: &[Box<str>], out: &mut String) {
    while let Some((step, rest)) = steps.split_first() {
        let next = match value {
            Value::Object(map) => map.get(&**step),
            Value::Array(items) => step.parse::<usize>().ok().and_then(|i| items.get(i)),
            // A column that holds JSON as text (a payload that was selected whole but is a JSON string).
            Value::String(text) => {
                if let Ok(decoded @ (Value::Object(_) | Value::Array(_))) =
                    serde_json::from_str::<Value>(text)
                {
                    write_path(&decoded, steps, out);
                }
                return;
            }
            _ => None,
        };
        let Some(next) = next else { return };
        value = next;
        steps = rest;
    }
    write_value(value, out);
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Null => {}
        Value::String(s) => out.push_str(s),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn render(template: &str, output: Value) -> String {
        Template::parse(template).unwrap().render(output.as_object().unwrap())
    }

    #[test]
    fn placeholders_are_filled_from_the_output() {
        assert_eq!(render("devices/${clientid}/alarm", json!({"clientid": "c1"})), "devices/c1/alarm");
        assert_eq!(render("${a}${b}", json!({"a": "x", "b": "y"})), "xy");
        assert_eq!(render("${ a }", json!({"a": "x"})), "x");
    }

    #[test]
    fn values_render_as_text_or_json() {
        let output =
            json!({"s": "text", "i": 5, "f": 2.5, "b": true, "n": null, "o": {"k": [1, 2]}, "a": [1, "x"]});
        assert_eq!(
            render("${s}|${i}|${f}|${b}|${n}|${o}|${a}", output),
            r#"text|5|2.5|true||{"k":[1,2]}|[1,"x"]"#
        );
    }

    #[test]
    fn paths_reach_inside_objects_and_arrays() {
        let output = json!({"payload": {"a": {"b": 7}, "items": [{"id": "x"}, {"id": "y"}]}});
        assert_eq!(render("${payload.a.b}", output.clone()), "7");
        assert_eq!(render("${payload.items.1.id}", output.clone()), "y");
        assert_eq!(render("${payload.items.9.id}", output.clone()), "");
        assert_eq!(render("${payload.a.b.c}", output), "");
    }

    #[test]
    fn a_column_named_with_dots_wins_over_a_path() {
        let output = json!({"payload.a": "column", "payload": {"a": "path"}});
        assert_eq!(render("${payload.a}", output), "column");
    }

    #[test]
    fn a_path_goes_inside_json_held_as_text() {
        let output = json!({"payload": "{\"temp\": 21.5, \"tags\": [\"a\"]}"});
        assert_eq!(render("${payload.temp} ${payload.tags.0}", output.clone()), "21.5 a");
        assert_eq!(render("${payload}", output), "{\"temp\": 21.5, \"tags\": [\"a\"]}");
    }

    #[test]
    fn missing_names_render_as_nothing() {
        assert_eq!(render("a/${nope}/b", json!({})), "a//b");
        assert_eq!(render("${x.y}", json!({"x": 1})), "");
    }

    #[test]
    fn dollar_dollar_brace_is_a_literal_and_lone_dollars_stay() {
        assert_eq!(render("$${clientid} ${clientid}", json!({"clientid": "c"})), "${clientid} c");
        assert_eq!(render("cost: 5$ and $x", json!({})), "cost: 5$ and $x");
        assert_eq!(render("$", json!({})), "$");
        assert_eq!(render("$$", json!({})), "$$");
    }

    #[test]
    fn malformed_templates_are_errors_with_the_offset() {
        assert_eq!(Template::parse("a/${clientid"), Err(TemplateError::Unclosed { at: 2 }));
        assert_eq!(Template::parse("ab${}"), Err(TemplateError::EmptyName { at: 2 }));
        assert_eq!(Template::parse("$${x} ${"), Err(TemplateError::Unclosed { at: 6 }));
    }

    #[test]
    fn templates_list_their_variables() {
        let t = Template::parse("a/${clientid}/${payload.x}").unwrap();
        assert_eq!(t.variables().collect::<Vec<_>>(), ["clientid", "payload.x"]);
        assert!(!t.is_literal());
        assert!(Template::parse("plain/topic").unwrap().is_literal());
        assert!(Template::parse("").unwrap().is_literal());
    }
}
