//! The messages between the client and its session child.
//!
//! The client and the child talk over one `AF_UNIX` stream socketpair whose child end is the
//! only descriptor the child inherits besides stdin/stdout/stderr (those stay the user's own,
//! untouched). The conversation is short and always in this order:
//!
//! ```text
//!   client                                   session child
//!     │ ── ParentMessage::Spec(ChildSpec) ──────► │  unshare, lo, TUN, mounts, hostname
//!     │ ◄─ ChildMessage::Ready + TUN fd ───────── │  (SCM_RIGHTS on the same sendmsg)
//!     │        or ChildMessage::Failed(..)        │  then exit 1
//!     │ ── ParentMessage::Go ───────────────────► │  drop privileges, exec the command
//! ```
//!
//! With remote files, the child also mounts `/dev/fuse` and sends its descriptor after the
//! TUN's on `Ready`; the client starts serving it and says `BindRemote`; the child binds the
//! remote paths over the local ones (which needs the server: each bind looks its path up)
//! and answers `Bound` (or `Failed`) before the `Go`.
//!
//! End of file in place of a message means the other side died: the child then exits quietly
//! with status 1, the client reports how the child ended. A rootless session
//! ([`SessionPrivileges::Rootless`]) has the same conversation: the child makes its user
//! namespace and writes its own id maps (see [`userns`](super::userns)) before anything else.
//!
//! They travel as the wire crate's local frames (`mirrord_net_protocol::framing`: a 4-byte
//! length and a JSON body, readable in `strace` output); the spec carries byte strings (argv, environment, file
//! contents) as byte arrays because none of them has to be UTF-8. Both ends are normally the
//! same binary, but the spec still carries a version so that a stale binary named by
//! [`SessionOptions::program`](super::SessionOptions::program) fails with a clear message
//! instead of doing half a setup.
//!
//! Everything here is pure: no I/O, so it is unit-tested without root.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use super::outgoing::OutgoingRules;

/// Version of the conversation; bumped whenever a message changes shape.
pub const PROTOCOL_VERSION: u32 = 5;

/// How the session child gets the privileges it needs for namespaces and the TUN.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionPrivileges {
    /// The client is root (via sudo) and the child inherits that; the command drops to
    /// [`SessionSpec::run_as`](super::SessionSpec::run_as).
    #[default]
    Root,
    /// The client is an ordinary user: the child makes a user namespace of its own with these
    /// maps and builds the session inside it ([`userns`](super::userns)). The command runs as
    /// the map's inside uid; [`SessionSpec::run_as`](super::SessionSpec::run_as) must be `None`.
    Rootless(IdMaps),
}

/// One id seen from inside the session's user namespace and from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub inside: u32,
    pub outside: u32,
}

/// The uid and gid maps of a rootless session: one id each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMaps {
    pub uid: IdMap,
    pub gid: IdMap,
}

impl IdMaps {
    /// Maps `uid` and `gid` to themselves, or to root inside with `as_root`.
    pub fn new(uid: u32, gid: u32, as_root: bool) -> Self {
        let inside = |id| if as_root { 0 } else { id };
        IdMaps {
            uid: IdMap {
                inside: inside(uid),
                outside: uid,
            },
            gid: IdMap {
                inside: inside(gid),
                outside: gid,
            },
        }
    }

    /// The calling user's effective ids ([`new`](Self::new)).
    pub fn current_user(as_root: bool) -> Self {
        Self::new(
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
            as_root,
        )
    }
}

/// Everything the child needs to build the session, in plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSpec {
    pub version: u32,
    pub privileges: SessionPrivileges,
    pub tun_name: String,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    pub mtu: u16,
    pub hostname: String,
    /// Files shown at a path inside the session in place of the host's.
    pub files: Vec<FileOverlay>,
    /// argv, non-empty.
    pub command: Vec<Vec<u8>>,
    /// Who the command runs as; `None` keeps root.
    pub user: Option<ResolvedUser>,
    /// The command's whole environment; `None` inherits the client's.
    pub env: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    /// Set after the identity variables (HOME, USER, LOGNAME), in order: the user's explicit
    /// `--env-file` and `-e` assignments.
    #[serde(default)]
    pub env_overrides: Vec<(Vec<u8>, Vec<u8>)>,
    /// The target's files in the session; `None` when files are off.
    #[serde(default)]
    pub remote_files: Option<RemoteFilesSpec>,
    /// Open the TUN with virtio-net headers and checksum offload (`IFF_VNET_HDR`,
    /// `TUN_F_CSUM`): for a TUN the local agent's stack serves itself.
    #[serde(default)]
    pub tun_offload: bool,
    /// Also turn on TCP segmentation offload (`TUN_F_TSO4 | TUN_F_TSO6`): for a TUN the
    /// client's tunnel pump serves on an MTU-limited path (`tunnel::offload`).
    #[serde(default)]
    pub tun_segmentation: bool,
    /// Build the loopback redirect (`session::loopback`) and send its netlink socket along.
    pub target_localhost: bool,
    /// The outgoing filter (`session::outgoing`): its rules go into the same table, and the
    /// relay's sockets travel after the table's.
    #[serde(default)]
    pub outgoing: Option<OutgoingRules>,
    /// The DNS filter (`session::dns_filter`): the session's resolvers, whose queries the
    /// table redirects to the DNS relay; its sockets travel after the outgoing relay's.
    #[serde(default)]
    pub dns_resolvers: Option<Vec<IpAddr>>,
    /// The routed path (`session::routed`): the pid of the local target whose network
    /// namespace the session's is joined to.
    #[serde(default)]
    pub routed_target: Option<u32>,
}

/// Where the target's root is mounted and which of its paths are shown over local ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFilesSpec {
    /// Absolute path of the FUSE mount of the target's root.
    pub mount_point: Vec<u8>,
    pub writable: bool,
    /// Absolute paths bound from under `mount_point` over the same local path.
    pub binds: Vec<Vec<u8>>,
    /// Local paths inside a bound one, put back over it.
    pub keep_local: Vec<Vec<u8>>,
}

/// A file whose contents replace what `target` shows inside the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOverlay {
    /// Absolute path, as bytes.
    pub target: Vec<u8>,
    pub contents: Vec<u8>,
}

/// The user the command runs as, looked up by the client in the host's namespaces (where NSS
/// works as usual) so that the child never has to consult NSS from inside the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary one included.
    pub groups: Vec<u32>,
    /// Login name, when the uid has a passwd entry (sets `USER` and `LOGNAME`).
    pub name: Option<Vec<u8>>,
    /// Home directory, when the uid has a passwd entry (sets `HOME`).
    pub home: Option<Vec<u8>>,
}

/// Client → child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParentMessage {
    Spec(Box<ChildSpec>),
    /// The client serves the FUSE device: bind the remote paths.
    BindRemote,
    /// The client holds the TUN and is ready: run the command.
    Go,
}

/// Child → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildMessage {
    /// The session is built; the TUN descriptor rides on the same `sendmsg`.
    Ready {
        tun_name: String,
        /// Things the child skipped (e.g. IPv6 on a kernel without it), for the client's log.
        warnings: Vec<String>,
        /// The loopback redirect covers `::1` too (the session has IPv6).
        loopback_ipv6: bool,
        /// The outgoing relay's sockets follow the table's socket (IPv6's too when
        /// `loopback_ipv6`).
        #[serde(default)]
        outgoing_relay: bool,
        /// The DNS relay's sockets follow the outgoing relay's (IPv6's too when
        /// `loopback_ipv6`).
        #[serde(default)]
        dns_relay: bool,
        /// A `NETLINK_SOCK_DIAG` socket of the session's network namespace comes last
        /// (the watcher of the ports the session's programs serve).
        #[serde(default)]
        served_ports: bool,
    },
    /// The remote paths are bound (answer to `BindRemote`).
    Bound {
        warnings: Vec<String>,
    },
    Failed(SetupFailure),
}

/// Which family a default route is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpFamily {
    V4,
    V6,
}

/// The setup step that failed, named so that the user can tell what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetupStep {
    /// The spec could not be read or asks for something this binary cannot do.
    Protocol,
    /// A rootless session's user namespace.
    UserNamespace,
    /// A rootless session's `uid_map`, `gid_map` or `setgroups`.
    IdMaps,
    Namespaces,
    MountPropagation,
    NetlinkSocket,
    Loopback,
    TunDevice,
    TunLink,
    Ipv6Sysctl,
    Address(IpAddr),
    DefaultRoute(IpFamily),
    ScratchMount,
    File(String),
    Hostname,
    SendReady,
    /// The nftables table that sends loopback destinations to the target.
    LoopbackRedirect,
    /// The outgoing filter's rules and relay sockets.
    OutgoingFilter,
    /// The DNS filter's redirect and relay sockets.
    DnsFilter,
    /// Opening or mounting `/dev/fuse` for the target's files.
    FuseDevice,
    /// Binding a remote path over the local one.
    RemotePath(String),
    /// Showing the session's own interfaces under `/sys/class/net`.
    Sysfs,
    /// The routed path: the veth to the target's namespace, its table there, the routes.
    RoutedLink,
}

impl fmt::Display for SetupStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupStep::Protocol => f.write_str("cannot read the session spec"),
            SetupStep::UserNamespace => f.write_str("cannot create the session's user namespace"),
            SetupStep::IdMaps => {
                f.write_str("cannot map your uid and gid into the session's user namespace")
            }
            SetupStep::Namespaces => {
                f.write_str("cannot create the session's network, mount, UTS and PID namespaces")
            }
            SetupStep::MountPropagation => f.write_str("cannot make the session's mounts private"),
            SetupStep::NetlinkSocket => f.write_str("cannot open a netlink socket"),
            SetupStep::Loopback => f.write_str("cannot bring up the session's loopback interface"),
            SetupStep::TunDevice => f.write_str("cannot create TUN device"),
            SetupStep::TunLink => f.write_str("cannot set the TUN device's MTU and bring it up"),
            SetupStep::Ipv6Sysctl => f.write_str("cannot enable IPv6 on the TUN device"),
            SetupStep::Address(addr) => write!(f, "cannot add address {addr} to the TUN device"),
            SetupStep::DefaultRoute(IpFamily::V4) => {
                f.write_str("cannot add the IPv4 default route through the TUN device")
            }
            SetupStep::DefaultRoute(IpFamily::V6) => {
                f.write_str("cannot add the IPv6 default route through the TUN device")
            }
            SetupStep::ScratchMount => {
                f.write_str("cannot mount the scratch tmpfs for the session's files")
            }
            SetupStep::File(path) => write!(f, "cannot show the target's {path} in the session"),
            SetupStep::Hostname => f.write_str("cannot set the session's hostname"),
            SetupStep::SendReady => f.write_str("cannot hand the TUN device to the client"),
            SetupStep::LoopbackRedirect => f.write_str(
                "cannot set up the redirect of the session's localhost to the target's \
                 (nftables in the session's namespace; --no-target-localhost turns it off)",
            ),
            SetupStep::OutgoingFilter => f.write_str(
                "cannot set up the outgoing filter (--local/--remote: nftables and the relay's \
                 sockets in the session's namespace)",
            ),
            SetupStep::DnsFilter => f.write_str(
                "cannot set up the DNS filter (--local-dns/--remote-dns: nftables and the \
                 relay's sockets in the session's namespace)",
            ),
            SetupStep::FuseDevice => {
                f.write_str("cannot mount the target's files (FUSE device /dev/fuse)")
            }
            SetupStep::RemotePath(path) => write!(f, "cannot show the target's {path}"),
            SetupStep::Sysfs => {
                f.write_str("cannot show the session's interfaces in /sys/class/net")
            }
            SetupStep::RoutedLink => f.write_str(
                "cannot route the session into the target's network namespace (a veth, \
                 nftables there; MIRRORD_NET_LOCAL_PACKETS=tun keeps every packet on the TUN)",
            ),
        }
    }
}

/// A failed setup step and why, as the child reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct SetupFailure {
    pub step: SetupStep,
    /// The OS error number, when the failure was a system call's.
    pub errno: Option<i32>,
    /// The error as text (for an OS error, `std::io::Error`'s rendering of it).
    pub message: String,
}

impl SetupFailure {
    pub fn os(step: SetupStep, err: impl Into<std::io::Error>) -> Self {
        let err = err.into();
        SetupFailure {
            step,
            errno: err.raw_os_error(),
            message: err.to_string(),
        }
    }

    pub fn other(step: SetupStep, message: impl Into<String>) -> Self {
        SetupFailure {
            step,
            errno: None,
            message: message.into(),
        }
    }

    /// What the user can do about it, when that is clear from the step and the error.
    pub fn hint(&self) -> Option<&'static str> {
        const ROOT: i32 = libc::EPERM;
        match (&self.step, self.errno) {
            (SetupStep::TunDevice, Some(ROOT | libc::EACCES | libc::ENOENT | libc::ENODEV)) => {
                Some("mirrord-net needs root (run it with sudo) and /dev/net/tun (modprobe tun)")
            }
            (
                SetupStep::Namespaces
                | SetupStep::MountPropagation
                | SetupStep::ScratchMount
                | SetupStep::File(_)
                | SetupStep::Hostname
                | SetupStep::Loopback
                | SetupStep::TunLink,
                Some(ROOT | libc::EACCES),
            ) => Some("mirrord-net needs root (run it with sudo)"),
            (SetupStep::Address(IpAddr::V6(_)) | SetupStep::Ipv6Sysctl, Some(_)) => {
                Some("IPv6 may be disabled on this machine (ipv6.disable=1 or disable_ipv6)")
            }
            (SetupStep::FuseDevice, _) => {
                Some("load the fuse module (modprobe fuse) and run as root, or use --fs-mode off")
            }
            (SetupStep::RemotePath(_), _) => {
                Some("keep the path local with --fs-local PATH, or use --fs-mode off")
            }
            (SetupStep::Protocol, _) => {
                Some("the session binary does not match this mirrord-net; reinstall mirrord-net")
            }
            _ => None,
        }
    }
}

impl fmt::Display for SetupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.message)?;
        if let Some(hint) = self.hint() {
            write!(f, " — {hint}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_net_protocol::framing::{
        body_len, encode_json as encode, FrameDecoder, FrameError, LEN_PREFIX, MAX_LOCAL_FRAME_LEN,
    };

    fn spec() -> ChildSpec {
        ChildSpec {
            version: PROTOCOL_VERSION,
            privileges: SessionPrivileges::Root,
            tun_name: "mnet0".into(),
            ipv4: vec![Ipv4Addr::new(10, 1, 2, 3)],
            ipv6: vec!["fd00::7".parse().unwrap()],
            mtu: 1400,
            hostname: "pod-7".into(),
            files: vec![FileOverlay {
                target: b"/etc/resolv.conf".to_vec(),
                contents: b"nameserver 10.96.0.10\n".to_vec(),
            }],
            command: vec![b"sh".to_vec(), b"-c".to_vec(), vec![0xff, 0xfe, b'x']],
            user: Some(ResolvedUser {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 27],
                name: Some(b"dev".to_vec()),
                home: Some(b"/home/dev".to_vec()),
            }),
            env: Some(vec![(b"PATH".to_vec(), b"/usr/bin".to_vec())]),
            env_overrides: vec![(b"HOME".to_vec(), b"/srv".to_vec())],
            remote_files: None,
            tun_offload: false,
            tun_segmentation: false,
            target_localhost: false,
            outgoing: Some(OutgoingRules {
                mode: super::super::outgoing::FilterMode::Local,
                listed: vec![super::super::outgoing::Destination::new(
                    "10.0.0.0".parse().unwrap(),
                    8,
                    Some(5432),
                    true,
                    false,
                )],
                exempt: vec![],
            }),
            dns_resolvers: Some(vec!["10.96.0.10".parse().unwrap()]),
            routed_target: Some(4242),
        }
    }

    /// The first message of `buf` and the bytes it used; `None` while it is incomplete.
    fn decode_frame<T: for<'de> Deserialize<'de>>(
        buf: &[u8],
    ) -> Result<Option<(T, usize)>, FrameError> {
        let Some(header) = buf.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let len = body_len(header.try_into().unwrap(), MAX_LOCAL_FRAME_LEN)?;
        let mut decoder = FrameDecoder::local();
        decoder.push(buf);
        Ok(decoder
            .next_json_message()?
            .map(|message| (message, LEN_PREFIX + len)))
    }

    #[test]
    fn spec_round_trips_with_non_utf8_argv() {
        let message = ParentMessage::Spec(Box::new(spec()));
        let frame = encode(&message);
        let (decoded, used) = decode_frame::<ParentMessage>(&frame).unwrap().unwrap();
        assert_eq!(decoded, message);
        assert_eq!(used, frame.len());
    }

    #[test]
    fn go_and_ready_and_failed_round_trip() {
        let go = encode(&ParentMessage::Go);
        assert_eq!(
            decode_frame::<ParentMessage>(&go).unwrap().unwrap().0,
            ParentMessage::Go
        );
        let messages = [
            ChildMessage::Ready {
                tun_name: "mnet0".into(),
                warnings: vec!["no IPv6".into()],
                loopback_ipv6: false,
                outgoing_relay: false,
                dns_relay: true,
                served_ports: false,
            },
            ChildMessage::Failed(SetupFailure::os(
                SetupStep::Address("fd00::1".parse().unwrap()),
                std::io::Error::from_raw_os_error(libc::EACCES),
            )),
            ChildMessage::Failed(SetupFailure::other(
                SetupStep::DefaultRoute(IpFamily::V4),
                "x",
            )),
        ];
        for message in messages {
            let frame = encode(&message);
            assert_eq!(
                decode_frame::<ChildMessage>(&frame).unwrap().unwrap().0,
                message
            );
        }
    }

    #[test]
    fn incomplete_frame_asks_for_more() {
        let frame = encode(&ParentMessage::Go);
        for cut in 0..frame.len() {
            assert_eq!(decode_frame::<ParentMessage>(&frame[..cut]).unwrap(), None);
        }
    }

    #[test]
    fn two_frames_in_one_buffer_decode_one_at_a_time() {
        let mut buf = encode(&ParentMessage::Spec(Box::new(spec())));
        let first_len = buf.len();
        buf.extend(encode(&ParentMessage::Go));
        let (_, used) = decode_frame::<ParentMessage>(&buf).unwrap().unwrap();
        assert_eq!(used, first_len);
        let (second, _) = decode_frame::<ParentMessage>(&buf[used..])
            .unwrap()
            .unwrap();
        assert_eq!(second, ParentMessage::Go);
    }

    #[test]
    fn oversized_frame_is_refused_before_reading_it() {
        let header = ((MAX_LOCAL_FRAME_LEN + 1) as u32).to_be_bytes();
        assert_eq!(
            body_len(header, MAX_LOCAL_FRAME_LEN),
            Err(FrameError::TooLarge(MAX_LOCAL_FRAME_LEN + 1))
        );
        assert!(decode_frame::<ParentMessage>(&header).is_err());
    }

    #[test]
    fn garbage_body_is_malformed() {
        let mut frame = 5u32.to_be_bytes().to_vec();
        frame.extend_from_slice(b"{nope");
        assert!(matches!(
            decode_frame::<ChildMessage>(&frame),
            Err(FrameError::Malformed(_))
        ));
        // A parent message is not a child message.
        let frame = encode(&ParentMessage::Go);
        assert!(decode_frame::<ChildMessage>(&frame).is_err());
    }

    #[test]
    fn tun_permission_failure_tells_the_user_what_to_do() {
        let failure = SetupFailure::os(
            SetupStep::TunDevice,
            std::io::Error::from_raw_os_error(libc::EPERM),
        );
        assert_eq!(
            failure.to_string(),
            "cannot create TUN device: Operation not permitted (os error 1) — mirrord-net needs \
             root (run it with sudo) and /dev/net/tun (modprobe tun)"
        );
    }

    #[test]
    fn failure_without_a_known_remedy_has_no_hint() {
        let failure = SetupFailure::os(
            SetupStep::DefaultRoute(IpFamily::V4),
            std::io::Error::from_raw_os_error(libc::EEXIST),
        );
        assert_eq!(failure.hint(), None);
        assert_eq!(
            failure.to_string(),
            "cannot add the IPv4 default route through the TUN device: File exists (os error 17)"
        );
    }
}
