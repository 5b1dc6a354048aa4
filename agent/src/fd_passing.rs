//! Reading from a Unix socket that may carry descriptors (`SCM_RIGHTS`): the client's TUN
//! hand-over and the iptables keeper's channel both read this way.
//!
//! Every descriptor arrives close-on-exec (`MSG_CMSG_CLOEXEC`): the keeper and the agent
//! start processes (the iptables tools), and none of them may inherit a TUN or a listener.
//! A message with more descriptors than [`MAX_FDS`] is an error, never a silent loss: both
//! peers are the agent's own (the client that started it, the agent for its keeper), so it
//! means a broken sender, and the read that saw it ends its session. (The kernel closes the
//! descriptors it cut off; nix hands over none of a truncated message, so those that fitted
//! stay open until the process exits.)

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// Most descriptors one read takes: the keeper gets the steal's two listeners (IPv4 and
/// IPv6), the hand-over one TUN.
pub const MAX_FDS: usize = 4;

/// One `recvmsg` into `buf`, retried on `EINTR`: how many bytes came (0 at end of file), with
/// the descriptors that came with them appended to `fds`.
pub fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
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
            "more than {MAX_FDS} descriptors came with one message"
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
    use nix::sys::socket::{sendmsg, ControlMessage};
    use std::io::IoSlice;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    fn send(socket: &UnixStream, bytes: &[u8], fds: &[RawFd]) {
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(
            socket.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
    }

    fn is_cloexec(fd: &OwnedFd) -> bool {
        // SAFETY: fcntl with an integer command on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn bytes_and_descriptors_arrive_together_and_close_on_exec() {
        let (a, b) = UnixStream::pair().unwrap();
        let (x, y) = UnixStream::pair().unwrap();
        send(&a, b"hello", &[x.as_raw_fd(), y.as_raw_fd()]);
        let (mut buf, mut fds) = ([0u8; 16], Vec::new());
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 2);
        assert!(fds.iter().all(is_cloexec));
    }

    #[test]
    fn plain_bytes_bring_no_descriptor_and_end_of_file_reads_zero() {
        let (a, b) = UnixStream::pair().unwrap();
        send(&a, b"x", &[]);
        drop(a);
        let (mut buf, mut fds) = ([0u8; 4], Vec::new());
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap(), 1);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap(), 0);
        assert!(fds.is_empty());
    }

    #[test]
    fn too_many_descriptors_are_an_error_not_a_silent_loss() {
        let (a, b) = UnixStream::pair().unwrap();
        let pairs: Vec<_> = (0..MAX_FDS + 2)
            .map(|_| UnixStream::pair().unwrap())
            .collect();
        let raw: Vec<RawFd> = pairs.iter().map(|(p, _)| p.as_raw_fd()).collect();
        send(&a, b"x", &raw);
        let (mut buf, mut fds) = ([0u8; 4], Vec::new());
        let err = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap_err();
        assert!(err.to_string().contains("descriptors"), "{err}");
    }
}
