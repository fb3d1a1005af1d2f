//! The compiled expression tree and its evaluation over one [`Input`].
//!
//! Names, functions, literal regular expressions and LIKE patterns are resolved when the rule is
//! parsed; evaluating walks the tree once. The payload is parsed lazily, at most once per evaluation.

use std::borrow::Cow;
use std::cell::OnceCell;

use serde_json::{Map, Value};

use crate::func::{self, Call};
use crate::like::LikePattern;
use crate::payload::{Need, Payload};
use crate::value::{arith, compare, concat, equal, negate, ArithOp, CmpOp, Val};
use crate::{EvalError, Input};

/// A compiled expression.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Lit(Val<'static>),
    Field(Field),
    /// A path into a computed value: `json_decode(s).a[0]`.
    Access(Box<Node>, Box<[Seg]>),
    Neg(Box<Node>),
    Not(Box<Node>),
    Arith(ArithOp, Box<Node>, Box<Node>),
    Concat(Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    /// `IS [NOT] NULL`
    IsNull(Box<Node>, bool),
    /// `IS [NOT] TRUE` / `IS [NOT] FALSE`: (operand, TRUE or FALSE, negated).
    IsBool(Box<Node>, bool, bool),
    In {
        expr: Box<Node>,
        list: Box<[Node]>,
        negated: bool,
    },
    Between {
        expr: Box<Node>,
        low: Box<Node>,
        high: Box<Node>,
        negated: bool,
    },
    Like {
        expr: Box<Node>,
        pattern: Like,
        negated: bool,
    },
    Case {
        operand: Option<Box<Node>>,
        whens: Box<[(Node, Node)]>,
        otherwise: Option<Box<Node>>,
    },
    Call(Call),
}

/// The pattern of a LIKE: compiled at parse time when it is a literal.
#[derive(Debug, Clone)]
pub(crate) enum Like {
    Static(LikePattern),
    Dynamic { pattern: Box<Node>, escape: Option<char>, case_insensitive: bool },
}

/// A base field and a path into it: `payload.a.b[0]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Field {
    pub(crate) base: Base,
    pub(crate) path: Box<[Seg]>,
}

/// The fields a rule can read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Base {
    /// The payload, parsed as JSON (or text, or bytes).
    Payload,
    /// The payload's bytes, unparsed: the argument of `byte_size`, `base64_encode` and `hex_encode`.
    RawPayload,
    Topic,
    ClientId,
    Username,
    PeerHost,
    Qos,
    Retain,
    Timestamp,
    UserProperties,
    ContentType,
    /// The event's name.
    Event,
    /// A field of the event's own map.
    EventField(Box<str>),
    /// The statistics of the rule's time window (`window.avg`, …), when the engine keeps one.
    Window,
}

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seg {
    /// `.name` or `['name']`: a member of an object.
    Key(Box<str>),
    /// `[n]`: an element of an array, from the end when negative.
    Index(i64),
}

/// The state of one evaluation.
pub(crate) struct Ctx<'i> {
    pub(crate) input: Input<'i>,
    /// What the rule reads of the payload.
    need: &'i Need,
    payload: OnceCell<Payload<'i>>,
}

impl<'i> Ctx<'i> {
    pub(crate) fn new(input: Input<'i>, need: &'i Need) -> Self {
        Ctx { input, need, payload: OnceCell::new() }
    }

    fn payload(&self) -> &Payload<'i> {
        self.payload.get_or_init(|| Payload::parse(self.input.payload, self.need))
    }

    fn event_field(&self, name: &str) -> Option<&'i Value> {
        self.input.event_fields?.get(name)
    }

    /// An optional string field of the input; when absent, the event's field of the same name.
    fn text_or_event<'a>(&'a self, value: Option<&'i str>, name: &str) -> Option<Val<'a>> {
        match value {
            Some(s) => Some(Val::Str(Cow::Borrowed(s))),
            None => self.event_field(name).map(Val::from_json),
        }
    }

    /// The value of a field, following its path. Absent is NULL: reading a field never fails.
    pub(crate) fn field<'a>(&'a self, field: &Field) -> Val<'a> {
        let path = &*field.path;
        let input = &self.input;
        let base = match &field.base {
            Base::Payload => match self.payload() {
                Payload::Json(v) => return walk(v, path).map_or(Val::Null, Val::from_json),
                Payload::Text(s) => Val::Str(Cow::Borrowed(s)),
                Payload::Bytes(b) => Val::Bytes(Cow::Borrowed(b)),
            },
            Base::RawPayload => Val::Bytes(Cow::Borrowed(input.payload)),
            Base::Topic => Val::Str(Cow::Borrowed(input.topic)),
            Base::ClientId => return self.text_or_event(input.clientid, "clientid").unwrap_or(Val::Null),
            Base::Username => return self.text_or_event(input.username, "username").unwrap_or(Val::Null),
            Base::PeerHost => return self.text_or_event(input.peerhost, "peerhost").unwrap_or(Val::Null),
            Base::ContentType => {
                return self.text_or_event(input.content_type, "content_type").unwrap_or(Val::Null)
            }
            Base::Qos => Val::Int(i64::from(input.qos)),
            Base::Retain => Val::Bool(input.retain),
            Base::Timestamp => Val::Int(i64::try_from(input.timestamp_ms).unwrap_or(i64::MAX)),
            Base::Event => match input.event {
                Some(kind) => Val::Str(Cow::Borrowed(kind.as_str())),
                None => return self.event_field("event").map_or(Val::Null, Val::from_json),
            },
            Base::UserProperties => match path.first() {
                None => Val::Json(Cow::Owned(user_properties(input.user_properties))),
                Some(Seg::Key(k)) => {
                    return input
                        .user_properties
                        .iter()
                        .find(|(name, _)| **name == **k)
                        .map_or(Val::Null, |(_, v)| Val::Str(Cow::Borrowed(v)));
                }
                Some(Seg::Index(_)) => Val::Null,
            },
            Base::EventField(name) => {
                return self.event_field(name).and_then(|v| walk(v, path)).map_or(Val::Null, Val::from_json);
            }
            Base::Window => {
                let Some(window) = self.input.window else { return Val::Null };
                return match path.split_first() {
                    None => Val::Json(Cow::Owned(Value::Object(window.clone()))),
                    Some((Seg::Key(k), rest)) => {
                        window.get(&**k).and_then(|v| walk(v, rest)).map_or(Val::Null, Val::from_json)
                    }
                    Some((Seg::Index(_), _)) => Val::Null,
                };
            }
        };
        if path.is_empty() {
            base
        } else {
            Val::Null
        }
    }

    /// Every base field and event field, for `SELECT *`.
    pub(crate) fn write_all_fields(&self, out: &mut Map<String, Value>) {
        let field = |base| self.field(&Field { base, path: Box::default() }).into_json();
        for (name, base) in [
            ("payload", Base::Payload),
            ("topic", Base::Topic),
            ("clientid", Base::ClientId),
            ("username", Base::Username),
            ("peerhost", Base::PeerHost),
            ("qos", Base::Qos),
            ("retain", Base::Retain),
            ("timestamp", Base::Timestamp),
            ("user_properties", Base::UserProperties),
            ("content_type", Base::ContentType),
        ] {
            out.insert(name.to_owned(), field(base));
        }
        if let Some(kind) = self.input.event {
            out.insert("event".to_owned(), Value::String(kind.as_str().to_owned()));
        }
        if let Some(fields) = self.input.event_fields {
            for (name, value) in fields {
                out.insert(name.clone(), value.clone());
            }
        }
    }
}

/// User properties as a JSON object; for a repeated name the first value wins, as in `user_properties.k`.
fn user_properties(props: &[(std::sync::Arc<str>, std::sync::Arc<str>)]) -> Value {
    let mut map = Map::new();
    for (name, value) in props {
        map.entry(name.to_string()).or_insert_with(|| Value::String(value.to_string()));
    }
    Value::Object(map)
}

/// Follows `path` into `v`; `None` when a step is missing or of the wrong kind.
pub(crate) fn walk<'v>(mut v: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    for seg in path {
        v = match (seg, v) {
            (Seg::Key(k), Value::Object(map)) => map.get(&**k)?,
            (Seg::Index(i), Value::Array(items)) => items.get(array_index(*i, items.len())?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// Array index `i` of an array of `len`; negative counts from the end (-1 is the last element).
fn array_index(i: i64, len: usize) -> Option<usize> {
    if i >= 0 {
        usize::try_from(i).ok()
    } else {
        len.checked_sub(usize::try_from(i.unsigned_abs()).ok()?)
    }
}

/// Follows `path` into a computed value, keeping it borrowed when it was.
fn access<'a>(v: Val<'a>, path: &[Seg]) -> Val<'a> {
    match v {
        Val::Json(Cow::Borrowed(j)) => walk(j, path).map_or(Val::Null, Val::from_json),
        Val::Json(Cow::Owned(j)) => walk(&j, path).map_or(Val::Null, |v| Val::from_json_owned(v.clone())),
        _ => Val::Null,
    }
}

/// The result of a condition: `Some(true)`, `Some(false)`, or `None` for NULL.
pub(crate) fn truth(v: &Val<'_>, clause: &'static str) -> Result<Option<bool>, EvalError> {
    match v {
        Val::Bool(b) => Ok(Some(*b)),
        Val::Null => Ok(None),
        other => Err(EvalError::NotBoolean { clause, found: other.type_name() }),
    }
}

fn logic_operand(v: &Val<'_>, op: &'static str) -> Result<Option<bool>, EvalError> {
    match v {
        Val::Bool(b) => Ok(Some(*b)),
        Val::Null => Ok(None),
        other => Err(EvalError::Operand { op, found: other.type_name() }),
    }
}

fn tri(v: Option<bool>) -> Val<'static> {
    v.map_or(Val::Null, Val::Bool)
}

impl Node {
    /// Evaluates the expression. Values borrow from the rule (`self`) and from the input (`ctx`).
    pub(crate) fn eval<'a>(&'a self, ctx: &'a Ctx<'_>) -> Result<Val<'a>, EvalError> {
        Ok(match self {
            Node::Lit(v) => v.reborrow(),
            Node::Field(f) => ctx.field(f),
            Node::Access(base, path) => access(base.eval(ctx)?, path),
            Node::Neg(e) => negate(e.eval(ctx)?)?,
            Node::Not(e) => tri(logic_operand(&e.eval(ctx)?, "NOT")?.map(|b| !b)),
            Node::Arith(op, a, b) => arith(*op, &a.eval(ctx)?, &b.eval(ctx)?)?,
            Node::Concat(a, b) => concat(&a.eval(ctx)?, &b.eval(ctx)?)?,
            Node::Cmp(op, a, b) => compare(*op, &a.eval(ctx)?, &b.eval(ctx)?)?,
            // Three-valued logic: FALSE AND x is FALSE whatever x is (even if x would fail), TRUE OR x
            // is TRUE; otherwise NULL wins over TRUE in AND and over FALSE in OR.
            Node::And(a, b) => match logic_operand(&a.eval(ctx)?, "AND")? {
                Some(false) => Val::Bool(false),
                left => match (left, logic_operand(&b.eval(ctx)?, "AND")?) {
                    (_, Some(false)) => Val::Bool(false),
                    (Some(true), Some(true)) => Val::Bool(true),
                    _ => Val::Null,
                },
            },
            Node::Or(a, b) => match logic_operand(&a.eval(ctx)?, "OR")? {
                Some(true) => Val::Bool(true),
                left => match (left, logic_operand(&b.eval(ctx)?, "OR")?) {
                    (_, Some(true)) => Val::Bool(true),
                    (Some(false), Some(false)) => Val::Bool(false),
                    _ => Val::Null,
                },
            },
            Node::IsNull(e, negated) => Val::Bool(e.eval(ctx)?.is_null() != *negated),
            Node::IsBool(e, which, negated) => {
                let is = logic_operand(&e.eval(ctx)?, if *which { "IS TRUE" } else { "IS FALSE" })?;
                Val::Bool((is == Some(*which)) != *negated)
            }
            Node::In { expr, list, negated } => {
                let v = expr.eval(ctx)?;
                if v.is_null() {
                    return Ok(Val::Null);
                }
                let mut saw_null = false;
                for item in list.iter() {
                    let item = item.eval(ctx)?;
                    if item.is_null() {
                        saw_null = true;
                    } else if equal(&v, &item) {
                        return Ok(Val::Bool(!*negated));
                    }
                }
                // `x IN (1, NULL)` is NULL, not FALSE, when x is not 1.
                if saw_null {
                    Val::Null
                } else {
                    Val::Bool(*negated)
                }
            }
            Node::Between { expr, low, high, negated } => {
                let v = expr.eval(ctx)?;
                let ge = compare(CmpOp::Ge, &v, &low.eval(ctx)?)?;
                let le = compare(CmpOp::Le, &v, &high.eval(ctx)?)?;
                let within = match (ge, le) {
                    (Val::Bool(false), _) | (_, Val::Bool(false)) => Some(false),
                    (Val::Bool(true), Val::Bool(true)) => Some(true),
                    _ => None,
                };
                tri(within.map(|w| w != *negated))
            }
            Node::Like { expr, pattern, negated } => {
                let v = expr.eval(ctx)?;
                let text = match &v {
                    Val::Null => return Ok(Val::Null),
                    Val::Str(s) => s,
                    other => return Err(EvalError::Operand { op: "LIKE", found: other.type_name() }),
                };
                let matched = match pattern {
                    Like::Static(p) => p.matches(text),
                    Like::Dynamic { pattern, escape, case_insensitive } => match pattern.eval(ctx)? {
                        Val::Null => return Ok(Val::Null),
                        Val::Str(p) => LikePattern::new(&p, *escape, *case_insensitive).matches(text),
                        other => {
                            return Err(EvalError::Operands {
                                op: "LIKE",
                                left: "a string",
                                right: other.type_name(),
                            })
                        }
                    },
                };
                Val::Bool(matched != *negated)
            }
            Node::Case { operand, whens, otherwise } => {
                let operand = match operand {
                    Some(o) => Some(o.eval(ctx)?),
                    None => None,
                };
                for (when, then) in whens.iter() {
                    let hit = match &operand {
                        // `CASE x WHEN v`: x = v; NULL never matches.
                        Some(x) => {
                            let v = when.eval(ctx)?;
                            !x.is_null() && !v.is_null() && equal(x, &v)
                        }
                        None => truth(&when.eval(ctx)?, "CASE WHEN")? == Some(true),
                    };
                    if hit {
                        return then.eval(ctx);
                    }
                }
                match otherwise {
                    Some(e) => e.eval(ctx)?,
                    None => Val::Null,
                }
            }
            Node::Call(call) => func::call(call, ctx)?,
        })
    }
}
