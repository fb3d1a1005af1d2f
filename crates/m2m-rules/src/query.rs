//! [`RuleQuery`]: a parsed rule, ready to be matched against topics and evaluated on inputs.

use std::fmt;
use std::sync::Arc;

use m2m_topic::TopicName;
use serde_json::{Map, Value};

use crate::compile::{compile, Column};
use crate::eval::{truth, Ctx, Node};
use crate::payload::Need;
use crate::{EvalError, EventKind, Input, RuleError, Source};

/// The output of a rule that matched: column name → value.
pub type Output = Map<String, Value>;

/// A rule's query, parsed, validated and compiled: `SELECT … FROM … [WHERE …]`.
///
/// Cheap to clone (the compiled rule is shared) and safe to evaluate from several threads at once.
/// Evaluation is pure: no IO, no clock (the caller passes "now" in [`Input::now_ms`]). It allocates
/// only for the part of the payload the rule reads, for values that functions build, and for the
/// output; a WHERE that compares fields with literals allocates nothing but the payload's members.
///
/// ```
/// use m2m_rules::{Input, RuleQuery};
/// use m2m_topic::TopicName;
///
/// let rule = RuleQuery::parse(
///     r#"SELECT payload.temp AS t, clientid FROM "factory/+/temp" WHERE payload.temp > 80"#,
/// )?;
/// assert!(rule.matches_topic(&TopicName::try_from("factory/line1/temp")?));
///
/// let mut input = Input::message("factory/line1/temp", br#"{"temp": 85}"#, 0);
/// input.clientid = Some("sensor-7");
/// let output = rule.evaluate(&input)?.expect("85 > 80");
/// assert_eq!(output["t"], 85);
/// assert_eq!(output["clientid"], "sensor-7");
///
/// let cool = Input::message("factory/line1/temp", br#"{"temp": 20}"#, 0);
/// assert_eq!(rule.evaluate(&cool)?, None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct RuleQuery {
    inner: Arc<Inner>,
}

struct Inner {
    sql: Box<str>,
    sources: Box<[Source]>,
    columns: Box<[Column]>,
    filter: Option<Node>,
    need: Need,
}

impl RuleQuery {
    /// Parses and checks a rule.
    ///
    /// # Errors
    /// [`RuleError`] says what is wrong and, where it can, where: a syntax error, SQL that rules do not
    /// support (named), an invalid topic filter or unknown event in FROM, an unknown field or function,
    /// a wrong number of arguments, an invalid literal argument (a regular expression, a time unit).
    pub fn parse(sql: &str) -> Result<RuleQuery, RuleError> {
        let compiled = compile(sql)?;
        Ok(RuleQuery {
            inner: Arc::new(Inner {
                sql: sql.into(),
                sources: compiled.sources.into(),
                columns: compiled.columns.into(),
                filter: compiled.filter,
                need: compiled.need,
            }),
        })
    }

    /// The rule's text as given to [`RuleQuery::parse`].
    pub fn sql(&self) -> &str {
        &self.inner.sql
    }

    /// The topic filters and events of FROM, in order, without duplicates.
    pub fn sources(&self) -> &[Source] {
        &self.inner.sources
    }

    /// The output names of the SELECT list, in order; `*` is listed as `"*"`.
    pub fn columns(&self) -> impl Iterator<Item = &str> + '_ {
        self.inner.columns.iter().map(|c| match c {
            Column::All => "*",
            Column::Expr { name, .. } => name,
        })
    }

    /// Whether a message published on `topic` is for this rule (one of its topic filters matches).
    pub fn matches_topic(&self, topic: &TopicName) -> bool {
        self.inner.sources.iter().any(|s| matches!(s, Source::Topic(f) if f.matches(topic)))
    }

    /// Whether the rule listens to `event`.
    pub fn matches_event(&self, event: EventKind) -> bool {
        self.inner.sources.contains(&Source::Event(event))
    }

    /// Evaluates the rule on one input: `Ok(None)` when WHERE is false or NULL, else the output.
    ///
    /// It does not check the sources: call it for inputs that [`RuleQuery::matches_topic`] or
    /// [`RuleQuery::matches_event`] accepted.
    ///
    /// # Errors
    /// [`EvalError`] when an expression cannot be computed for this input: a type error (`'a' + 1`),
    /// division by zero, integer overflow, a function argument out of its domain. An absent field is
    /// not an error: it is NULL.
    pub fn evaluate(&self, input: &Input<'_>) -> Result<Option<Output>, EvalError> {
        let ctx = Ctx::new(*input, &self.inner.need);
        if let Some(filter) = &self.inner.filter {
            if truth(&filter.eval(&ctx)?, "WHERE")? != Some(true) {
                return Ok(None);
            }
        }
        let mut out = Map::new();
        for column in self.inner.columns.iter() {
            match column {
                Column::All => ctx.write_all_fields(&mut out),
                Column::Expr { name, node } => {
                    let value = node.eval(&ctx)?.into_json();
                    out.insert(name.to_string(), value);
                }
            }
        }
        Ok(Some(out))
    }
}

impl fmt::Debug for RuleQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleQuery").field("sql", &self.inner.sql).finish_non_exhaustive()
    }
}

impl fmt::Display for RuleQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.sql)
    }
}

impl std::str::FromStr for RuleQuery {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RuleQuery::parse(s)
    }
}
