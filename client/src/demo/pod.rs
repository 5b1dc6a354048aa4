//! The demo pod: a process with its own network, mount and UTS namespaces, made like a
//! container runtime makes a pod, and the handle that owns it.
//!
//! The parent ([`Pod::start`]) re-executes this binary as `__demo-pod` with a pod's environment
//! (`HOSTNAME`, `DEMO_GREETING`, Kubernetes' `HELLO_SERVICE_HOST`/`_PORT`), stdin closed and
//! stdout a pipe. Between fork and exec the child becomes a session leader (no controlling
//! terminal, so Ctrl-C meant for the user's command does not reach it) and asks for SIGKILL
//! when its parent dies (`PR_SET_PDEATHSIG`). The child ([`pod_main`]) then, single-threaded:
//!
//! 1. `unshare`s net, mount and UTS namespaces and makes every mount private, so that nothing
//!    it mounts propagates to the host;
//! 2. sets the hostname `demo-pod`;
//! 3. writes resolv.conf, hosts and hostname files in a tmpfs mounted on the scratch
//!    directory `/tmp`, binds each over its `/etc` file, and lazily unmounts the scratch: the
//!    binds keep the tmpfs alive, and `/tmp` is the host's again. A second tmpfs on `/srv`
//!    holds `/srv/demo/config.txt`, like a mounted ConfigMap;
//! 4. brings `lo` up and, over rtnetlink, creates `eth0` (one end of a veth pair whose peer
//!    `cluster0` stays in the pod; a veth because `dummy` is not in every kernel) with the
//!    pod's addresses 10.89.0.2/24 and fd89::2/64 (no DAD: usable at once);
//! 5. adds `local` routes for the service (10.89.0.10, fd89::10) and DNS (10.89.0.53)
//!    addresses. They answer inside the pod without being addresses of any interface: the
//!    agent gives a session every interface address of its target, and a session that owned
//!    10.89.0.10 would talk to itself instead of to the service;
//! 6. binds the HTTP service and the DNS server, writes `ready` on stdout and serves until
//!    killed. A failure before that is one `error: …` line instead.
//!
//! Everything the pod makes lives in its namespaces and dies with its process: the kernel
//! frees the namespaces, mounts and links when the last process in them exits. Nothing is
//! named in the host's global state and no file is written on the host's disks.

use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::TryStreamExt;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{
    dns, http, DNS_IPV4, POD_HOSTNAME, POD_IPV4, POD_IPV6, SEARCH, SERVICE_IPV4, SERVICE_IPV6,
    SERVICE_NAME, SERVICE_PORT,
};

/// How long the pod may take to report that it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The pod's lines to its parent.
const READY_LINE: &str = "ready";
const ERROR_PREFIX: &str = "error: ";
/// Where the pod writes its files before binding them, then unmounts again.
const SCRATCH: &str = "/tmp";
/// The pod's own volume and the file in it.
const VOLUME: &str = "/srv";
pub(crate) const CONFIG_FILE: &str = "/srv/demo/config.txt";
const POD_LINK: &str = "eth0";
const PEER_LINK: &str = "cluster0";
/// `ip route … table local`.
const RT_TABLE_LOCAL: u32 = 255;

/// A variable only the pod's environment has.
pub(crate) const GREETING_VAR: &str = "DEMO_GREETING";

/// The value of [`GREETING_VAR`], and the greeting in [`CONFIG_FILE`].
pub(crate) fn greeting() -> String {
    format!("Hello from {POD_HOSTNAME}")
}

/// The pod's environment: what a process of a Kubernetes pod with a `hello` service finds.
fn pod_env() -> Vec<(String, String)> {
    let service = SERVICE_NAME.to_ascii_uppercase();
    vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOSTNAME".into(), POD_HOSTNAME.into()),
        (GREETING_VAR.into(), greeting()),
        (format!("{service}_SERVICE_HOST"), SERVICE_IPV4.to_string()),
        (format!("{service}_SERVICE_PORT"), SERVICE_PORT.to_string()),
    ]
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("cannot start {path}: {source}")]
    Spawn { path: String, source: io::Error },
    #[error("{0}")]
    Setup(String),
    #[error("it exited before it was ready ({0})")]
    Exited(String),
    #[error("it was not ready within {0:?}")]
    Timeout(Duration),
}

/// The running pod. Killed when dropped; [`Pod::stop`] also waits for it.
#[derive(Debug)]
pub struct Pod {
    child: Child,
    pid: u32,
}

impl Pod {
    /// Starts `exe` as the pod and waits until it serves.
    pub async fn start(exe: &Path, verbose: bool) -> Result<Self, PodError> {
        let mut args = vec![super::POD_ARG];
        if verbose {
            args.push("--verbose");
        }
        Self::launch(exe, &args, &[]).await
    }

    async fn launch(
        exe: &Path,
        args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Result<Self, PodError> {
        let mut command = Command::new(exe);
        command
            .args(args)
            .env_clear()
            .envs(pod_env())
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: setsid, prctl and getppid are async-signal-safe, and the closure allocates
        // nothing, as required between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() < 0
                    || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before the death signal was armed.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|source| PodError::Spawn {
            path: exe.display().to_string(),
            source,
        })?;
        let pid = child.id().expect("a child that was just spawned has a pid");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await;
        match line {
            Ok(Ok(Some(line))) if line == READY_LINE => Ok(Self { child, pid }),
            Ok(Ok(Some(line))) => Err(PodError::Setup(
                line.strip_prefix(ERROR_PREFIX).unwrap_or(&line).to_owned(),
            )),
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = child.wait().await;
                Err(PodError::Exited(match status {
                    Ok(status) => status.to_string(),
                    Err(err) => err.to_string(),
                }))
            }
            Err(_) => Err(PodError::Timeout(READY_TIMEOUT)),
        }
    }

    /// The pod's process id: the target of a session on it.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills the pod and waits for it; its namespaces, mounts and links go with it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// What stopped the pod from starting, as its parent is told.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("cannot create its namespaces: {0}")]
    Namespaces(nix::Error),
    #[error("cannot make its mounts private: {0}")]
    PrivateMounts(nix::Error),
    #[error("cannot set its hostname: {0}")]
    Hostname(nix::Error),
    #[error("cannot {what}: {source}")]
    Files { what: String, source: io::Error },
    #[error("cannot start its async runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot open a netlink socket: {0}")]
    Netlink(io::Error),
    #[error("cannot {what} (netlink): {source}")]
    Network {
        what: &'static str,
        source: rtnetlink::Error,
    },
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: io::Error },
}

fn files_error(what: impl Into<String>) -> impl FnOnce(nix::Error) -> SetupError {
    let what = what.into();
    move |err| SetupError::Files {
        what,
        source: err.into(),
    }
}

/// Entry point of `mirrord-net __demo-pod [--verbose]`. Must run before any other thread.
pub fn pod_main() -> ! {
    // Only `Pod::start` arms the death signal; a pod started by hand would outlive its shell.
    let mut death_signal: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int through the pointer it is given.
    let armed =
        unsafe { libc::prctl(libc::PR_GET_PDEATHSIG, &mut death_signal) } == 0 && death_signal != 0;
    if !armed {
        eprintln!(
            "mirrord-net: {} is started by `mirrord-net demo`, not by hand",
            super::POD_ARG
        );
        std::process::exit(2);
    }
    let verbose = std::env::args_os().skip(2).any(|arg| arg == "--verbose");
    run_pod(verbose)
}

fn run_pod(verbose: bool) -> ! {
    let servers = enter_namespaces()
        .and_then(|()| make_files())
        .and_then(|()| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(SetupError::Runtime)
        })
        .and_then(|runtime| {
            let servers = runtime.block_on(async {
                configure_network().await?;
                Servers::bind()
            })?;
            Ok((runtime, servers))
        });
    let mut parent = io::stdout().lock();
    let (runtime, servers) = match servers {
        Ok(ready) => ready,
        Err(err) => {
            let _ = writeln!(parent, "{ERROR_PREFIX}{err}");
            std::process::exit(1);
        }
    };
    if writeln!(parent, "{READY_LINE}")
        .and_then(|()| parent.flush())
        .is_err()
    {
        // Nobody is waiting for this pod.
        std::process::exit(1);
    }
    drop(parent);
    let err = runtime.block_on(servers.serve(verbose));
    eprintln!("{POD_HOSTNAME}: {err}");
    std::process::exit(1);
}

fn enter_namespaces() -> Result<(), SetupError> {
    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(SetupError::Namespaces)?;
    mirrord_net_session::make_private().map_err(SetupError::PrivateMounts)?;
    nix::unistd::sethostname(POD_HOSTNAME).map_err(SetupError::Hostname)
}

fn resolv_conf() -> String {
    format!(
        "# The resolver of the mirrord-net demo pod, as Kubernetes writes it.\n\
         search {}\nnameserver {DNS_IPV4}\noptions ndots:5\n",
        SEARCH.join(" ")
    )
}

fn hosts() -> String {
    format!(
        "# Kubernetes-managed hosts file of the mirrord-net demo pod.\n\
         127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         {POD_IPV4}\t{POD_HOSTNAME}\n{POD_IPV6}\t{POD_HOSTNAME}\n"
    )
}

fn config() -> String {
    format!(
        "# The configuration of the mirrord-net demo pod, mounted like a ConfigMap.\n\
         greeting = {}\nservice = http://{SERVICE_NAME}/\n",
        greeting()
    )
}

fn mount_tmpfs(at: &str) -> Result<(), SetupError> {
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=1m"),
    )
    .map_err(files_error(format!("mount a tmpfs on {at}")))
}

fn write_file(path: &Path, contents: &str) -> Result<(), SetupError> {
    fs::write(path, contents).map_err(|source| SetupError::Files {
        what: format!("write {}", path.display()),
        source,
    })
}

/// The pod's /etc files and its volume; see the module documentation.
fn make_files() -> Result<(), SetupError> {
    mount_tmpfs(SCRATCH)?;
    let files = [
        ("resolv.conf", resolv_conf(), true),
        ("hosts", hosts(), true),
        ("hostname", format!("{POD_HOSTNAME}\n"), false),
    ];
    for (name, contents, required) in files {
        let source = Path::new(SCRATCH).join(name);
        let target = Path::new("/etc").join(name);
        // A missing optional file is left missing: creating it would write on the host.
        if !required && !target.exists() {
            continue;
        }
        write_file(&source, &contents)?;
        mount(
            Some(&source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(files_error(format!(
            "mount the pod's {name} over {}",
            target.display()
        )))?;
    }
    umount2(SCRATCH, MntFlags::MNT_DETACH).map_err(files_error(format!(
        "unmount the scratch tmpfs on {SCRATCH}"
    )))?;

    if Path::new(VOLUME).is_dir() {
        mount_tmpfs(VOLUME)?;
        let file = Path::new(CONFIG_FILE);
        let dir = file.parent().expect("the config file is in a directory");
        fs::create_dir(dir).map_err(|source| SetupError::Files {
            what: format!("create {}", dir.display()),
            source,
        })?;
        write_file(file, &config())?;
    }
    Ok(())
}

/// `lo` up, `eth0` with the pod's addresses, local routes for the service and DNS addresses.
async fn configure_network() -> Result<(), SetupError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(SetupError::Netlink)?;
    tokio::spawn(connection);
    let net = |what| move |source| SetupError::Network { what, source };

    let lo = link_index(&handle, "lo").await.map_err(net("find lo"))?;
    set_up(&handle, lo).await.map_err(net("bring lo up"))?;
    handle
        .link()
        .add(LinkVeth::new(POD_LINK, PEER_LINK).build())
        .execute()
        .await
        .map_err(net("create the veth pair eth0/cluster0"))?;
    let eth0 = link_index(&handle, POD_LINK)
        .await
        .map_err(net("find eth0"))?;
    let peer = link_index(&handle, PEER_LINK)
        .await
        .map_err(net("find cluster0"))?;
    set_up(&handle, peer)
        .await
        .map_err(net("bring cluster0 up"))?;
    set_up(&handle, eth0).await.map_err(net("bring eth0 up"))?;

    handle
        .address()
        .add(eth0, IpAddr::V4(POD_IPV4), 24)
        .execute()
        .await
        .map_err(net("add 10.89.0.2/24 to eth0"))?;
    let mut v6 = handle.address().add(eth0, IpAddr::V6(POD_IPV6), 64);
    v6.message_mut()
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    v6.execute().await.map_err(net("add fd89::2/64 to eth0"))?;

    for address in [SERVICE_IPV4, DNS_IPV4] {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(address, 32)
            .output_interface(lo)
            .pref_source(POD_IPV4)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(RT_TABLE_LOCAL)
            .build();
        handle
            .route()
            .add(route)
            .execute()
            .await
            .map_err(net("add a local route for a service address"))?;
    }
    let route = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(SERVICE_IPV6, 128)
        .output_interface(lo)
        .pref_source(POD_IPV6)
        .kind(RouteType::Local)
        .table_id(RT_TABLE_LOCAL)
        .build();
    handle
        .route()
        .add(route)
        .execute()
        .await
        .map_err(net("add a local route for fd89::10"))
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, rtnetlink::Error> {
    let link = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await?;
    link.map(|link| link.header.index)
        .ok_or(rtnetlink::Error::RequestFailed)
}

async fn set_up(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

/// The pod's listening sockets.
struct Servers {
    http: Vec<tokio::net::TcpListener>,
    dns: tokio::net::UdpSocket,
}

impl Servers {
    fn bind() -> Result<Self, SetupError> {
        let http = [IpAddr::V4(SERVICE_IPV4), IpAddr::V6(SERVICE_IPV6)]
            .into_iter()
            .map(|ip| tcp_listener(SocketAddr::new(ip, SERVICE_PORT)))
            .collect::<Result<_, _>>()?;
        let address = SocketAddr::from((DNS_IPV4, 53));
        let dns = std::net::UdpSocket::bind(address)
            .and_then(|socket| {
                socket.set_nonblocking(true)?;
                tokio::net::UdpSocket::from_std(socket)
            })
            .map_err(|source| SetupError::Listen {
                address: address.to_string(),
                source,
            })?;
        Ok(Self { http, dns })
    }

    /// Serves until a server fails; returns why.
    async fn serve(self, verbose: bool) -> String {
        let mut tasks = tokio::task::JoinSet::new();
        for listener in self.http {
            tasks.spawn(async move { ("the HTTP service", http::serve(listener, verbose).await) });
        }
        let zone = dns::Zone::demo();
        tasks.spawn(async move { ("the DNS server", dns::serve(self.dns, zone, verbose).await) });
        match tasks.join_next().await {
            Some(Ok((what, Err(err)))) => format!("{what} failed: {err}"),
            Some(Ok((what, Ok(())))) => format!("{what} stopped"),
            Some(Err(err)) => format!("a server task failed: {err}"),
            None => "no servers".to_owned(),
        }
    }
}

/// A listener on `address`. The service addresses are local routes, not interface
/// addresses: IPv4 binds to them as they are, IPv6 needs `IPV6_FREEBIND`.
fn tcp_listener(address: SocketAddr) -> Result<tokio::net::TcpListener, SetupError> {
    let listen = || -> io::Result<tokio::net::TcpListener> {
        let socket = Socket::new(
            Domain::for_address(address),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        if address.is_ipv6() {
            socket.set_only_v6(true)?;
            socket.set_freebind_ipv6(true)?;
        }
        socket.bind(&address.into())?;
        socket.listen(128)?;
        socket.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(socket.into())
    };
    listen().map_err(|source| SetupError::Listen {
        address: address.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests;
