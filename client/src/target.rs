//! Targets: what `--target` names.
//!
//! `pid/PID` is any process on this machine: a container, a service, a process inside another
//! network namespace. Kubernetes kinds (`pod/`, `deploy/`, …) are recognised so that naming
//! one gives a precise error instead of a parse failure.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A local process.
    Pid(u32),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pid(pid) => write!(f, "pid/{pid}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("target {0:?} is not of the form KIND/NAME (e.g. pid/1234)")]
    Malformed(String),
    #[error("{0:?} is not a process id")]
    BadPid(String),
    #[error("Kubernetes targets ({0}/…) are not supported by this build; use pid/PID")]
    Kubernetes(String),
    #[error("unknown target kind {0:?} (supported: pid)")]
    UnknownKind(String),
    #[error("target pid/{0} does not exist (no process {0} on this machine)")]
    NoSuchProcess(u32),
}

const KUBERNETES_KINDS: &[&str] = &[
    "pod",
    "deploy",
    "deployment",
    "statefulset",
    "daemonset",
    "job",
    "replicaset",
];

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = s
            .split_once('/')
            .ok_or_else(|| TargetError::Malformed(s.to_owned()))?;
        if name.is_empty() {
            return Err(TargetError::Malformed(s.to_owned()));
        }
        match kind {
            "pid" => name
                .parse()
                .ok()
                .filter(|pid| *pid > 0)
                .map(Target::Pid)
                .ok_or_else(|| TargetError::BadPid(name.to_owned())),
            kind if KUBERNETES_KINDS.contains(&kind) => {
                Err(TargetError::Kubernetes(kind.to_owned()))
            }
            other => Err(TargetError::UnknownKind(other.to_owned())),
        }
    }
}

impl Target {
    /// Checks that the target exists now (it may still exit later; the agent reports that).
    pub fn check_exists(&self) -> Result<(), TargetError> {
        match self {
            Target::Pid(pid) => {
                if std::path::Path::new(&format!("/proc/{pid}/ns/net")).exists() {
                    Ok(())
                } else {
                    Err(TargetError::NoSuchProcess(*pid))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_targets_parse() {
        assert_eq!("pid/42".parse(), Ok(Target::Pid(42)));
        assert_eq!(Target::Pid(42).to_string(), "pid/42");
    }

    #[test]
    fn bad_targets_say_what_is_wrong() {
        assert_eq!(
            "42".parse::<Target>(),
            Err(TargetError::Malformed("42".into()))
        );
        assert_eq!(
            "pid/x".parse::<Target>(),
            Err(TargetError::BadPid("x".into()))
        );
        assert_eq!(
            "pid/0".parse::<Target>(),
            Err(TargetError::BadPid("0".into()))
        );
        assert_eq!(
            "pod/web".parse::<Target>(),
            Err(TargetError::Kubernetes("pod".into()))
        );
        assert_eq!(
            "vm/a".parse::<Target>(),
            Err(TargetError::UnknownKind("vm".into()))
        );
    }

    #[test]
    fn a_process_that_does_not_exist_is_reported() {
        // PIDs are bounded by pid_max (at most 2^22), so this one never exists.
        let target = Target::Pid(99_999_999);
        assert_eq!(
            target.check_exists(),
            Err(TargetError::NoSuchProcess(99_999_999))
        );
        assert!(Target::Pid(std::process::id()).check_exists().is_ok());
    }
}
