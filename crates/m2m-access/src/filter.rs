//! [`RuleFilter`]: a rule's topic filter with `%c`/`%u` placeholders, compiled into levels once, and
//! the three relations a check needs: it matches a topic, it covers a subscription, it overlaps one.

use std::fmt;
use std::str::FromStr;

use m2m_topic::{TopicFilter, TopicName};

use crate::AccessError;

/// The topic filter of a [`Rule`](crate::Rule): an MQTT topic filter in which `%c` stands for the
/// client id and `%u` for the username, anywhere inside a level (`devices/%c/#`, `users/%u-inbox`).
///
/// Invariants, checked at construction: with the placeholders taken as literal text the string is a
/// valid [`TopicFilter`] (`+` and `#` only as whole levels, `#` last, no U+0000, at most 65 535
/// bytes); it does not start with `$share/` (a shared subscription is checked on its inner filter,
/// so a rule naming one would never apply); it does not start or end with whitespace (the one-line
/// rule form could not express that). A `%` not followed by `c` or `u` is literal text; there is no
/// escape, so a rule cannot name a literal `%c`.
///
/// The filter is split into levels once, here; a check compares the substituted values in place,
/// without building the substituted string.
///
/// ```
/// use m2m_access::RuleFilter;
///
/// let filter: RuleFilter = "users/%u-inbox/#".parse()?;
/// assert!(filter.has_placeholders());
/// assert!("a/#/b".parse::<RuleFilter>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFilter {
    /// The filter as written, placeholders included.
    text: TopicFilter,
    /// `text` split at `/`; never empty.
    levels: Box<[Level]>,
    /// Whether some level holds `%c`.
    uses_client_id: bool,
    /// Whether some level holds `%u`.
    uses_username: bool,
    /// The index of the first level holding a placeholder (`levels.len()` if none): a deny rule whose
    /// values cannot be substituted safely compares only the levels before it.
    first_template: usize,
    /// The placeholder the filter starts with, if any: a value starting with `$` there would move the
    /// rule into the `$` topics, which wildcards deliberately do not reach.
    leading: Option<Placeholder>,
}

/// `%c` or `%u`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    ClientId,
    Username,
}

/// One part of a level that holds placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(Box<str>),
    Value(Placeholder),
}

/// One level of a compiled filter.
///
/// A `Literal` or `Template` never contains `+`, `#` or `/` (filter validation forbids the first two
/// inside a level, and a template is only compared after its values were checked to hold none of
/// them), so it can never equal a wildcard level of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(Box<str>),
    Template(Box<[Piece]>),
    Plus,
    Hash,
}

impl Level {
    fn compile(level: &str) -> Self {
        match level {
            "+" => return Self::Plus,
            "#" => return Self::Hash,
            _ => {}
        }
        let bytes = level.as_bytes();
        let mut pieces = Vec::new();
        let (mut text_start, mut i) = (0, 0);
        while i + 1 < bytes.len() {
            let placeholder = match (bytes[i], bytes[i + 1]) {
                (b'%', b'c') => Placeholder::ClientId,
                (b'%', b'u') => Placeholder::Username,
                _ => {
                    i += 1;
                    continue;
                }
            };
            // `%`, `c` and `u` are ASCII, so `i` and `i + 2` are char boundaries.
            if text_start < i {
                pieces.push(Piece::Text(level[text_start..i].into()));
            }
            pieces.push(Piece::Value(placeholder));
            i += 2;
            text_start = i;
        }
        if pieces.is_empty() {
            return Self::Literal(level.into());
        }
        if text_start < level.len() {
            pieces.push(Piece::Text(level[text_start..].into()));
        }
        Self::Template(pieces.into_boxed_slice())
    }

    fn is_empty_or_plus(&self) -> bool {
        match self {
            Self::Literal(text) => text.is_empty(),
            Self::Plus => true,
            Self::Template(_) | Self::Hash => false,
        }
    }

    fn is_wildcard(&self) -> bool {
        matches!(self, Self::Plus | Self::Hash)
    }

    /// Whether the level, substituted, starts with `$`. A template starting with a placeholder never
    /// does: [`RuleFilter::bind`] refuses values starting with `$` in that position.
    fn starts_with_dollar(&self) -> bool {
        match self {
            Self::Literal(text) => text.starts_with('$'),
            Self::Template(pieces) => {
                matches!(pieces.first(), Some(Piece::Text(text)) if text.starts_with('$'))
            }
            Self::Plus | Self::Hash => false,
        }
    }
}

impl RuleFilter {
    /// Validates and compiles `filter`.
    ///
    /// # Errors
    /// [`AccessError::InvalidFilter`] if it is not a valid MQTT topic filter (placeholders taken as
    /// literal text), [`AccessError::SharedSubscription`] if it starts with `$share/`,
    /// [`AccessError::EdgeWhitespace`] if it starts or ends with whitespace.
    pub fn new(filter: &str) -> Result<Self, AccessError> {
        let text = TopicFilter::try_from(filter)
            .map_err(|source| AccessError::InvalidFilter { filter: filter.to_owned(), source })?;
        if filter.starts_with("$share/") {
            return Err(AccessError::SharedSubscription(filter.to_owned()));
        }
        if filter.starts_with(char::is_whitespace) || filter.ends_with(char::is_whitespace) {
            return Err(AccessError::EdgeWhitespace(filter.to_owned()));
        }
        let levels: Box<[Level]> = text.levels().map(Level::compile).collect();
        let holds = |p: Placeholder| {
            move |level: &Level| match level {
                Level::Template(pieces) => pieces.contains(&Piece::Value(p)),
                _ => false,
            }
        };
        let leading = match levels.first() {
            Some(Level::Template(pieces)) => match pieces.first() {
                Some(Piece::Value(p)) => Some(*p),
                _ => None,
            },
            _ => None,
        };
        Ok(Self {
            uses_client_id: levels.iter().any(holds(Placeholder::ClientId)),
            uses_username: levels.iter().any(holds(Placeholder::Username)),
            first_template: levels
                .iter()
                .position(|l| matches!(l, Level::Template(_)))
                .unwrap_or(levels.len()),
            leading,
            levels,
            text,
        })
    }

    /// The filter as written, placeholders included.
    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// Whether the filter holds `%c` or `%u`.
    pub fn has_placeholders(&self) -> bool {
        self.uses_client_id || self.uses_username
    }

    /// Whether the filter holds `%c`.
    pub fn uses_client_id(&self) -> bool {
        self.uses_client_id
    }

    /// Whether the filter holds `%u`.
    pub fn uses_username(&self) -> bool {
        self.uses_username
    }

    /// How this filter applies to the client `ident` (see the crate docs, "Substitution").
    #[inline]
    pub(crate) fn bind<'f, 'a>(&'f self, ident: &Identity<'a>) -> Binding<'f, 'a> {
        if !self.has_placeholders() {
            return Binding::Exact(Bound { levels: &self.levels, open_end: false, subst: Subst::default() });
        }
        let mut unsafe_value = false;
        for (used, value, placeholder) in [
            (self.uses_client_id, ident.client_id, Placeholder::ClientId),
            (self.uses_username, ident.username, Placeholder::Username),
        ] {
            if !used {
                continue;
            }
            match value {
                Value::Missing => return Binding::Missing,
                Value::Unsafe => unsafe_value = true,
                Value::Safe(v) => {
                    unsafe_value |= self.leading == Some(placeholder) && v.starts_with('$');
                }
            }
        }
        if unsafe_value {
            Binding::Unsafe(Bound {
                levels: &self.levels[..self.first_template],
                open_end: true,
                subst: Subst::default(),
            })
        } else {
            let subst = Subst { client_id: ident.client_id.text(), username: ident.username.text() };
            Binding::Exact(Bound { levels: &self.levels, open_end: false, subst })
        }
    }
}

impl FromStr for RuleFilter {
    type Err = AccessError;

    fn from_str(s: &str) -> Result<Self, AccessError> {
        Self::new(s)
    }
}

impl TryFrom<&str> for RuleFilter {
    type Error = AccessError;

    fn try_from(s: &str) -> Result<Self, AccessError> {
        Self::new(s)
    }
}

impl fmt::Display for RuleFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A placeholder's value for one client, classified once per check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    /// The client has none (no username).
    Missing,
    /// Empty, or holds `+`, `#` or `/`: substituted, it would change the shape of the filter.
    Unsafe,
    /// Usable as text inside a level.
    Safe(&'a str),
}

impl<'a> Value<'a> {
    pub(crate) fn classify(value: Option<&'a str>) -> Self {
        match value {
            None => Self::Missing,
            Some(v) if v.is_empty() || v.bytes().any(|b| matches!(b, b'+' | b'#' | b'/')) => Self::Unsafe,
            Some(v) => Self::Safe(v),
        }
    }

    fn text(self) -> &'a str {
        match self {
            Self::Safe(v) => v,
            Self::Missing | Self::Unsafe => "",
        }
    }
}

/// The placeholder values of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity<'a> {
    pub(crate) client_id: Value<'a>,
    pub(crate) username: Value<'a>,
}

/// The values a template level is compared with; only read for placeholders checked to be safe.
#[derive(Debug, Clone, Copy, Default)]
struct Subst<'a> {
    client_id: &'a str,
    username: &'a str,
}

/// How a filter applies to one client.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Binding<'f, 'a> {
    /// The filter uses `%u` and the client has no username: the rule does not apply.
    Missing,
    /// A value the filter uses is unsafe; the [`Bound`] is the filter cut before its first level
    /// holding a placeholder, open at the end: a superset of every substitution.
    Unsafe(Bound<'f, 'a>),
    /// Every value the filter uses is safe; the [`Bound`] is the substituted filter.
    Exact(Bound<'f, 'a>),
}

/// A filter with its placeholder values: the pattern one check compares against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bound<'f, 'a> {
    levels: &'f [Level],
    /// After `levels`, any number of further levels (zero included) match, with no exception for
    /// `$` topics: the pattern stands for every way the cut-off levels could have been substituted.
    open_end: bool,
    subst: Subst<'a>,
}

/// The unread part of a topic name or filter, read level by level in place: a literal level is
/// compared as a prefix of what remains, without splitting the string first.
#[derive(Debug, Clone, Copy)]
struct Cursor<'s>(
    /// `None` once the last level was read; `Some("")` is an empty last level.
    Option<&'s str>,
);

/// The kind of the next level of a subscription filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Plus,
    Hash,
    Other,
}

impl<'s> Cursor<'s> {
    fn new(s: &'s str) -> Self {
        Self(Some(s))
    }

    fn is_done(self) -> bool {
        self.0.is_none()
    }

    /// The kind of the next level, `None` if there is none. In a valid filter a level starting with
    /// `+` or `#` is exactly that wildcard.
    fn peek(self) -> Option<Next> {
        self.0.map(|s| match s.as_bytes().first() {
            Some(b'+') => Next::Plus,
            Some(b'#') => Next::Hash,
            _ => Next::Other,
        })
    }

    /// Moves past the next level; `false` if there is none.
    fn skip(&mut self) -> bool {
        let Some(s) = self.0 else { return false };
        self.0 = s.bytes().position(|b| b == b'/').map(|slash| &s[slash + 1..]);
        true
    }

    /// Moves past the next level if it equals the (literal or template) `level` with `subst`.
    ///
    /// A template's parts hold no `/` (values were checked), so stripping them one by one from
    /// what remains stays inside the level, and the level must end right after them.
    #[inline]
    fn eat(&mut self, level: &Level, subst: &Subst<'_>) -> bool {
        let Some(mut rest) = self.0 else { return false };
        match level {
            Level::Literal(text) => match rest.strip_prefix(&**text) {
                Some(after) => rest = after,
                None => return false,
            },
            Level::Template(pieces) => {
                for piece in pieces.iter() {
                    let part = match piece {
                        Piece::Text(text) => &**text,
                        Piece::Value(Placeholder::ClientId) => subst.client_id,
                        Piece::Value(Placeholder::Username) => subst.username,
                    };
                    match rest.strip_prefix(part) {
                        Some(after) => rest = after,
                        None => return false,
                    }
                }
            }
            Level::Plus | Level::Hash => return false,
        }
        match rest.as_bytes().first() {
            None => self.0 = None,
            Some(b'/') => self.0 = Some(&rest[1..]),
            Some(_) => return false,
        }
        true
    }
}

impl Bound<'_, '_> {
    /// Whether the pattern matches `topic` (MQTT 5.0 §4.7): what a PUBLISH to `topic` needs.
    pub(crate) fn matches(&self, topic: &TopicName) -> bool {
        if topic.is_system() && self.levels.first().is_some_and(Level::is_wildcard) {
            return false;
        }
        let mut rest = Cursor::new(topic.as_str());
        for level in self.levels {
            let read = match level {
                Level::Hash => return true,
                Level::Plus => rest.skip(),
                _ => rest.eat(level, &self.subst),
            };
            if !read {
                return false;
            }
        }
        self.open_end || rest.is_done()
    }

    /// Whether every topic `sub` matches is matched by the pattern (pattern ⊇ `sub`).
    ///
    /// Level by level: `#` covers the rest, `+` covers any level but `#`, a literal covers only
    /// itself; because no topic is empty, `+/#` also covers `#` and `/+/#` covers `/#`. `sub`
    /// reaches `$` topics only if its first level is a `$` literal, and then a pattern starting with
    /// a wildcard does not cover it.
    pub(crate) fn covers(&self, sub: &TopicFilter) -> bool {
        if sub.starts_with('$') && self.levels.first().is_some_and(Level::is_wildcard) {
            return false;
        }
        // The level-by-level walk below treats "no level" and "one empty level" as topics; neither
        // is (a topic name is a non-empty string), so it misses two covers: `+/#` covers `#`, and
        // `/+/#` (or `+/+/#`) covers `/#`. An open end acts as `/#`.
        match (sub.as_str(), self.levels, self.open_end) {
            ("#", [Level::Plus, Level::Hash], _) | ("#", [Level::Plus], true) => return true,
            ("/#", [first, Level::Plus, Level::Hash], _) | ("/#", [first, Level::Plus], true)
                if first.is_empty_or_plus() =>
            {
                return true;
            }
            _ => {}
        }
        let mut rest = Cursor::new(sub.as_str());
        for level in self.levels {
            let read = match level {
                Level::Hash => return true,
                Level::Plus => matches!(rest.peek(), Some(Next::Plus | Next::Other)) && rest.skip(),
                // A literal never equals `+` or `#` (see `Level`).
                _ => rest.eat(level, &self.subst),
            };
            if !read {
                return false;
            }
        }
        self.open_end || rest.is_done()
    }

    /// Whether some topic is matched both by the pattern and by `sub`.
    ///
    /// Level by level: `#` on either side overlaps whatever follows (it matches zero levels too),
    /// `+` overlaps any level, two literals overlap if equal; but `+` and `/#` do not overlap, as
    /// they share only the empty string. A `$` topic is matched only by filters whose first level is
    /// that `$` literal, so a wildcard first level does not overlap a `$` one.
    pub(crate) fn overlaps(&self, sub: &TopicFilter) -> bool {
        if let Some(first) = self.levels.first() {
            if (first.is_wildcard() && sub.starts_with('$'))
                || (first.starts_with_dollar() && sub.starts_with(['+', '#']))
            {
                return false;
            }
        }
        // `+` and `/#` share only the empty string, which is no topic (see `covers`).
        match (sub.as_str(), self.levels, self.open_end) {
            ("/#", [Level::Plus], false) => return false,
            ("+", [Level::Literal(first), Level::Hash], _) | ("+", [Level::Literal(first)], true)
                if first.is_empty() =>
            {
                return false;
            }
            _ => {}
        }
        let mut rest = Cursor::new(sub.as_str());
        for level in self.levels {
            let Some(next) = rest.peek() else {
                return matches!(level, Level::Hash);
            };
            let read = match (level, next) {
                (Level::Hash, _) | (_, Next::Hash) => return true,
                (Level::Plus, _) | (_, Next::Plus) => rest.skip(),
                _ => rest.eat(level, &self.subst),
            };
            if !read {
                return false;
            }
        }
        self.open_end || matches!(rest.peek(), None | Some(Next::Hash))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::test_support;

    fn rule_filter(s: &str) -> RuleFilter {
        RuleFilter::new(s).unwrap()
    }

    fn ident<'a>(client_id: &'a str, username: Option<&'a str>) -> Identity<'a> {
        Identity { client_id: Value::classify(Some(client_id)), username: Value::classify(username) }
    }

    fn exact<'f>(filter: &'f RuleFilter, ident: &Identity<'f>) -> Bound<'f, 'f> {
        match filter.bind(ident) {
            Binding::Exact(bound) => bound,
            other => panic!("{filter}: expected an exact binding, got {other:?}"),
        }
    }

    fn widened<'f>(filter: &'f RuleFilter, ident: &Identity<'f>) -> Bound<'f, 'f> {
        match filter.bind(ident) {
            Binding::Unsafe(bound) => bound,
            other => panic!("{filter}: expected an unsafe binding, got {other:?}"),
        }
    }

    fn topic(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    fn sub(s: &str) -> TopicFilter {
        TopicFilter::try_from(s).unwrap()
    }

    const NOBODY: Identity<'static> = Identity { client_id: Value::Safe("c1"), username: Value::Safe("u1") };

    fn covers(rule: &str, subscription: &str) -> bool {
        exact(&rule_filter(rule), &NOBODY).covers(&sub(subscription))
    }

    fn overlaps(rule: &str, subscription: &str) -> bool {
        exact(&rule_filter(rule), &NOBODY).overlaps(&sub(subscription))
    }

    #[test]
    fn placeholders_are_found_anywhere_inside_a_level() {
        let filter = rule_filter("users/%u-inbox/x%cy/%c%u");
        assert!(filter.uses_client_id() && filter.uses_username());
        assert_eq!(filter.first_template, 1);
        assert_eq!(filter.leading, None);
        assert_eq!(
            filter.levels[1],
            Level::Template(
                [Piece::Value(Placeholder::Username), Piece::Text("-inbox".into())].into_iter().collect()
            )
        );
        assert_eq!(rule_filter("%c/#").leading, Some(Placeholder::ClientId));
        assert!(!rule_filter("sensors/+/temp").has_placeholders());
    }

    #[test]
    fn a_percent_sign_not_followed_by_c_or_u_is_literal_text() {
        for s in ["a/100%", "a/%x", "%", "a/%%"] {
            let filter = rule_filter(s);
            assert!(!filter.has_placeholders(), "{s}");
            assert!(exact(&filter, &NOBODY).matches(&topic(s)), "{s}");
        }
        // No escape: `%%c` is a literal `%` followed by the client id.
        assert!(exact(&rule_filter("a/%%c"), &NOBODY).matches(&topic("a/%c1")));
    }

    #[test]
    fn templates_compare_the_substituted_level_without_building_it() {
        let filter = rule_filter("users/%u-inbox/%c.%u");
        let bound = exact(&filter, &ident("dev", Some("ann")));
        assert!(bound.matches(&topic("users/ann-inbox/dev.ann")));
        assert!(!bound.matches(&topic("users/ann-inbox/dev.ann2")));
        assert!(!bound.matches(&topic("users/ann-inbo/dev.ann")));
        assert!(!bound.matches(&topic("users/bob-inbox/dev.ann")));
        assert!(!bound.matches(&topic("users/ann-inbox/dev.ann/x")));
    }

    #[test]
    fn invalid_filters_are_rejected_with_the_topic_error_as_source() {
        assert_eq!(
            RuleFilter::new("a/#/b"),
            Err(AccessError::InvalidFilter {
                filter: "a/#/b".into(),
                source: m2m_topic::TopicError::InvalidWildcard
            })
        );
        assert!(matches!(RuleFilter::new("a/%c+"), Err(AccessError::InvalidFilter { .. })));
        assert!(matches!(RuleFilter::new(""), Err(AccessError::InvalidFilter { .. })));
        assert_eq!(RuleFilter::new("$share/g/a"), Err(AccessError::SharedSubscription("$share/g/a".into())));
        assert_eq!(RuleFilter::new(" a"), Err(AccessError::EdgeWhitespace(" a".into())));
        assert!(RuleFilter::new("$share").is_ok(), "a plain one-level filter");
        assert!(RuleFilter::new("Accounts payable/#").is_ok(), "inner whitespace is topic text");
    }

    #[test]
    fn values_that_would_change_the_shape_of_the_filter_are_unsafe() {
        for v in ["", "a/b", "+", "#", "a/#", "x+"] {
            assert_eq!(Value::classify(Some(v)), Value::Unsafe, "{v:?}");
        }
        assert_eq!(Value::classify(None), Value::Missing);
        assert_eq!(Value::classify(Some("$x")), Value::Safe("$x"));
        // `$` is only unsafe where it would start the first level.
        let dollar = ident("$SYS", None);
        assert!(matches!(rule_filter("%c/#").bind(&dollar), Binding::Unsafe(_)));
        assert!(matches!(rule_filter("a/%c/#").bind(&dollar), Binding::Exact(_)));
        assert!(matches!(rule_filter("x%c/#").bind(&dollar), Binding::Exact(_)));
    }

    #[test]
    fn a_username_placeholder_without_a_username_is_missing() {
        let anonymous = ident("c1", None);
        assert!(matches!(rule_filter("users/%u/#").bind(&anonymous), Binding::Missing));
        // Missing wins over an unsafe client id: the rule does not apply at all.
        assert!(matches!(rule_filter("%c/%u").bind(&ident("a/b", None)), Binding::Missing));
        assert!(matches!(rule_filter("devices/%c").bind(&anonymous), Binding::Exact(_)));
    }

    #[test]
    fn an_unsafe_binding_keeps_the_levels_before_the_first_placeholder_and_opens_the_end() {
        let filter = rule_filter("devices/+/%c/config");
        let bound = widened(&filter, &ident("a/b", None));
        for t in ["devices/x", "devices/x/a/b/config", "devices/x/y"] {
            assert!(bound.matches(&topic(t)), "{t}");
        }
        assert!(!bound.matches(&topic("other/x/a")));
        assert!(bound.overlaps(&sub("devices/#")) && bound.overlaps(&sub("+/x/y/z")));
        assert!(!bound.overlaps(&sub("other/#")));
        // Cut before the first level, it matches every topic, `$` topics included.
        let filter = rule_filter("%c/#");
        let all = widened(&filter, &ident("", None));
        assert!(all.matches(&topic("$SYS/x")) && all.overlaps(&sub("$SYS/#")) && all.covers(&sub("#")));
    }

    #[test]
    fn publish_matching_follows_mqtt() {
        let bound = |f: &str, t: &str| exact(&rule_filter(f), &NOBODY).matches(&topic(t));
        assert!(bound("a/#", "a"));
        assert!(bound("a/+", "a/"));
        assert!(!bound("a/+", "a"));
        assert!(!bound("#", "$SYS/x"));
        assert!(!bound("+/x", "$SYS/x"));
        assert!(bound("$SYS/#", "$SYS/x"));
        assert!(bound("devices/%c/#", "devices/c1/t"));
        assert!(!bound("devices/%c/#", "devices/c2/t"));
    }

    #[test]
    fn cover_follows_the_examples_of_the_spec() {
        for (rule, subscription) in [
            ("a/#", "a/+/b"),
            ("a/#", "a/#"),
            ("a/#", "a"),
            ("#", "#"),
            ("#", "a/+/#"),
            ("+/#", "#"),
            ("/+/#", "/#"),
            ("+/+", "a/+"),
            ("a/+", "a/b"),
            ("$SYS/#", "$SYS/#"),
            ("$SYS/+", "$SYS/x"),
            ("devices/%c/#", "devices/c1/+/t"),
            ("users/%u", "users/u1"),
        ] {
            assert!(covers(rule, subscription), "{rule} should cover {subscription}");
        }
        for (rule, subscription) in [
            ("a/+", "a/#"),
            ("a/+", "a"),
            ("a/b", "a/+"),
            ("a/+/#", "a/#"),
            ("a", "a/#"),
            ("a/b", "a/b/c"),
            ("#", "$SYS/#"),
            ("#", "$SYS"),
            ("+/#", "$SYS/x"),
            ("+", "$x"),
            ("$SYS/#", "#"),
            ("devices/%c/#", "devices/+/t"),
            ("devices/%c/#", "devices/#"),
            ("users/%u", "users/c1"),
        ] {
            assert!(!covers(rule, subscription), "{rule} should not cover {subscription}");
        }
    }

    #[test]
    fn overlap_follows_the_examples_of_the_spec() {
        for (rule, subscription) in [
            ("a/b", "a/#"),
            ("a/b", "+/b"),
            ("a/b", "#"),
            ("a/#", "a"),
            ("a", "a/#"),
            ("+/+", "a/#"),
            ("a/+/c", "+/b/+"),
            ("$SYS/#", "$SYS/+"),
            ("$SYS/x", "$SYS/#"),
            ("devices/%c/#", "devices/+"),
            ("devices/%c/#", "#"),
        ] {
            assert!(overlaps(rule, subscription), "{rule} should overlap {subscription}");
        }
        for (rule, subscription) in [
            ("a/b", "a/c"),
            ("a/b", "a"),
            ("a/b", "a/b/c"),
            ("a/+", "a/b/c"),
            ("#", "$SYS/x"),
            ("+/x", "$SYS/x"),
            ("$SYS/#", "#"),
            ("$SYS/x", "+/x"),
            ("+", "/#"),
            ("/#", "+"),
            ("devices/%c/#", "devices/c2/#"),
        ] {
            assert!(!overlaps(rule, subscription), "{rule} should not overlap {subscription}");
        }
    }

    /// Every topic over `alphabet` with 1 to `max_levels` levels.
    fn universe(alphabet: &[String], max_levels: usize) -> Vec<TopicName> {
        let mut all: Vec<Vec<&str>> = vec![vec![]];
        let mut topics = Vec::new();
        for _ in 0..max_levels {
            all = all
                .iter()
                .flat_map(|prefix| {
                    alphabet.iter().map(move |level| {
                        let mut next = prefix.clone();
                        next.push(level.as_str());
                        next
                    })
                })
                .collect();
            topics.extend(all.iter().filter_map(|levels| TopicName::try_from(levels.join("/")).ok()));
        }
        topics
    }

    /// The literal levels of both filters plus two fresh ones (one a `$` level) and the empty level:
    /// enough for a witness of every non-cover and every overlap.
    fn alphabet(filters: &[&str]) -> Vec<String> {
        let mut levels: Vec<String> = filters
            .iter()
            .flat_map(|f| f.split('/'))
            .filter(|l| *l != "+" && *l != "#")
            .map(str::to_owned)
            .chain(["".into(), "fresh".into(), "$fresh".into()])
            .collect();
        levels.sort();
        levels.dedup();
        levels
    }

    /// Every valid filter of up to 3 levels over `a`, the empty level, `$s` and `+`, with and without
    /// a final `#`.
    fn small_filters() -> Vec<String> {
        let mut prefixes: Vec<Vec<&str>> = vec![vec![]];
        let mut filters = Vec::new();
        for len in 0..=3 {
            if len > 0 {
                prefixes = prefixes
                    .iter()
                    .flat_map(|p| {
                        ["a", "", "$s", "+"].into_iter().map(move |level| [p.as_slice(), &[level]].concat())
                    })
                    .collect();
            }
            for prefix in &prefixes {
                for hash in [false, true] {
                    let mut levels = prefix.clone();
                    if hash {
                        levels.push("#");
                    }
                    let text = levels.join("/");
                    if TopicFilter::try_from(text.as_str()).is_ok() {
                        filters.push(text);
                    }
                }
            }
        }
        filters
    }

    /// Cover and overlap are exact, checked for every pair of small filters against the sets of
    /// topics m2m-topic matches them with (a universe holding a witness for every pair: the filters'
    /// literals, a fresh plain and a fresh `$` level, up to 4 levels). So are the cut-off patterns of
    /// unsafe deny rules, which behave like the levels before the placeholder followed by `/#`.
    #[test]
    fn cover_and_overlap_are_exact_for_every_pair_of_small_filters() {
        let alphabet: Vec<String> = ["a", "", "$s", "fresh", "$fresh"].map(String::from).to_vec();
        let topics = universe(&alphabet, 4);
        let set_of = |f: &TopicFilter| -> Vec<bool> { topics.iter().map(|t| f.matches(t)).collect() };
        let subs: Vec<(TopicFilter, Vec<bool>)> = small_filters()
            .iter()
            .map(|f| {
                let f = sub(f);
                let set = set_of(&f);
                (f, set)
            })
            .collect();
        let covered = |s_set: &[bool], r_set: &[bool]| s_set.iter().zip(r_set).all(|(s, r)| !s || *r);
        let common = |s_set: &[bool], r_set: &[bool]| s_set.iter().zip(r_set).any(|(s, r)| *s && *r);
        let odd = ident("a/b", None);
        for (r, r_set) in &subs {
            let compiled = rule_filter(r);
            let bound = exact(&compiled, &NOBODY);
            for (t, in_r) in topics.iter().zip(r_set) {
                assert_eq!(bound.matches(t), *in_r, "{r} matches {t}");
            }
            for (s, s_set) in &subs {
                assert_eq!(bound.covers(s), covered(s_set, r_set), "{r} covers {s}");
                assert_eq!(bound.overlaps(s), common(s_set, r_set), "{r} overlaps {s}");
            }
            // `r/%c` for an unsafe client id is cut back to `r` with an open end, which is `r/#`.
            if !r.ends_with('#') {
                let with_placeholder = rule_filter(&format!("{r}/%c"));
                let cut = widened(&with_placeholder, &odd);
                let open_set = set_of(&sub(&format!("{r}/#")));
                for (s, s_set) in &subs {
                    assert_eq!(cut.covers(s), covered(s_set, &open_set), "{r}/%c cut covers {s}");
                    assert_eq!(cut.overlaps(s), common(s_set, &open_set), "{r}/%c cut overlaps {s}");
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// With safe values, the compiled filter behaves like m2m-topic's matching of the substituted
        /// text, for topics (publish), for cover and for overlap (checked over every topic of a
        /// universe that holds a witness whenever one exists).
        #[test]
        fn relations_agree_with_topic_matching_over_the_substituted_filter(
            rule in test_support::rule_filter_text(),
            subscription in test_support::filter(),
            client_id in prop::sample::select(&["a", "b", "xa"][..]),
            username in prop::sample::select(&["a", "b"][..]),
        ) {
            let filter = rule_filter(&rule);
            let ident = ident(client_id, Some(username));
            let bound = exact(&filter, &ident);
            let substituted = sub(&rule.replace("%c", client_id).replace("%u", username));
            let max_levels = substituted.levels().count().max(subscription.levels().count()) + 1;
            let topics = universe(&alphabet(&[&substituted, &subscription]), max_levels);
            let mut covered = true;
            let mut common = false;
            for t in &topics {
                prop_assert_eq!(bound.matches(t), substituted.matches(t), "{}", t);
                let (in_rule, in_sub) = (substituted.matches(t), subscription.matches(t));
                covered &= !in_sub || in_rule;
                common |= in_sub && in_rule;
            }
            prop_assert_eq!(bound.covers(&subscription), covered);
            prop_assert_eq!(bound.overlaps(&subscription), common);
        }

        /// A cut-off pattern (what a deny rule falls back to) contains every substitution of the
        /// filter, whatever the values, so it denies at least what the rule was written to deny.
        #[test]
        fn an_unsafe_binding_is_a_superset_of_every_substitution(
            rule in test_support::rule_filter_text(),
            client_id in prop::sample::select(&["a/b", "", "a/$fresh", "$fresh", "a"][..]),
            t in test_support::topic(),
        ) {
            let filter = rule_filter(&rule);
            if let Binding::Unsafe(bound) = filter.bind(&ident(client_id, Some(""))) {
                let substituted = rule.replace("%c", client_id).replace("%u", "");
                if let Ok(substituted) = TopicFilter::try_from(substituted) {
                    prop_assert!(!substituted.matches(&t) || bound.matches(&t));
                }
            }
        }

        #[test]
        fn cover_implies_overlap(
            rule in test_support::rule_filter_text(),
            subscription in test_support::filter(),
            client_id in prop::sample::select(&["a", "a/b", "", "$s"][..]),
            username in prop::option::of(prop::sample::select(&["b", "+"][..])),
        ) {
            let filter = rule_filter(&rule);
            if let Binding::Exact(bound) | Binding::Unsafe(bound) = filter.bind(&ident(client_id, username)) {
                prop_assert!(!bound.covers(&subscription) || bound.overlaps(&subscription));
            }
        }
    }
}
