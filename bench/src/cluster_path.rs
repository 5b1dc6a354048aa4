//! The link of the cluster-path mode: the mirrord-net client and its agent in two network
//! namespaces of their own, joined by a veth of MTU 1500.
//!
//! ```text
//!  client netns <id>-cl              agent netns <id>-ag              target (the pod)
//!  mirrord-net exec ─ cl0 198.18.0.1 ══ veth, MTU 1500 ══ ag0 198.18.0.2 ─ agent ─ setns ─▶
//! ```
//!
//! That is what a Kubernetes agent's direct transport sees: QUIC datagrams of at most one
//! MTU on a real link, not loopback's 64 KiB. The agent is the ordinary local agent, started
//! by the client through `MIRRORD_NET_AGENT` pointing at a script that enters the agent's
//! namespace first (`nsenter --net` execs, so the client's child is the agent itself), and
//! told by `MIRRORD_NET_LOCAL_AGENT_LISTEN` to listen on the link's far end, both ends then
//! using the network path profile. Everything else about the session is as in the other
//! modes, so the rows compare paths, not setups.
//!
//! The addresses come from 198.18.0.0/15, the range set aside for benchmarks (RFC 2544);
//! each namespace is private to this run, so runs in parallel do not collide.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use mirrord_net_tests::netns::{self, Netns};
use mirrord_net_tests::tool;

const CLIENT_IF: &str = "cl0";
const AGENT_IF: &str = "ag0";
const CLIENT_ADDR: &str = "198.18.0.1";
const AGENT_ADDR: &str = "198.18.0.2";
const MTU: u32 = 1500;

pub struct ClusterLink {
    client: Netns,
    // Kept for its `Drop`: the namespace (and an agent left in it) goes with the link.
    _agent: Netns,
    agent_script: PathBuf,
}

impl ClusterLink {
    /// Makes both namespaces and the veth, and the agent's wrapper script in `dir`.
    pub fn create(name: &str, dir: &Path, agent_binary: &Path) -> Result<ClusterLink> {
        let client = Netns::create(&format!("{name}-cl"))?;
        let agent = Netns::create(&format!("{name}-ag"))?;
        netns::veth_pair(&client, CLIENT_IF, &agent, AGENT_IF)?;
        for (ns, ifname, addr) in [
            (&client, CLIENT_IF, CLIENT_ADDR),
            (&agent, AGENT_IF, AGENT_ADDR),
        ] {
            ns.ip_batch(&format!(
                "link set lo up\n\
                 link set {ifname} mtu {MTU} up\n\
                 addr add {addr}/30 dev {ifname}\n"
            ))?;
        }
        let agent_script = dir.join("agent-on-cluster-path.sh");
        std::fs::write(
            &agent_script,
            format!(
                "#!/bin/sh\nexec {} --net={} -- {} \"$@\"\n",
                tool("nsenter"),
                agent.path().display(),
                agent_binary.display()
            ),
        )
        .with_context(|| format!("writing {}", agent_script.display()))?;
        set_executable(&agent_script)?;
        Ok(ClusterLink {
            client,
            _agent: agent,
            agent_script,
        })
    }

    /// `command` (a `mirrord-net exec`) run in the client's namespace, its agent in the
    /// agent's, the session's packets on the QUIC tunnel across the link.
    pub fn wrap(&self, command: &Command) -> Result<Command> {
        let mut wrapped = self
            .client
            .command(&command.get_program().to_string_lossy())?;
        wrapped.args(command.get_args()).env_clear();
        for (key, value) in command.get_envs() {
            if let Some(value) = value {
                wrapped.env(key, value);
            }
        }
        wrapped
            .env("MIRRORD_NET_AGENT", &self.agent_script)
            .env("MIRRORD_NET_LOCAL_AGENT_LISTEN", format!("{AGENT_ADDR}:0"));
        Ok(wrapped)
    }
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}
