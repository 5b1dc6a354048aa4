//! [`SessionError`]: why a session could not be started. Below the modules that make one
//! (`parent`, which starts it, and `userns`, which explains a rootless session's failures), so
//! both import it.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::child_messages::SetupFailure;
use super::spec::InvalidSpec;

/// Why a session could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    InvalidSpec(#[from] InvalidSpec),
    #[error("cannot look up uid {uid} to run the command as: {source}")]
    User { uid: u32, source: io::Error },
    #[error("cannot create the session's control socket: {0}")]
    ControlSocket(io::Error),
    #[error("cannot start the session process {}: {source}", program.display())]
    Spawn { program: PathBuf, source: io::Error },
    #[error("{0}")]
    Setup(#[from] SetupFailure),
    /// A rootless session's failed step, with the hint that fits a session without root.
    #[error("{message}")]
    RootlessSetup {
        failure: SetupFailure,
        message: String,
    },
    #[error("the session process ended before the session was ready ({0})")]
    ChildExited(String),
    #[error("the session process broke the session protocol: {0}")]
    Protocol(String),
    #[error("cannot talk to the session process: {0}")]
    Control(io::Error),
    #[error("the session was not ready within {0:?}; its process was stopped")]
    Timeout(Duration),
    #[error("cannot use the session's TUN device: {0}")]
    Tun(io::Error),
    #[error("cannot serve the target's files: {0}")]
    ServeFiles(io::Error),
}
