//! Patterns on variable names, as `--env-include` and `--env-exclude` take them.
//!
//! The whole name must match. `*` matches any run of bytes (also none), `?` exactly one byte,
//! `\` makes the next byte literal; every other byte matches itself, case-sensitively
//! (environment names are case-sensitive). No character classes: names are short and the
//! three operators cover what filters on names need (`AWS_*`, `*_TOKEN`, `DB_?`). This is
//! small enough to own rather than take a crate (`globset` brings regex for path semantics
//! that names do not have).
//!
//! Matching is the classic greedy-star walk with one backtrack point: linear in practice,
//! `O(name × pattern)` at worst, no recursion.

/// A parsed pattern: literal bytes, `?` and `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Byte(u8),
    AnyOne,
    AnyRun,
}

/// Why a pattern is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is empty")]
    Empty,
    #[error("pattern {0:?} ends with a lone backslash")]
    TrailingBackslash(String),
    #[error("pattern {0:?} contains '=' or NUL, which no variable name has (patterns match names, not NAME=VALUE)")]
    ImpossibleByte(String),
}

impl Pattern {
    pub fn parse(text: &[u8]) -> Result<Pattern, PatternError> {
        let shown = String::from_utf8_lossy(text).into_owned();
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let mut tokens = Vec::with_capacity(text.len());
        let mut bytes = text.iter().copied();
        while let Some(byte) = bytes.next() {
            let token = match byte {
                b'*' => Token::AnyRun,
                b'?' => Token::AnyOne,
                b'\\' => match bytes.next() {
                    Some(escaped) => Token::Byte(escaped),
                    None => return Err(PatternError::TrailingBackslash(shown)),
                },
                other => Token::Byte(other),
            };
            if matches!(token, Token::Byte(b'=' | 0)) {
                return Err(PatternError::ImpossibleByte(shown));
            }
            tokens.push(token);
        }
        Ok(Pattern {
            text: shown,
            tokens,
        })
    }

    /// The pattern as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True when the pattern has no `*` or `?`: it names exactly one variable.
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Byte(_)))
    }

    /// Whether the whole of `name` matches.
    pub fn matches(&self, name: &[u8]) -> bool {
        let (mut p, mut n) = (0, 0);
        // Where the last `*` was, and how much of the name it has eaten so far.
        let mut backtrack: Option<(usize, usize)> = None;
        while n < name.len() {
            match self.tokens.get(p) {
                Some(Token::AnyRun) => {
                    backtrack = Some((p, n));
                    p += 1;
                    continue;
                }
                Some(Token::AnyOne) => {
                    p += 1;
                    n += 1;
                    continue;
                }
                Some(Token::Byte(b)) if *b == name[n] => {
                    p += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
            // Mismatch: let the last star eat one more byte, or fail.
            match backtrack {
                Some((star, eaten)) => {
                    p = star + 1;
                    n = eaten + 1;
                    backtrack = Some((star, eaten + 1));
                }
                None => return false,
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::AnyRun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        Pattern::parse(pattern.as_bytes())
            .unwrap()
            .matches(name.as_bytes())
    }

    #[test]
    fn literal_matches_only_the_whole_name() {
        assert!(m("HOME", "HOME"));
        assert!(!m("HOME", "HOMEDIR"));
        assert!(!m("HOME", "HOM"));
        assert!(!m("home", "HOME"));
    }

    #[test]
    fn star_matches_any_run_including_none() {
        assert!(m("AWS_*", "AWS_"));
        assert!(m("AWS_*", "AWS_SECRET_ACCESS_KEY"));
        assert!(!m("AWS_*", "AWS"));
        assert!(m("*_TOKEN", "GITHUB_TOKEN"));
        assert!(!m("*_TOKEN", "GITHUB_TOKENS"));
        assert!(m("*", ""));
        assert!(m("*", "ANYTHING"));
        assert!(m("A*B*C", "AxxBxxC"));
        assert!(m("A*B*C", "ABC"));
        assert!(!m("A*B*C", "AxxCxxB"));
        assert!(m("*AB", "AAAB"), "the star must give back bytes it took");
        assert!(m("**X", "aX"));
    }

    #[test]
    fn question_mark_matches_exactly_one_byte() {
        assert!(m("DB_?", "DB_1"));
        assert!(!m("DB_?", "DB_"));
        assert!(!m("DB_?", "DB_12"));
        assert!(m("?*", "A"));
        assert!(!m("?*", ""));
    }

    #[test]
    fn backslash_makes_operators_literal() {
        assert!(m(r"A\*", "A*"));
        assert!(!m(r"A\*", "AB"));
        assert!(m(r"\?", "?"));
        assert!(!m(r"\?", "x"));
        assert!(Pattern::parse(br"A\*").unwrap().is_literal());
    }

    #[test]
    fn non_utf8_names_match_bytewise() {
        let p = Pattern::parse(b"BIN_?").unwrap();
        assert!(p.matches(b"BIN_\xff"));
    }

    #[test]
    fn literal_patterns_are_told_apart() {
        assert!(Pattern::parse(b"PATH").unwrap().is_literal());
        assert!(!Pattern::parse(b"PATH*").unwrap().is_literal());
        assert!(!Pattern::parse(b"PAT?").unwrap().is_literal());
    }

    #[test]
    fn impossible_patterns_are_errors() {
        assert_eq!(Pattern::parse(b""), Err(PatternError::Empty));
        assert!(matches!(
            Pattern::parse(b"A\\"),
            Err(PatternError::TrailingBackslash(_))
        ));
        assert!(matches!(
            Pattern::parse(b"A=1"),
            Err(PatternError::ImpossibleByte(_))
        ));
    }
}
