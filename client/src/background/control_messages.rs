//! The control protocol between the CLI and a background session's holder: messages, their
//! framing, and the holder's decisions — all without I/O, so every rule is a unit test.
//!
//! A connection carries one [`Request`] from the CLI and the holder's [`Reply`]:
//!
//! ```text
//!  CLI                                   holder
//!   ── Request { version, Info } ──────▶  ◀── Reply::Info(SessionInfo)          (ps)
//!   ── Request { version, Down } ──────▶  ◀── Reply::Down, once all is gone     (down)
//!   ── Request { version, Join } ──────▶  ◀── Reply::Joined(JoinInfo) + pidfd   (exec/shell)
//!                                         … the connection stays open while the command runs:
//!                                         ◀── Reply::Ended { reason }   if the session ends
//! ```
//!
//! Before any request the holder checks who connected (`SO_PEERCRED`): only the session's
//! owner (and root) is answered, anyone else gets [`Reply::Refused`] ([`authorize`]). A
//! joined connection counts as one running command until it closes; the count is what `ps`
//! shows.
//!
//! The messages travel as the wire crate's local frames (`mirrord_net_protocol::framing`: a
//! 4-byte length and a JSON body), as on the session's own socketpair.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// The protocol's version: a CLI and a holder of different builds refuse each other plainly.
pub const VERSION: u32 = 1;

/// What the CLI asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub op: Op,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// The session's description, for `ps`.
    Info,
    /// Run a command in the session: the holder replies with what the command needs.
    Join,
    /// End the session and every command in it.
    Down,
}

impl Request {
    pub fn new(op: Op) -> Request {
        Request {
            version: VERSION,
            op,
        }
    }
}

/// What the holder answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Info(SessionInfo),
    /// Sent with one descriptor: a pidfd of the session's init, whose namespaces the command
    /// joins (`setns`).
    Joined(Box<JoinInfo>),
    /// The session has ended (or had, when the request came): the reason in one line.
    Ended {
        reason: String,
    },
    /// The session is gone, as asked.
    Down,
    /// Not answered: who asked may not use this session, or speaks another version.
    Refused {
        reason: String,
    },
}

/// Whether the session still runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "reason")]
pub enum Phase {
    Running,
    /// Ended by itself (a dead agent, its processes gone): kept until `down`, so `ps` and
    /// every command say why.
    Ended(String),
}

/// A background session as `ps` and `up --json` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub name: String,
    pub target: String,
    /// The Kubernetes pod behind the target (`None` for a `pid/` target).
    pub pod: Option<String>,
    /// Where the agent runs: `local pid N`, or its pod.
    pub agent: String,
    /// The target's addresses, which the session's TUN carries.
    pub addresses: Vec<IpAddr>,
    /// Start time, seconds since the Unix epoch.
    pub started: u64,
    /// Commands running in it (`exec`/`shell --session`).
    pub commands: usize,
    #[serde(flatten)]
    pub phase: Phase,
    /// The holder process.
    pub holder_pid: u32,
    /// The user the session belongs to.
    pub owner_uid: u32,
}

/// What a command joining the session needs besides its namespaces: the pieces of its
/// environment (composed with the joining CLI's own environment exactly as `exec` composes
/// it), who it runs as, and where the target's files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinInfo {
    /// The target's environment.
    pub environ: Vec<(Vec<u8>, Vec<u8>)>,
    /// `--env-include` and `--env-exclude` patterns given to `up`.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// `--env-file` and `-e` assignments given to `up`, in order.
    pub overrides: Vec<(Vec<u8>, Vec<u8>)>,
    /// The user the command runs as (uid, gid); `None`: the joining process's own.
    pub run_as: Option<(u32, u32)>,
    /// `$MIRRORD_NET_REMOTE_ROOT`, when the target's files are mounted.
    pub remote_root: Option<Vec<u8>>,
    /// Whether the session has a user namespace of its own (a session without root), which
    /// the command joins first.
    pub user_namespace: bool,
}

/// Whether the process with uid `peer` may use a session of `owner`: the owner, and root
/// (who could enter its namespaces anyway).
/// The error is the refusal's reason.
pub fn authorize(peer: u32, owner: u32) -> Result<(), String> {
    if peer == owner || peer == 0 {
        Ok(())
    } else {
        Err(format!(
            "this session belongs to uid {owner}, not to uid {peer}"
        ))
    }
}

/// Checks a session's name: it names a file, so letters, digits, `.`, `_` and `-` only, not
/// starting with `.`, at most 64.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a session name: use letters, digits, '.', '_' and '-' (at most 64, not starting with '.')"
        ))
    }
}

/// What the holder does with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Answer with this and close.
    Reply(Reply),
    /// Send [`Reply::Joined`] with the init's pidfd, count a command, keep the connection.
    Join,
    /// End the session, then answer [`Reply::Down`].
    Shutdown,
}

/// The holder's state, as far as the protocol is concerned.
#[derive(Debug, Clone)]
pub struct HolderState {
    pub info: SessionInfo,
}

impl HolderState {
    pub fn new(info: SessionInfo) -> HolderState {
        HolderState { info }
    }

    /// Decides what `request` gets.
    pub fn on_request(&self, request: &Request) -> Action {
        if request.version != VERSION {
            return Action::Reply(Reply::Refused {
                reason: format!(
                    "the session's holder speaks version {VERSION} of the control protocol, this mirrord-net {}: use the same mirrord-net for up and exec",
                    request.version
                ),
            });
        }
        match (request.op, &self.info.phase) {
            (Op::Info, _) => Action::Reply(Reply::Info(self.info.clone())),
            (Op::Down, _) => Action::Shutdown,
            (Op::Join, Phase::Running) => Action::Join,
            (Op::Join, Phase::Ended(reason)) => Action::Reply(Reply::Ended {
                reason: reason.clone(),
            }),
        }
    }

    /// A command joined.
    pub fn command_started(&mut self) {
        self.info.commands += 1;
    }

    /// A joined command's connection closed.
    pub fn command_ended(&mut self) {
        self.info.commands = self.info.commands.saturating_sub(1);
    }

    /// The session ended by itself; returns what every joined command is told, `None` if it
    /// had already ended.
    pub fn ended(&mut self, reason: String) -> Option<Reply> {
        if let Phase::Ended(_) = self.info.phase {
            return None;
        }
        self.info.phase = Phase::Ended(reason.clone());
        Some(Reply::Ended { reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_net_protocol::framing::{encode_json, FrameDecoder};

    fn info() -> SessionInfo {
        SessionInfo {
            name: "api".into(),
            target: "pid/7".into(),
            pod: None,
            agent: "local pid 9".into(),
            addresses: vec!["10.0.0.2".parse().unwrap()],
            started: 1_700_000_000,
            commands: 0,
            phase: Phase::Running,
            holder_pid: 8,
            owner_uid: 1000,
        }
    }

    #[test]
    fn requests_and_replies_come_out_whole_whatever_the_pieces() {
        let mut bytes = encode_json(&Request::new(Op::Join));
        bytes.extend(encode_json(&Reply::Ended {
            reason: "agent lost".into(),
        }));
        let mut decoder = FrameDecoder::local();
        let mut requests = Vec::new();
        let mut replies = Vec::new();
        for byte in bytes {
            decoder.push(&[byte]);
            if requests.is_empty() {
                if let Some(request) = decoder.next_json_message::<Request>().unwrap() {
                    requests.push(request);
                }
            } else if let Some(reply) = decoder.next_json_message::<Reply>().unwrap() {
                replies.push(reply);
            }
        }
        assert_eq!(requests, [Request::new(Op::Join)]);
        assert_eq!(
            replies,
            [Reply::Ended {
                reason: "agent lost".into()
            }]
        );
        assert!(!decoder.has_partial_frame());
    }

    #[test]
    fn info_serializes_with_its_state_flat() {
        let mut state = HolderState::new(info());
        let json = serde_json::to_value(&state.info).unwrap();
        assert_eq!(json["state"], "running");
        assert_eq!(json["addresses"][0], "10.0.0.2");
        state.ended("the agent was lost".into());
        let json = serde_json::to_value(&state.info).unwrap();
        assert_eq!(json["state"], "ended");
        assert_eq!(json["reason"], "the agent was lost");
        let back: SessionInfo = serde_json::from_value(json).unwrap();
        assert_eq!(back, state.info);
    }

    #[test]
    fn only_the_owner_and_root_are_answered() {
        assert_eq!(authorize(1000, 1000), Ok(()));
        assert_eq!(authorize(0, 1000), Ok(()));
        let Err(reason) = authorize(65534, 1000) else {
            panic!("another user was let in")
        };
        assert!(reason.contains("uid 1000"), "{reason}");
    }

    #[test]
    fn a_running_session_is_joined_and_an_ended_one_says_why() {
        let mut state = HolderState::new(info());
        assert_eq!(state.on_request(&Request::new(Op::Join)), Action::Join);
        state.command_started();
        state.command_started();
        state.command_ended();
        assert_eq!(state.info.commands, 1);
        assert_eq!(
            state.ended("the agent was lost".into()),
            Some(Reply::Ended {
                reason: "the agent was lost".into()
            })
        );
        assert_eq!(state.ended("again".into()), None, "ends once");
        assert_eq!(
            state.on_request(&Request::new(Op::Join)),
            Action::Reply(Reply::Ended {
                reason: "the agent was lost".into()
            })
        );
        assert_eq!(state.on_request(&Request::new(Op::Down)), Action::Shutdown);
        assert!(matches!(
            state.on_request(&Request::new(Op::Info)),
            Action::Reply(Reply::Info(info)) if info.phase != Phase::Running
        ));
    }

    #[test]
    fn another_version_is_refused_with_the_fix() {
        let state = HolderState::new(info());
        let request = Request {
            version: VERSION + 1,
            op: Op::Info,
        };
        let Action::Reply(Reply::Refused { reason }) = state.on_request(&request) else {
            panic!("answered another version")
        };
        assert!(reason.contains("same mirrord-net"), "{reason}");
    }

    #[test]
    fn names_are_file_names_and_nothing_else() {
        for good in ["api", "ci-run.42", "A_b"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
