//! The steal's redirect through iptables, where the target's namespace has no nftables.
//!
//! nftables is the first choice (`nft`): its table goes with the agent's socket. Where the
//! kernel has no nf_tables (built without it, or its module absent and not loadable from
//! the pod) or the user asks for iptables (`--redirect iptables`: a pod whose sidecar's own
//! redirects are iptables rules, which then see the steal's first), the redirect is an
//! iptables chain that a separate process keeps: see [`keeper`] for why and how, [`rules`]
//! for what the chain holds.
//!
//! [`Keeper`] is the agent's end: it starts the keeper before the agent drops privileges
//! and installs its seccomp filter, and talks to it over its stdin and stdout.

pub mod keeper;
pub mod rules;

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mirrord_net_fd_passing::send_with_fds;

/// The agent's end of a running keeper.
pub struct Keeper {
    child: Child,
    /// The requests and answers: a socket pair, the keeper's stdin and stdout, so that
    /// descriptors can travel with a request. Its closing tells the keeper its agent is gone.
    channel: UnixStream,
    answers: BufReader<UnixStream>,
    chain: String,
}

impl Keeper {
    /// Starts a keeper in the calling thread's network namespace and waits until its chain
    /// is in place.
    pub fn start() -> io::Result<Keeper> {
        let (channel, theirs) = UnixStream::pair()?;
        let theirs = OwnedFd::from(theirs);
        let mut child = Command::new("/proc/self/exe")
            .arg0("mirrord-net-agent")
            .arg(keeper::ARG)
            .stdin(Stdio::from(theirs.try_clone()?))
            .stdout(Stdio::from(theirs))
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("cannot start the iptables keeper: {err}"),
                )
            })?;
        let mut answers = BufReader::new(channel.try_clone()?);
        let mut line = String::new();
        answers.read_line(&mut line)?;
        let chain = match line.trim_end().split_once(' ') {
            Some(("ready", chain)) => chain.to_owned(),
            _ => {
                let _ = child.wait();
                let said = line.trim_end();
                let said = said.strip_prefix("error ").unwrap_or(said);
                return Err(io::Error::other(if said.is_empty() {
                    "the iptables keeper exited before its chain was ready".to_owned()
                } else {
                    said.to_owned()
                }));
            }
        };
        Ok(Keeper {
            child,
            channel,
            answers,
            chain,
        })
    }

    /// The keeper's chain in the `nat` table.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Gives the keeper a copy of the listeners the chain redirects to. Should the agent die
    /// at once (SIGKILL), a connection redirected before the keeper removes the chain waits
    /// in their queue instead of meeting a closed port, and the keeper takes it to the
    /// target.
    pub fn hand_listeners(&mut self, listeners: &[RawFd]) -> io::Result<()> {
        let request = b"listeners\n";
        let sent = send_with_fds(self.channel.as_fd(), request, listeners)?;
        if sent != request.len() {
            return Err(io::Error::other(
                "the iptables keeper took part of a request",
            ));
        }
        self.answer()
    }

    /// Redirects exactly `ports` (`(target port, agent listener port)`), atomically.
    pub fn set_ports(&mut self, ports: &[(u16, u16)]) -> io::Result<()> {
        self.channel.write_all(rules::request(ports).as_bytes())?;
        self.answer()
    }

    fn answer(&mut self) -> io::Result<()> {
        let mut line = String::new();
        if self.answers.read_line(&mut line)? == 0 {
            return Err(io::Error::other("the iptables keeper is gone"));
        }
        match line.trim_end() {
            "ok" => Ok(()),
            other => Err(io::Error::other(
                other.strip_prefix("error ").unwrap_or(other).to_owned(),
            )),
        }
    }
}

/// How long an agent ending normally waits for its keeper to take the chain away.
const KEEPER_GRACE: Duration = Duration::from_secs(3);

impl Drop for Keeper {
    /// Ends the requests, so the keeper removes the chain, and waits for it (bounded): an
    /// agent that has exited has then left no rule behind.
    fn drop(&mut self) {
        let _ = self.channel.shutdown(std::net::Shutdown::Write);
        let pid = self.child.id();
        let started = Instant::now();
        while started.elapsed() < KEEPER_GRACE {
            // SAFETY: a zeroed siginfo for waitid to fill.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on our own child; `waitid` (not `wait4`, which
            // `Child::try_wait` uses) is what the seccomp filter allows.
            let done =
                unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOHANG) };
            // SAFETY: si_pid is set by waitid when a child was reaped, zero otherwise.
            if done != 0 || unsafe { info.si_pid() } != 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        tracing::warn!(chain = %self.chain, "the iptables keeper did not exit within {KEEPER_GRACE:?}");
    }
}
