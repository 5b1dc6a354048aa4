//! Sockets of the session's network namespace, made on request for the client.
//!
//! The client lives in the host's namespaces, and a socket belongs to the namespace it was
//! made in. The DNS filter's TCP relay needs one per connection it passes on to the target's
//! resolver, so the session child cannot make them all up front. Nor can the client enter the
//! session's namespace to make them: `setns` into a network namespace needs `CAP_SYS_ADMIN` in
//! the caller's own user namespace as well, which a rootless client lacks.
//!
//! So the session child forks a small process that stays in the session's network namespace
//! and makes them ([`spawn`]). It is forked before the session's PID namespace exists, so it
//! is no process of the session (`ps` in the session does not show it, and the command stays
//! PID 2). It keeps no descriptor but its end of a socketpair, so it holds no TUN, FUSE
//! connection or socket of the session alive; it dies with the session child
//! (`PR_SET_PDEATHSIG`), and exits when the client closes its end.
//!
//! Each request is one [`MakerRequest`] frame on the socketpair
//! ([`channel`](super::channel)'s frames); the answer carries the socket as `SCM_RIGHTS`, or
//! the errno of the failed call.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::{fork, ForkResult};
use serde::{Deserialize, Serialize};

use super::channel;
use super::dns_filter::FORWARD_MARK;

#[derive(Debug, Serialize, Deserialize)]
enum MakerRequest {
    /// An unbound TCP socket of the family, marked with [`FORWARD_MARK`] so that the session's
    /// redirects let its connection pass.
    MarkedTcp { ipv6: bool },
}

#[derive(Debug, Serialize, Deserialize)]
enum MakerAnswer {
    /// The socket rides with this frame.
    Made,
    Failed {
        errno: i32,
    },
}

/// Forks the maker; returns the client's end of its socketpair. Call in the session child,
/// single-threaded, in the session's network namespace.
pub fn spawn() -> io::Result<OwnedFd> {
    let (client, maker) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let session_child = nix::unistd::getpid();
    // SAFETY: the session child is single-threaded, so the forked process may run any code.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(client);
            std::process::exit(serve(maker, session_child))
        }
        ForkResult::Parent { .. } => Ok(client),
    }
}

/// The maker's life: answers requests until the client closes its end.
fn serve(socket: OwnedFd, session_child: nix::unistd::Pid) -> i32 {
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
        || nix::unistd::getppid() != session_child
    {
        return 1;
    }
    close_all_but(socket.as_raw_fd());
    loop {
        let request = match channel::recv::<MakerRequest>(socket.as_fd()) {
            Ok((request, _)) => request,
            // The client is done with the session.
            Err(_) => return 0,
        };
        let MakerRequest::MarkedTcp { ipv6 } = request;
        let sent = match marked(ipv6, socket2::Type::STREAM).map(OwnedFd::from) {
            Ok(made) => channel::send(socket.as_fd(), &MakerAnswer::Made, &[made.as_fd()]),
            Err(err) => channel::send(
                socket.as_fd(),
                &MakerAnswer::Failed {
                    errno: err.raw_os_error().unwrap_or(libc::EIO),
                },
                &[],
            ),
        };
        if sent.is_err() {
            return 0;
        }
    }
}

/// Closes every descriptor but `keep` (the session child's TUN, sockets and channel among
/// them), standard streams included: the maker never writes.
fn close_all_but(keep: i32) {
    let close_range = |first: u32, last: u32| {
        // SAFETY: close_range only closes descriptors of this (single-threaded) process.
        unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) }
    };
    let keep = keep as u32;
    if keep > 0 {
        close_range(0, keep - 1);
    }
    close_range(keep + 1, u32::MAX);
}

/// An unbound socket of the family and `kind`, marked with [`FORWARD_MARK`] so that the
/// session's redirects let its traffic pass (IPv6 only for an IPv6 one). Made in the calling
/// process's network namespace: the maker's, or the session child's.
pub(super) fn marked(ipv6: bool, kind: socket2::Type) -> io::Result<socket2::Socket> {
    let domain = if ipv6 {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let socket = socket2::Socket::new(domain, kind, None)?;
    socket.set_mark(FORWARD_MARK)?;
    if ipv6 {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// The client's side: asks the maker, one request at a time.
pub struct SocketMaker {
    socket: Mutex<OwnedFd>,
}

impl SocketMaker {
    pub fn new(socket: OwnedFd) -> SocketMaker {
        SocketMaker {
            socket: Mutex::new(socket),
        }
    }

    /// An unbound TCP socket of the session's namespace, marked with [`FORWARD_MARK`].
    /// Blocks for the maker's answer (microseconds): call from a blocking context.
    pub fn marked_tcp(&self, ipv6: bool) -> io::Result<OwnedFd> {
        let socket = self.socket.lock().expect("socket maker");
        channel::send(socket.as_fd(), &MakerRequest::MarkedTcp { ipv6 }, &[])
            .map_err(io::Error::other)?;
        match channel::recv::<MakerAnswer>(socket.as_fd()).map_err(io::Error::other)? {
            (MakerAnswer::Made, mut fds) if fds.len() == 1 => Ok(fds.remove(0)),
            (MakerAnswer::Made, _) => Err(io::Error::other("the socket maker sent no socket")),
            (MakerAnswer::Failed { errno }, _) => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The maker in a forked copy of this (multi-threaded) test process would be unsound, so
    /// the test drives `serve`'s protocol against a thread instead: the same frames, the same
    /// descriptor passing.
    #[test]
    fn a_request_is_answered_with_a_marked_socket_or_the_errno() {
        let (client, maker) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let server = std::thread::spawn(move || {
            for answer in [
                MakerAnswer::Failed { errno: libc::EPERM },
                MakerAnswer::Made,
            ] {
                let (request, _) = channel::recv::<MakerRequest>(maker.as_fd()).unwrap();
                assert!(matches!(request, MakerRequest::MarkedTcp { ipv6: false }));
                let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let fds: Vec<_> = match answer {
                    MakerAnswer::Made => vec![socket.as_fd()],
                    _ => vec![],
                };
                channel::send(maker.as_fd(), &answer, &fds).unwrap();
            }
        });
        let client = SocketMaker::new(client);
        let refused = client.marked_tcp(false).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::EPERM));
        let made = client.marked_tcp(false).unwrap();
        assert!(socket2::SockRef::from(&made).local_addr().is_ok());
        server.join().unwrap();
    }

    #[test]
    fn marked_sockets_carry_the_forward_mark_where_this_process_may_set_it() {
        // SO_MARK needs CAP_NET_ADMIN: the tests run as root.
        let socket = marked(false, socket2::Type::STREAM).unwrap();
        assert_eq!(socket.mark().unwrap(), FORWARD_MARK);
        let socket = marked(true, socket2::Type::STREAM).unwrap();
        assert!(socket.only_v6().unwrap());
    }
}
