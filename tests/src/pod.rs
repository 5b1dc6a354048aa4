//! The `Pod` fixture: two network namespaces, the servers, and the target.
//!
//! Building one (see the crate docs for the picture) takes these steps, each undone by `Drop`
//! in reverse, also when the test panics:
//!
//! 1. sweep what dead test processes left, blackhole the test ranges on the host (once);
//! 2. a scratch directory with the pod's files: resolv.conf, hosts, pages, scripts;
//! 3. the services and pod namespaces, a veth between them, IPv4 and IPv6 (ULA) addresses,
//!    the pod's default routes via the services end;
//! 4. the servers, all spawned first and then waited for, so they start in parallel;
//! 5. the target, in the pod namespace with its own mount and UTS namespaces.
//!
//! When a test panics, `Drop` prints the end of every server's log before cleaning up.

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::netns::{self, Netns};
use crate::process::Supervised;
use crate::procfs;
use crate::servers::{Server, SCRIPTS};
use crate::sweep;
use crate::target::Target;
use crate::testdir::TestDir;
use crate::topology::*;

/// Which servers a pod runs. DNS and HTTP always; the rest on request.
#[derive(Debug, Clone)]
pub struct PodBuilder {
    servers: Vec<Server>,
    target_env: Vec<(OsString, OsString)>,
    hosts_names_hostname: bool,
    forwards: bool,
}

impl Default for PodBuilder {
    fn default() -> Self {
        PodBuilder {
            servers: vec![Server::Dns, Server::Http],
            target_env: Vec::new(),
            hosts_names_hostname: true,
            forwards: true,
        }
    }
}

impl PodBuilder {
    /// Starts the target with `name=value` in its environment, on top of the test's own.
    /// Names and values are bytes: anything but NUL (and `=` in names).
    pub fn target_env(mut self, name: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.target_env.push((name.into(), value.into()));
        self
    }

    /// The target's /etc/hosts has no line for its own hostname (as in a plain container).
    pub fn hosts_without_hostname(mut self) -> Self {
        self.hosts_names_hostname = false;
        self
    }

    /// The pod's namespace does not forward IPv4 (`net.ipv4.ip_forward=0`). By default it
    /// does, as a pod's namespace on a Kubernetes node inherits the node's setting.
    pub fn without_forwarding(mut self) -> Self {
        self.forwards = false;
        self
    }

    pub fn udp_echo(self) -> Self {
        self.with(Server::UdpEcho)
    }

    pub fn hold_echo(self) -> Self {
        self.with(Server::HoldEcho)
    }

    pub fn postgres(self) -> Self {
        self.with(Server::Postgres)
    }

    pub fn redis(self) -> Self {
        self.with(Server::Redis)
    }

    pub fn with(mut self, server: Server) -> Self {
        if !self.servers.contains(&server) {
            self.servers.push(server);
        }
        self
    }

    /// Builds the pod; panics with the reason (and server logs) if any step fails.
    #[track_caller]
    pub fn build(self) -> Pod {
        match self.try_build() {
            Ok(pod) => pod,
            Err(err) => panic!("building the pod failed: {err:#}"),
        }
    }

    pub fn try_build(self) -> Result<Pod> {
        let started = Instant::now();
        sweep::sweep_once();
        netns::guard_host_routes();
        let name = sweep::unique_name();
        let id = name.trim_start_matches(sweep::PREFIX).to_string();
        let mut pod = Pod {
            hostname: format!("pod-{id}"),
            hosts_names_hostname: self.hosts_names_hostname,
            id,
            servers: Vec::new(),
            target: None,
            pod_ns: None,
            services_ns: None,
            dir: None,
            build_time: Duration::ZERO,
        };
        let hosts = pod.hosts();
        let dir = pod.dir.insert(TestDir::create(&name)?);
        write_files(dir, &pod.id, &hosts)?;

        let services = pod
            .services_ns
            .insert(Netns::create(&format!("{name}-svc"))?);
        let pod_ns = pod.pod_ns.insert(Netns::create(&format!("{name}-pod"))?);
        wire(services, pod_ns, self.forwards)?;

        for server in &self.servers {
            let process = server.spawn(services, dir)?;
            pod.servers.push((*server, process));
        }
        for (server, process) in &mut pod.servers {
            if let Err(err) = server.wait_ready(services, dir) {
                process.ensure_running()?;
                return Err(err.context(format!(
                    "log of {}:\n{}",
                    process.name(),
                    process.log_tail(30)
                )));
            }
        }

        pod.target = Some(Target::start(
            pod_ns,
            dir,
            &dir.join("resolv.conf"),
            &dir.join("hosts"),
            &pod.hostname,
            &self.target_env,
        )?);
        pod.build_time = started.elapsed();
        Ok(pod)
    }
}

/// The two namespaces joined by a veth, addressed, with the pod's default routes; the pod's
/// namespace forwarding IPv4 when `forwards`.
fn wire(services: &Netns, pod: &Netns, forwards: bool) -> Result<()> {
    if forwards {
        let status = pod
            .command("sysctl")?
            .args(["-qw", "net.ipv4.ip_forward=1"])
            .status()
            .context("running sysctl")?;
        anyhow::ensure!(status.success(), "sysctl in the pod's namespace: {status}");
    }
    netns::veth_pair(pod, "eth0", services, "svc0")?;
    services.ip_batch(&format!(
        "link set lo up\n\
         link set svc0 up\n\
         addr add {SERVICES_V4}/{PREFIX_V4} dev svc0\n\
         addr add {SERVICES_V6}/{PREFIX_V6} dev svc0 nodad\n"
    ))?;
    pod.ip_batch(&format!(
        "link set lo up\n\
         link set eth0 up\n\
         addr add {POD_V4}/{PREFIX_V4} dev eth0\n\
         addr add {POD_V6}/{PREFIX_V6} dev eth0 nodad\n\
         route add default via {SERVICES_V4}\n\
         route add default via {SERVICES_V6}\n"
    ))
}

fn write_files(dir: &TestDir, id: &str, hosts: &str) -> Result<()> {
    dir.write("index.html", index_body(id).as_bytes(), 0o644)?;
    dir.write("data.json", data_json(id).as_bytes(), 0o644)?;
    dir.write("resolv.conf", resolv_conf().as_bytes(), 0o644)?;
    dir.write("hosts", hosts.as_bytes(), 0o644)?;
    for (name, text) in SCRIPTS {
        dir.write(name, text.as_bytes(), 0o755)?;
    }
    Ok(())
}

fn index_body(id: &str) -> String {
    format!("hello from web in pod {id}\n")
}

fn data_json(id: &str) -> String {
    format!("{{\"pod\": \"{id}\", \"service\": \"web\"}}\n")
}

/// The target's resolver configuration, as Kubernetes writes it for a pod.
fn resolv_conf() -> String {
    format!("nameserver {SERVICES_V4}\nsearch {SEARCH_DOMAIN}\noptions ndots:5\n")
}

fn hosts(hostname: &str, names_hostname: bool) -> String {
    let own = if names_hostname {
        format!("{POD_V4}\t{hostname}\n{POD_V6}\t{hostname}\n")
    } else {
        String::new()
    };
    format!(
        "127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         {own}\
         {SERVICES_V4}\t{HOSTS_ONLY_NAME}\n"
    )
}

/// A running pod. See the module docs.
#[derive(Debug)]
pub struct Pod {
    id: String,
    hostname: String,
    hosts_names_hostname: bool,
    servers: Vec<(Server, Supervised)>,
    target: Option<Target>,
    pod_ns: Option<Netns>,
    services_ns: Option<Netns>,
    dir: Option<TestDir>,
    build_time: Duration,
}

impl Pod {
    /// A pod with DNS and HTTP.
    #[track_caller]
    pub fn start() -> Pod {
        Pod::builder().build()
    }

    pub fn builder() -> PodBuilder {
        PodBuilder::default()
    }

    /// Unique among all live pods: `<test pid>-<n>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The target's hostname, `pod-<id>`.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn target_pid(&self) -> u32 {
        self.target().pid() as u32
    }

    /// The local agent a session on this pod's target started (`--target-pid <target>`),
    /// if one runs now.
    pub fn local_agent(&self) -> Option<i32> {
        let wanted = ["--target-pid".to_owned(), self.target_pid().to_string()];
        procfs::pids().into_iter().find(|&pid| {
            procfs::program_name(pid).is_some_and(|name| name == "mirrord-net-agent")
                && procfs::cmdline(pid).windows(2).any(|pair| pair == wanted)
        })
    }

    fn target(&self) -> &Target {
        self.target.as_ref().expect("a built pod has a target")
    }

    /// The pod's scratch directory (readable by every user).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("a built pod has a directory")
            .path()
    }

    /// The absolute path of one of the helper scripts (e.g. `many_connections.py`).
    pub fn script(&self, name: &str) -> String {
        assert!(
            SCRIPTS.iter().any(|(script, _)| *script == name),
            "no script {name}"
        );
        self.dir().join(name).to_string_lossy().into_owned()
    }

    /// What `GET /` returns.
    pub fn index_body(&self) -> String {
        index_body(&self.id)
    }

    /// The target's /etc/resolv.conf.
    pub fn resolv_conf(&self) -> String {
        resolv_conf()
    }

    /// The target's /etc/hosts.
    pub fn hosts(&self) -> String {
        hosts(&self.hostname, self.hosts_names_hostname)
    }

    pub fn pod_netns(&self) -> &Netns {
        self.pod_ns.as_ref().expect("a built pod has a pod netns")
    }

    pub fn services_netns(&self) -> &Netns {
        self.services_ns
            .as_ref()
            .expect("a built pod has a services netns")
    }

    /// The process groups of everything the fixture itself runs (target and servers), so
    /// leftover checks can tell them apart from what a session left.
    pub fn fixture_pgids(&self) -> Vec<i32> {
        self.servers
            .iter()
            .map(|(_, process)| process.pgid())
            .chain(self.target.iter().map(|target| target.process().pgid()))
            .collect()
    }

    /// How long building the pod took.
    pub fn build_time(&self) -> Duration {
        self.build_time
    }

    /// The last lines of every server's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for (_, process) in &self.servers {
            text.push_str(&format!(
                "--- {} log:\n{}\n",
                process.name(),
                process.log_tail(20)
            ));
        }
        text
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "pod {} (hostname {}), server logs:\n{}",
                self.id,
                self.hostname,
                self.logs()
            );
        }
        if let Some(mut target) = self.target.take() {
            target.stop();
        }
        while let Some((_, mut process)) = self.servers.pop() {
            process.stop();
        }
        // Deleting a namespace kills whatever else still runs in it (e.g. a stray agent).
        self.pod_ns.take();
        self.services_ns.take();
        self.dir.take();
    }
}
