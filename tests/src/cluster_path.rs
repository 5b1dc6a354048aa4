//! The cluster path: the mirrord-net client and its agent in two network namespaces of their
//! own, joined by a veth of MTU 1500 (the bench's cluster-path mode, and the tests of a
//! session across a network cut).
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
//!
//! Faults go on the link as nftables rules in the client's namespace (this kernel has no
//! netem): [`ClusterLink::cut`] drops every packet both ways on the client's end,
//! [`ClusterLink::lose`] a random share of them. Each is a table of its own, removed with
//! [`ClusterLink::heal`] or with the namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::netns::{self, Netns};
use crate::tools::tool;

const CLIENT_IF: &str = "cl0";
const AGENT_IF: &str = "ag0";
const CLIENT_ADDR: &str = "198.18.0.1";
const AGENT_ADDR: &str = "198.18.0.2";
const MTU: u32 = 1500;
/// The nftables table of a fault on the link (in the client's namespace).
const FAULT_TABLE: &str = "mnet_link_fault";

pub struct ClusterLink {
    client: Netns,
    // The namespace (and an agent left in it) goes with the link.
    agent: Netns,
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
            agent,
            agent_script,
        })
    }

    /// The agent's address on the link.
    pub fn agent_addr(&self) -> &'static str {
        AGENT_ADDR
    }

    /// The client's namespace.
    pub fn client_netns(&self) -> &Netns {
        &self.client
    }

    /// Drops every packet crossing the link, both ways, until [`ClusterLink::heal`].
    pub fn cut(&self) -> Result<()> {
        self.fault("drop", "drop")
    }

    /// Cuts the link and breaks the client's TCP connections across it, as a port-forward
    /// that drops does: each segment the client sends is answered with a reset.
    pub fn cut_and_reset(&self) -> Result<()> {
        self.fault(
            "drop",
            &format!("meta l4proto tcp reject with tcp reset; oifname {CLIENT_IF} drop"),
        )
    }

    /// Drops `percent` of the packets crossing the link, each way, at random.
    pub fn lose(&self, percent: u8) -> Result<()> {
        let verdict = format!("numgen random mod 100 < {percent} drop");
        self.fault(&verdict, &verdict)
    }

    /// Makes the link hostile for the rest of its life, both ways: each packet that leaves
    /// either end is dropped, sent twice, or held back behind later ones, each with a chance
    /// of `percent` in a hundred. There is no netem here, so the three are built from what
    /// the kernel has: nftables on the interface's egress hook drops (`numgen`), duplicates
    /// (`dup to` the same interface, whose copy skips the hook) and marks packets to hold
    /// back (`meta priority`), and an HTB class of 20 Mbit/s with a 32-packet queue holds
    /// the marked ones back (0.6 ms each at the link's MTU, up to ~18 ms behind the others;
    /// beyond that queue they are lost as well).
    pub fn disorder(&self, percent: u8) -> Result<()> {
        for (ns, ifname) in [(&self.client, CLIENT_IF), (&self.agent, AGENT_IF)] {
            for tc in [
                format!("qdisc add dev {ifname} root handle 1: htb default 10"),
                format!("class add dev {ifname} parent 1: classid 1:10 htb rate 100gbit quantum 200000"),
                format!("class add dev {ifname} parent 1: classid 1:20 htb rate 20mbit ceil 20mbit quantum 1514"),
                format!("qdisc add dev {ifname} parent 1:20 pfifo limit 32"),
            ] {
                let out = ns
                    .command(&tool("tc"))?
                    .args(tc.split_whitespace())
                    .output()
                    .context("running tc")?;
                if !out.status.success() {
                    bail!(
                        "tc {tc} in {}: {}",
                        ns.name(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
            }
            nft_in(
                ns,
                &format!(
                    "table netdev {FAULT_TABLE} {{\n\
                     chain egress {{ type filter hook egress device {ifname} priority 0; }}\n\
                     }}\n\
                     add rule netdev {FAULT_TABLE} egress numgen random mod 100 < {percent} drop\n\
                     add rule netdev {FAULT_TABLE} egress numgen random mod 100 < {percent} dup to {ifname}\n\
                     add rule netdev {FAULT_TABLE} egress numgen random mod 100 < {percent} meta priority set 1:20\n"
                ),
            )?;
        }
        Ok(())
    }

    /// Removes the fault: the link passes everything again.
    pub fn heal(&self) -> Result<()> {
        self.nft(&format!("delete table inet {FAULT_TABLE}\n"))
    }

    /// Rules for packets coming in from the link and going out to it (the interface is
    /// matched first).
    fn fault(&self, incoming: &str, outgoing: &str) -> Result<()> {
        self.nft(&format!(
            "table inet {FAULT_TABLE} {{\n\
             chain in {{ type filter hook input priority -300; iifname {CLIENT_IF} {incoming}; }}\n\
             chain out {{ type filter hook output priority -300; oifname {CLIENT_IF} {outgoing}; }}\n\
             }}\n"
        ))
    }

    fn nft(&self, script: &str) -> Result<()> {
        nft_in(&self.client, script)
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

/// Applies an nftables script in `ns`.
fn nft_in(ns: &Netns, script: &str) -> Result<()> {
    use std::io::Write;
    let mut command = ns.command(&tool("nft"))?;

    command
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("starting nft")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {}: {}\n{script}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} executable", path.display()))
}
