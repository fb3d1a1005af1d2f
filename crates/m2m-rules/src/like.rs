//! `LIKE` patterns: `%` matches any run of characters, `_` exactly one, an escape character makes the
//! next one literal. Matching is linear-time backtracking over the last `%`, never exponential.

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// `%`
    Any,
    /// `_`
    One,
    Char(char),
}

/// A compiled `LIKE` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LikePattern {
    toks: Box<[Tok]>,
    /// `ILIKE`: the pattern is lowercased and so is the text before matching.
    case_insensitive: bool,
}

impl LikePattern {
    /// Compiles `pattern`. A trailing escape character matches itself.
    pub(crate) fn new(pattern: &str, escape: Option<char>, case_insensitive: bool) -> LikePattern {
        let mut toks = Vec::with_capacity(pattern.len());
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let tok = match c {
                c if Some(c) == escape => Tok::Char(chars.next().unwrap_or(c)),
                '%' => Tok::Any,
                '_' => Tok::One,
                c => Tok::Char(c),
            };
            // Consecutive `%` are one `%`.
            if !(tok == Tok::Any && toks.last() == Some(&Tok::Any)) {
                toks.push(tok);
            }
        }
        if case_insensitive {
            for tok in &mut toks {
                if let Tok::Char(c) = tok {
                    *c = fold(*c);
                }
            }
        }
        LikePattern { toks: toks.into(), case_insensitive }
    }

    /// Whether the whole of `text` matches.
    pub(crate) fn matches(&self, text: &str) -> bool {
        if self.case_insensitive {
            let folded: String = text.chars().map(fold).collect();
            self.matches_folded(&folded)
        } else {
            self.matches_folded(text)
        }
    }

    fn matches_folded(&self, text: &str) -> bool {
        let toks = &self.toks;
        // Byte offset into `text` (always on a character boundary) and index into `toks`.
        let (mut t, mut p) = (0, 0);
        // Where to resume after the last `%`: (pattern index after it, text offset it stands at).
        let mut star: Option<(usize, usize)> = None;
        while let Some(c) = text[t..].chars().next() {
            match toks.get(p) {
                Some(Tok::Any) => {
                    star = Some((p + 1, t));
                    p += 1;
                }
                Some(Tok::One) => {
                    t += c.len_utf8();
                    p += 1;
                }
                Some(Tok::Char(pc)) if *pc == c => {
                    t += c.len_utf8();
                    p += 1;
                }
                _ => match star {
                    // Let the last `%` swallow one more character and retry.
                    Some((sp, st)) => {
                        let skipped = text[st..].chars().next().map_or(1, char::len_utf8);
                        star = Some((sp, st + skipped));
                        p = sp;
                        t = st + skipped;
                    }
                    None => return false,
                },
            }
        }
        toks[p.min(toks.len())..].iter().all(|tok| *tok == Tok::Any)
    }
}

fn fold(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn like(text: &str, pattern: &str) -> bool {
        LikePattern::new(pattern, None, false).matches(text)
    }

    #[test]
    fn percent_matches_any_run_and_underscore_one_character() {
        assert!(like("sensor-7", "sensor%"));
        assert!(like("sensor", "sensor%"));
        assert!(like("a/b/c", "%/b/%"));
        assert!(like("abc", "a_c"));
        assert!(!like("ac", "a_c"));
        assert!(!like("abcd", "a_c"));
        assert!(like("", "%"));
        assert!(!like("", "_"));
        assert!(like("", ""));
        assert!(!like("x", ""));
        assert!(like("aXbXc", "a%b%c"));
        assert!(!like("aXbXd", "a%b%c"));
        assert!(like("mississippi", "%iss%ppi"));
        assert!(like("ünïcödé", "ü_ï%é"));
    }

    #[test]
    fn matching_is_case_sensitive_unless_ilike() {
        assert!(!like("Sensor", "sensor"));
        assert!(LikePattern::new("SEN%", None, true).matches("sensor"));
    }

    #[test]
    fn the_escape_character_makes_wildcards_literal() {
        let p = LikePattern::new("100!%", Some('!'), false);
        assert!(p.matches("100%"));
        assert!(!p.matches("1000"));
        let p = LikePattern::new("a!_b", Some('!'), false);
        assert!(p.matches("a_b"));
        assert!(!p.matches("axb"));
    }

    #[test]
    fn many_percent_signs_do_not_take_exponential_time() {
        let text = "a".repeat(10_000);
        let pattern = format!("{}b", "%a".repeat(50));
        assert!(!like(&text, &pattern));
    }
}
