//! The errors of this crate: [`RuleError`] when a rule is parsed, [`EvalError`] when it is evaluated and
//! [`TemplateError`] when a template is parsed.

use std::fmt;

use m2m_topic::TopicError;

/// A place in the rule's text, 1-based, as an editor counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Line number, starting from 1.
    pub line: u64,
    /// Column number (in characters), starting from 1.
    pub column: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

impl Position {
    /// The start of an AST node; `None` for nodes without a span (line 0 in `sqlparser`).
    pub(crate) fn of(span: sqlparser::tokenizer::Span) -> Option<Position> {
        (span.start.line > 0).then_some(Position { line: span.start.line, column: span.start.column })
    }
}

/// " at line L, column C", or nothing when the position is unknown.
fn located(position: &Option<Position>) -> String {
    position.map(|p| format!(" at {p}")).unwrap_or_default()
}

/// Why a rule's text is not a valid rule. Every variant names what was wrong and, when known, where.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The text is longer than [`MAX_RULE_LEN`](crate::MAX_RULE_LEN).
    #[error("rule of {len} bytes exceeds the {max}-byte limit")]
    TooLong {
        /// Length of the rejected text in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The SQL parser rejected the text; the message says what it expected and where.
    #[error("syntax error: {message}")]
    Syntax {
        /// The parser's message, which ends with the line and column.
        message: String,
    },
    /// The text holds no statement or more than one.
    #[error("a rule is exactly one SELECT statement, found {count}")]
    NotOneStatement {
        /// How many statements the text holds.
        count: usize,
    },
    /// The text uses SQL that rules do not support (`JOIN`, `GROUP BY`, a subquery…); `what` names it.
    #[error("{what} is not supported in rules{}", located(.at))]
    Unsupported {
        /// The construct, as SQL names it.
        what: String,
        /// Where it starts, when known.
        at: Option<Position>,
    },
    /// The SELECT has no FROM clause.
    #[error(
        "a rule needs FROM with at least one quoted topic filter or event, e.g. FROM \"sensors/+/temp\""
    )]
    MissingFrom,
    /// A topic filter in FROM breaks the MQTT rules for filters.
    #[error("invalid topic filter {filter:?} in FROM{}", located(.at))]
    InvalidTopicFilter {
        /// The filter as written.
        filter: String,
        /// Where it starts, when known.
        at: Option<Position>,
        /// Which rule it breaks.
        #[source]
        source: TopicError,
    },
    /// A `$events/…` source that is not one of the known events.
    #[error("unknown event {name:?} in FROM{}; known events: {}", located(.at), crate::EventKind::source_list())]
    UnknownEvent {
        /// The source as written.
        name: String,
        /// Where it starts, when known.
        at: Option<Position>,
    },
    /// A function name that the language does not define.
    #[error("unknown function `{name}`{}{hint}", located(.at))]
    UnknownFunction {
        /// The name as written.
        name: String,
        /// Where it starts, when known.
        at: Option<Position>,
        /// A suggestion, empty or starting with "; ".
        hint: &'static str,
    },
    /// A known function called with too few or too many arguments.
    #[error("function `{name}` takes {expected}, got {got}{}", located(.at))]
    WrongArgumentCount {
        /// The function's name.
        name: &'static str,
        /// How many arguments it takes, in words ("1 argument", "1 or 2 arguments").
        expected: String,
        /// How many it was given.
        got: usize,
        /// Where the call starts, when known.
        at: Option<Position>,
    },
    /// A name that is neither a field of a message nor, for rules on events, an event field.
    #[error("unknown field `{name}`{}; fields are {}", located(.at), crate::compile::FIELD_LIST)]
    UnknownField {
        /// The name as written.
        name: String,
        /// Where it starts, when known.
        at: Option<Position>,
    },
    /// A path into a field that holds a plain value (`topic.x`, `qos[0]`).
    #[error("field `{name}` has no sub-fields{}", located(.at))]
    NotAnObject {
        /// The field's name.
        name: String,
        /// Where the path starts, when known.
        at: Option<Position>,
    },
    /// A literal argument that the function cannot use (a bad regular expression, an unknown time unit…).
    #[error("invalid argument to `{func}`{}: {reason}", located(.at))]
    InvalidArgument {
        /// The function's name.
        func: &'static str,
        /// What is wrong with the argument.
        reason: String,
        /// Where the call starts, when known.
        at: Option<Position>,
    },
    /// A number literal that is neither a 64-bit integer nor a finite float.
    #[error("invalid number {text:?}{}", located(.at))]
    InvalidNumber {
        /// The literal as written.
        text: String,
        /// Where it starts, when known.
        at: Option<Position>,
    },
    /// Two columns of the SELECT have the same output name.
    #[error("two columns are named `{name}`; rename one with AS")]
    DuplicateColumn {
        /// The name both columns would have.
        name: String,
    },
    /// An expression nested deeper than [`MAX_DEPTH`](crate::MAX_DEPTH) levels.
    #[error("expression nested more than {max} levels deep{}", located(.at))]
    TooDeep {
        /// The limit.
        max: usize,
        /// Where the too-deep part starts, when known.
        at: Option<Position>,
    },
}

impl RuleError {
    /// Where in the rule's text the error is, when known (for highlighting it in an editor).
    pub fn position(&self) -> Option<Position> {
        match self {
            RuleError::Syntax { message } => syntax_position(message),
            RuleError::Unsupported { at, .. }
            | RuleError::InvalidTopicFilter { at, .. }
            | RuleError::UnknownEvent { at, .. }
            | RuleError::UnknownFunction { at, .. }
            | RuleError::WrongArgumentCount { at, .. }
            | RuleError::UnknownField { at, .. }
            | RuleError::NotAnObject { at, .. }
            | RuleError::InvalidArgument { at, .. }
            | RuleError::InvalidNumber { at, .. }
            | RuleError::TooDeep { at, .. } => *at,
            RuleError::TooLong { .. }
            | RuleError::NotOneStatement { .. }
            | RuleError::MissingFrom
            | RuleError::DuplicateColumn { .. } => None,
        }
    }
}

/// `sqlparser` ends its messages with "at Line: L, Column: C".
fn syntax_position(message: &str) -> Option<Position> {
    let rest = &message[message.rfind("Line: ")? + "Line: ".len()..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some(Position { line: line.parse().ok()?, column: column.parse().ok()? })
}

/// Why evaluating a rule on one message failed. The rule stays valid; the next message may succeed.
///
/// SQL's rule holds: an absent field is `NULL` and `NULL` flows through operators and most functions
/// without an error. Errors are for values of the wrong type, arithmetic that has no answer and
/// function arguments out of their domain.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// `/` or `%` (or `mod`) with a zero divisor.
    #[error("division by zero")]
    DivisionByZero,
    /// Integer arithmetic whose result does not fit in 64 bits.
    #[error("integer overflow in {op}")]
    Overflow {
        /// The operator or function.
        op: &'static str,
    },
    /// A binary operator applied to values of types it does not take (`'a' + 1`).
    #[error("cannot apply {op} to {left} and {right}")]
    Operands {
        /// The operator.
        op: &'static str,
        /// Type of the left operand.
        left: &'static str,
        /// Type of the right operand.
        right: &'static str,
    },
    /// A unary operator, or `AND`/`OR`, applied to a value of a type it does not take.
    #[error("cannot apply {op} to {found}")]
    Operand {
        /// The operator.
        op: &'static str,
        /// Type of the operand.
        found: &'static str,
    },
    /// A condition (WHERE, CASE WHEN) that is neither a boolean nor NULL.
    #[error("{clause} must be a boolean or NULL, got {found}")]
    NotBoolean {
        /// Which clause.
        clause: &'static str,
        /// Type of the value it produced.
        found: &'static str,
    },
    /// A function argument of a type the function does not take.
    #[error("{func}() cannot take {found} as argument {position}")]
    ArgumentType {
        /// The function.
        func: &'static str,
        /// 1-based position of the argument.
        position: usize,
        /// Type of the value given.
        found: &'static str,
    },
    /// A function argument of the right type but outside the function's domain (`sqrt(-1)`,
    /// `json_decode('{')`, `int('abc')`).
    #[error("{func}(): {reason}")]
    Argument {
        /// The function.
        func: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Why a template string cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A `${` without its closing `}`.
    #[error("unclosed `${{` at byte {at}")]
    Unclosed {
        /// Byte offset of the `$`.
        at: usize,
    },
    /// `${}` with no name inside.
    #[error("empty `${{}}` at byte {at}")]
    EmptyName {
        /// Byte offset of the `$`.
        at: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_position_is_read_from_the_parser_message() {
        let e = RuleError::Syntax {
            message: "Expected: end of statement, found: / at Line: 1, Column: 16".into(),
        };
        assert_eq!(e.position(), Some(Position { line: 1, column: 16 }));
        assert_eq!(RuleError::Syntax { message: "no place".into() }.position(), None);
    }

    #[test]
    fn errors_with_a_position_say_where() {
        let e = RuleError::UnknownFunction {
            name: "frobnicate".into(),
            at: Some(Position { line: 2, column: 5 }),
            hint: "",
        };
        assert_eq!(e.to_string(), "unknown function `frobnicate` at line 2, column 5");
        let e = RuleError::Unsupported { what: "GROUP BY".into(), at: None };
        assert_eq!(e.to_string(), "GROUP BY is not supported in rules");
    }
}
