//! Entering the target's namespaces.
//!
//! The agent joins the target's network namespace (so every socket it makes afterwards is the
//! target's) and its UTS namespace (to read its hostname). Namespace membership is per thread,
//! and threads inherit it from the thread that creates them, so this runs on the main thread
//! before the async runtime starts its workers. Sockets made *before* the switch stay in the
//! namespace they were made in: that is how the agent's QUIC socket stays reachable by its
//! client while everything upstream happens inside the target.
//!
//! A namespace the agent already shares with the target is not entered again. An agent in an
//! ephemeral container of the target's pod is already in the pod's network and UTS
//! namespaces, and usually lacks the CAP_SYS_ADMIN that `setns` needs: comparing the
//! namespaces' identities (device and inode of `/proc/…/ns/KIND`) lets it run unprivileged.

use std::fs::File;
use std::io;

use nix::sched::{setns, CloneFlags};

/// The namespaces of a target, opened but not yet entered; `None` where the agent already is
/// in the target's namespace.
#[derive(Debug)]
pub struct TargetNamespaces {
    net: Option<File>,
    uts: Option<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("target process {pid} does not exist (or has exited)")]
    NoSuchProcess { pid: u32 },
    #[error("cannot open the {kind} namespace of process {pid}: {source}")]
    Open {
        pid: u32,
        kind: &'static str,
        source: io::Error,
    },
    #[error("cannot enter the {kind} namespace of process {pid}: {source} (the agent needs CAP_SYS_ADMIN)")]
    Enter {
        pid: u32,
        kind: &'static str,
        source: nix::Error,
    },
}

impl TargetNamespaces {
    pub fn open(pid: u32) -> Result<Self, NamespaceError> {
        let open = |kind: &'static str| {
            File::open(format!("/proc/{pid}/ns/{kind}")).map_err(|source| {
                if source.kind() == io::ErrorKind::NotFound {
                    NamespaceError::NoSuchProcess { pid }
                } else {
                    NamespaceError::Open { pid, kind, source }
                }
            })
        };
        let foreign = |kind: &'static str| -> Result<Option<File>, NamespaceError> {
            let target = open(kind)?;
            let own = File::open(format!("/proc/thread-self/ns/{kind}"))
                .and_then(|own| same_namespace(&own, &target));
            // Not knowing our own namespace only costs a setns that may be needless.
            Ok(if own.unwrap_or(false) {
                None
            } else {
                Some(target)
            })
        };
        Ok(Self {
            net: foreign("net")?,
            uts: foreign("uts")?,
        })
    }

    /// True when the calling thread already is in the target's network namespace.
    pub fn shares_network(&self) -> bool {
        self.net.is_none()
    }

    /// Moves the calling thread into the target's network and UTS namespaces.
    pub fn enter(self, pid: u32) -> Result<(), NamespaceError> {
        if let Some(net) = &self.net {
            setns(net, CloneFlags::CLONE_NEWNET).map_err(|source| NamespaceError::Enter {
                pid,
                kind: "network",
                source,
            })?;
        }
        if let Some(uts) = &self.uts {
            setns(uts, CloneFlags::CLONE_NEWUTS).map_err(|source| NamespaceError::Enter {
                pid,
                kind: "UTS",
                source,
            })?;
        }
        Ok(())
    }
}

/// Two open namespace files name the same namespace when device and inode agree (what
/// `ls -iL /proc/*/ns/net` compares).
fn same_namespace(a: &File, b: &File) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_namespaces_are_not_entered_again() {
        // This process as its own target: both namespaces are shared, so entering needs no
        // CAP_SYS_ADMIN and does nothing.
        let namespaces = TargetNamespaces::open(std::process::id()).unwrap();
        assert!(namespaces.shares_network());
        assert!(namespaces.uts.is_none());
        namespaces.enter(std::process::id()).unwrap();
    }

    #[test]
    fn a_missing_process_is_named() {
        let err = TargetNamespaces::open(u32::MAX).unwrap_err();
        assert!(matches!(
            err,
            NamespaceError::NoSuchProcess { pid: u32::MAX }
        ));
    }
}
