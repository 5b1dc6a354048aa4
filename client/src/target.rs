//! Targets: what `--target` names.
//!
//! `pid/PID` is any process on this machine: a container, a service, a process inside another
//! network namespace. `pod/NAME`, `deploy/NAME` and the other Kubernetes kinds name a
//! container in a cluster; `mirrord_net_kubernetes::target` resolves them.

use std::fmt;
use std::str::FromStr;

use mirrord_net_kubernetes::target::{Kind, KubeTarget};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A local process.
    Pid(u32),
    /// A pod or workload in a Kubernetes cluster.
    Kubernetes(KubeTarget),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pid(pid) => write!(f, "pid/{pid}"),
            Target::Kubernetes(target) => target.fmt(f),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("target {0:?} is not of the form KIND/NAME (e.g. pod/web or pid/1234)")]
    Malformed(String),
    #[error("{0:?} is not a process id")]
    BadPid(String),
    #[error(
        "unknown target kind {0:?} (supported: pod, deploy, statefulset, daemonset, job, \
         replicaset, pid)"
    )]
    UnknownKind(String),
    #[error("target pid/{0} does not exist (no process {0} on this machine)")]
    NoSuchProcess(u32),
}

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
            kind => match Kind::from_prefix(kind) {
                Some(kind) => Ok(Target::Kubernetes(KubeTarget {
                    kind,
                    name: name.to_owned(),
                })),
                None => Err(TargetError::UnknownKind(kind.to_owned())),
            },
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
            // Looked up in the cluster when the session starts.
            Target::Kubernetes(_) => Ok(()),
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
    fn kubernetes_targets_parse_with_their_aliases() {
        for (text, kind, shown) in [
            ("pod/web", Kind::Pod, "pod/web"),
            ("deployment/web", Kind::Deployment, "deploy/web"),
            ("deploy/web", Kind::Deployment, "deploy/web"),
            ("sts/db", Kind::StatefulSet, "statefulset/db"),
            ("daemonset/log", Kind::DaemonSet, "daemonset/log"),
            ("job/migrate", Kind::Job, "job/migrate"),
            ("rs/web-1", Kind::ReplicaSet, "replicaset/web-1"),
        ] {
            let target: Target = text.parse().unwrap();
            let Target::Kubernetes(kube) = &target else {
                panic!("{text} is not a Kubernetes target")
            };
            assert_eq!(kube.kind, kind);
            assert_eq!(target.to_string(), shown);
        }
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
            "pod/".parse::<Target>(),
            Err(TargetError::Malformed("pod/".into()))
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
