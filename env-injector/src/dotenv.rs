//! dotenv files: `--env-file` reads them, `mirrord-net env --format dotenv` writes them.
//!
//! The format read, line by line:
//!
//! - blank lines and lines whose first non-blank character is `#` are ignored;
//! - `NAME=VALUE`, optionally preceded by `export ` and with blanks around `=`; NAME is a
//!   shell identifier (`[A-Za-z_][A-Za-z0-9_]*`);
//! - an unquoted VALUE runs to the end of the line; a `#` after a blank starts a comment;
//!   blanks around it are dropped; quotes and backslashes inside it are literal;
//! - `'...'`: every byte literal, newlines included, up to the next `'`;
//! - `"..."`: may span lines; `\n`, `\t`, `\r` are newline, tab and carriage return;
//!   `\\`, `\"`, `\$` and `` \` `` are the character itself; a backslash before a newline
//!   joins the lines; any other backslash stays as it is;
//! - after a closing quote only blanks and a `# comment` may follow;
//! - `$` is never expanded: the value is what the file says;
//! - `NAME=` (or `NAME=""`) is the empty value.
//!
//! Errors give the line where the problem is (for an unterminated quote, where it opened).
//!
//! The writer ([`render`]) puts each value in double quotes and escapes `\`, `"`, `$` and
//! `` ` `` with a backslash, leaving newlines and all other bytes as they are. Those are
//! exactly the escapes a POSIX shell honours inside double quotes, so the output reads back
//! the same through [`parse`] and through `set -a; . FILE` in `sh`.

use crate::Var;

/// A syntax error, at a line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct SyntaxError {
    pub line: usize,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{0:?} is not a variable name (letters, digits and _, not starting with a digit)")]
    BadName(String),
    #[error("expected NAME=VALUE")]
    NoEquals,
    #[error("no variable name before '='")]
    MissingName,
    #[error("the {0} quote opened here is never closed")]
    Unterminated(&'static str),
    #[error("unexpected text after the closing quote")]
    TextAfterQuote,
    #[error("NUL byte")]
    Nul,
}

/// Reads a dotenv file's contents. Later assignments of a name win when applied in order
/// (see [`crate::set_all`]); all are returned.
pub fn parse(contents: &[u8]) -> Result<Vec<Var>, SyntaxError> {
    let mut cursor = Cursor {
        text: contents,
        pos: 0,
        line: 1,
    };
    let mut vars = Vec::new();
    loop {
        cursor.skip_blanks();
        match cursor.peek() {
            None => return Ok(vars),
            Some(b'\n') => {
                cursor.bump();
                continue;
            }
            Some(b'#') => {
                cursor.skip_line();
                continue;
            }
            Some(_) => {}
        }
        let line = cursor.line;
        let error = |problem| SyntaxError { line, problem };
        let mut name = cursor.take_word();
        if name == b"export" && cursor.peek().is_some_and(is_blank) {
            cursor.skip_blanks();
            name = cursor.take_word();
        }
        cursor.skip_blanks();
        if cursor.peek() != Some(b'=') {
            if name.is_empty() || is_identifier(name) {
                return Err(error(Problem::NoEquals));
            }
            return Err(error(Problem::BadName(
                String::from_utf8_lossy(name).into_owned(),
            )));
        }
        if name.is_empty() {
            return Err(error(Problem::MissingName));
        }
        if !is_identifier(name) {
            return Err(error(Problem::BadName(
                String::from_utf8_lossy(name).into_owned(),
            )));
        }
        let name = name.to_vec();
        cursor.bump();
        let value_start = cursor.pos;
        cursor.skip_blanks();
        let value = match cursor.peek() {
            Some(b'\'') => cursor.single_quoted()?,
            Some(b'"') => cursor.double_quoted()?,
            // `NAME= # note`: a comment after blanks, as in `sh`; `NAME=#x` is the value `#x`.
            Some(b'#') if cursor.pos > value_start => {
                cursor.skip_line();
                Vec::new()
            }
            _ => cursor.unquoted(),
        };
        if value.contains(&0) {
            return Err(error(Problem::Nul));
        }
        vars.push((name, value));
    }
}

/// Whether `name` is a shell identifier, which both [`parse`] and `sh` accept.
pub fn is_identifier(name: &[u8]) -> bool {
    match name.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || *first == b'_')
                && rest.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        }
        None => false,
    }
}

fn is_blank(byte: u8) -> bool {
    byte == b' ' || byte == b'\t' || byte == b'\r'
}

struct Cursor<'a> {
    text: &'a [u8],
    pos: usize,
    line: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.pos += 1;
        if byte == b'\n' {
            self.line += 1;
        }
        Some(byte)
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.bump();
        }
    }

    fn skip_line(&mut self) {
        while let Some(byte) = self.bump() {
            if byte == b'\n' {
                break;
            }
        }
    }

    /// The bytes up to a blank, `=`, newline or the end.
    fn take_word(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| !is_blank(b) && b != b'=' && b != b'\n')
        {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn unquoted(&mut self) -> Vec<u8> {
        let mut value = Vec::new();
        while let Some(byte) = self.peek() {
            if byte == b'\n' {
                break;
            }
            if byte == b'#' && value.last().is_some_and(|b| is_blank(*b)) {
                self.skip_line();
                return trim_end(value);
            }
            value.push(byte);
            self.bump();
        }
        self.bump();
        trim_end(value)
    }

    fn single_quoted(&mut self) -> Result<Vec<u8>, SyntaxError> {
        let opened = self.line;
        self.bump();
        let mut value = Vec::new();
        loop {
            match self.bump() {
                Some(b'\'') => break,
                Some(byte) => value.push(byte),
                None => {
                    return Err(SyntaxError {
                        line: opened,
                        problem: Problem::Unterminated("single"),
                    })
                }
            }
        }
        self.end_of_quoted_line()?;
        Ok(value)
    }

    fn double_quoted(&mut self) -> Result<Vec<u8>, SyntaxError> {
        let opened = self.line;
        let unterminated = SyntaxError {
            line: opened,
            problem: Problem::Unterminated("double"),
        };
        self.bump();
        let mut value = Vec::new();
        loop {
            match self.bump() {
                Some(b'"') => break,
                Some(b'\\') => match self.bump() {
                    Some(b'n') => value.push(b'\n'),
                    Some(b't') => value.push(b'\t'),
                    Some(b'r') => value.push(b'\r'),
                    Some(b'\n') => {}
                    Some(byte @ (b'\\' | b'"' | b'$' | b'`')) => value.push(byte),
                    Some(other) => value.extend_from_slice(&[b'\\', other]),
                    None => return Err(unterminated),
                },
                Some(byte) => value.push(byte),
                None => return Err(unterminated),
            }
        }
        self.end_of_quoted_line()?;
        Ok(value)
    }

    /// After a closing quote: blanks, an optional comment, then the end of the line.
    fn end_of_quoted_line(&mut self) -> Result<(), SyntaxError> {
        self.skip_blanks();
        match self.peek() {
            None => Ok(()),
            Some(b'\n') | Some(b'#') => {
                self.skip_line();
                Ok(())
            }
            Some(_) => Err(SyntaxError {
                line: self.line,
                problem: Problem::TextAfterQuote,
            }),
        }
    }
}

fn trim_end(mut value: Vec<u8>) -> Vec<u8> {
    while value.last().is_some_and(|b| is_blank(*b)) {
        value.pop();
    }
    value
}

/// What [`render`] wrote, and the names it had to leave out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: Vec<u8>,
    /// Names that are not shell identifiers (a process may have `a.b` or `my-var`); neither a
    /// shell nor [`parse`] could read them back.
    pub skipped: Vec<Vec<u8>>,
}

/// Writes `env` as a dotenv file that [`parse`] and `sh` read back unchanged.
pub fn render(env: &[Var]) -> Rendered {
    let mut text = Vec::new();
    let mut skipped = Vec::new();
    for (name, value) in env {
        if !is_identifier(name) {
            skipped.push(name.clone());
            continue;
        }
        text.extend_from_slice(name);
        text.extend_from_slice(b"=\"");
        for &byte in value {
            if matches!(byte, b'\\' | b'"' | b'$' | b'`') {
                text.push(b'\\');
            }
            text.push(byte);
        }
        text.extend_from_slice(b"\"\n");
    }
    Rendered { text, skipped }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, value: &[u8]) -> Var {
        (name.as_bytes().to_vec(), value.to_vec())
    }

    fn ok(text: &str) -> Vec<Var> {
        parse(text.as_bytes()).unwrap_or_else(|err| panic!("{text:?}: {err}"))
    }

    fn err(text: &str) -> SyntaxError {
        parse(text.as_bytes()).unwrap_err()
    }

    #[test]
    fn comments_and_blank_lines_are_ignored() {
        assert_eq!(
            ok("# a comment\n\n   \n  # indented\nA=1\n"),
            [var("A", b"1")]
        );
    }

    #[test]
    fn export_prefix_is_allowed() {
        assert_eq!(
            ok("export A=1\nexport\tB=2\n"),
            [var("A", b"1"), var("B", b"2")]
        );
        assert_eq!(ok("export=3\n"), [var("export", b"3")]);
    }

    #[test]
    fn unquoted_values_are_trimmed_and_end_at_a_comment() {
        assert_eq!(
            ok("A = hello world  \nB=x#y\nC=x # note\nD=it's \"fine\"\\n"),
            [
                var("A", b"hello world"),
                var("B", b"x#y"),
                var("C", b"x"),
                var("D", b"it's \"fine\"\\n"),
            ]
        );
    }

    #[test]
    fn empty_values() {
        assert_eq!(
            ok("A=\nB=''\nC=\"\"\nD= # nothing\n"),
            [var("A", b""), var("B", b""), var("C", b""), var("D", b"")]
        );
    }

    #[test]
    fn single_quotes_are_literal_and_may_span_lines() {
        assert_eq!(
            ok("A='$HOME \\n \"x\"'\nB='one\ntwo' # c\n"),
            [var("A", b"$HOME \\n \"x\""), var("B", b"one\ntwo")]
        );
    }

    #[test]
    fn double_quotes_honour_escapes() {
        assert_eq!(
            ok(r#"A="a\nb\tc\\d\"e\$f\`g\qh""#),
            [var("A", b"a\nb\tc\\d\"e$f`g\\qh")]
        );
        assert_eq!(
            ok("A=\"line1\nline2\"\nB=\"joined\\\nhere\"\n"),
            [var("A", b"line1\nline2"), var("B", b"joinedhere")]
        );
    }

    #[test]
    fn dollar_is_never_expanded() {
        assert_eq!(ok("A=\"$B\"\nB=$A\n"), [var("A", b"$B"), var("B", b"$A")]);
    }

    #[test]
    fn equals_signs_in_values_are_kept() {
        assert_eq!(
            ok("URL=postgres://h/db?a=b\n"),
            [var("URL", b"postgres://h/db?a=b")]
        );
    }

    #[test]
    fn crlf_line_ends_are_tolerated() {
        assert_eq!(ok("A=1\r\nB=\"2\"\r\n"), [var("A", b"1"), var("B", b"2")]);
    }

    #[test]
    fn bad_names_are_reported_with_their_line() {
        let e = err("A=1\n1BAD=2\n");
        assert_eq!(e.line, 2);
        assert_eq!(e.problem, Problem::BadName("1BAD".into()));
        assert_eq!(err("my-var=1").problem, Problem::BadName("my-var".into()));
        assert_eq!(
            err("A=1\n\njust words\n"),
            SyntaxError {
                line: 3,
                problem: Problem::NoEquals
            }
        );
        assert_eq!(ok("A=#x\n"), [var("A", b"#x")]);
        assert_eq!(err("NAME\n").problem, Problem::NoEquals);
        assert_eq!(err("=x\n").problem, Problem::MissingName);
    }

    #[test]
    fn unterminated_quotes_name_the_line_they_opened_on() {
        assert_eq!(
            err("A=1\nB=\"open\n\nC=3\n"),
            SyntaxError {
                line: 2,
                problem: Problem::Unterminated("double")
            }
        );
        assert_eq!(err("A='x").problem, Problem::Unterminated("single"));
        assert_eq!(err("A=\"x\\").problem, Problem::Unterminated("double"));
    }

    #[test]
    fn text_after_a_closing_quote_is_an_error() {
        let e = err("A=\"x\"y\n");
        assert_eq!(e.problem, Problem::TextAfterQuote);
        assert_eq!(e.line, 1);
        assert_eq!(ok("A=\"x\"   # fine\n"), [var("A", b"x")]);
    }

    #[test]
    fn error_message_names_line_and_problem() {
        assert_eq!(
            err("\n\nX='a").to_string(),
            "line 3: the single quote opened here is never closed"
        );
    }

    #[test]
    fn render_round_trips_tricky_values() {
        let env = vec![
            var("QUOTES", b"it's \"quoted\""),
            var("NEWLINES", b"a\nb\n\nc\n"),
            var("DOLLAR", b"$HOME ${X} $(id) `id`"),
            var("BACKSLASH", b"C:\\path\\n\\"),
            var("EQUALS", b"a=b=c"),
            var("EMPTY", b""),
            var("HASH", b" # not a comment "),
            var("BINARY", b"\xff\xfe\x01\t\r"),
        ];
        let rendered = render(&env);
        assert!(rendered.skipped.is_empty());
        assert_eq!(parse(&rendered.text).unwrap(), env);
    }

    #[test]
    fn render_skips_names_no_shell_can_set() {
        let env = vec![var("ok", b"1"), var("a.b", b"2"), var("my-var", b"3")];
        let rendered = render(&env);
        assert_eq!(rendered.text, b"ok=\"1\"\n");
        assert_eq!(rendered.skipped, [b"a.b".to_vec(), b"my-var".to_vec()]);
    }
}
