//! Which of the target's variables the session takes.
//!
//! A target variable named `N` is taken when all of these hold:
//!
//! 1. **include**: there are no include patterns, or `N` matches at least one;
//! 2. **exclude**: `N` matches no exclude pattern (exclude wins over include);
//! 3. **kept local**: `N` is not in [`KEPT_LOCAL`] — unless an include pattern *names it
//!    exactly* (a pattern without `*` or `?`): `--env-include PATH` takes the target's PATH,
//!    while `--env-include '*'` does not take the target's HOME. An exclude still wins.
//!
//! A variable that is not taken keeps its local value, if the local environment has one.
//! Filters apply to the target's variables only: `--env-file` and `-e` set what they say.

use crate::glob::Pattern;

/// Names the session keeps from the local environment by default, and why.
///
/// They describe the person at the keyboard and the machine the command really runs on,
/// not the workload: taking the target's values would break the user's own tools.
pub const KEPT_LOCAL: &[(&str, &str)] = &[
    (
        "PATH",
        "commands run from the local file system, so they are found in local directories; the \
         target's PATH names directories of its image (/app/bin, /usr/local/go/bin) that the \
         session does not have, and the user's own tools would vanish",
    ),
    (
        "LD_LIBRARY_PATH",
        "read by the dynamic loader for every local program; the target's points at libraries \
         of its image, which would break (or subvert) local binaries",
    ),
    (
        "LD_PRELOAD",
        "as LD_LIBRARY_PATH: loaded into every local program",
    ),
    (
        "HOME",
        "the user's home: their dotfiles, caches and credentials",
    ),
    (
        "USER",
        "who the command runs as (set from the passwd entry when sudo dropped to a user)",
    ),
    ("LOGNAME", "as USER"),
    (
        "SHELL",
        "the user's shell (`mirrord-net shell` starts it); the target's may not exist here",
    ),
    (
        "TERM",
        "describes the terminal the user sits at; the target has none",
    ),
    ("COLORTERM", "as TERM"),
    ("DISPLAY", "the user's X display"),
    ("WAYLAND_DISPLAY", "the user's Wayland display"),
    ("XAUTHORITY", "the key to the user's X display"),
    (
        "XDG_RUNTIME_DIR",
        "the user's runtime directory (sockets of their desktop session)",
    ),
    ("DBUS_SESSION_BUS_ADDRESS", "the user's D-Bus session"),
    (
        "SSH_AUTH_SOCK",
        "the user's SSH agent, for git and ssh run from the session",
    ),
    (
        "LANG",
        "locales are loaded from the local machine: the target's may not be installed here, \
         which makes every program warn and fall back to C",
    ),
    ("LANGUAGE", "as LANG"),
    ("LC_*", "as LANG"),
    (
        "PWD",
        "the command starts in the user's directory, and PWD must say so",
    ),
    ("OLDPWD", "as PWD"),
    ("SHLVL", "counts the user's nested shells"),
    (
        "TMPDIR",
        "must name a directory that exists on this machine",
    ),
];

/// The include and exclude patterns, with the kept-local names.
#[derive(Debug, Clone)]
pub struct Filter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
    kept_local: Vec<Pattern>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter::new(Vec::new(), Vec::new())
    }
}

impl Filter {
    pub fn new(include: Vec<Pattern>, exclude: Vec<Pattern>) -> Filter {
        let kept_local = KEPT_LOCAL
            .iter()
            .map(|(name, _)| Pattern::parse(name.as_bytes()).expect("kept-local names are valid"))
            .collect();
        Filter {
            include,
            exclude,
            kept_local,
        }
    }

    /// Whether the target's variable `name` goes into the session (see the module docs).
    pub fn takes_from_target(&self, name: &[u8]) -> bool {
        if self.exclude.iter().any(|p| p.matches(name)) {
            return false;
        }
        let named_exactly = self
            .include
            .iter()
            .any(|p| p.is_literal() && p.matches(name));
        if named_exactly {
            return true;
        }
        if self.kept_local.iter().any(|p| p.matches(name)) {
            return false;
        }
        self.include.is_empty() || self.include.iter().any(|p| p.matches(name))
    }

    /// Whether `name` is one of [`KEPT_LOCAL`].
    pub fn is_kept_local(name: &[u8]) -> bool {
        KEPT_LOCAL
            .iter()
            .any(|(pattern, _)| Pattern::parse(pattern.as_bytes()).is_ok_and(|p| p.matches(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(texts: &[&str]) -> Vec<Pattern> {
        texts
            .iter()
            .map(|t| Pattern::parse(t.as_bytes()).unwrap())
            .collect()
    }

    fn filter(include: &[&str], exclude: &[&str]) -> Filter {
        Filter::new(patterns(include), patterns(exclude))
    }

    #[test]
    fn without_patterns_everything_but_kept_local_is_taken() {
        let f = Filter::default();
        assert!(f.takes_from_target(b"DATABASE_URL"));
        assert!(f.takes_from_target(b"HOSTNAME"));
        assert!(f.takes_from_target(b"KUBERNETES_SERVICE_HOST"));
        for name in [
            "PATH",
            "HOME",
            "TERM",
            "SHELL",
            "LANG",
            "LC_ALL",
            "LD_PRELOAD",
        ] {
            assert!(!f.takes_from_target(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn includes_restrict_to_what_they_match() {
        let f = filter(&["APP_*", "DB_URL"], &[]);
        assert!(f.takes_from_target(b"APP_MODE"));
        assert!(f.takes_from_target(b"DB_URL"));
        assert!(!f.takes_from_target(b"DB_URL2"));
        assert!(!f.takes_from_target(b"OTHER"));
    }

    #[test]
    fn exclude_wins_over_include() {
        let f = filter(&["APP_*"], &["APP_SECRET*"]);
        assert!(f.takes_from_target(b"APP_MODE"));
        assert!(!f.takes_from_target(b"APP_SECRET_KEY"));
        let f = filter(&["PATH"], &["PATH"]);
        assert!(!f.takes_from_target(b"PATH"));
    }

    #[test]
    fn excludes_alone_take_everything_else() {
        let f = filter(&[], &["*_TOKEN"]);
        assert!(!f.takes_from_target(b"GITHUB_TOKEN"));
        assert!(f.takes_from_target(b"APP_MODE"));
        assert!(!f.takes_from_target(b"HOME"));
    }

    #[test]
    fn kept_local_name_is_taken_only_when_named_exactly() {
        let f = filter(&["PATH"], &[]);
        assert!(f.takes_from_target(b"PATH"));
        assert!(!f.takes_from_target(b"HOME"));
        let f = filter(&["*"], &[]);
        assert!(!f.takes_from_target(b"PATH"));
        assert!(f.takes_from_target(b"APP"));
        let f = filter(&["LC_ALL", "*"], &[]);
        assert!(f.takes_from_target(b"LC_ALL"));
        assert!(!f.takes_from_target(b"LC_TIME"));
    }

    #[test]
    fn kept_local_set_is_recognised() {
        assert!(Filter::is_kept_local(b"LC_TIME"));
        assert!(Filter::is_kept_local(b"SSH_AUTH_SOCK"));
        assert!(!Filter::is_kept_local(b"HOSTNAME"));
    }
}
