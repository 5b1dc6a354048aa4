//! The kernel's format of a process's environment, `/proc/PID/environ`: `NAME=VALUE` entries,
//! each ended by a NUL byte.
//!
//! The kernel does not enforce the format, only `execve`'s callers do (by convention). So:
//! - the name is everything before the first `=`, the value everything after (values may
//!   hold `=`, newlines, any byte but NUL);
//! - an entry without `=` or with an empty name cannot be set with `setenv`, and is skipped;
//! - a missing final NUL (a process that rewrote its environment area) still ends the last
//!   entry; empty entries (two NULs in a row) are skipped;
//! - a name that appears twice keeps its first value, as `getenv` would return.

use std::collections::HashSet;

use crate::Var;

/// The variables of an environ block, in order.
pub fn parse(block: &[u8]) -> Vec<Var> {
    let mut vars: Vec<Var> = Vec::new();
    let mut seen: HashSet<&[u8]> = HashSet::new();
    for entry in block.split(|&b| b == 0) {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        if eq == 0 {
            continue;
        }
        let name = &entry[..eq];
        if !seen.insert(name) {
            continue;
        }
        vars.push((name.to_vec(), entry[eq + 1..].to_vec()));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_at_nul_and_first_equals() {
        let vars = parse(b"A=1\0B=x=y\0C=\0");
        assert_eq!(
            vars,
            [
                (b"A".to_vec(), b"1".to_vec()),
                (b"B".to_vec(), b"x=y".to_vec()),
                (b"C".to_vec(), b"".to_vec()),
            ]
        );
    }

    #[test]
    fn values_keep_newlines_and_non_utf8_bytes() {
        let vars = parse(b"M=line1\nline2\0BIN=\xff\xfe\0");
        assert_eq!(vars[0].1, b"line1\nline2");
        assert_eq!(vars[1].1, b"\xff\xfe");
    }

    #[test]
    fn malformed_entries_are_skipped() {
        let vars = parse(b"NOEQUALS\0=empty-name\0\0OK=1");
        assert_eq!(vars, [(b"OK".to_vec(), b"1".to_vec())]);
    }

    #[test]
    fn first_of_duplicate_names_wins_like_getenv() {
        let vars = parse(b"A=first\0A=second\0");
        assert_eq!(vars, [(b"A".to_vec(), b"first".to_vec())]);
    }

    #[test]
    fn empty_block_has_no_variables() {
        assert!(parse(b"").is_empty());
    }
}
