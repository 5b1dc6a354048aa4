//! Which requests a session asks for: the header and path filters of `--http-header-filter`
//! and `--http-path-filter`.
//!
//! A header filter is a regular expression (the `regex` crate's syntax, no look-around, linear
//! time) tried against `Name: value` for every header of a request; it matches when it matches
//! one of them. Header names are compared case-insensitively, values as sent: HTTP/1.1 keeps
//! names as the client wrote them (`X-Verifier-Run`), HTTP/2 lowercases them
//! (`x-verifier-run`), and a filter written either way must catch both. The regex itself
//! cannot be made case-insensitive on the name only in general (a `:` may sit inside a group
//! or an alternation), so the filter is tried against up to three spellings of each name:
//! as sent, lowercase, and the canonical `Title-Case` form, each followed by `: ` and the
//! value's bytes unchanged. A filter that spells the name in any of those forms therefore
//! matches whatever the client sent; one that spells it in another mix of cases (`X-VERIFIER-run`)
//! matches only a client that sent exactly that. Values are bytes (`regex::bytes`), so a
//! header that is not UTF-8 is still matched.
//!
//! A path filter is tried against the request's path with its query string (`/orders?id=7`;
//! HTTP/2's `:path`; the path-and-query part of an absolute-form HTTP/1.1 target).
//!
//! Given both, a request must match both. `{{ key }}` (spaces inside the braces optional) in
//! either expression is replaced by the session's key, regex-escaped, before compiling; a
//! filter that uses `{{ key }}` when the session has no key is an error, as is a filter with
//! neither expression or one that does not compile.

use regex::bytes::Regex;

/// A request's head as the filter sees it: the path with its query, and the headers as sent.
/// Borrowed from the parser's buffers; building one allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The path with its query string (`/a/b?c=d`).
    pub path: &'a str,
    /// The headers, names as sent (HTTP/2: lowercase).
    pub headers: &'a [httparse::Header<'a>],
}

/// Why a filter cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("an HTTP filter needs a header filter, a path filter or both")]
    Empty,
    #[error("the {which} filter uses {{{{ key }}}} but the session has no --key")]
    KeyMissing { which: &'static str },
    #[error("the {which} filter is not a valid regular expression: {source}")]
    Regex {
        which: &'static str,
        #[source]
        source: Box<regex::Error>,
    },
}

/// A session's request filter (see the module comment for what matches).
#[derive(Debug)]
pub struct HttpFilter {
    header: Option<Regex>,
    path: Option<Regex>,
}

impl HttpFilter {
    /// Compiles the filter; `key` replaces `{{ key }}` in both expressions.
    pub fn new(
        header: Option<&str>,
        path: Option<&str>,
        key: Option<&str>,
    ) -> Result<Self, FilterError> {
        if header.is_none() && path.is_none() {
            return Err(FilterError::Empty);
        }
        let compile = |which: &'static str, pattern: Option<&str>| -> Result<_, FilterError> {
            let Some(pattern) = pattern else {
                return Ok(None);
            };
            let pattern = substitute_key(pattern, key).ok_or(FilterError::KeyMissing { which })?;
            Regex::new(&pattern)
                .map(Some)
                .map_err(|source| FilterError::Regex {
                    which,
                    source: Box::new(source),
                })
        };
        Ok(Self {
            header: compile("header", header)?,
            path: compile("path", path)?,
        })
    }

    /// Whether the request is one the session asked for.
    pub fn matches(&self, head: &RequestHead) -> bool {
        if let Some(path) = &self.path {
            if !path.is_match(head.path.as_bytes()) {
                return false;
            }
        }
        match &self.header {
            None => true,
            Some(regex) => {
                let mut line = Vec::new();
                head.headers
                    .iter()
                    .any(|header| header_matches(regex, header, &mut line))
            }
        }
    }
}

/// Tries `regex` on `Name: value` with the name as sent, lowercase and Title-Case.
fn header_matches(regex: &Regex, header: &httparse::Header, line: &mut Vec<u8>) -> bool {
    let name = header.name.as_bytes();
    let mut try_with = |spell: &dyn Fn(usize, u8) -> u8| {
        line.clear();
        line.extend(name.iter().enumerate().map(|(i, &b)| spell(i, b)));
        line.extend_from_slice(b": ");
        line.extend_from_slice(header.value);
        regex.is_match(line)
    };
    if try_with(&|_, b| b) {
        return true;
    }
    let lower = |_: usize, b: u8| b.to_ascii_lowercase();
    if name.iter().any(u8::is_ascii_uppercase) && try_with(&lower) {
        return true;
    }
    let title = |i: usize, b: u8| {
        if i == 0 || name[i - 1] == b'-' {
            b.to_ascii_uppercase()
        } else {
            b.to_ascii_lowercase()
        }
    };
    let is_title = name.iter().enumerate().all(|(i, &b)| title(i, b) == b);
    !is_title && try_with(&title)
}

/// Replaces every `{{ key }}` (spaces optional) by the escaped key; `None` when the pattern
/// uses the key and there is none.
fn substitute_key(pattern: &str, key: Option<&str>) -> Option<String> {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let inner_len = after.find("}}");
        match inner_len {
            Some(len) if after[..len].trim() == "key" => {
                out.push_str(&rest[..start]);
                out.push_str(&regex::escape(key?));
                rest = &after[len + 2..];
            }
            _ => {
                out.push_str(&rest[..start + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(path: &'a str, headers: &'a [httparse::Header<'a>]) -> RequestHead<'a> {
        RequestHead { path, headers }
    }

    fn header<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn header_names_match_in_any_case_values_as_sent() {
        let filter = HttpFilter::new(Some("^X-Verifier-Run: abc$"), None, None).unwrap();
        for name in ["X-Verifier-Run", "x-verifier-run", "X-VERIFIER-RUN"] {
            assert!(filter.matches(&head("/", &[header("Host", "h"), header(name, "abc")])));
        }
        assert!(!filter.matches(&head("/", &[header("x-verifier-run", "ABC")])));
        assert!(!filter.matches(&head("/", &[header("x-verifier-runs", "abc")])));
        let lower = HttpFilter::new(Some("^x-verifier-run: abc$"), None, None).unwrap();
        assert!(lower.matches(&head("/", &[header("X-Verifier-Run", "abc")])));
    }

    #[test]
    fn key_is_substituted_escaped() {
        let filter = HttpFilter::new(Some("^x-run: {{key}}$"), None, Some("a.b")).unwrap();
        assert!(filter.matches(&head("/", &[header("X-Run", "a.b")])));
        assert!(!filter.matches(&head("/", &[header("X-Run", "axb")])));
        let spaced = HttpFilter::new(None, Some("^/k/{{ key }}(\\?|$)"), Some("7+")).unwrap();
        assert!(spaced.matches(&head("/k/7+?x=1", &[])));
        assert!(!spaced.matches(&head("/k/77", &[])));
    }

    #[test]
    fn key_without_value_is_an_error() {
        let err = HttpFilter::new(Some("x: {{ key }}"), None, None).unwrap_err();
        assert!(matches!(err, FilterError::KeyMissing { which: "header" }));
        assert!(err.to_string().contains("{{ key }}"), "{err}");
        assert!(matches!(
            HttpFilter::new(None, None, None),
            Err(FilterError::Empty)
        ));
        assert!(matches!(
            HttpFilter::new(Some("("), None, None),
            Err(FilterError::Regex { .. })
        ));
    }

    #[test]
    fn both_filters_must_match() {
        let filter = HttpFilter::new(Some("^x-a: 1$"), Some("^/api"), None).unwrap();
        assert!(filter.matches(&head("/api/x", &[header("x-a", "1")])));
        assert!(!filter.matches(&head("/other", &[header("x-a", "1")])));
        assert!(!filter.matches(&head("/api/x", &[header("x-a", "2")])));
    }

    #[test]
    fn other_braces_are_left_alone() {
        assert_eq!(substitute_key("a{2}{{x}}", None).unwrap(), "a{2}{{x}}");
        assert_eq!(substitute_key("{{key}}{{ key }}", Some("k")).unwrap(), "kk");
    }
}
