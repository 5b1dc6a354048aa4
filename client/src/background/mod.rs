//! Background sessions: `up`, `exec --session`/`shell --session`, `ps`, `down`.
//!
//! A background session is an ordinary session (agent, connection, namespaces, the target's
//! files) whose command is a keeper that only waits, owned by a small background process,
//! the holder, instead of by one `exec`. Commands join its namespaces at once, without an
//! agent start; `ps` lists the sessions; `down` ends one and every command in it. A session
//! belongs to the user who started it (`$SUDO_USER` under sudo): its control socket is in that
//! user's own 0700 directory, and the holder answers only that user (and root), by the
//! socket's peer credentials.
//!
//! - `control_messages`: the control messages and the holder's decisions (no I/O);
//! - `dir`: the per-user directory of control sockets;
//! - `holder`: `up`, and the holder process with its janitor;
//! - `join`: `exec --session`, entering the session by its init's pidfd;
//! - `control`: the CLI's side of the socket, `ps` and `down`.

pub mod control;
pub mod control_messages;
pub mod dir;
pub mod holder;
pub mod join;

pub use holder::{keep_main, up, KEEP_ARG};
