//! Messages that carry descriptors (`SCM_RIGHTS`) over Unix sockets: how the processes of one
//! session hand each other what they opened. The client hands the session's TUN to a local
//! agent, the session child its TUN and FUSE descriptors to the client, a background session
//! its pieces to its holder, and the agent its steal listeners to its iptables keeper.
//!
//! Both ends are the tool's own processes, so the rules are strict:
//!
//! - Every descriptor arrives close-on-exec (`MSG_CMSG_CLOEXEC`): the receivers start
//!   processes (the iptables tools, the session's command), and none may inherit a TUN or a
//!   listener.
//! - A message with more descriptors than the receiver allows is an error, never a silent
//!   loss: it means a broken sender. (The kernel closes the descriptors it cut off; nix hands
//!   over none of a truncated message, so those that fitted stay open until the process
//!   exits.)
//! - A send never raises `SIGPIPE` (`MSG_NOSIGNAL`): a peer gone is an error to handle.
//!
//! Both calls retry `EINTR` and make one system call otherwise; a caller with more bytes
//! than one call took loops, attaching the descriptors to the first bytes only.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// One `sendmsg` of `bytes` with `fds` attached (none if empty), retried on `EINTR`: how
/// many bytes the socket took. A closed peer is `EPIPE` or `ECONNRESET`, without a signal.
pub fn send_with_fds(socket: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(sent) => return Ok(sent),
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    }
}

/// One `recvmsg` into `buf`, retried on `EINTR`: how many bytes came (0 at end of file), with
/// the descriptors that came with them appended to `fds`, close-on-exec. More than `max_fds`
/// descriptors on one message is an error.
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    max_fds: usize,
) -> io::Result<usize> {
    let payload = (max_fds * std::mem::size_of::<RawFd>()) as libc::c_uint;
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let mut space = vec![0u8; unsafe { libc::CMSG_SPACE(payload) } as usize];
    let mut iov = [IoSliceMut::new(buf)];
    let message = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(message) => break message,
            Err(Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
    };
    // nix refuses to list the control messages of a truncated message (`MSG_CTRUNC`).
    let cmsgs = message.cmsgs().map_err(|_| {
        io::Error::other(format!(
            "more than {max_fds} descriptors came with one message"
        ))
    })?;
    for cmsg in cmsgs {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            // SAFETY: the kernel installed these descriptors in this process for us; nothing
            // else knows them.
            fds.extend(
                raw.into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok(message.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn is_cloexec(fd: &OwnedFd) -> bool {
        // SAFETY: fcntl with an integer command on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn bytes_and_descriptors_arrive_together_and_close_on_exec() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, y) = UnixStream::pair().unwrap();
        let sent = send_with_fds(a.as_fd(), b"hello", &[x.as_raw_fd(), y.as_raw_fd()]).unwrap();
        assert_eq!(sent, 5);
        let (mut buf, mut fds) = ([0u8; 16], Vec::new());
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds, 4).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 2);
        assert!(fds.iter().all(is_cloexec));
    }

    #[test]
    fn a_passed_descriptor_still_works() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, y) = UnixStream::pair().unwrap();
        send_with_fds(a.as_fd(), b"1", &[x.as_raw_fd()]).unwrap();
        drop(x);
        let (mut buf, mut fds) = ([0u8; 1], Vec::new());
        recv_with_fds(b.as_fd(), &mut buf, &mut fds, 1).unwrap();
        let passed = UnixStream::from(fds.pop().unwrap());
        send_with_fds(passed.as_fd(), b"through", &[]).unwrap();
        let mut got = [0u8; 7];
        assert_eq!(recv_with_fds(y.as_fd(), &mut got, &mut fds, 1).unwrap(), 7);
        assert_eq!(&got, b"through");
    }

    #[test]
    fn plain_bytes_bring_no_descriptor_and_end_of_file_reads_zero() {
        let (a, b) = UnixStream::pair().unwrap();
        send_with_fds(a.as_fd(), b"x", &[]).unwrap();
        drop(a);
        let (mut buf, mut fds) = ([0u8; 4], Vec::new());
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds, 4).unwrap(), 1);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds, 4).unwrap(), 0);
        assert!(fds.is_empty());
    }

    #[test]
    fn too_many_descriptors_are_an_error_not_a_silent_loss() {
        let (a, b) = UnixStream::pair().unwrap();
        let pairs: Vec<_> = (0..6).map(|_| UnixStream::pair().unwrap()).collect();
        let raw: Vec<RawFd> = pairs.iter().map(|(p, _)| p.as_raw_fd()).collect();
        send_with_fds(a.as_fd(), b"x", &raw).unwrap();
        let (mut buf, mut fds) = ([0u8; 4], Vec::new());
        let err = recv_with_fds(b.as_fd(), &mut buf, &mut fds, 4).unwrap_err();
        assert!(err.to_string().contains("more than 4 descriptors"), "{err}");
        assert!(fds.is_empty());
    }

    #[test]
    fn a_send_to_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = send_with_fds(a.as_fd(), b"x", &[]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }
}
