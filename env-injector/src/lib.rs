//! The environment a mirrord-net session gives its command, worked out without I/O.
//!
//! The command gets the local environment overlaid with the target's, with a few exceptions
//! and additions. In order, later layers winning:
//!
//! 1. **local**: the client's own environment;
//! 2. **target**: each variable of the target's environment (`/proc/PID/environ`, parsed by
//!    [`environ::parse`]) replaces or adds to the local one, unless a filter keeps it out
//!    ([`Filter`]: `--env-include`/`--env-exclude` patterns, and the [`KEPT_LOCAL`] names,
//!    which stay the local session's);
//! 3. **identity**: HOME, USER and LOGNAME of the user the command runs as (the session does
//!    this itself, after dropping privileges; not this crate's business);
//! 4. **overrides**: `--env-file` files in the order given, then `-e NAME=VALUE` in the order
//!    given ([`dotenv::parse`], [`parse_assignment`]); the last assignment of a name wins.
//!
//! [`compose`] does 1–2 and returns the base environment; the overrides are kept apart so that
//! they can be applied after the identity, which only the session knows for sure. [`set_all`]
//! applies a layer.
//!
//! Names and values are bytes: the kernel allows any byte but NUL in both (and `=` in names
//! cannot be represented), and a target's environment need not be UTF-8.
//!
//! Modules: [`environ`] (the kernel's format), [`glob`] (name patterns), [`filter`] (which
//! target variables are taken), [`dotenv`] (reading and writing dotenv files), [`json`]
//! (JSON output).

use std::collections::HashMap;

pub mod dotenv;
pub mod environ;
pub mod filter;
pub mod glob;
pub mod json;

pub use filter::{Filter, KEPT_LOCAL};
pub use glob::Pattern;

/// One environment variable: name and value, as bytes.
pub type Var = (Vec<u8>, Vec<u8>);

/// The local environment overlaid with the target's variables that `filter` lets through.
///
/// A target variable that the local environment also has replaces it in place; new ones are
/// appended in the target's order.
pub fn compose(local: impl IntoIterator<Item = Var>, target: &[Var], filter: &Filter) -> Vec<Var> {
    let mut env: Vec<Var> = local.into_iter().collect();
    set_all(
        &mut env,
        target
            .iter()
            .filter(|(name, _)| filter.takes_from_target(name))
            .cloned(),
    );
    env
}

/// Sets each variable of `layer` in `env`: replaces the value of an existing name in place,
/// appends a new name. A name given twice in `layer` ends with its last value.
pub fn set_all(env: &mut Vec<Var>, layer: impl IntoIterator<Item = Var>) {
    // An index by name keeps this linear: targets with thousands of variables exist.
    let mut index: HashMap<Vec<u8>, usize> = env
        .iter()
        .enumerate()
        .map(|(position, (name, _))| (name.clone(), position))
        .collect();
    for (name, value) in layer {
        match index.get(&name) {
            Some(&position) => env[position].1 = value,
            None => {
                index.insert(name.clone(), env.len());
                env.push((name, value));
            }
        }
    }
}

/// Why a `NAME=VALUE` assignment is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    #[error("{0:?} is not NAME=VALUE")]
    NoEquals(String),
    #[error("{0:?} has an empty name")]
    EmptyName(String),
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
}

/// Parses one `-e NAME=VALUE`: the name is everything before the first `=`, the value
/// everything after (possibly empty, possibly with more `=`).
pub fn parse_assignment(text: &[u8]) -> Result<Var, AssignmentError> {
    let shown = || String::from_utf8_lossy(text).into_owned();
    if text.contains(&0) {
        return Err(AssignmentError::Nul(shown()));
    }
    let Some(eq) = text.iter().position(|&b| b == b'=') else {
        return Err(AssignmentError::NoEquals(shown()));
    };
    if eq == 0 {
        return Err(AssignmentError::EmptyName(shown()));
    }
    Ok((text[..eq].to_vec(), text[eq + 1..].to_vec()))
}

/// Whether `name` can be an environment variable name at all: non-empty, no `=`, no NUL.
pub fn is_valid_name(name: &[u8]) -> bool {
    !name.is_empty() && !name.contains(&b'=') && !name.contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(name: &str, value: &str) -> Var {
        (name.as_bytes().to_vec(), value.as_bytes().to_vec())
    }

    #[test]
    fn target_values_replace_local_ones_in_place_and_new_ones_follow() {
        let local = vec![var("A", "local"), var("PATH", "/usr/bin"), var("B", "b")];
        let target = vec![var("C", "c"), var("A", "target"), var("PATH", "/app/bin")];
        let env = compose(local, &target, &Filter::default());
        assert_eq!(
            env,
            [
                var("A", "target"),
                var("PATH", "/usr/bin"),
                var("B", "b"),
                var("C", "c")
            ]
        );
    }

    #[test]
    fn excluded_target_variable_leaves_the_local_value() {
        let filter = Filter::new(vec![], vec![Pattern::parse(b"SECRET*").unwrap()]);
        let env = compose(
            vec![var("SECRET_A", "mine")],
            &[var("SECRET_A", "pod"), var("SECRET_B", "pod")],
            &filter,
        );
        assert_eq!(env, [var("SECRET_A", "mine")]);
    }

    #[test]
    fn last_assignment_of_a_layer_wins() {
        let mut env = vec![var("X", "0")];
        set_all(&mut env, [var("X", "1"), var("Y", "1"), var("X", "2")]);
        assert_eq!(env, [var("X", "2"), var("Y", "1")]);
    }

    #[test]
    fn assignment_splits_at_the_first_equals_sign() {
        assert_eq!(parse_assignment(b"A=b=c").unwrap(), var("A", "b=c"));
        assert_eq!(parse_assignment(b"A=").unwrap(), var("A", ""));
        assert_eq!(
            parse_assignment(b"A=\xff\n").unwrap(),
            (b"A".to_vec(), b"\xff\n".to_vec())
        );
        assert!(matches!(
            parse_assignment(b"A"),
            Err(AssignmentError::NoEquals(_))
        ));
        assert!(matches!(
            parse_assignment(b"=x"),
            Err(AssignmentError::EmptyName(_))
        ));
        assert!(matches!(
            parse_assignment(b"A=\0"),
            Err(AssignmentError::Nul(_))
        ));
    }

    #[test]
    fn valid_names_are_non_empty_without_equals_or_nul() {
        assert!(is_valid_name(b"a.b-c"));
        assert!(is_valid_name(b"\xff"));
        assert!(!is_valid_name(b""));
        assert!(!is_valid_name(b"a=b"));
        assert!(!is_valid_name(b"a\0"));
    }
}
