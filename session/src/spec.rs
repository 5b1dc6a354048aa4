//! What a session is made of, as the caller describes it, and its translation into the
//! child's wire spec.
//!
//! [`SessionSpec`] is the caller's view: the target's addresses, MTU, hostname, files, the
//! command and who runs it. [`SessionOptions`] holds what only tests and future modes change
//! (which binary to re-execute, the privilege model, extra files). Everything is checked here,
//! in the client, before a process is started: a NUL byte in argv or an over-long hostname is
//! the caller's mistake and is reported as such, not as a failed system call in the child.

use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use super::child_messages::{
    ChildSpec, FileOverlay, ResolvedUser, SessionPrivileges, PROTOCOL_VERSION,
};
use super::dns_filter::DnsRules;
use super::outgoing::{resolver_destinations, Destination, OutgoingRules};

/// Where the session shows the target's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Where the session shows the target's hosts file.
pub const HOSTS: &str = "/etc/hosts";
/// Name of the session's TUN device unless [`SessionOptions::tun_name`] says otherwise.
pub const DEFAULT_TUN_NAME: &str = "mnet0";

/// Longest hostname the kernel accepts (`HOST_NAME_MAX`).
const HOSTNAME_MAX: usize = 64;
/// Longest interface name (`IFNAMSIZ` minus the NUL).
const IFNAME_MAX: usize = 15;

/// The session's TUN name for a target whose address is on `target_interface`: that name,
/// so that programs looking up their interface by name (`eth0` in most pods) find it, unless
/// the session could not use it (`lo`, which the session has already, or a name the kernel
/// refuses).
pub fn tun_name_for(target_interface: Option<&str>) -> String {
    match target_interface {
        Some(name) if name != "lo" && is_interface_name(name) => name.to_owned(),
        _ => DEFAULT_TUN_NAME.to_owned(),
    }
}

/// What the kernel accepts as a new interface's name (`dev_valid_name`).
fn is_interface_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !bytes
            .iter()
            .any(|&b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b':')
}

/// What the session looks like and what runs in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSpec {
    /// The target's IPv4 addresses, put on the TUN as /32.
    pub ipv4: Vec<Ipv4Addr>,
    /// The target's IPv6 addresses, put on the TUN as /128 without duplicate address detection.
    pub ipv6: Vec<Ipv6Addr>,
    /// The TUN device's MTU (the tunnel's datagram size).
    pub mtu: u16,
    /// The session's hostname; empty keeps the host's.
    pub hostname: String,
    /// What `/etc/resolv.conf` shows in the session; `None` keeps the host's.
    pub resolv_conf: Option<Vec<u8>>,
    /// What `/etc/hosts` shows in the session; `None` keeps the host's.
    pub hosts: Option<Vec<u8>>,
    /// argv of the command, non-empty; `argv[0]` is searched in `PATH` like a shell does.
    pub command: Vec<OsString>,
    /// Who the command runs as; `None` keeps root.
    pub run_as: Option<RunAs>,
    /// The command's whole environment; `None` inherits the client's.
    pub env: Option<Vec<(OsString, OsString)>>,
    /// Assignments applied after the identity variables (HOME, USER, LOGNAME of `run_as`), in
    /// order, so that they win over everything: `--env-file` and `-e`.
    pub env_overrides: Vec<(OsString, OsString)>,
}

/// A uid and primary gid to run the command as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Knobs of [`Session::start_with`](super::Session::start_with) that ordinary callers leave
/// at their defaults.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// The binary re-executed as `PROGRAM __session FD`; it must dispatch that to
    /// [`child_main`](super::child_main). `None` means `/proc/self/exe`.
    pub program: Option<PathBuf>,
    pub privileges: SessionPrivileges,
    /// Name of the TUN device inside the session.
    pub tun_name: String,
    /// How long the child may take to build the session before it is killed.
    pub setup_timeout: Duration,
    /// More files to show in the session, after resolv.conf and hosts: absolute target path
    /// and contents.
    pub extra_files: Vec<(PathBuf, Vec<u8>)>,
    /// Open the TUN with virtio-net headers and checksum offload, for a reader that
    /// handles them (a local agent's stack); the session then gives it out only as a
    /// descriptor ([`take_tun_fd`](super::Session::take_tun_fd)).
    pub tun_offload: bool,
    /// Virtio-net headers with checksum and TCP segmentation offload: the session's kernel hands over
    /// 64 KiB super-segments and takes coalesced ones (`tunnel::offload`).
    pub tun_segmentation: bool,
    /// Send the session's connections to `127.0.0.0/8` and `::1` to the target's loopback,
    /// except ports a program of the session serves ([`loopback`](super::loopback)).
    pub target_localhost: bool,
    /// The outgoing filter: flows it keeps local leave from the host
    /// ([`outgoing`](super::outgoing)). Its `exempt` list is filled in from the spec.
    pub outgoing: Option<OutgoingRules>,
    /// The DNS filter: the names this machine's resolver answers
    /// ([`dns_filter`](super::dns_filter)).
    pub dns: Option<DnsRules>,
    /// The routed path: the pid of a local target whose network namespace the session's is
    /// joined to by a veth, for the session's IPv4 flows to other hosts
    /// ([`routed`](super::routed)). Root sessions only.
    pub routed_target: Option<u32>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            program: None,
            privileges: SessionPrivileges::Root,
            tun_name: DEFAULT_TUN_NAME.to_owned(),
            setup_timeout: Duration::from_secs(30),
            extra_files: Vec::new(),
            tun_offload: false,
            tun_segmentation: false,
            target_localhost: false,
            outgoing: None,
            dns: None,
            routed_target: None,
        }
    }
}

/// Starts serving the session's FUSE device; what it returns is kept as long as the session.
pub type ServeFiles =
    Box<dyn FnOnce(std::os::fd::OwnedFd) -> std::io::Result<Box<dyn std::any::Any + Send>> + Send>;

/// The target's files in the session: where its root is mounted, what is shown over local
/// paths, and who serves the FUSE device the child mounts.
pub struct RemoteFiles {
    pub mount_point: PathBuf,
    pub writable: bool,
    pub binds: Vec<PathBuf>,
    pub keep_local: Vec<PathBuf>,
    pub serve: ServeFiles,
}

impl RemoteFiles {
    pub(crate) fn wire(&self) -> super::child_messages::RemoteFilesSpec {
        let bytes = |path: &PathBuf| path.as_os_str().as_bytes().to_vec();
        super::child_messages::RemoteFilesSpec {
            mount_point: bytes(&self.mount_point),
            writable: self.writable,
            binds: self.binds.iter().map(bytes).collect(),
            keep_local: self.keep_local.iter().map(bytes).collect(),
        }
    }
}

/// A spec the child could not honour, found before starting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSpec {
    #[error("the command to run is empty")]
    EmptyCommand,
    #[error("argument {0} of the command contains a NUL byte")]
    NulInArgument(usize),
    #[error("environment variable {0:?} has an invalid name or a NUL byte")]
    BadEnvironment(String),
    #[error("hostname {0:?} is longer than {HOSTNAME_MAX} bytes or contains a NUL byte")]
    BadHostname(String),
    #[error("TUN device name {0:?} is empty, longer than {IFNAME_MAX} bytes or not a plain name")]
    BadTunName(String),
    #[error("file target {0:?} is not an absolute path")]
    BadFileTarget(PathBuf),
    #[error("MTU {0} is below the IPv4 minimum of 68")]
    MtuTooSmall(u16),
    #[error(
        "a session without root runs the command as its own user (or as root inside with \
         --as-root); it cannot switch to uid {0}"
    )]
    RunAsWithoutRoot(u32),
}

/// Checks `spec` and `options`, and builds the child's wire spec.
pub(crate) fn child_spec(
    spec: &SessionSpec,
    options: &SessionOptions,
    user: Option<ResolvedUser>,
) -> Result<ChildSpec, InvalidSpec> {
    if spec.command.is_empty() {
        return Err(InvalidSpec::EmptyCommand);
    }
    if let Some(index) = spec
        .command
        .iter()
        .position(|arg| arg.as_bytes().contains(&0))
    {
        return Err(InvalidSpec::NulInArgument(index));
    }
    for (key, value) in spec.env.iter().flatten().chain(&spec.env_overrides) {
        {
            let key_bytes = key.as_bytes();
            if key_bytes.is_empty()
                || key_bytes.contains(&b'=')
                || key_bytes.contains(&0)
                || value.as_bytes().contains(&0)
            {
                return Err(InvalidSpec::BadEnvironment(
                    key.to_string_lossy().into_owned(),
                ));
            }
        }
    }
    let hostname = spec.hostname.as_bytes();
    if hostname.len() > HOSTNAME_MAX || hostname.contains(&0) {
        return Err(InvalidSpec::BadHostname(spec.hostname.clone()));
    }
    if !is_interface_name(&options.tun_name) {
        return Err(InvalidSpec::BadTunName(options.tun_name.clone()));
    }
    if spec.mtu < 68 {
        return Err(InvalidSpec::MtuTooSmall(spec.mtu));
    }
    if let (SessionPrivileges::Rootless(_), Some(run_as)) = (options.privileges, spec.run_as) {
        return Err(InvalidSpec::RunAsWithoutRoot(run_as.uid));
    }

    let mut files = Vec::new();
    if let Some(contents) = &spec.resolv_conf {
        files.push(FileOverlay {
            target: RESOLV_CONF.as_bytes().to_vec(),
            contents: contents.clone(),
        });
    }
    if let Some(contents) = &spec.hosts {
        files.push(FileOverlay {
            target: HOSTS.as_bytes().to_vec(),
            contents: contents.clone(),
        });
    }
    for (target, contents) in &options.extra_files {
        if !target.is_absolute() || target.as_os_str().as_bytes().contains(&0) {
            return Err(InvalidSpec::BadFileTarget(target.clone()));
        }
        files.push(FileOverlay {
            target: target.as_os_str().as_bytes().to_vec(),
            contents: contents.clone(),
        });
    }

    Ok(ChildSpec {
        version: PROTOCOL_VERSION,
        privileges: options.privileges,
        tun_name: options.tun_name.clone(),
        ipv4: spec.ipv4.clone(),
        ipv6: spec.ipv6.clone(),
        mtu: spec.mtu,
        hostname: spec.hostname.clone(),
        files,
        command: spec
            .command
            .iter()
            .map(|arg| arg.as_bytes().to_vec())
            .collect(),
        user,
        env: spec.env.as_ref().map(|env| {
            env.iter()
                .map(|(key, value)| (key.as_bytes().to_vec(), value.as_bytes().to_vec()))
                .collect()
        }),
        env_overrides: spec
            .env_overrides
            .iter()
            .map(|(key, value)| (key.as_bytes().to_vec(), value.as_bytes().to_vec()))
            .collect(),
        remote_files: None,
        tun_offload: options.tun_offload || options.tun_segmentation,
        tun_segmentation: options.tun_segmentation,
        target_localhost: options.target_localhost,
        outgoing: options.outgoing.clone().map(|mut rules| {
            // The session's resolvers and its own addresses never leave from the host.
            rules.exempt = spec
                .resolv_conf
                .as_deref()
                .map(resolver_destinations)
                .unwrap_or_default();
            rules.exempt.extend(
                spec.ipv4
                    .iter()
                    .map(|a| Destination::host((*a).into()))
                    .chain(spec.ipv6.iter().map(|a| Destination::host((*a).into()))),
            );
            rules
        }),
        dns_resolvers: options.dns.as_ref().map(|_| {
            spec.resolv_conf
                .as_deref()
                .map(resolver_destinations)
                .unwrap_or_default()
                .into_iter()
                .map(|d| d.addr)
                .collect()
        }),
        // A rootless session cannot change the target's namespace.
        routed_target: options
            .routed_target
            .filter(|_| options.privileges == SessionPrivileges::Root),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::child_messages::IdMaps;

    fn spec() -> SessionSpec {
        SessionSpec {
            ipv4: vec![Ipv4Addr::new(10, 0, 0, 9)],
            ipv6: vec![],
            mtu: 1400,
            hostname: "pod".into(),
            resolv_conf: Some(b"nameserver 10.96.0.10\n".to_vec()),
            hosts: None,
            command: vec!["true".into()],
            run_as: None,
            env: None,
            env_overrides: Vec::new(),
        }
    }

    #[test]
    fn resolv_conf_and_hosts_become_file_overlays_in_order() {
        let mut spec = spec();
        spec.hosts = Some(b"127.0.0.1 localhost\n".to_vec());
        let options = SessionOptions {
            extra_files: vec![("/var/run/token".into(), b"t".to_vec())],
            ..SessionOptions::default()
        };
        let child = child_spec(&spec, &options, None).unwrap();
        let targets: Vec<_> = child.files.iter().map(|f| f.target.as_slice()).collect();
        assert_eq!(
            targets,
            [
                b"/etc/resolv.conf".as_slice(),
                b"/etc/hosts",
                b"/var/run/token"
            ]
        );
    }

    #[test]
    fn nothing_to_overlay_when_the_host_files_are_kept() {
        let mut spec = spec();
        spec.resolv_conf = None;
        let child = child_spec(&spec, &SessionOptions::default(), None).unwrap();
        assert!(child.files.is_empty());
        assert_eq!(child.tun_name, DEFAULT_TUN_NAME);
        assert_eq!(child.version, PROTOCOL_VERSION);
    }

    #[test]
    fn caller_mistakes_are_found_before_anything_starts() {
        let options = SessionOptions::default();
        let mut bad = spec();
        bad.command.clear();
        assert_eq!(
            child_spec(&bad, &options, None),
            Err(InvalidSpec::EmptyCommand)
        );

        let mut bad = spec();
        bad.command.push(OsString::from("a\0b"));
        assert_eq!(
            child_spec(&bad, &options, None),
            Err(InvalidSpec::NulInArgument(1))
        );

        let mut bad = spec();
        bad.env = Some(vec![("A=B".into(), "c".into())]);
        assert!(matches!(
            child_spec(&bad, &options, None),
            Err(InvalidSpec::BadEnvironment(_))
        ));

        let mut bad = spec();
        bad.env_overrides = vec![("".into(), "c".into())];
        assert!(matches!(
            child_spec(&bad, &options, None),
            Err(InvalidSpec::BadEnvironment(_))
        ));

        let mut bad = spec();
        bad.hostname = "h".repeat(65);
        assert!(matches!(
            child_spec(&bad, &options, None),
            Err(InvalidSpec::BadHostname(_))
        ));

        let bad_tun = SessionOptions {
            tun_name: "a-very-long-tun-name".into(),
            ..SessionOptions::default()
        };
        assert!(matches!(
            child_spec(&spec(), &bad_tun, None),
            Err(InvalidSpec::BadTunName(_))
        ));

        let relative = SessionOptions {
            extra_files: vec![("etc/x".into(), vec![])],
            ..SessionOptions::default()
        };
        assert!(matches!(
            child_spec(&spec(), &relative, None),
            Err(InvalidSpec::BadFileTarget(_))
        ));

        let rootless = SessionOptions {
            privileges: SessionPrivileges::Rootless(IdMaps::new(1000, 1000, false)),
            ..SessionOptions::default()
        };
        let mut other_user = spec();
        other_user.run_as = Some(RunAs { uid: 0, gid: 0 });
        assert_eq!(
            child_spec(&other_user, &rootless, None),
            Err(InvalidSpec::RunAsWithoutRoot(0))
        );
        assert!(child_spec(&spec(), &rootless, None).is_ok());
    }

    #[test]
    fn the_tun_takes_the_targets_interface_name_when_the_kernel_would() {
        assert_eq!(tun_name_for(Some("eth0")), "eth0");
        assert_eq!(tun_name_for(Some("net1")), "net1");
        assert_eq!(tun_name_for(None), DEFAULT_TUN_NAME);
        for unusable in ["lo", "", ".", "..", "a/b", "a b", "a:b", "sixteen-letters!"] {
            assert_eq!(
                tun_name_for(Some(unusable)),
                DEFAULT_TUN_NAME,
                "{unusable:?}"
            );
        }
    }
}
