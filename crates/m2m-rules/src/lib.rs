//! The rules language: SQL-like rules parsed, checked and evaluated over one message or client event.
//!
//! A rule reads like SQL and works like a filter-and-reshape step on the message stream:
//!
//! ```sql
//! SELECT 'on' AS state FROM "building/+/presence" WHERE payload.person = true
//! SELECT payload.temp AS t, clientid, topic FROM "factory/+/temp" WHERE payload.temp > 80
//! SELECT clientid, username, peerhost FROM "$events/client_connected"
//! ```
//!
//! # Layout
//! - [`RuleQuery`]: a parsed, validated and compiled rule. [`RuleQuery::parse`] turns text into one or a
//!   [`RuleError`]; [`RuleQuery::matches_topic`] and [`RuleQuery::matches_event`] say whether an input is
//!   for it; [`RuleQuery::evaluate`] runs it on an [`Input`] and returns the output columns, or `None`
//!   when WHERE rejects the input.
//! - [`Source`] and [`EventKind`]: what FROM names.
//! - [`Template`]: `${name}` placeholders filled from a rule's output, for the topics and payloads of
//!   actions.
//!
//! # What this crate does not do
//! It runs no actions, reads no clock and does no IO: the caller feeds messages and events in and
//! decides what to do with the output (republish, webhook, quarantine…). It keeps no state between
//! evaluations, so there are no time windows or aggregates.
//!
//! # Language reference
//!
//! ## Grammar
//!
//! ```text
//! rule    := SELECT column [, column]* FROM source [, source]* [WHERE condition]
//! column  := * | expr [[AS] name]
//! source  := "topic/filter"          -- MQTT filter with + and #, in double quotes
//!          | "$events/<event>"       -- a client or broker event
//! ```
//!
//! Keywords and function names are case-insensitive. One statement per rule; a trailing `;` is
//! allowed; `-- comments` and `/* comments */` are allowed. Rules are at most [`MAX_RULE_LEN`] bytes
//! and expressions nest at most [`MAX_DEPTH`] levels.
//!
//! Anything else SQL has is rejected with an error naming it: `JOIN`, `GROUP BY`, `HAVING`,
//! `ORDER BY`, `LIMIT`, `DISTINCT`, `UNION`, `WITH`, subqueries, window functions, aggregates
//! (`count`, `sum`, `min`…), `INTERVAL`, `EXTRACT`, aliases in FROM.
//!
//! ## Sources
//!
//! A topic filter follows the MQTT rules: `+` matches one level and `#` the rest, each alone in its
//! level, `#` last; a filter starting with `+` or `#` does not match topics starting with `$`. A rule
//! may have several filters (`FROM "a/#", "b/+/c"`) and events. Each is a quoted SQL name, so `/`,
//! `+`, `#`, `$` and spaces need no escaping and the text goes to the SQL parser as written; a `"`
//! inside a filter is written `""`. Single quotes work too; an unquoted filter with `/`, `+` or `#`
//! is a syntax error that says to quote it. Events:
//!
//! | source | when |
//! |---|---|
//! | `$events/client_connected` | a client completed CONNECT |
//! | `$events/client_disconnected` | a client's connection ended |
//! | `$events/session_subscribed` | a session added a subscription |
//! | `$events/session_unsubscribed` | a session removed a subscription |
//! | `$events/message_dropped` | a message was dropped: for a subscriber (`reason` `queue_full`, `expired`, `offline` for QoS 0 to a disconnected client, `too_large`), or no subscription matched it (`no_subscribers`); `clientid` is the subscriber (the publisher for `no_subscribers`), `from_clientid` the publisher; `topic`, `payload`, `qos`, `retain`, `user_properties` are the message's |
//! | `$events/message_delivered` | a message went out to a subscriber (resends not counted): `clientid` is the subscriber, `from_clientid` the publisher, `qos` the QoS it went out with; `topic`, `payload`, `user_properties` are the message's |
//! | `$events/quarantined` | a client was put in quarantine |
//! | `$events/released` | a client was released from quarantine |
//! | `$events/silent` | no message on a watched filter (from a client, or on a topic) for longer than the rule's `silence` allows — a dead-man rule; fields `filter`, `key`, `last_seen` (ms), `silent_ms`, and `topic`, `clientid`, `payload` of the last message |
//!
//! ## Fields
//!
//! | field | value |
//! |---|---|
//! | `payload` | the payload parsed as JSON; a payload that is not JSON is a string if it is UTF-8, else bytes |
//! | `payload.a.b`, `payload.arr[0]`, `payload['odd key']` | a path into the JSON payload; `[-1]` is the last element |
//! | `topic` | the topic (for events, the topic the event is about, or empty) |
//! | `clientid`, `username`, `peerhost` | the client's identifier, user name and IP address |
//! | `qos`, `retain` | QoS (integer) and retain flag (boolean) of the PUBLISH |
//! | `timestamp` | when the message arrived or the event happened, milliseconds since the Unix epoch |
//! | `user_properties`, `user_properties.k` | MQTT 5 user properties as an object, or one of them (the first if repeated) |
//! | `content_type` | MQTT 5 content type |
//! | `event` | the event's name (`client_connected`…), NULL for messages |
//! | `win.count`, `win.avg`, `win.min`, `win.max`, `win.sum`, `win.secs` | for a rule with a `window`, the statistics of its field over the last `secs` seconds on this topic, this message included; NULL otherwise |
//! | any other name | in rules on `$events`, the event's own field of that name (and a path into it) |
//!
//! A field or path that is absent is NULL, never an error. In rules on `$events` only, an unknown name
//! is an event field; elsewhere it is a parse error, which catches typos. `clientid`, `username`,
//! `peerhost`, `content_type` and `event` fall back to the event's field of the same name when the
//! input does not set them. The payload is parsed only if the rule reads it, at most once per
//! evaluation, and only as far as the rule's paths go: the members a rule does not read are checked
//! but not kept. Names in a path are case-sensitive; `` `backquotes` `` quote odd names.
//!
//! ## Literals
//!
//! `42` and `-7` (64-bit integers), `2.5` and `1e3` (floats), `'text'` (with `''` for a quote),
//! `true`, `false`, `null`. As in EMQX, `"text"` in an expression is a string too, not a column.
//!
//! ## Operators, loosest first
//!
//! | operators | meaning |
//! |---|---|
//! | `OR` | logical or |
//! | `AND` | logical and |
//! | `NOT` | logical not |
//! | `IS [NOT] NULL`, `IS [NOT] TRUE`, `IS [NOT] FALSE` | tests |
//! | `[NOT] LIKE p [ESCAPE c]`, `[NOT] ILIKE p` | pattern match |
//! | `=` `<>` `!=` `<` `<=` `>` `>=`, `[NOT] BETWEEN a AND b`, `[NOT] IN (…)` | comparisons |
//! | `+` `-` | addition, subtraction |
//! | `*` `/` `%` `\|\|` | multiplication, division, remainder, string concatenation |
//! | `-` (unary) | negation |
//!
//! plus parentheses, `CASE WHEN c THEN v [WHEN …] [ELSE v] END`, `CASE x WHEN v THEN r … END` and
//! `CAST(x AS INT | FLOAT | TEXT | BOOLEAN)` (also `x::int`).
//!
//! - **Arithmetic**: two integers give an integer (`7 / 2` is `3`, truncating toward zero; `-7 % 3` is
//!   `-1`); an integer and a float give a float (`7 / 2.0` is `3.5`). Division or remainder by zero is
//!   an [`EvalError`], and so is integer overflow. Numbers and strings do not mix (`'5' + 1` is an
//!   error; use `int('5') + 1`).
//! - **Comparison**: integers and floats compare by value (`1 = 1.0`); strings byte by byte; booleans
//!   `false < true`; arrays and objects only for equality. Values of different types are never equal
//!   (`'1' = 1` is false) and cannot be ordered (`'1' < 1` is an error).
//! - **`||`** writes numbers and booleans as JSON does (`'t=' || 2.0` is `'t=2.0'`).
//! - **LIKE**: `%` matches any run of characters, `_` one character; the whole string must match;
//!   case-sensitive (`ILIKE` is not).
//!
//! ## NULL
//!
//! SQL's three-valued logic. Any operator with a NULL operand gives NULL (`NULL = NULL` is NULL; use
//! `IS NULL`), except the `IS` tests, which are always true or false, and `AND` and `OR`:
//! `false AND NULL` is false, `true OR NULL` is true, and otherwise NULL wins. `NOT NULL` is NULL.
//! When the left side of `AND`/`OR` decides, the right side is not evaluated (its errors do not
//! happen), and `CASE` evaluates only the branch it picks. `x IN (1, NULL)` is true if `x = 1`, else NULL. A WHERE that is
//! NULL rejects the input like false; a `CASE WHEN` that is NULL does not match. Functions return NULL
//! when a required argument is NULL, except `coalesce`, `concat` (skips NULLs), `is_*`, `json_encode`
//! (gives `'null'`) and `least`/`greatest` (skip NULLs).
//!
//! ## Output
//!
//! The output is a JSON object with one member per column. `*` adds every field: `payload` (parsed
//! JSON, text, or base64 for bytes), `topic`, `clientid`, `username`, `peerhost`, `qos`, `retain`,
//! `timestamp`, `user_properties`, `content_type` (NULL when absent), and for events `event` and the
//! event's own fields. Columns after `*` may replace its members.
//!
//! A column without `AS` is named after the last name of its path (`payload.temp` → `temp`,
//! `payload.a.b` → `b`), after the field (`clientid` → `clientid`), else after the expression as
//! written (`abs(payload.x)`, `payload.arr[0]`). Two columns with the same name are a parse error.
//! Floats that are not finite are output as `null`, bytes as base64 text.
//!
//! ## Functions
//!
//! Unknown names and wrong numbers of arguments are errors when the rule is parsed. A literal regular
//! expression, `get` path or time unit is checked and prepared then too.
//!
//! **Math** (integer in, integer out where the result is whole):
//! - `abs(x)`; `ceil(x)`, `floor(x)`, `round(x)` → integer; `round(x, n)` → `n` decimals (halves away
//!   from zero; negative `n` rounds to tens, hundreds…).
//! - `sqrt(x)`, `exp(x)`, `ln(x)`, `log10(x)` → float (domain errors for negative or zero input).
//! - `power(x, y)` (also `pow`): integer when both are integers, `y ≥ 0` and it fits, else float.
//! - `mod(x, y)`: as `x % y`.
//! - `least(x, …)`, `greatest(x, …)`: smallest / greatest argument, NULLs skipped.
//!
//! **Strings** (positions count characters, from 1):
//! - `lower(s)`, `upper(s)`, `trim(s)`, `ltrim(s)`, `rtrim(s)`.
//! - `length(s)`: characters (bytes for bytes, members for arrays and objects).
//! - `substr(s, start[, len])` (also `substring`, and `SUBSTRING(s FROM start FOR len)`): as in SQL,
//!   positions before 1 count toward `len` (`substr('hello', 0, 3)` is `'he'`).
//! - `concat(x, …)`: every argument as text, NULLs skipped.
//! - `replace(s, from, to)`: every occurrence.
//! - `split(s, sep)` → array of strings (empty parts kept).
//! - `contains(s, x)`: substring test; for an array, whether an element equals `x`.
//! - `startswith(s, prefix)`, `endswith(s, suffix)`.
//! - `regex_match(s, re)`: whether the regular expression matches somewhere in `s` (anchor with
//!   `^…$`); `regex_replace(s, re, replacement)`: every match replaced, `$1` for groups. Syntax of the
//!   `regex` crate: no look-around or backreferences, linear time.
//!
//! **Time** (units: `'second'`, `'millisecond'` (default), `'microsecond'`, `'nanosecond'`):
//! - `now_timestamp([unit])` → integer; `now_rfc3339([unit])` → text. "Now" is [`Input::now_ms`].
//! - `unix_ts_to_rfc3339(ts[, unit])` (also `format_time`) → RFC 3339 text in UTC, e.g.
//!   `2024-05-01T12:00:00.25Z`.
//! - `rfc3339_to_unix_ts(s[, unit])` → integer.
//!
//! **JSON**:
//! - `json_decode(s)`: parse JSON text (an error if it is not JSON); `json_encode(x)`: JSON text.
//! - `get(x, 'a.b.0'[, default])`: path into an object or array (numbers index arrays, negative
//!   ones from the end), `default` (or NULL) when absent.
//! - `map_get(key, map[, default])`: one member of an object.
//!
//! **Topics**: `topic_level(topic, n)`: the `n`th level, from 1 (NULL beyond the last);
//! `topic_levels(topic)`: the number of levels.
//!
//! **Bytes**: `base64_encode(x)`, `hex_encode(x)` → text; `base64_decode(s)`, `hex_decode(s)` → text
//! if the bytes are UTF-8, else bytes; `byte_size(x)`: length in bytes. Given `payload` itself, these
//! read the payload as published, not re-encoded from JSON.
//!
//! **Types**: `is_null(x)`, `is_not_null(x)`, `is_num(x)`, `is_str(x)`, `is_bool(x)`, `is_array(x)`,
//! `is_map(x)`; `coalesce(x, …)`: the first argument that is not NULL; conversions `str(x)`, `int(x)`
//! (truncates floats; parses `'42'` and `'4.2'`), `float(x)`, `bool(x)` (`true`/`false`, `1`/`0`,
//! `'true'`/`'false'`), errors when the value does not convert.
//!
//! # Example
//!
//! ```
//! use m2m_rules::{Input, RuleQuery, Template};
//!
//! let rule = RuleQuery::parse(
//!     r#"SELECT 'on' AS state, topic_level(topic, 2) AS post
//!        FROM "building/+/presence" WHERE payload.person = true"#,
//! )?;
//! let input = Input::message("building/lamp-7/presence", br#"{"person": true}"#, 1_700_000_000_000);
//! let output = rule.evaluate(&input)?.expect("a person is present");
//! assert_eq!(output["state"], "on");
//!
//! let topic = Template::parse("building/${post}/lamp/set")?.render(&output);
//! assert_eq!(topic, "building/lamp-7/lamp/set");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod compile;
mod error;
mod eval;
mod func;
mod input;
mod like;
mod payload;
mod query;
mod source;
mod template;
mod value;

#[cfg(test)]
mod tests;

pub use error::{EvalError, Position, RuleError, TemplateError};
pub use input::Input;
pub use query::{Output, RuleQuery};
pub use source::{EventKind, Source};
pub use template::Template;

/// The longest rule text accepted, in bytes.
pub const MAX_RULE_LEN: usize = 16 * 1024;

/// How deeply expressions may nest (operators, function calls, parentheses).
pub const MAX_DEPTH: usize = 128;
