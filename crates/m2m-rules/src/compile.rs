//! From rule text to a checked, compiled rule: `sqlparser` parses, this module rejects what rules do not
//! support, resolves names and functions, and builds the [`Node`] tree that [`crate::RuleQuery`] evaluates.

use std::borrow::Cow;

use m2m_topic::TopicFilter;
use sqlparser::ast::{
    AccessExpr, BinaryOperator, CastKind, CeilFloorKind, DateTimeField, Expr, Function, FunctionArg,
    FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, InTarget, ObjectNamePart, Query, Select,
    SelectFlavor, SelectItem, SetExpr, Statement, Subscript, TableFactor, TableWithJoins, UnaryOperator,
    Value, ValueWithSpan,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};

use crate::eval::{Base, Field, Like, Node, Seg};
use crate::func::{Call, Func};
use crate::like::LikePattern;
use crate::payload::Need;
use crate::source::EVENT_PREFIX;
use crate::value::{ArithOp, CmpOp, Val};
use crate::{EventKind, Position, RuleError, Source, MAX_DEPTH, MAX_RULE_LEN};

/// The fields every rule can read, for error messages.
pub(crate) const FIELD_LIST: &str =
    "payload, topic, clientid, username, peerhost, qos, retain, timestamp, user_properties, content_type, \
     event (and, in rules on $events, the event's own fields)";

/// One item of the SELECT list.
#[derive(Debug, Clone)]
pub(crate) enum Column {
    /// `*`: every field of the input.
    All,
    Expr {
        name: Box<str>,
        node: Node,
    },
}

/// A rule, checked and compiled.
#[derive(Debug, Clone)]
pub(crate) struct Compiled {
    pub(crate) sources: Vec<Source>,
    pub(crate) columns: Vec<Column>,
    pub(crate) filter: Option<Node>,
    /// What the rule reads of the payload.
    pub(crate) need: Need,
}

/// Parses and compiles a rule.
pub(crate) fn compile(sql: &str) -> Result<Compiled, RuleError> {
    if sql.len() > MAX_RULE_LEN {
        return Err(RuleError::TooLong { len: sql.len(), max: MAX_RULE_LEN });
    }
    let statements = Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut parser| parser.parse_statements())
        .map_err(|e| syntax_error(sql, e))?;
    let [statement] = statements.as_slice() else {
        return Err(RuleError::NotOneStatement { count: statements.len() });
    };
    let Statement::Query(query) = statement else {
        // The statement's first word, from the text: formatting the statement could recurse deeply.
        let keyword: String = sql.trim_start().chars().take_while(char::is_ascii_alphabetic).collect();
        let what =
            if keyword.is_empty() { "this statement".to_owned() } else { keyword.to_ascii_uppercase() };
        return Err(unsupported(format!("{what} (a rule is a SELECT)"), None));
    };
    let select = check_query(query)?;
    check_select(select)?;

    let sources = sources(&select.from)?;
    let compiler = Compiler { event_fields: sources.iter().any(|s| matches!(s, Source::Event(_))) };
    let mut columns = Vec::with_capacity(select.projection.len());
    for item in &select.projection {
        columns.push(compiler.column(item)?);
    }
    // Explicit columns may override what `*` outputs, but not each other.
    let mut names: Vec<&str> = Vec::new();
    for column in &columns {
        if let Column::Expr { name, .. } = column {
            if names.contains(&&**name) {
                return Err(RuleError::DuplicateColumn { name: name.to_string() });
            }
            names.push(name);
        }
    }
    let filter = select.selection.as_ref().map(|e| compiler.expr(e, 0)).transpose()?;
    let nodes = columns.iter().filter_map(|c| match c {
        Column::Expr { node, .. } => Some(node),
        Column::All => None,
    });
    let need = Need::of(nodes.chain(&filter), columns.iter().any(|c| matches!(c, Column::All)));
    Ok(Compiled { sources, columns, filter, need })
}

fn unsupported(what: impl Into<String>, at: Option<Position>) -> RuleError {
    RuleError::Unsupported { what: what.into(), at }
}

fn syntax_error(sql: &str, e: ParserError) -> RuleError {
    let mut message = match e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => "expression nested too deeply".to_owned(),
    };
    if has_unquoted_from(sql) {
        message.push_str("; topic filters in FROM must be in double quotes, e.g. FROM \"sensors/+/temp\"");
    }
    RuleError::Syntax { message }
}

/// Whether a FROM is followed by something that is not a quoted name (`FROM a/+/b`).
fn has_unquoted_from(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut from = 0;
    while let Some(i) = lower[from..].find("from") {
        let start = from + i;
        let end = start + 4;
        from = end;
        let before_ok = start == 0 || bytes[start - 1].is_ascii_whitespace();
        let after_ok = bytes.get(end).is_some_and(u8::is_ascii_whitespace);
        if before_ok && after_ok {
            let next = lower[end..].trim_start().chars().next();
            if next.is_some_and(|c| !matches!(c, '"' | '\'' | '`' | '(')) {
                return lower[end..].trim_start().contains(['/', '#', '+']);
            }
        }
    }
    false
}

/// The SELECT of a query that is nothing but a SELECT.
fn check_query(query: &Query) -> Result<&Select, RuleError> {
    let clause = if query.with.is_some() {
        Some("WITH")
    } else if query.order_by.is_some() {
        Some("ORDER BY")
    } else if query.limit_clause.is_some() {
        Some("LIMIT/OFFSET")
    } else if query.fetch.is_some() {
        Some("FETCH")
    } else if !query.locks.is_empty() {
        Some("FOR UPDATE/SHARE")
    } else if query.for_clause.is_some() {
        Some("FOR XML/JSON")
    } else if query.settings.is_some() {
        Some("SETTINGS")
    } else if query.format_clause.is_some() {
        Some("FORMAT")
    } else if !query.pipe_operators.is_empty() {
        Some("pipe operators")
    } else {
        None
    };
    if let Some(clause) = clause {
        return Err(unsupported(clause, None));
    }
    match &*query.body {
        SetExpr::Select(select) => Ok(select),
        SetExpr::SetOperation { op, .. } => Err(unsupported(op.to_string(), None)),
        SetExpr::Query(_) => Err(unsupported("a parenthesized query", None)),
        SetExpr::Values(_) => Err(unsupported("VALUES", None)),
        _ => Err(unsupported("this statement (a rule is a SELECT)", None)),
    }
}

/// Rejects every clause of a SELECT that rules do not have.
fn check_select(select: &Select) -> Result<(), RuleError> {
    let grouped = match &select.group_by {
        GroupByExpr::All(_) => true,
        GroupByExpr::Expressions(exprs, modifiers) => !exprs.is_empty() || !modifiers.is_empty(),
    };
    let clause = if select.distinct.is_some() {
        Some("DISTINCT")
    } else if select.top.is_some() {
        Some("TOP")
    } else if select.into.is_some() {
        Some("SELECT INTO")
    } else if grouped {
        Some("GROUP BY (a rule sees one message at a time)")
    } else if select.having.is_some() {
        Some("HAVING")
    } else if !select.sort_by.is_empty() {
        Some("SORT BY")
    } else if !select.cluster_by.is_empty() {
        Some("CLUSTER BY")
    } else if !select.distribute_by.is_empty() {
        Some("DISTRIBUTE BY")
    } else if !select.named_window.is_empty() {
        Some("WINDOW")
    } else if select.qualify.is_some() {
        Some("QUALIFY")
    } else if select.prewhere.is_some() {
        Some("PREWHERE")
    } else if !select.lateral_views.is_empty() {
        Some("LATERAL VIEW")
    } else if !select.connect_by.is_empty() {
        Some("CONNECT BY")
    } else if select.value_table_mode.is_some() {
        Some("SELECT AS VALUE/STRUCT")
    } else if select.exclude.is_some() {
        Some("EXCLUDE")
    } else if select.select_modifiers.is_some() {
        Some("SELECT modifiers")
    } else if !select.optimizer_hints.is_empty() {
        Some("optimizer hints")
    } else if select.flavor != SelectFlavor::Standard {
        Some("FROM before SELECT")
    } else {
        None
    };
    match clause {
        Some(clause) => Err(unsupported(clause, None)),
        None => Ok(()),
    }
}

/// The topic filters and events of FROM.
fn sources(from: &[TableWithJoins]) -> Result<Vec<Source>, RuleError> {
    if from.is_empty() {
        return Err(RuleError::MissingFrom);
    }
    let mut sources = Vec::with_capacity(from.len());
    for item in from {
        if let Some(join) = item.joins.first() {
            return Err(unsupported("JOIN", factor_position(&join.relation)));
        }
        let source = source(&item.relation)?;
        if !sources.contains(&source) {
            sources.push(source);
        }
    }
    Ok(sources)
}

fn factor_position(factor: &TableFactor) -> Option<Position> {
    match factor {
        TableFactor::Table { name, .. } => {
            name.0.first().and_then(|part| part.as_ident()).and_then(|i| Position::of(i.span))
        }
        _ => None,
    }
}

fn source(factor: &TableFactor) -> Result<Source, RuleError> {
    let at = factor_position(factor);
    let TableFactor::Table {
        name,
        alias,
        args,
        with_hints,
        version,
        partitions,
        sample,
        with_ordinality,
        ..
    } = factor
    else {
        return Err(match factor {
            TableFactor::Derived { .. } => unsupported("a subquery in FROM", at),
            _ => unsupported("this kind of FROM item (use quoted topic filters and events)", at),
        });
    };
    if alias.is_some() {
        return Err(unsupported("an alias in FROM", at));
    }
    if args.is_some() {
        return Err(unsupported("a table function in FROM", at));
    }
    if !with_hints.is_empty()
        || version.is_some()
        || !partitions.is_empty()
        || sample.is_some()
        || *with_ordinality
    {
        return Err(unsupported("table options in FROM", at));
    }
    let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() else {
        return Err(unsupported("a dotted name in FROM (quote topic filters: FROM \"sensors/+/temp\")", at));
    };
    let text = ident.value.as_str();
    if text.starts_with(EVENT_PREFIX) {
        return EventKind::from_source(text)
            .map(Source::Event)
            .ok_or_else(|| RuleError::UnknownEvent { name: text.to_owned(), at });
    }
    TopicFilter::try_from(text).map(Source::Topic).map_err(|source| RuleError::InvalidTopicFilter {
        filter: text.to_owned(),
        at,
        source,
    })
}

/// Where an expression starts, found without recursion (the tree may be deep).
fn start_of(mut e: &Expr) -> Option<Position> {
    loop {
        e = match e {
            Expr::Identifier(i) => return Position::of(i.span),
            Expr::CompoundIdentifier(parts) => return parts.first().and_then(|i| Position::of(i.span)),
            Expr::Value(v) => return Position::of(v.span),
            Expr::Function(f) => {
                return f.name.0.first().and_then(|p| p.as_ident()).and_then(|i| Position::of(i.span))
            }
            Expr::Case { case_token, .. } => return Position::of(case_token.0.span),
            Expr::BinaryOp { left, .. } => left,
            Expr::CompoundFieldAccess { root, .. } => root,
            Expr::Nested(inner)
            | Expr::UnaryOp { expr: inner, .. }
            | Expr::IsNull(inner)
            | Expr::IsNotNull(inner)
            | Expr::IsTrue(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsFalse(inner)
            | Expr::IsNotFalse(inner)
            | Expr::In { expr: inner, .. }
            | Expr::Between { expr: inner, .. }
            | Expr::Like { expr: inner, .. }
            | Expr::ILike { expr: inner, .. }
            | Expr::Cast { expr: inner, .. }
            | Expr::Ceil { expr: inner, .. }
            | Expr::Floor { expr: inner, .. }
            | Expr::Trim { expr: inner, .. }
            | Expr::Substring { expr: inner, .. } => inner,
            _ => return None,
        };
    }
}

/// A name for an expression kind that rules do not support.
fn describe(e: &Expr) -> &'static str {
    match e {
        Expr::Subquery(_) | Expr::Exists { .. } => "a subquery",
        Expr::Interval(_) => "INTERVAL",
        Expr::Extract { .. } => "EXTRACT",
        Expr::Position { .. } => "POSITION",
        Expr::Overlay { .. } => "OVERLAY",
        Expr::Collate { .. } => "COLLATE",
        Expr::AtTimeZone { .. } => "AT TIME ZONE",
        Expr::TypedString(_) => "a typed literal (DATE '…', TIMESTAMP '…')",
        Expr::SimilarTo { .. } => "SIMILAR TO",
        Expr::RLike { .. } => "RLIKE/REGEXP (use regex_match)",
        Expr::AnyOp { .. } | Expr::AllOp { .. } => "ANY/ALL",
        Expr::IsDistinctFrom(..) | Expr::IsNotDistinctFrom(..) => "IS [NOT] DISTINCT FROM",
        Expr::IsUnknown(_) | Expr::IsNotUnknown(_) => "IS [NOT] UNKNOWN",
        Expr::Tuple(_) => "a tuple",
        Expr::Array(_) => "an array literal",
        Expr::Map(_) | Expr::Dictionary(_) | Expr::Struct { .. } => "a map or struct literal",
        Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => "`*` inside an expression",
        Expr::JsonAccess { .. } => "`:` JSON access (use payload.a.b)",
        Expr::Lambda(_) => "a lambda",
        Expr::Convert { .. } => "CONVERT (use str, int, float or bool)",
        _ => "this kind of expression",
    }
}

/// Resolves names into fields and calls into functions.
struct Compiler {
    /// Names that are not fields of a message are the event's own fields (the rule reads `$events`).
    event_fields: bool,
}

impl Compiler {
    fn column(&self, item: &SelectItem) -> Result<Column, RuleError> {
        match item {
            SelectItem::Wildcard(options) => {
                let plain = options.opt_ilike.is_none()
                    && options.opt_exclude.is_none()
                    && options.opt_except.is_none()
                    && options.opt_replace.is_none()
                    && options.opt_rename.is_none();
                if plain {
                    Ok(Column::All)
                } else {
                    Err(unsupported("`*` with EXCEPT/EXCLUDE/REPLACE/RENAME/ILIKE", None))
                }
            }
            SelectItem::ExprWithAlias { expr, alias } => {
                Ok(Column::Expr { name: alias.value.as_str().into(), node: self.expr(expr, 0)? })
            }
            SelectItem::UnnamedExpr(expr) => {
                let node = self.expr(expr, 0)?;
                Ok(Column::Expr { name: output_name(expr, &node).into(), node })
            }
            SelectItem::QualifiedWildcard(..) => Err(unsupported("`name.*` (use `*` or name fields)", None)),
            _ => Err(unsupported("this kind of SELECT item", None)),
        }
    }

    // Each level of an expression costs several kilobytes of stack in debug builds; growing the stack
    // on demand keeps deep (but allowed) rules from overflowing small thread stacks.
    #[recursive::recursive]
    fn expr(&self, e: &Expr, depth: usize) -> Result<Node, RuleError> {
        if depth >= MAX_DEPTH {
            return Err(RuleError::TooDeep { max: MAX_DEPTH, at: start_of(e) });
        }
        let depth = depth + 1;
        let boxed = |e: &Expr| self.expr(e, depth).map(Box::new);
        Ok(match e {
            Expr::Identifier(ident) if ident.quote_style == Some('"') => {
                // As in EMQX, "text" in an expression is a string, not a column name.
                Node::Lit(Val::Str(Cow::Owned(ident.value.clone())))
            }
            Expr::Identifier(ident) => self.field(ident, &[], Vec::new())?,
            Expr::CompoundIdentifier(parts) => match parts.split_first() {
                Some((base, rest)) => {
                    self.field(base, rest, rest.iter().map(|i| Seg::Key(i.value.as_str().into())).collect())?
                }
                None => return Err(unsupported("an empty name", None)),
            },
            Expr::CompoundFieldAccess { root, access_chain } => {
                let chain = access_chain.iter().map(segment).collect::<Result<Vec<_>, _>>()?;
                match &**root {
                    Expr::Identifier(ident) if ident.quote_style != Some('"') => {
                        self.field(ident, &[], chain)?
                    }
                    Expr::CompoundIdentifier(parts) if !parts.is_empty() => {
                        let (base, rest) = (&parts[0], &parts[1..]);
                        let mut path: Vec<Seg> =
                            rest.iter().map(|i| Seg::Key(i.value.as_str().into())).collect();
                        path.extend(chain);
                        self.field(base, rest, path)?
                    }
                    root => Node::Access(boxed(root)?, chain.into()),
                }
            }
            Expr::Value(v) => Node::Lit(literal(v)?),
            Expr::Nested(inner) => self.expr(inner, depth)?,
            Expr::UnaryOp { op, expr } => match op {
                UnaryOperator::Minus => match &**expr {
                    // Folded, so that -9223372036854775808 is an integer.
                    Expr::Value(ValueWithSpan { value: Value::Number(text, _), span }) => {
                        Node::Lit(number(&format!("-{text}"), Position::of(*span))?)
                    }
                    _ => Node::Neg(boxed(expr)?),
                },
                UnaryOperator::Plus => self.expr(expr, depth)?,
                UnaryOperator::Not => Node::Not(boxed(expr)?),
                other => return Err(unsupported(format!("the operator `{other}`"), start_of(e))),
            },
            Expr::BinaryOp { left, op, right } => {
                enum Kind {
                    Arith(ArithOp),
                    Cmp(CmpOp),
                    Concat,
                    And,
                    Or,
                }
                let kind = match op {
                    BinaryOperator::Plus => Kind::Arith(ArithOp::Add),
                    BinaryOperator::Minus => Kind::Arith(ArithOp::Sub),
                    BinaryOperator::Multiply => Kind::Arith(ArithOp::Mul),
                    BinaryOperator::Divide => Kind::Arith(ArithOp::Div),
                    BinaryOperator::Modulo => Kind::Arith(ArithOp::Rem),
                    BinaryOperator::StringConcat => Kind::Concat,
                    BinaryOperator::Eq => Kind::Cmp(CmpOp::Eq),
                    BinaryOperator::NotEq => Kind::Cmp(CmpOp::Ne),
                    BinaryOperator::Lt => Kind::Cmp(CmpOp::Lt),
                    BinaryOperator::LtEq => Kind::Cmp(CmpOp::Le),
                    BinaryOperator::Gt => Kind::Cmp(CmpOp::Gt),
                    BinaryOperator::GtEq => Kind::Cmp(CmpOp::Ge),
                    BinaryOperator::And => Kind::And,
                    BinaryOperator::Or => Kind::Or,
                    other => return Err(unsupported(format!("the operator `{other}`"), start_of(right))),
                };
                let (l, r) = (boxed(left)?, boxed(right)?);
                match kind {
                    Kind::Arith(op) => Node::Arith(op, l, r),
                    Kind::Cmp(op) => Node::Cmp(op, l, r),
                    Kind::Concat => Node::Concat(l, r),
                    Kind::And => Node::And(l, r),
                    Kind::Or => Node::Or(l, r),
                }
            }
            Expr::IsNull(x) => Node::IsNull(boxed(x)?, false),
            Expr::IsNotNull(x) => Node::IsNull(boxed(x)?, true),
            Expr::IsTrue(x) => Node::IsBool(boxed(x)?, true, false),
            Expr::IsNotTrue(x) => Node::IsBool(boxed(x)?, true, true),
            Expr::IsFalse(x) => Node::IsBool(boxed(x)?, false, false),
            Expr::IsNotFalse(x) => Node::IsBool(boxed(x)?, false, true),
            Expr::In { expr, target, negated, global } => {
                if *global {
                    return Err(unsupported("GLOBAL IN", start_of(e)));
                }
                let InTarget::List(list) = target else {
                    return Err(unsupported("IN with a subquery or table (list the values)", start_of(e)));
                };
                let list = list.iter().map(|item| self.expr(item, depth)).collect::<Result<Vec<_>, _>>()?;
                Node::In { expr: boxed(expr)?, list: list.into(), negated: *negated }
            }
            Expr::Between { expr, negated, low, high } => {
                Node::Between { expr: boxed(expr)?, low: boxed(low)?, high: boxed(high)?, negated: *negated }
            }
            Expr::Like { negated, any, expr, pattern, escape_char }
            | Expr::ILike { negated, any, expr, pattern, escape_char } => {
                if *any {
                    return Err(unsupported("LIKE ANY", start_of(e)));
                }
                let case_insensitive = matches!(e, Expr::ILike { .. });
                let escape = match escape_char.as_deref() {
                    None => None,
                    Some(Expr::Value(v)) => match literal(v)? {
                        Val::Str(s) if s.chars().count() == 1 => s.chars().next(),
                        _ => {
                            return Err(unsupported(
                                "an ESCAPE that is not one character",
                                Position::of(v.span),
                            ))
                        }
                    },
                    Some(other) => {
                        return Err(unsupported("an ESCAPE that is not a literal", start_of(other)))
                    }
                };
                let pattern = match self.expr(pattern, depth)? {
                    Node::Lit(Val::Str(p)) => Like::Static(LikePattern::new(&p, escape, case_insensitive)),
                    pattern => Like::Dynamic { pattern: Box::new(pattern), escape, case_insensitive },
                };
                Node::Like { expr: boxed(expr)?, pattern, negated: *negated }
            }
            Expr::Case { operand, conditions, else_result, .. } => {
                let whens = conditions
                    .iter()
                    .map(|w| Ok((self.expr(&w.condition, depth)?, self.expr(&w.result, depth)?)))
                    .collect::<Result<Vec<_>, RuleError>>()?;
                Node::Case {
                    operand: operand.as_deref().map(boxed).transpose()?,
                    whens: whens.into(),
                    otherwise: else_result.as_deref().map(boxed).transpose()?,
                }
            }
            Expr::Function(f) => self.function(f, depth)?,
            Expr::Ceil { expr, field } | Expr::Floor { expr, field } => {
                let func = if matches!(e, Expr::Ceil { .. }) { Func::Ceil } else { Func::Floor };
                match field {
                    CeilFloorKind::DateTimeField(DateTimeField::NoDateTime) => {
                        self.call(func, &[expr], start_of(e), depth)?
                    }
                    CeilFloorKind::Scale(_) => {
                        return Err(RuleError::WrongArgumentCount {
                            name: func.name(),
                            expected: func.arity_text(),
                            got: 2,
                            at: start_of(e),
                        })
                    }
                    CeilFloorKind::DateTimeField(_) => {
                        return Err(unsupported(format!("{} … TO a date part", func.name()), start_of(e)))
                    }
                }
            }
            Expr::Trim { trim_where, trim_what, expr, trim_characters } => {
                if trim_where.is_some() || trim_what.is_some() || trim_characters.is_some() {
                    return Err(unsupported(
                        "TRIM with BOTH/LEADING/TRAILING or characters (use trim, ltrim or rtrim)",
                        start_of(e),
                    ));
                }
                self.call(Func::Trim, &[expr], start_of(e), depth)?
            }
            Expr::Substring { expr, substring_from, substring_for, .. } => {
                let at = start_of(e);
                match (substring_from.as_deref(), substring_for.as_deref()) {
                    (Some(from), None) => self.call(Func::Substr, &[expr, from], at, depth)?,
                    (Some(from), Some(len)) => self.call(Func::Substr, &[expr, from, len], at, depth)?,
                    // SUBSTRING(s FOR n) starts at 1.
                    (None, Some(len)) => {
                        let args =
                            vec![self.expr(expr, depth)?, Node::Lit(Val::Int(1)), self.expr(len, depth)?];
                        Node::Call(Call::new(Func::Substr, args).map_err(|reason| {
                            RuleError::InvalidArgument { func: Func::Substr.name(), reason, at }
                        })?)
                    }
                    (None, None) => self.call(Func::Substr, &[expr], at, depth)?,
                }
            }
            Expr::Cast { kind, expr, data_type, format } => {
                if !matches!(kind, CastKind::Cast | CastKind::DoubleColon) || format.is_some() {
                    return Err(unsupported("TRY_CAST, SAFE_CAST and CAST … FORMAT", start_of(e)));
                }
                let name = data_type.to_string().to_ascii_lowercase();
                let base = name.split(['(', ' ']).next().unwrap_or_default();
                let func = match base {
                    "int" | "integer" | "bigint" | "smallint" | "tinyint" | "int64" | "int8" => Func::Int,
                    "float" | "double" | "real" | "decimal" | "numeric" | "float64" | "float8" => Func::Float,
                    "text" | "varchar" | "char" | "string" | "character" => Func::Str,
                    "boolean" | "bool" => Func::Bool,
                    _ => return Err(unsupported(format!("CAST to {name}"), start_of(e))),
                };
                self.call(func, &[expr], start_of(e), depth)?
            }
            other => return Err(unsupported(describe(other), start_of(other))),
        })
    }

    /// A base field named by `base`, then `path`. `written` are the path's names as written, for errors.
    fn field(&self, base: &Ident, written: &[Ident], path: Vec<Seg>) -> Result<Node, RuleError> {
        let at = Position::of(base.span);
        let name = base.value.as_str();
        let base = match name.to_ascii_lowercase().as_str() {
            "payload" => Base::Payload,
            "topic" => Base::Topic,
            "clientid" => Base::ClientId,
            "username" => Base::Username,
            "peerhost" => Base::PeerHost,
            "qos" => Base::Qos,
            "retain" => Base::Retain,
            "timestamp" => Base::Timestamp,
            "user_properties" => Base::UserProperties,
            "content_type" => Base::ContentType,
            "event" => Base::Event,
            "win" => Base::Window,
            _ if self.event_fields => Base::EventField(name.into()),
            _ => return Err(RuleError::UnknownField { name: name.to_owned(), at }),
        };
        let takes_path = match base {
            Base::Payload | Base::EventField(_) | Base::Window => true,
            Base::UserProperties => matches!(path.as_slice(), [] | [Seg::Key(_)]),
            _ => path.is_empty(),
        };
        if !takes_path {
            let mut name = name.to_owned();
            if base == Base::UserProperties {
                if let Some(first) = written.first() {
                    name = format!("{name}.{}", first.value);
                }
            }
            return Err(RuleError::NotAnObject { name, at });
        }
        Ok(Node::Field(Field { base, path: path.into() }))
    }

    fn function(&self, f: &Function, depth: usize) -> Result<Node, RuleError> {
        let ident = match f.name.0.as_slice() {
            [ObjectNamePart::Identifier(ident)] => ident,
            _ => return Err(unsupported("a qualified function name", None)),
        };
        let at = Position::of(ident.span);
        let clause = if f.over.is_some() {
            Some("a window function (OVER)")
        } else if f.filter.is_some() {
            Some("FILTER in a function call")
        } else if !f.within_group.is_empty() {
            Some("WITHIN GROUP")
        } else if f.null_treatment.is_some() {
            Some("IGNORE/RESPECT NULLS")
        } else if !matches!(f.parameters, FunctionArguments::None) {
            Some("a parametric function call")
        } else {
            None
        };
        if let Some(clause) = clause {
            return Err(unsupported(clause, at));
        }
        let name = ident.value.as_str();
        let func = Func::lookup(name).ok_or_else(|| RuleError::UnknownFunction {
            name: name.to_owned(),
            at,
            hint: Func::hint(name),
        })?;
        let args: Vec<&Expr> = match &f.args {
            FunctionArguments::None => Vec::new(),
            FunctionArguments::Subquery(_) => return Err(unsupported("a subquery", at)),
            FunctionArguments::List(list) => {
                if list.duplicate_treatment.is_some() {
                    return Err(unsupported("DISTINCT/ALL in a function call", at));
                }
                if !list.clauses.is_empty() {
                    return Err(unsupported("clauses inside a function call (ORDER BY, LIMIT…)", at));
                }
                list.args
                    .iter()
                    .map(|arg| match arg {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
                        FunctionArg::Unnamed(_) => Err(unsupported("`*` as a function argument", at)),
                        _ => Err(unsupported("a named function argument", at)),
                    })
                    .collect::<Result<_, _>>()?
            }
        };
        self.call(func, &args, at, depth)
    }

    fn call(
        &self,
        func: Func,
        args: &[&Expr],
        at: Option<Position>,
        depth: usize,
    ) -> Result<Node, RuleError> {
        let (min, max) = func.arity();
        if args.len() < min || max.is_some_and(|max| args.len() > max) {
            return Err(RuleError::WrongArgumentCount {
                name: func.name(),
                expected: func.arity_text(),
                got: args.len(),
                at,
            });
        }
        let args = args.iter().map(|a| self.expr(a, depth)).collect::<Result<Vec<_>, _>>()?;
        Call::new(func, args).map(Node::Call).map_err(|reason| RuleError::InvalidArgument {
            func: func.name(),
            reason,
            at,
        })
    }
}

/// One step of `a.b[0]['c']` after the first name.
fn segment(access: &AccessExpr) -> Result<Seg, RuleError> {
    match access {
        AccessExpr::Dot(Expr::Identifier(ident)) => Ok(Seg::Key(ident.value.as_str().into())),
        AccessExpr::Dot(other) => {
            Err(unsupported("`.` followed by something other than a name", start_of(other)))
        }
        AccessExpr::Subscript(Subscript::Index { index }) => {
            let at = start_of(index);
            let bad = || unsupported("a subscript that is not a literal number or string", at);
            match index {
                Expr::Value(v) => match literal(v)? {
                    Val::Int(i) => Ok(Seg::Index(i)),
                    Val::Str(s) => Ok(Seg::Key(s.as_ref().into())),
                    _ => Err(bad()),
                },
                Expr::UnaryOp { op: UnaryOperator::Minus, expr } => match &**expr {
                    Expr::Value(ValueWithSpan { value: Value::Number(text, _), span }) => {
                        match number(&format!("-{text}"), Position::of(*span))? {
                            Val::Int(i) => Ok(Seg::Index(i)),
                            _ => Err(bad()),
                        }
                    }
                    _ => Err(bad()),
                },
                Expr::Identifier(ident) if ident.quote_style == Some('"') => {
                    Ok(Seg::Key(ident.value.as_str().into()))
                }
                _ => Err(bad()),
            }
        }
        AccessExpr::Subscript(_) => Err(unsupported("an array slice", None)),
    }
}

fn literal(v: &ValueWithSpan) -> Result<Val<'static>, RuleError> {
    let at = Position::of(v.span);
    let text = |s: &str| Ok(Val::Str(Cow::Owned(s.to_owned())));
    match &v.value {
        Value::Number(n, _) => number(n, at),
        Value::SingleQuotedString(s)
        | Value::DoubleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::TripleSingleQuotedString(s)
        | Value::TripleDoubleQuotedString(s)
        | Value::NationalStringLiteral(s) => text(s),
        Value::DollarQuotedString(s) => text(&s.value),
        Value::Boolean(b) => Ok(Val::Bool(*b)),
        Value::Null => Ok(Val::Null),
        Value::Placeholder(p) => Err(unsupported(format!("the placeholder {p}"), at)),
        _ => Err(unsupported("this kind of literal", at)),
    }
}

/// An integer when it fits in 64 bits, else a finite float.
fn number(text: &str, at: Option<Position>) -> Result<Val<'static>, RuleError> {
    if let Ok(i) = text.parse::<i64>() {
        return Ok(Val::Int(i));
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(Val::Float(f)),
        _ => Err(RuleError::InvalidNumber { text: text.to_owned(), at }),
    }
}

/// The output name of a column without an alias: the last name of a path (`payload.temp` → `temp`), the
/// field's name (`clientid`), else the expression as written (`abs(payload.x)`).
fn output_name(expr: &Expr, node: &Node) -> String {
    let last_key = |path: &[Seg]| match path.last() {
        Some(Seg::Key(k)) => Some(k.to_string()),
        _ => None,
    };
    match node {
        Node::Field(Field { base, path }) if path.is_empty() => match base {
            Base::EventField(name) => name.to_string(),
            _ => base_name(base).to_owned(),
        },
        Node::Field(Field { path, .. }) | Node::Access(_, path) => {
            last_key(path).unwrap_or_else(|| expr.to_string())
        }
        _ => expr.to_string(),
    }
}

fn base_name(base: &Base) -> &str {
    match base {
        Base::Payload | Base::RawPayload => "payload",
        Base::Topic => "topic",
        Base::ClientId => "clientid",
        Base::Username => "username",
        Base::PeerHost => "peerhost",
        Base::Qos => "qos",
        Base::Retain => "retain",
        Base::Timestamp => "timestamp",
        Base::UserProperties => "user_properties",
        Base::ContentType => "content_type",
        Base::Event => "event",
        Base::EventField(name) => name,
        Base::Window => "win",
    }
}
