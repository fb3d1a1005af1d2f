//! The built-in functions: their names, argument counts and implementations.
//!
//! A call is resolved to a [`Func`] when the rule is parsed. Literal arguments that need work before
//! use (a regular expression, a `get` path, a time unit) are prepared then too and kept in the call's
//! [`Cache`], so evaluating the call does no parsing.

use std::borrow::Cow;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use regex::{Regex, RegexBuilder};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::eval::{Base, Ctx, Node};
use crate::value::{arith, as_f64, equal, float_text, order, ArithOp, Val};
use crate::EvalError;

macro_rules! functions {
    ($($variant:ident = $name:literal, $min:literal, $max:expr;)*) => {
        /// A built-in function.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Func { $($variant),* }

        impl Func {
            /// Every function, in the order of the documentation.
            pub(crate) const ALL: &'static [Func] = &[$(Func::$variant),*];

            /// The name it is called by (lowercase; calls are case-insensitive).
            pub(crate) fn name(self) -> &'static str {
                match self { $(Func::$variant => $name),* }
            }

            /// The least and the greatest number of arguments; `None` for no upper bound.
            pub(crate) fn arity(self) -> (usize, Option<usize>) {
                match self { $(Func::$variant => ($min, $max)),* }
            }
        }
    };
}

functions! {
    Abs = "abs", 1, Some(1);
    Ceil = "ceil", 1, Some(1);
    Floor = "floor", 1, Some(1);
    Round = "round", 1, Some(2);
    Sqrt = "sqrt", 1, Some(1);
    Power = "power", 2, Some(2);
    Exp = "exp", 1, Some(1);
    Ln = "ln", 1, Some(1);
    Log10 = "log10", 1, Some(1);
    Mod = "mod", 2, Some(2);
    Least = "least", 1, None;
    Greatest = "greatest", 1, None;
    Lower = "lower", 1, Some(1);
    Upper = "upper", 1, Some(1);
    Trim = "trim", 1, Some(1);
    Ltrim = "ltrim", 1, Some(1);
    Rtrim = "rtrim", 1, Some(1);
    Length = "length", 1, Some(1);
    Substr = "substr", 2, Some(3);
    Concat = "concat", 1, None;
    Replace = "replace", 3, Some(3);
    Split = "split", 2, Some(2);
    Contains = "contains", 2, Some(2);
    StartsWith = "startswith", 2, Some(2);
    EndsWith = "endswith", 2, Some(2);
    RegexMatch = "regex_match", 2, Some(2);
    RegexReplace = "regex_replace", 3, Some(3);
    NowTimestamp = "now_timestamp", 0, Some(1);
    NowRfc3339 = "now_rfc3339", 0, Some(1);
    UnixTsToRfc3339 = "unix_ts_to_rfc3339", 1, Some(2);
    Rfc3339ToUnixTs = "rfc3339_to_unix_ts", 1, Some(2);
    JsonDecode = "json_decode", 1, Some(1);
    JsonEncode = "json_encode", 1, Some(1);
    Get = "get", 2, Some(3);
    MapGet = "map_get", 2, Some(3);
    TopicLevel = "topic_level", 2, Some(2);
    TopicLevels = "topic_levels", 1, Some(1);
    Base64Encode = "base64_encode", 1, Some(1);
    Base64Decode = "base64_decode", 1, Some(1);
    HexEncode = "hex_encode", 1, Some(1);
    HexDecode = "hex_decode", 1, Some(1);
    ByteSize = "byte_size", 1, Some(1);
    IsNull = "is_null", 1, Some(1);
    IsNotNull = "is_not_null", 1, Some(1);
    IsNum = "is_num", 1, Some(1);
    IsStr = "is_str", 1, Some(1);
    IsBool = "is_bool", 1, Some(1);
    IsArray = "is_array", 1, Some(1);
    IsMap = "is_map", 1, Some(1);
    Coalesce = "coalesce", 1, None;
    Str = "str", 1, Some(1);
    Int = "int", 1, Some(1);
    Float = "float", 1, Some(1);
    Bool = "bool", 1, Some(1);
}

/// Other names some functions are known by.
const ALIASES: &[(&str, Func)] = &[
    ("ceiling", Func::Ceil),
    ("pow", Func::Power),
    ("substring", Func::Substr),
    ("format_time", Func::UnixTsToRfc3339),
];

/// Names of aggregate functions, which rules cannot have (they see one message at a time).
const AGGREGATES: &[&str] = &["count", "sum", "avg", "min", "max"];

impl Func {
    /// The function called `name`, case-insensitively.
    pub(crate) fn lookup(name: &str) -> Option<Func> {
        Func::ALL
            .iter()
            .copied()
            .find(|f| f.name().eq_ignore_ascii_case(name))
            .or_else(|| ALIASES.iter().find(|(alias, _)| alias.eq_ignore_ascii_case(name)).map(|(_, f)| *f))
    }

    /// A suggestion for an unknown function name, empty or starting with "; ".
    pub(crate) fn hint(name: &str) -> &'static str {
        let lower = name.to_ascii_lowercase();
        match lower.as_str() {
            "min" | "max" => "; aggregate functions are not supported (a rule sees one message at a time); for the smallest or greatest of several values use least(...) or greatest(...)",
            _ if AGGREGATES.contains(&lower.as_str()) => "; aggregate functions are not supported (a rule sees one message at a time)",
            "len" | "char_length" => "; use length(...)",
            "nvl" | "ifnull" => "; use coalesce(...)",
            _ => "",
        }
    }

    /// "1 argument", "1 or 2 arguments", "at least 1 argument"…
    pub(crate) fn arity_text(self) -> String {
        let plural = |n: usize| if n == 1 { "argument" } else { "arguments" };
        match self.arity() {
            (min, Some(max)) if min == max => format!("{min} {}", plural(min)),
            (min, Some(max)) if max == min + 1 => format!("{min} or {max} {}", plural(max)),
            (min, Some(max)) => format!("{min} to {max} arguments"),
            (min, None) => format!("at least {min} {}", plural(min)),
        }
    }

    /// Functions that read bytes take the payload as published, not parsed as JSON.
    fn reads_raw_payload(self) -> bool {
        matches!(self, Func::ByteSize | Func::Base64Encode | Func::HexEncode)
    }
}

/// A resolved function call.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub(crate) func: Func,
    pub(crate) args: Box<[Node]>,
    /// A literal argument prepared when the rule was parsed.
    pub(crate) cache: Option<Cache>,
}

/// A literal argument prepared at parse time.
#[derive(Debug, Clone)]
pub(crate) enum Cache {
    Regex(Regex),
    Path(Box<[PathStep]>),
    Unit(TimeUnit),
}

/// One step of a `get` path: a key, and an array index when the key is a number.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PathStep {
    key: Box<str>,
    index: Option<i64>,
}

/// Units of timestamps for the time functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeUnit {
    Second,
    Millisecond,
    Microsecond,
    Nanosecond,
}

impl TimeUnit {
    fn parse(s: &str) -> Result<TimeUnit, String> {
        match s.to_ascii_lowercase().as_str() {
            "second" | "seconds" | "s" => Ok(TimeUnit::Second),
            "millisecond" | "milliseconds" | "ms" => Ok(TimeUnit::Millisecond),
            "microsecond" | "microseconds" | "us" => Ok(TimeUnit::Microsecond),
            "nanosecond" | "nanoseconds" | "ns" => Ok(TimeUnit::Nanosecond),
            _ => Err(format!(
                "unknown time unit {s:?}; use 'second', 'millisecond', 'microsecond' or 'nanosecond'"
            )),
        }
    }

    fn nanos(self) -> i128 {
        match self {
            TimeUnit::Second => 1_000_000_000,
            TimeUnit::Millisecond => 1_000_000,
            TimeUnit::Microsecond => 1_000,
            TimeUnit::Nanosecond => 1,
        }
    }
}

/// The argument that holds a time unit, if the function has one.
fn unit_arg(func: Func) -> Option<usize> {
    match func {
        Func::NowTimestamp | Func::NowRfc3339 => Some(0),
        Func::UnixTsToRfc3339 | Func::Rfc3339ToUnixTs => Some(1),
        _ => None,
    }
}

/// Largest compiled size of a regular expression.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

fn build_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).build()
}

fn parse_path(path: &str) -> Box<[PathStep]> {
    path.split('.').map(|key| PathStep { key: key.into(), index: key.parse().ok() }).collect()
}

impl Call {
    /// Resolves `func` over compiled `args` and prepares literal arguments. `Err` is why a literal
    /// argument is unusable.
    pub(crate) fn new(func: Func, mut args: Vec<Node>) -> Result<Call, String> {
        if func.reads_raw_payload() {
            if let Some(Node::Field(field)) = args.first_mut() {
                if field.base == Base::Payload && field.path.is_empty() {
                    field.base = Base::RawPayload;
                }
            }
        }
        let literal = |i: usize| match args.get(i) {
            Some(Node::Lit(Val::Str(s))) => Some(s.as_ref()),
            _ => None,
        };
        let cache = match func {
            Func::RegexMatch | Func::RegexReplace => literal(1)
                .map(|p| {
                    build_regex(p).map(Cache::Regex).map_err(|e| format!("invalid regular expression: {e}"))
                })
                .transpose()?,
            Func::Get => literal(1).map(|p| Cache::Path(parse_path(p))),
            _ => match unit_arg(func).and_then(literal) {
                Some(unit) => Some(Cache::Unit(TimeUnit::parse(unit)?)),
                None => None,
            },
        };
        Ok(Call { func, args: args.into(), cache })
    }
}

fn type_error(func: Func, position: usize, found: &Val<'_>) -> EvalError {
    EvalError::ArgumentType { func: func.name(), position: position + 1, found: found.type_name() }
}

fn domain_error(func: Func, reason: impl Into<String>) -> EvalError {
    EvalError::Argument { func: func.name(), reason: reason.into() }
}

/// Evaluates a call.
pub(crate) fn call<'a>(call: &'a Call, ctx: &'a Ctx<'_>) -> Result<Val<'a>, EvalError> {
    let func = call.func;
    match func {
        Func::Coalesce => {
            for arg in call.args.iter() {
                let v = arg.eval(ctx)?;
                if !v.is_null() {
                    return Ok(v);
                }
            }
            Ok(Val::Null)
        }
        Func::Concat => {
            let mut out = String::new();
            for (i, arg) in call.args.iter().enumerate() {
                match arg.eval(ctx)? {
                    v @ Val::Bytes(_) => return Err(type_error(func, i, &v)),
                    v => v.write_text(&mut out),
                }
            }
            Ok(Val::Str(Cow::Owned(out)))
        }
        Func::Least | Func::Greatest => {
            let mut best: Option<Val<'a>> = None;
            for arg in call.args.iter() {
                let v = arg.eval(ctx)?;
                if v.is_null() {
                    continue;
                }
                best = Some(match best {
                    None => v,
                    Some(b) => {
                        let ord = order(&v, &b).map_err(|()| EvalError::Operands {
                            op: func.name(),
                            left: b.type_name(),
                            right: v.type_name(),
                        })?;
                        let better = match ord {
                            Some(o) if func == Func::Least => o.is_lt(),
                            Some(o) => o.is_gt(),
                            None => false,
                        };
                        if better {
                            v
                        } else {
                            b
                        }
                    }
                });
            }
            Ok(best.unwrap_or(Val::Null))
        }
        _ => {
            // Fixed-arity functions take at most three arguments: no allocation for them.
            let mut args: [Val<'a>; 3] = [Val::Null, Val::Null, Val::Null];
            for (slot, arg) in args.iter_mut().zip(call.args.iter()) {
                *slot = arg.eval(ctx)?;
            }
            let n = call.args.len().min(3);
            apply(func, &mut args[..n], call.cache.as_ref(), ctx)
        }
    }
}

fn take<'a>(args: &mut [Val<'a>], i: usize) -> Val<'a> {
    args.get_mut(i).map_or(Val::Null, std::mem::take)
}

/// A string argument; `None` for NULL.
fn str_arg<'a>(func: Func, args: &mut [Val<'a>], i: usize) -> Result<Option<Cow<'a, str>>, EvalError> {
    match take(args, i) {
        Val::Null => Ok(None),
        Val::Str(s) => Ok(Some(s)),
        other => Err(type_error(func, i, &other)),
    }
}

/// An integer argument (a float with no fraction counts); `None` for NULL.
fn int_arg(func: Func, args: &[Val<'_>], i: usize) -> Result<Option<i64>, EvalError> {
    match args.get(i) {
        None | Some(Val::Null) => Ok(None),
        Some(Val::Int(n)) => Ok(Some(*n)),
        Some(Val::Float(f)) if f.fract() == 0.0 && float_fits_i64(*f) => Ok(Some(*f as i64)),
        Some(other) => Err(type_error(func, i, other)),
    }
}

/// A numeric argument as a float; `None` for NULL.
fn num_arg(func: Func, args: &[Val<'_>], i: usize) -> Result<Option<f64>, EvalError> {
    match args.get(i) {
        None | Some(Val::Null) => Ok(None),
        Some(v) => as_f64(v).map(Some).ok_or_else(|| type_error(func, i, v)),
    }
}

/// Bytes of a string or bytes argument; `None` for NULL.
fn bytes_arg<'a>(func: Func, args: &mut [Val<'a>], i: usize) -> Result<Option<Cow<'a, [u8]>>, EvalError> {
    match take(args, i) {
        Val::Null => Ok(None),
        Val::Str(Cow::Borrowed(s)) => Ok(Some(Cow::Borrowed(s.as_bytes()))),
        Val::Str(Cow::Owned(s)) => Ok(Some(Cow::Owned(s.into_bytes()))),
        Val::Bytes(b) => Ok(Some(b)),
        other => Err(type_error(func, i, &other)),
    }
}

fn unit(func: Func, args: &mut [Val<'_>], i: usize, cache: Option<&Cache>) -> Result<TimeUnit, EvalError> {
    if let Some(Cache::Unit(u)) = cache {
        return Ok(*u);
    }
    match str_arg(func, args, i)? {
        None => Ok(TimeUnit::Millisecond),
        Some(s) => TimeUnit::parse(&s).map_err(|e| domain_error(func, e)),
    }
}

fn float_fits_i64(f: f64) -> bool {
    // i64::MAX as f64 rounds up to 2^63, which does not fit; i64::MIN as f64 is exactly -2^63.
    (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)
}

/// A whole float as an integer when it fits, else the float.
fn whole(f: f64) -> Val<'static> {
    if float_fits_i64(f) {
        Val::Int(f as i64)
    } else {
        Val::Float(f)
    }
}

/// Keeps a borrowed string borrowed when an operation only narrows it.
fn narrow<'a>(s: Cow<'a, str>, f: impl for<'x> Fn(&'x str) -> &'x str) -> Cow<'a, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(f(b)),
        Cow::Owned(o) => Cow::Owned(f(&o).to_owned()),
    }
}

/// Shortens a value for an error message.
fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

fn apply<'a>(
    func: Func,
    args: &mut [Val<'a>],
    cache: Option<&'a Cache>,
    ctx: &Ctx<'_>,
) -> Result<Val<'a>, EvalError> {
    use Val::Null;
    let str_val = |s: String| Ok(Val::Str(Cow::Owned(s)));
    match func {
        Func::Abs => match take(args, 0) {
            Null => Ok(Null),
            Val::Int(i) => i.checked_abs().map(Val::Int).ok_or(EvalError::Overflow { op: "abs" }),
            Val::Float(f) => Ok(Val::Float(f.abs())),
            other => Err(type_error(func, 0, &other)),
        },
        Func::Ceil | Func::Floor => match take(args, 0) {
            Null => Ok(Null),
            Val::Int(i) => Ok(Val::Int(i)),
            Val::Float(f) => Ok(whole(if func == Func::Ceil { f.ceil() } else { f.floor() })),
            other => Err(type_error(func, 0, &other)),
        },
        Func::Round => {
            let digits = if args.len() > 1 {
                match int_arg(func, args, 1)? {
                    Some(d) => Some(d),
                    None => return Ok(Null),
                }
            } else {
                None
            };
            match (take(args, 0), digits) {
                (Null, _) => Ok(Null),
                (Val::Int(i), None) => Ok(Val::Int(i)),
                (Val::Int(i), Some(d)) if d >= 0 => Ok(Val::Int(i)),
                (Val::Int(i), Some(d)) => Ok(whole(round_to(i as f64, d))),
                (Val::Float(f), None) => Ok(whole(f.round())),
                (Val::Float(f), Some(d)) => Ok(Val::Float(round_to(f, d))),
                (other, _) => Err(type_error(func, 0, &other)),
            }
        }
        Func::Sqrt | Func::Exp | Func::Ln | Func::Log10 => {
            let Some(x) = num_arg(func, args, 0)? else { return Ok(Null) };
            match func {
                Func::Sqrt if x < 0.0 => Err(domain_error(func, "square root of a negative number")),
                Func::Ln | Func::Log10 if x <= 0.0 => {
                    Err(domain_error(func, "logarithm of zero or a negative number"))
                }
                Func::Sqrt => Ok(Val::Float(x.sqrt())),
                Func::Exp => Ok(Val::Float(x.exp())),
                Func::Ln => Ok(Val::Float(x.ln())),
                _ => Ok(Val::Float(x.log10())),
            }
        }
        Func::Power => match (&args[0], &args[1]) {
            (Null, _) | (_, Null) => Ok(Null),
            (Val::Int(base), Val::Int(exp)) if *exp >= 0 => {
                match u32::try_from(*exp).ok().and_then(|e| base.checked_pow(e)) {
                    Some(r) => Ok(Val::Int(r)),
                    None => Ok(Val::Float((*base as f64).powf(*exp as f64))),
                }
            }
            _ => {
                let base = num_arg(func, args, 0)?.unwrap_or(f64::NAN);
                let exp = num_arg(func, args, 1)?.unwrap_or(f64::NAN);
                let r = base.powf(exp);
                if r.is_nan() {
                    Err(domain_error(func, "the result is not a real number"))
                } else {
                    Ok(Val::Float(r))
                }
            }
        },
        Func::Mod => arith(ArithOp::Rem, &args[0], &args[1]),
        Func::Lower | Func::Upper => match str_arg(func, args, 0)? {
            None => Ok(Null),
            Some(s) => str_val(if func == Func::Lower { s.to_lowercase() } else { s.to_uppercase() }),
        },
        Func::Trim | Func::Ltrim | Func::Rtrim => match str_arg(func, args, 0)? {
            None => Ok(Null),
            Some(s) => Ok(Val::Str(match func {
                Func::Trim => narrow(s, str::trim),
                Func::Ltrim => narrow(s, str::trim_start),
                _ => narrow(s, str::trim_end),
            })),
        },
        Func::Length => match &args[0] {
            Null => Ok(Null),
            Val::Str(s) => Ok(Val::Int(s.chars().count() as i64)),
            Val::Bytes(b) => Ok(Val::Int(b.len() as i64)),
            Val::Json(j) => Ok(Val::Int(match &**j {
                Value::Array(a) => a.len(),
                Value::Object(o) => o.len(),
                _ => 0,
            } as i64)),
            other => Err(type_error(func, 0, other)),
        },
        Func::Substr => {
            let Some(start) = int_arg(func, args, 1)? else { return Ok(Null) };
            let len = if args.len() > 2 {
                match int_arg(func, args, 2)? {
                    Some(l) if l < 0 => return Err(domain_error(func, "negative substring length")),
                    Some(l) => Some(l),
                    None => return Ok(Null),
                }
            } else {
                None
            };
            let Some(s) = str_arg(func, args, 0)? else { return Ok(Null) };
            // SQL positions: the first character is 1; characters before 1 count toward the length.
            let end = len.map_or(i64::MAX, |l| start.saturating_add(l));
            let from = start.max(1);
            if end <= from {
                return Ok(Val::Str(Cow::Borrowed("")));
            }
            let skip = usize::try_from(from - 1).unwrap_or(usize::MAX);
            let count = usize::try_from(end - from).unwrap_or(usize::MAX);
            Ok(Val::Str(narrow(s, |s| {
                let begin = s.char_indices().nth(skip).map_or(s.len(), |(i, _)| i);
                let rest = &s[begin..];
                let stop = rest.char_indices().nth(count).map_or(rest.len(), |(i, _)| i);
                &rest[..stop]
            })))
        }
        Func::Replace => {
            let s = str_arg(func, args, 0)?;
            let from = str_arg(func, args, 1)?;
            let to = str_arg(func, args, 2)?;
            match (s, from, to) {
                (Some(s), Some(from), Some(to)) if !from.is_empty() => str_val(s.replace(&*from, &to)),
                (Some(s), Some(_), Some(_)) => Ok(Val::Str(s)),
                _ => Ok(Null),
            }
        }
        Func::Split => {
            let s = str_arg(func, args, 0)?;
            let sep = str_arg(func, args, 1)?;
            match (s, sep) {
                (Some(_), Some(sep)) if sep.is_empty() => Err(domain_error(func, "the separator is empty")),
                (Some(s), Some(sep)) => Ok(Val::Json(Cow::Owned(Value::Array(
                    s.split(&*sep).map(|part| Value::String(part.to_owned())).collect(),
                )))),
                _ => Ok(Null),
            }
        }
        Func::Contains => match (&args[0], &args[1]) {
            (Null, _) | (_, Null) => Ok(Null),
            (Val::Str(h), Val::Str(n)) => Ok(Val::Bool(h.contains(&**n))),
            (Val::Json(j), needle) if j.is_array() => {
                let items = j.as_array().map(Vec::as_slice).unwrap_or_default();
                Ok(Val::Bool(items.iter().any(|item| equal(&Val::from_json(item), needle))))
            }
            (Val::Str(_), other) => Err(type_error(func, 1, other)),
            (other, _) => Err(type_error(func, 0, other)),
        },
        Func::StartsWith | Func::EndsWith => {
            let s = str_arg(func, args, 0)?;
            let affix = str_arg(func, args, 1)?;
            match (s, affix) {
                (Some(s), Some(a)) => Ok(Val::Bool(if func == Func::StartsWith {
                    s.starts_with(&*a)
                } else {
                    s.ends_with(&*a)
                })),
                _ => Ok(Null),
            }
        }
        Func::RegexMatch | Func::RegexReplace => {
            let s = str_arg(func, args, 0)?;
            let compiled;
            let re = match cache {
                Some(Cache::Regex(re)) => re,
                _ => match str_arg(func, args, 1)? {
                    None => return Ok(Null),
                    Some(p) => {
                        compiled = build_regex(&p)
                            .map_err(|e| domain_error(func, format!("invalid regular expression: {e}")))?;
                        &compiled
                    }
                },
            };
            let Some(s) = s else { return Ok(Null) };
            if func == Func::RegexMatch {
                return Ok(Val::Bool(re.is_match(&s)));
            }
            let Some(replacement) = str_arg(func, args, 2)? else { return Ok(Null) };
            str_val(re.replace_all(&s, &*replacement).into_owned())
        }
        Func::NowTimestamp => {
            let unit = unit(func, args, 0, cache)?;
            let nanos = i128::from(ctx.input.now_ms) * 1_000_000;
            Ok(Val::Int(i64::try_from(nanos.div_euclid(unit.nanos())).unwrap_or(i64::MAX)))
        }
        Func::NowRfc3339 => {
            let unit = unit(func, args, 0, cache)?;
            let nanos = i128::from(ctx.input.now_ms) * 1_000_000;
            rfc3339(func, nanos - nanos.rem_euclid(unit.nanos())).map(|s| Val::Str(Cow::Owned(s)))
        }
        Func::UnixTsToRfc3339 => {
            let unit = unit(func, args, 1, cache)?;
            let Some(ts) = int_arg(func, args, 0)? else { return Ok(Null) };
            rfc3339(func, i128::from(ts) * unit.nanos()).map(|s| Val::Str(Cow::Owned(s)))
        }
        Func::Rfc3339ToUnixTs => {
            let unit = unit(func, args, 1, cache)?;
            let Some(s) = str_arg(func, args, 0)? else { return Ok(Null) };
            let t = OffsetDateTime::parse(s.trim(), &Rfc3339)
                .map_err(|e| domain_error(func, format!("{} is not an RFC 3339 time: {e}", shown(&s))))?;
            let ts = t.unix_timestamp_nanos().div_euclid(unit.nanos());
            i64::try_from(ts).map(Val::Int).map_err(|_| EvalError::Overflow { op: func.name() })
        }
        Func::JsonDecode => match take(args, 0) {
            Null => Ok(Null),
            Val::Str(s) => serde_json::from_str(&s)
                .map(Val::from_json_owned)
                .map_err(|e| domain_error(func, format!("invalid JSON: {e}"))),
            Val::Bytes(b) => serde_json::from_slice(&b)
                .map(Val::from_json_owned)
                .map_err(|e| domain_error(func, format!("invalid JSON: {e}"))),
            other => Err(type_error(func, 0, &other)),
        },
        Func::JsonEncode => {
            let text = match take(args, 0) {
                Val::Json(j) => j.to_string(),
                Val::Str(s) => Value::String(s.into_owned()).to_string(),
                other => other.into_json().to_string(),
            };
            str_val(text)
        }
        Func::Get => {
            let default = take(args, 2);
            let steps = match cache {
                Some(Cache::Path(steps)) => Cow::Borrowed(&**steps),
                _ => match str_arg(func, args, 1)? {
                    None => return Ok(default),
                    Some(p) => Cow::Owned(parse_path(&p).into_vec()),
                },
            };
            let found = match take(args, 0) {
                Val::Json(Cow::Borrowed(j)) => walk_steps(j, &steps).map_or(Null, Val::from_json),
                Val::Json(Cow::Owned(j)) => {
                    walk_steps(&j, &steps).map_or(Null, |v| Val::from_json_owned(v.clone()))
                }
                _ => Null,
            };
            Ok(if found.is_null() { default } else { found })
        }
        Func::MapGet => {
            let default = take(args, 2);
            let key = match take(args, 0) {
                Null => return Ok(default),
                Val::Str(s) => s,
                other @ (Val::Int(_) | Val::Float(_) | Val::Bool(_)) => {
                    Cow::Owned(other.to_text().into_owned())
                }
                other => return Err(type_error(func, 0, &other)),
            };
            let found = match take(args, 1) {
                Val::Json(Cow::Borrowed(j)) => j.get(&*key).map_or(Null, Val::from_json),
                Val::Json(Cow::Owned(j)) => j.get(&*key).map_or(Null, |v| Val::from_json_owned(v.clone())),
                _ => Null,
            };
            Ok(if found.is_null() { default } else { found })
        }
        Func::TopicLevel => {
            let n = int_arg(func, args, 1)?;
            let topic = str_arg(func, args, 0)?;
            let (Some(topic), Some(n)) = (topic, n) else { return Ok(Null) };
            let Some(index) = usize::try_from(n).ok().and_then(|n| n.checked_sub(1)) else { return Ok(Null) };
            match topic {
                Cow::Borrowed(t) => Ok(t.split('/').nth(index).map_or(Null, |l| Val::Str(Cow::Borrowed(l)))),
                Cow::Owned(t) => {
                    Ok(t.split('/').nth(index).map_or(Null, |l| Val::Str(Cow::Owned(l.to_owned()))))
                }
            }
        }
        Func::TopicLevels => match str_arg(func, args, 0)? {
            None => Ok(Null),
            Some(t) => Ok(Val::Int(t.split('/').count() as i64)),
        },
        Func::Base64Encode => match bytes_arg(func, args, 0)? {
            None => Ok(Null),
            Some(b) => str_val(STANDARD.encode(b)),
        },
        Func::Base64Decode => match str_arg(func, args, 0)? {
            None => Ok(Null),
            Some(s) => {
                const LENIENT: GeneralPurpose = GeneralPurpose::new(
                    &base64::alphabet::STANDARD,
                    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
                );
                LENIENT
                    .decode(s.trim())
                    .map(Val::from_bytes)
                    .map_err(|e| domain_error(func, format!("invalid base64: {e}")))
            }
        },
        Func::HexEncode => match bytes_arg(func, args, 0)? {
            None => Ok(Null),
            Some(b) => str_val(hex_encode(&b)),
        },
        Func::HexDecode => match str_arg(func, args, 0)? {
            None => Ok(Null),
            Some(s) => hex_decode(s.trim()).map(Val::from_bytes).map_err(|e| domain_error(func, e)),
        },
        Func::ByteSize => Ok(match &args[0] {
            Null => Null,
            Val::Str(s) => Val::Int(s.len() as i64),
            Val::Bytes(b) => Val::Int(b.len() as i64),
            other => Val::Int(other.to_text().len() as i64),
        }),
        Func::IsNull => Ok(Val::Bool(args[0].is_null())),
        Func::IsNotNull => Ok(Val::Bool(!args[0].is_null())),
        Func::IsNum => Ok(Val::Bool(matches!(args[0], Val::Int(_) | Val::Float(_)))),
        Func::IsStr => Ok(Val::Bool(matches!(args[0], Val::Str(_)))),
        Func::IsBool => Ok(Val::Bool(matches!(args[0], Val::Bool(_)))),
        Func::IsArray => Ok(Val::Bool(matches!(&args[0], Val::Json(j) if j.is_array()))),
        Func::IsMap => Ok(Val::Bool(matches!(&args[0], Val::Json(j) if j.is_object()))),
        Func::Str => match take(args, 0) {
            Null => Ok(Null),
            Val::Str(s) => Ok(Val::Str(s)),
            other => str_val(other.to_text().into_owned()),
        },
        Func::Int => match take(args, 0) {
            Null => Ok(Null),
            Val::Int(i) => Ok(Val::Int(i)),
            Val::Float(f) if float_fits_i64(f.trunc()) => Ok(Val::Int(f.trunc() as i64)),
            Val::Float(f) => Err(domain_error(func, format!("{} does not fit in an integer", float_text(f)))),
            Val::Bool(b) => Ok(Val::Int(i64::from(b))),
            Val::Str(s) => {
                let t = s.trim();
                if let Ok(i) = t.parse::<i64>() {
                    return Ok(Val::Int(i));
                }
                match t.parse::<f64>() {
                    Ok(f) if float_fits_i64(f.trunc()) => Ok(Val::Int(f.trunc() as i64)),
                    _ => Err(domain_error(func, format!("cannot convert {} to an integer", shown(&s)))),
                }
            }
            other => Err(type_error(func, 0, &other)),
        },
        Func::Float => match take(args, 0) {
            Null => Ok(Null),
            Val::Int(i) => Ok(Val::Float(i as f64)),
            Val::Float(f) => Ok(Val::Float(f)),
            Val::Bool(b) => Ok(Val::Float(if b { 1.0 } else { 0.0 })),
            Val::Str(s) => match s.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Val::Float(f)),
                _ => Err(domain_error(func, format!("cannot convert {} to a float", shown(&s)))),
            },
            other => Err(type_error(func, 0, &other)),
        },
        Func::Bool => match take(args, 0) {
            Null => Ok(Null),
            Val::Bool(b) => Ok(Val::Bool(b)),
            Val::Int(0) => Ok(Val::Bool(false)),
            Val::Int(1) => Ok(Val::Bool(true)),
            Val::Float(0.0) => Ok(Val::Bool(false)),
            Val::Float(1.0) => Ok(Val::Bool(true)),
            Val::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Val::Bool(true)),
                "false" | "0" => Ok(Val::Bool(false)),
                _ => Err(domain_error(func, format!("cannot convert {} to a boolean", shown(&s)))),
            },
            other @ (Val::Int(_) | Val::Float(_)) => {
                Err(domain_error(func, format!("cannot convert {} to a boolean", other.to_text())))
            }
            other => Err(type_error(func, 0, &other)),
        },
        // Evaluated in `call`.
        Func::Coalesce | Func::Concat | Func::Least | Func::Greatest => Ok(Null),
    }
}

/// `x` rounded to `digits` decimal places (negative: to tens, hundreds…), halves away from zero.
fn round_to(x: f64, digits: i64) -> f64 {
    if digits > 17 {
        return x;
    }
    if digits < -308 {
        return 0.0;
    }
    let factor = 10f64.powi(digits as i32);
    let scaled = x * factor;
    if !scaled.is_finite() {
        return x;
    }
    scaled.round() / factor
}

/// RFC 3339 text of a time given in nanoseconds since the epoch, in UTC.
fn rfc3339(func: Func, nanos: i128) -> Result<String, EvalError> {
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .ok_or_else(|| domain_error(func, "the time is outside the years 0 to 9999"))
}

fn walk_steps<'v>(mut v: &'v Value, steps: &[PathStep]) -> Option<&'v Value> {
    for step in steps {
        v = match v {
            Value::Object(map) => map.get(&*step.key)?,
            Value::Array(items) => {
                let i = step.index?;
                let i = if i < 0 {
                    items.len().checked_sub(usize::try_from(i.unsigned_abs()).ok()?)?
                } else {
                    usize::try_from(i).ok()?
                };
                items.get(i)?
            }
            _ => return None,
        };
    }
    Some(v)
}

fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("hex text has an odd number of digits".to_owned());
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("{:?} is not a hex digit", char::from(c))),
    };
    s.as_bytes().chunks_exact(2).map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}
