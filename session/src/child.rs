//! The session child: `mirrord-net __session FD`, from a fresh exec to the user's command.
//!
//! The client re-executes its own binary rather than forking: a fork of a multi-threaded
//! tokio process may only call async-signal-safe functions, while this setup allocates,
//! talks netlink and needs a single-threaded process for `unshare`. `main` dispatches here
//! before it parses arguments or starts a runtime. FD is the child's end of the socketpair;
//! stdin, stdout and stderr are the user's own and are never touched, except to print the
//! one line a shell would print when the command cannot be run.
//!
//! Steps, each reported as a [`SetupStep`] if it fails:
//!
//! 1. Tie the process to the client (`PR_SET_PDEATHSIG`) and read the spec.
//! 2. Rootless only: `unshare` a user namespace and map the user's ids into it
//!    ([`userns`](super::userns)). Then `unshare` the network, mount and UTS namespaces; make
//!    mounts private.
//! 3. `lo` up, the TUN with its addresses and default routes ([`network`](super::network));
//!    with a DNS filter, the socket maker is forked here
//!    ([`socket_maker`](super::socket_maker)).
//! 4. The session's own `/sys/class/net` ([`sysfs`](super::sysfs)); resolv.conf and hosts
//!    ([`mounts`](super::mounts)); the hostname; last, `unshare` the PID namespace.
//! 5. Send `Ready` with the TUN descriptor, close our copy, wait for `Go`. End of file here
//!    means the client is gone: exit 1 without a word — the user already saw the client's
//!    error, or the client was killed.
//! 6. Fork the PID namespace's init, which forks the command; the command drops privileges
//!    ([`identity`](super::identity)), gets its environment and execs ([`exec`](super::exec)).
//!    This process stays, waits for init and exits with its code ([`init`](super::init)).
//!
//! A failure in steps 1–5 is sent to the client as `Failed` and the child exits 1; the
//! client shows it. After `Go` the client no longer listens, so the rare failure of a fork or
//! of a privilege-drop system call is printed here and ends the session with 126, the code of
//! a command that cannot run.

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};

use super::channel::{self, ChannelError};
use super::child_messages::{
    ChildMessage, ChildSpec, ParentMessage, SetupFailure, SetupStep, PROTOCOL_VERSION,
};
use super::dns_relay::DnsSockets;
use super::init;
use super::mounts;
use super::namespaces;
use super::network;
use super::outgoing_relay::RelaySockets;
use super::remote_files::{self, KeptLocal};
use super::sysfs;

/// Status of a child that could not build the session or lost its client.
const SETUP_FAILED: i32 = 1;

/// Entry of the hidden `__session` subcommand. Never returns.
pub fn child_main() -> ! {
    std::process::exit(run())
}

fn run() -> i32 {
    let Some(fd) = std::env::args_os()
        .nth(2)
        .and_then(|arg| arg.to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| fd > 2 && is_open(fd))
    else {
        eprintln!("mirrord-net: __session is started by mirrord-net itself, not by hand");
        return 2;
    };
    // SAFETY: the client passed this descriptor to us and to nothing else; it is open (checked
    // above) and owned by no other object in this process.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // It was inherited on purpose; the user's command must not inherit it again.
    let _ = fcntl(&socket, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    let _ = namespaces::die_with_parent();
    let client = nix::unistd::getppid();

    let spec = match channel::recv::<ParentMessage>(socket.as_fd()) {
        Ok((ParentMessage::Spec(spec), _)) => spec,
        Ok((other, _)) => {
            fail(
                &socket,
                SetupFailure::other(
                    SetupStep::Protocol,
                    format!("expected the session spec, got {other:?}"),
                ),
            );
            return SETUP_FAILED;
        }
        Err(ChannelError::Closed) => return SETUP_FAILED,
        Err(err) => {
            fail(
                &socket,
                SetupFailure::other(SetupStep::Protocol, err.to_string()),
            );
            return SETUP_FAILED;
        }
    };
    if spec.command.is_empty() {
        fail(
            &socket,
            SetupFailure::other(SetupStep::Protocol, "the spec has no command"),
        );
        return SETUP_FAILED;
    }
    if spec.version != PROTOCOL_VERSION {
        fail(
            &socket,
            SetupFailure::other(
                SetupStep::Protocol,
                format!(
                    "the client speaks session protocol {}, this binary {PROTOCOL_VERSION}",
                    spec.version
                ),
            ),
        );
        return SETUP_FAILED;
    }

    let mut warnings = Vec::new();
    let (network, root) = match build(&spec, client, &mut warnings) {
        Ok(built) => built,
        Err(failure) => {
            fail(&socket, failure);
            return SETUP_FAILED;
        }
    };
    let network::Built {
        tun,
        loopback,
        relay,
        dns,
        routed,
    } = network;
    // Held until this process ends (and by init, which inherits it): the target's side of
    // the routed path lives as long as the session.
    let _routed = routed;
    // Opened here, in the session's network namespace, which it then answers for wherever
    // it is used; without it the client reads /proc instead.
    let served = mirrord_net_netfilter::sock_diag::Diag::open()
        .map(mirrord_net_netfilter::sock_diag::Diag::into_fd)
        .ok();
    let ready = ChildMessage::Ready {
        tun_name: spec.tun_name.clone(),
        warnings,
        loopback_ipv6: loopback.as_ref().is_some_and(|(_, ipv6)| *ipv6),
        outgoing_relay: relay.is_some(),
        dns_relay: dns.is_some(),
        served_ports: served.is_some(),
    };
    let relay = relay.map(RelaySockets::into_fds).unwrap_or_default();
    let dns = dns.map(DnsSockets::into_fds).unwrap_or_default();
    // The order the client expects: TUN, the table's socket, the relay's, the DNS relay's,
    // FUSE, sock_diag.
    let mut fds = vec![tun.as_fd()];
    fds.extend(loopback.as_ref().map(|(socket, _)| socket.as_fd()));
    fds.extend(relay.iter().map(|fd| fd.as_fd()));
    fds.extend(dns.iter().map(|fd| fd.as_fd()));
    fds.extend(root.as_ref().map(|(device, _)| device.as_fd()));
    fds.extend(served.as_ref().map(|socket| socket.as_fd()));
    if channel::send(socket.as_fd(), &ready, &fds).is_err() {
        return SETUP_FAILED;
    }
    drop(fds);
    // The client holds the devices now; these copies would only keep them alive after the
    // client (a FUSE connection whose server died must abort, not hang its callers).
    drop(tun);
    drop(loopback);
    drop(relay);
    drop(served);
    drop(dns);
    if let (Some(files), Some((device, kept))) = (&spec.remote_files, root) {
        drop(device);
        match channel::recv::<ParentMessage>(socket.as_fd()) {
            Ok((ParentMessage::BindRemote, _)) => {}
            _ => return SETUP_FAILED,
        }
        let answer = match remote_files::bind_paths(files, kept) {
            Ok(warnings) => ChildMessage::Bound { warnings },
            Err(failure) => {
                fail(&socket, failure);
                return SETUP_FAILED;
            }
        };
        if channel::send(socket.as_fd(), &answer, &[]).is_err() {
            return SETUP_FAILED;
        }
    }
    match channel::recv::<ParentMessage>(socket.as_fd()) {
        Ok((ParentMessage::Go, _)) => {}
        _ => return SETUP_FAILED,
    }
    drop(socket);
    init::run(&spec)
}

/// Steps 2–4: namespaces, network, files, hostname. Returns the TUN descriptor and, with
/// remote files, the mounted FUSE device.
fn build(
    spec: &ChildSpec,
    client: nix::unistd::Pid,
    warnings: &mut Vec<String>,
) -> Result<(network::Built, Option<(OwnedFd, KeptLocal)>), SetupFailure> {
    namespaces::enter_new_namespaces(spec.privileges, client)?;
    mounts::make_private().map_err(|err| SetupFailure::os(SetupStep::MountPropagation, err))?;
    // Only after the mounts are private: the FUSE mount must never reach the host.
    let root = spec
        .remote_files
        .as_ref()
        .map(remote_files::mount_root)
        .transpose()?;
    let tun = network::build(spec, warnings)?;
    // After the TUN exists, so the new sysfs lists it.
    sysfs::show_own_interfaces(warnings)?;
    mounts::overlay_files(&spec.files, warnings)?;
    namespaces::set_hostname(&spec.hostname)
        .map_err(|err| SetupFailure::os(SetupStep::Hostname, err))?;
    // Last: every process forked before this (the socket maker) stays out of the session's
    // PID namespace; the next, init, is its PID 1.
    namespaces::enter_pid_namespace()?;
    Ok((tun, root))
}

/// Tells the client why the session could not be built (if it still listens).
fn fail(socket: &OwnedFd, failure: SetupFailure) {
    let _ = channel::send(socket.as_fd(), &ChildMessage::Failed(failure), &[]);
}

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags; on a closed number it fails (EBADF).
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}
