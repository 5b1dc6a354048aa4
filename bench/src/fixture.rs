//! The bench's pod: the tests crate's [`Pod`] (services and pod namespaces joined by a veth, a
//! target process in the pod namespace, names unique to this process) plus the bench's own
//! servers in the services namespace.
//!
//! Everything is owned here and released in `Drop`: the servers' process group first, then
//! the pod, whose `Drop` kills whatever still runs in its namespaces and deletes them. If the
//! harness itself is SIGKILLed, the next pod anyone builds (a test or a bench) sweeps the
//! names of dead processes, as the tests crate does for its own.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mirrord_net_tests::netns::Netns;
use mirrord_net_tests::process::Supervised;
use mirrord_net_tests::Pod;
use nix::sys::signal::Signal;

use crate::ports;
use mirrord_net_tests::cluster_path::ClusterLink;

pub struct Fixture {
    // Declared first so it is dropped before the pod's namespaces go.
    servers: Supervised,
    /// The target's own incoming service, in the pod's namespace.
    incoming: Supervised,
    /// The cluster-path mode's two namespaces and their veth.
    cluster_link: ClusterLink,
    pod: Pod,
}

impl Fixture {
    pub fn start() -> Result<Fixture> {
        let pod = Pod::builder().try_build().context("building the pod")?;
        let exe = std::env::current_exe()?;
        let mut command = pod
            .services_netns()
            .command(&exe.to_string_lossy())
            .context("preparing the servers")?;
        command.arg("__serve");
        let servers = Supervised::spawn(
            "bench-servers",
            command,
            &pod.dir().join("bench-servers.log"),
            Signal::SIGTERM,
        )?;
        let mut command = pod
            .pod_netns()
            .command(&exe.to_string_lossy())
            .context("preparing the incoming service")?;
        command.args(["__serve-incoming", "target"]);
        let incoming = Supervised::spawn(
            "bench-incoming",
            command,
            &pod.dir().join("bench-incoming.log"),
            Signal::SIGTERM,
        )?;
        let agent_binary =
            mirrord_net_tests::session::client_binary().with_file_name("mirrord-net-agent");
        let cluster_link = ClusterLink::create(
            &format!("{}{}", mirrord_net_tests::sweep::PREFIX, pod.id()),
            pod.dir(),
            &agent_binary,
        )
        .context("building the cluster-path link")?;
        let mut fixture = Fixture {
            servers,
            incoming,
            cluster_link,
            pod,
        };
        fixture.wait_ready()?;
        Ok(fixture)
    }

    /// Waits until every TCP server accepts a connection from the pod namespace (the path
    /// every client takes), and the target's incoming service one from the services namespace.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        for &port in ports::TCP_PORTS {
            wait_reachable(
                self.pod.pod_netns(),
                ports::addr(port),
                &mut self.servers,
                &format!("bench server on port {port}"),
                deadline,
            )?;
        }
        // The target's incoming service, as clients outside the pod reach it.
        wait_reachable(
            self.pod.services_netns(),
            ports::incoming_addr(),
            &mut self.incoming,
            "the target's incoming service",
            deadline,
        )
    }

    pub fn pod(&self) -> &Pod {
        &self.pod
    }

    pub fn cluster_link(&self) -> &ClusterLink {
        &self.cluster_link
    }

    /// Fails with the servers' log if they died during a run.
    pub fn check(&mut self) -> Result<()> {
        self.servers.ensure_running()?;
        self.incoming.ensure_running()
    }
}

/// Waits until `addr` accepts a connection from inside `from`, failing with `server`'s log
/// if it dies or `deadline` passes first.
fn wait_reachable(
    from: &Netns,
    addr: SocketAddr,
    server: &mut Supervised,
    what: &str,
    deadline: Instant,
) -> Result<()> {
    loop {
        let reachable =
            from.run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())?;
        if reachable {
            return Ok(());
        }
        server.ensure_running()?;
        if Instant::now() >= deadline {
            bail!("{what} not ready in 10 s; log:\n{}", server.log_tail(20));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
