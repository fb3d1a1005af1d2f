//! The values an expression produces while it is evaluated, and the operators on them.
//!
//! A [`Val`] borrows from the message (payload JSON, topic, properties) and from the rule (literals)
//! wherever it can, so a WHERE clause such as `payload.temp > 80` runs without allocating.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write as _;

use base64::Engine as _;
use serde_json::{Number, Value};

use crate::EvalError;

/// A value during evaluation. JSON scalars become `Null`/`Bool`/`Int`/`Float`/`Str`; arrays and objects
/// stay JSON (`Json`), borrowed when they come from the payload.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum Val<'a> {
    #[default]
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    /// Bytes that are not UTF-8: a binary payload, or the result of `base64_decode`/`hex_decode`.
    Bytes(Cow<'a, [u8]>),
    /// Always a JSON array or object.
    Json(Cow<'a, Value>),
}

impl<'a> Val<'a> {
    /// A borrowed view of a JSON value.
    pub(crate) fn from_json(v: &'a Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => number(n),
            Value::String(s) => Val::Str(Cow::Borrowed(s)),
            Value::Array(_) | Value::Object(_) => Val::Json(Cow::Borrowed(v)),
        }
    }

    /// An owned JSON value.
    pub(crate) fn from_json_owned(v: Value) -> Val<'static> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(b),
            Value::Number(n) => number(&n),
            Value::String(s) => Val::Str(Cow::Owned(s)),
            Value::Array(_) | Value::Object(_) => Val::Json(Cow::Owned(v)),
        }
    }

    /// Text that is UTF-8 is a string; anything else stays bytes.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Val<'static> {
        match String::from_utf8(bytes) {
            Ok(s) => Val::Str(Cow::Owned(s)),
            Err(e) => Val::Bytes(Cow::Owned(e.into_bytes())),
        }
    }

    /// The value as the rule's output holds it. Floats that are not finite become `null`; bytes that are
    /// not UTF-8 become a base64 string (JSON has no bytes).
    pub(crate) fn into_json(self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(b),
            Val::Int(i) => Value::Number(i.into()),
            Val::Float(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            Val::Str(s) => Value::String(s.into_owned()),
            Val::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
            Val::Json(j) => j.into_owned(),
        }
    }

    /// The same value borrowing from `self` (cheap: no string or JSON is copied).
    pub(crate) fn reborrow(&self) -> Val<'_> {
        match self {
            Val::Null => Val::Null,
            Val::Bool(b) => Val::Bool(*b),
            Val::Int(i) => Val::Int(*i),
            Val::Float(f) => Val::Float(*f),
            Val::Str(s) => Val::Str(Cow::Borrowed(s)),
            Val::Bytes(b) => Val::Bytes(Cow::Borrowed(b)),
            Val::Json(j) => Val::Json(Cow::Borrowed(j)),
        }
    }

    /// The type's name in error messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Val::Null => "NULL",
            Val::Bool(_) => "a boolean",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Str(_) => "a string",
            Val::Bytes(_) => "bytes",
            Val::Json(j) if j.is_array() => "an array",
            Val::Json(_) => "an object",
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    /// The value as text, for `||`, `concat` and `str`: numbers and booleans as written in JSON, arrays
    /// and objects as JSON, bytes that are not UTF-8 with replacement characters.
    pub(crate) fn to_text(&self) -> Cow<'_, str> {
        match self {
            Val::Null => Cow::Borrowed(""),
            Val::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            Val::Int(i) => Cow::Owned(i.to_string()),
            Val::Float(f) => Cow::Owned(float_text(*f)),
            Val::Str(s) => Cow::Borrowed(s),
            Val::Bytes(b) => String::from_utf8_lossy(b),
            Val::Json(j) => Cow::Owned(j.to_string()),
        }
    }

    /// Appends the value as text (see [`Val::to_text`]) without an intermediate string for numbers.
    pub(crate) fn write_text(&self, out: &mut String) {
        match self {
            Val::Int(i) => {
                let _ = write!(out, "{i}");
            }
            other => out.push_str(&other.to_text()),
        }
    }
}

fn number(n: &Number) -> Val<'static> {
    match n.as_i64() {
        Some(i) => Val::Int(i),
        // u64 above i64::MAX and all fractional numbers.
        None => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// Floats print as JSON prints them (`21.5`, `2.0`, `1e300`).
pub(crate) fn float_text(f: f64) -> String {
    match Number::from_f64(f) {
        Some(n) => n.to_string(),
        None => f.to_string(),
    }
}

/// The arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl ArithOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Rem => "%",
        }
    }
}

/// `a op b` with SQL's rules: NULL in, NULL out; two integers give an integer (division truncates
/// toward zero), anything with a float gives a float; a zero divisor is an error, so is overflow.
pub(crate) fn arith(op: ArithOp, a: &Val<'_>, b: &Val<'_>) -> Result<Val<'static>, EvalError> {
    match (a, b) {
        (Val::Null, _) | (_, Val::Null) => Ok(Val::Null),
        (Val::Int(x), Val::Int(y)) => {
            let (x, y) = (*x, *y);
            if matches!(op, ArithOp::Div | ArithOp::Rem) && y == 0 {
                return Err(EvalError::DivisionByZero);
            }
            let r = match op {
                ArithOp::Add => x.checked_add(y),
                ArithOp::Sub => x.checked_sub(y),
                ArithOp::Mul => x.checked_mul(y),
                ArithOp::Div => x.checked_div(y),
                ArithOp::Rem => x.checked_rem(y),
            };
            r.map(Val::Int).ok_or(EvalError::Overflow { op: op.symbol() })
        }
        _ => match (as_f64(a), as_f64(b)) {
            (Some(x), Some(y)) => {
                if matches!(op, ArithOp::Div | ArithOp::Rem) && y == 0.0 {
                    return Err(EvalError::DivisionByZero);
                }
                Ok(Val::Float(match op {
                    ArithOp::Add => x + y,
                    ArithOp::Sub => x - y,
                    ArithOp::Mul => x * y,
                    ArithOp::Div => x / y,
                    ArithOp::Rem => x % y,
                }))
            }
            _ => Err(EvalError::Operands { op: op.symbol(), left: a.type_name(), right: b.type_name() }),
        },
    }
}

/// The number as a float; `None` for anything that is not a number.
pub(crate) fn as_f64(v: &Val<'_>) -> Option<f64> {
    match v {
        Val::Int(i) => Some(*i as f64),
        Val::Float(f) => Some(*f),
        _ => None,
    }
}

/// Unary minus.
pub(crate) fn negate(v: Val<'_>) -> Result<Val<'static>, EvalError> {
    match v {
        Val::Null => Ok(Val::Null),
        Val::Int(i) => i.checked_neg().map(Val::Int).ok_or(EvalError::Overflow { op: "unary -" }),
        Val::Float(f) => Ok(Val::Float(-f)),
        other => Err(EvalError::Operand { op: "unary -", found: other.type_name() }),
    }
}

/// The comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// `a op b`: NULL if either side is NULL. Equality between values of different types is false (a
/// string is never equal to a number); ordering them is an error. Numbers compare by value across
/// integer and float; strings and bytes byte by byte; arrays and objects only for equality.
pub(crate) fn compare(op: CmpOp, a: &Val<'_>, b: &Val<'_>) -> Result<Val<'static>, EvalError> {
    if a.is_null() || b.is_null() {
        return Ok(Val::Null);
    }
    if let CmpOp::Eq | CmpOp::Ne = op {
        let eq = equal(a, b);
        return Ok(Val::Bool(if op == CmpOp::Eq { eq } else { !eq }));
    }
    match order(a, b) {
        Ok(Some(ord)) => Ok(Val::Bool(match op {
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::Le => ord != Ordering::Greater,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::Ge => ord != Ordering::Less,
            CmpOp::Eq | CmpOp::Ne => false,
        })),
        // NaN compares as unknown.
        Ok(None) => Ok(Val::Null),
        Err(()) => Err(EvalError::Operands { op: op.symbol(), left: a.type_name(), right: b.type_name() }),
    }
}

/// Equality of two non-NULL values (see [`compare`]).
pub(crate) fn equal(a: &Val<'_>, b: &Val<'_>) -> bool {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => x == y,
        (Val::Int(_) | Val::Float(_), Val::Int(_) | Val::Float(_)) => as_f64(a) == as_f64(b),
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Str(x), Val::Str(y)) => x == y,
        (Val::Str(x), Val::Bytes(y)) | (Val::Bytes(y), Val::Str(x)) => x.as_bytes() == &**y,
        (Val::Bytes(x), Val::Bytes(y)) => x == y,
        (Val::Json(x), Val::Json(y)) => x == y,
        (Val::Null, Val::Null) => true,
        _ => false,
    }
}

/// Order of two non-NULL values; `Err` when they cannot be ordered, `Ok(None)` for NaN.
pub(crate) fn order(a: &Val<'_>, b: &Val<'_>) -> Result<Option<Ordering>, ()> {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => Ok(Some(x.cmp(y))),
        (Val::Int(_) | Val::Float(_), Val::Int(_) | Val::Float(_)) => {
            Ok(as_f64(a).zip(as_f64(b)).and_then(|(x, y)| x.partial_cmp(&y)))
        }
        (Val::Bool(x), Val::Bool(y)) => Ok(Some(x.cmp(y))),
        (Val::Str(x), Val::Str(y)) => Ok(Some(x.cmp(y))),
        (Val::Str(x), Val::Bytes(y)) => Ok(Some(x.as_bytes().cmp(y))),
        (Val::Bytes(x), Val::Str(y)) => Ok(Some((**x).cmp(y.as_bytes()))),
        (Val::Bytes(x), Val::Bytes(y)) => Ok(Some(x.cmp(y))),
        _ => Err(()),
    }
}

/// `a || b`: NULL if either side is NULL, else both sides as text. Bytes are an error.
pub(crate) fn concat(a: &Val<'_>, b: &Val<'_>) -> Result<Val<'static>, EvalError> {
    match (a, b) {
        (Val::Null, _) | (_, Val::Null) => Ok(Val::Null),
        (Val::Bytes(_), _) | (_, Val::Bytes(_)) => {
            Err(EvalError::Operands { op: "||", left: a.type_name(), right: b.type_name() })
        }
        _ => {
            let mut s = String::new();
            a.write_text(&mut s);
            b.write_text(&mut s);
            Ok(Val::Str(Cow::Owned(s)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(x: &str) -> Val<'_> {
        Val::Str(Cow::Borrowed(x))
    }

    #[test]
    fn json_numbers_become_integers_when_they_fit() {
        assert_eq!(Val::from_json(&json!(5)), Val::Int(5));
        assert_eq!(Val::from_json(&json!(-5)), Val::Int(-5));
        assert_eq!(Val::from_json(&json!(2.5)), Val::Float(2.5));
        assert_eq!(Val::from_json(&json!(u64::MAX)), Val::Float(u64::MAX as f64));
    }

    #[test]
    fn output_turns_non_finite_floats_into_null_and_bytes_into_base64() {
        assert_eq!(Val::Float(f64::INFINITY).into_json(), Value::Null);
        assert_eq!(Val::Float(f64::NAN).into_json(), Value::Null);
        assert_eq!(Val::Bytes(Cow::Borrowed(&[0xff, 0x00])).into_json(), json!("/wA="));
        assert_eq!(Val::Float(2.0).into_json(), json!(2.0));
    }

    #[test]
    fn integer_arithmetic_stays_integer_and_mixed_becomes_float() {
        assert_eq!(arith(ArithOp::Add, &Val::Int(2), &Val::Int(3)), Ok(Val::Int(5)));
        assert_eq!(arith(ArithOp::Sub, &Val::Int(2), &Val::Int(3)), Ok(Val::Int(-1)));
        assert_eq!(arith(ArithOp::Mul, &Val::Int(4), &Val::Int(3)), Ok(Val::Int(12)));
        assert_eq!(arith(ArithOp::Div, &Val::Int(7), &Val::Int(2)), Ok(Val::Int(3)));
        assert_eq!(arith(ArithOp::Div, &Val::Int(-7), &Val::Int(2)), Ok(Val::Int(-3)));
        assert_eq!(arith(ArithOp::Rem, &Val::Int(-7), &Val::Int(3)), Ok(Val::Int(-1)));
        assert_eq!(arith(ArithOp::Div, &Val::Int(7), &Val::Float(2.0)), Ok(Val::Float(3.5)));
        assert_eq!(arith(ArithOp::Add, &Val::Float(0.5), &Val::Int(1)), Ok(Val::Float(1.5)));
        assert_eq!(arith(ArithOp::Rem, &Val::Float(7.5), &Val::Int(2)), Ok(Val::Float(1.5)));
    }

    #[test]
    fn arithmetic_errors_are_division_by_zero_overflow_and_types() {
        assert_eq!(arith(ArithOp::Div, &Val::Int(1), &Val::Int(0)), Err(EvalError::DivisionByZero));
        assert_eq!(arith(ArithOp::Rem, &Val::Int(1), &Val::Int(0)), Err(EvalError::DivisionByZero));
        assert_eq!(arith(ArithOp::Div, &Val::Float(1.0), &Val::Int(0)), Err(EvalError::DivisionByZero));
        assert_eq!(
            arith(ArithOp::Add, &Val::Int(i64::MAX), &Val::Int(1)),
            Err(EvalError::Overflow { op: "+" })
        );
        assert_eq!(
            arith(ArithOp::Div, &Val::Int(i64::MIN), &Val::Int(-1)),
            Err(EvalError::Overflow { op: "/" })
        );
        assert_eq!(
            arith(ArithOp::Add, &s("a"), &Val::Int(1)),
            Err(EvalError::Operands { op: "+", left: "a string", right: "an integer" })
        );
    }

    #[test]
    fn arithmetic_with_null_is_null() {
        assert_eq!(arith(ArithOp::Add, &Val::Null, &Val::Int(1)), Ok(Val::Null));
        assert_eq!(arith(ArithOp::Div, &Val::Int(1), &Val::Null), Ok(Val::Null));
        assert_eq!(negate(Val::Null), Ok(Val::Null));
    }

    #[test]
    fn negation_of_numbers_and_its_errors() {
        assert_eq!(negate(Val::Int(3)), Ok(Val::Int(-3)));
        assert_eq!(negate(Val::Float(1.5)), Ok(Val::Float(-1.5)));
        assert_eq!(negate(Val::Int(i64::MIN)), Err(EvalError::Overflow { op: "unary -" }));
        assert!(negate(s("x")).is_err());
    }

    #[test]
    fn comparisons_follow_sql_with_null_and_numbers_across_types() {
        assert_eq!(compare(CmpOp::Eq, &Val::Int(1), &Val::Float(1.0)), Ok(Val::Bool(true)));
        assert_eq!(compare(CmpOp::Lt, &Val::Int(1), &Val::Float(1.5)), Ok(Val::Bool(true)));
        assert_eq!(compare(CmpOp::Ge, &s("b"), &s("a")), Ok(Val::Bool(true)));
        assert_eq!(compare(CmpOp::Le, &s("a"), &s("a")), Ok(Val::Bool(true)));
        assert_eq!(compare(CmpOp::Gt, &Val::Bool(true), &Val::Bool(false)), Ok(Val::Bool(true)));
        assert_eq!(compare(CmpOp::Ne, &Val::Int(1), &Val::Int(2)), Ok(Val::Bool(true)));
        assert_eq!(compare(CmpOp::Eq, &Val::Null, &Val::Null), Ok(Val::Null));
        assert_eq!(compare(CmpOp::Lt, &Val::Int(1), &Val::Null), Ok(Val::Null));
        assert_eq!(compare(CmpOp::Lt, &Val::Float(f64::NAN), &Val::Int(1)), Ok(Val::Null));
    }

    #[test]
    fn values_of_different_types_are_unequal_but_cannot_be_ordered() {
        assert_eq!(compare(CmpOp::Eq, &s("1"), &Val::Int(1)), Ok(Val::Bool(false)));
        assert_eq!(compare(CmpOp::Ne, &s("1"), &Val::Int(1)), Ok(Val::Bool(true)));
        assert!(compare(CmpOp::Lt, &s("1"), &Val::Int(1)).is_err());
        let arr = json!([1, 2]);
        assert_eq!(
            compare(CmpOp::Eq, &Val::Json(Cow::Borrowed(&arr)), &Val::from_json_owned(json!([1, 2]))),
            Ok(Val::Bool(true))
        );
        assert!(compare(CmpOp::Lt, &Val::Json(Cow::Borrowed(&arr)), &Val::Int(1)).is_err());
    }

    #[test]
    fn concatenation_writes_numbers_as_json_and_is_null_with_null() {
        assert_eq!(concat(&s("t="), &Val::Int(5)), Ok(Val::Str("t=5".into())));
        assert_eq!(concat(&Val::Float(2.0), &Val::Bool(true)), Ok(Val::Str("2.0true".into())));
        assert_eq!(concat(&s("a"), &Val::Null), Ok(Val::Null));
        assert!(concat(&Val::Bytes(Cow::Borrowed(&[0xff])), &s("a")).is_err());
    }
}
