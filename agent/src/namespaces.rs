//! Entering the target's namespaces.
//!
//! The agent joins the target's network namespace (so every socket it makes afterwards is the
//! target's) and its UTS namespace (to read its hostname). Namespace membership is per thread,
//! and threads inherit it from the thread that creates them, so this runs on the main thread
//! before the async runtime starts its workers. Sockets made *before* the switch stay in the
//! namespace they were made in: that is how the agent's QUIC socket stays reachable by its
//! client while everything upstream happens inside the target.

use std::fs::File;
use std::io;

use nix::sched::{setns, CloneFlags};

/// The namespaces of a target, opened but not yet entered.
#[derive(Debug)]
pub struct TargetNamespaces {
    net: File,
    uts: File,
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
        Ok(Self {
            net: open("net")?,
            uts: open("uts")?,
        })
    }

    /// Moves the calling thread into the target's network and UTS namespaces.
    pub fn enter(self, pid: u32) -> Result<(), NamespaceError> {
        setns(&self.net, CloneFlags::CLONE_NEWNET).map_err(|source| NamespaceError::Enter {
            pid,
            kind: "network",
            source,
        })?;
        setns(&self.uts, CloneFlags::CLONE_NEWUTS).map_err(|source| NamespaceError::Enter {
            pid,
            kind: "UTS",
            source,
        })?;
        Ok(())
    }
}
