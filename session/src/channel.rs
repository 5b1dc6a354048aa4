//! Blocking frame I/O on the client–child socketpair, with descriptor passing.
//!
//! Both ends use plain blocking system calls: the child is single-threaded and has nothing
//! else to do, the client runs its side on a blocking-pool thread. The socket is a stream
//! (not `SOCK_SEQPACKET`) so that a spec of any size fits. Its frames are the wire crate's
//! local JSON frames (`mirrord_net_protocol::framing`); its messages are
//! [`child_messages`](super::child_messages)'s.
//!
//! Descriptors travel as `SCM_RIGHTS` on the `sendmsg` that carries the first bytes of their
//! frame. On a stream socket the kernel never merges bytes with and without ancillary data
//! into one read, so every read here is a `recvmsg` with room for [`MAX_FDS`] descriptors;
//! whatever arrives is collected and returned with the frame it came with. The rules of both
//! calls (close-on-exec on receipt, so no other child of the client inherits the TUN; more
//! descriptors than room an error; a dead peer an `EPIPE`, not a SIGPIPE) are the
//! `mirrord-net-fd-passing` crate's.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use mirrord_net_fd_passing::{recv_with_fds, send_with_fds};
use serde::de::DeserializeOwned;
use serde::Serialize;

use mirrord_net_protocol::framing::{self, FrameError, LEN_PREFIX, MAX_LOCAL_FRAME_LEN};

/// Most descriptors accepted on one read: the TUN, the session table's socket, the outgoing
/// relay's five, the DNS relay's eight, FUSE, the sock_diag socket; room to spare. The
/// background session's control socket reads with the same room.
pub const MAX_FDS: usize = 24;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the other side closed the connection")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Frame(#[from] FrameError),
}

/// Sends `message` as one frame, with `fds` attached to its first bytes.
pub fn send<T: Serialize>(
    socket: BorrowedFd<'_>,
    message: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ChannelError> {
    let frame = framing::encode_json(message);
    let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut sent = 0;
    while sent < frame.len() {
        let attached: &[RawFd] = if sent == 0 { &raw } else { &[] };
        match send_with_fds(socket, &frame[sent..], attached) {
            Ok(n) => sent += n,
            Err(err) if matches!(err.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {
                return Err(ChannelError::Closed)
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Receives one frame and the descriptors that came with it. A clean end of file before the
/// first byte is [`ChannelError::Closed`]; in the middle of a frame it is an I/O error.
pub fn recv<T: DeserializeOwned>(
    socket: BorrowedFd<'_>,
) -> Result<(T, Vec<OwnedFd>), ChannelError> {
    let mut fds = Vec::new();
    let mut header = [0u8; LEN_PREFIX];
    if !read_exact(socket, &mut header, &mut fds, true)? {
        return Err(ChannelError::Closed);
    }
    let len = framing::body_len(header, MAX_LOCAL_FRAME_LEN)?;
    let mut body = vec![0u8; len];
    read_exact(socket, &mut body, &mut fds, false)?;
    Ok((framing::decode_json_body(&body)?, fds))
}

/// Fills `buf`; `Ok(false)` if the peer closed before the first byte and `eof_ok` is set.
fn read_exact(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    eof_ok: bool,
) -> Result<bool, ChannelError> {
    let mut filled = 0;
    while filled < buf.len() {
        let received = match recv_with_fds(socket, &mut buf[filled..], fds, MAX_FDS) {
            Ok(n) => n,
            Err(err) if err.raw_os_error() == Some(libc::ECONNRESET) => 0,
            Err(err) => return Err(err.into()),
        };
        if received == 0 {
            if filled == 0 && eof_ok {
                return Ok(false);
            }
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        filled += received;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;

    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    use super::*;
    use crate::child_messages::{ChildMessage, ParentMessage};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    #[test]
    fn descriptor_arrives_with_its_frame_and_still_works() {
        let (a, b) = pair();
        let mut file = std::fs::File::from(
            nix::sys::memfd::memfd_create(c"channel-test", nix::sys::memfd::MFdFlags::empty())
                .unwrap(),
        );
        file.write_all(b"through the socket").unwrap();
        let ready = ChildMessage::Ready {
            tun_name: "mnet0".into(),
            warnings: vec![],
            loopback_ipv6: false,
            outgoing_relay: false,
            served_ports: false,
            dns_relay: false,
        };
        send(a.as_fd(), &ready, &[file.as_fd()]).unwrap();
        send(a.as_fd(), &ready, &[]).unwrap();

        let (message, fds) = recv::<ChildMessage>(b.as_fd()).unwrap();
        assert_eq!(message, ready);
        assert_eq!(fds.len(), 1);
        let flags = nix::fcntl::fcntl(&fds[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "received descriptors are close-on-exec"
        );
        let mut received = std::fs::File::from(fds.into_iter().next().unwrap());
        received.rewind().unwrap();
        let mut text = String::new();
        received.read_to_string(&mut text).unwrap();
        assert_eq!(text, "through the socket");

        // The second frame carries nothing, even though it follows one that did.
        let (_, fds) = recv::<ChildMessage>(b.as_fd()).unwrap();
        assert!(fds.is_empty());
    }

    #[test]
    fn big_frame_crosses_in_pieces() {
        let (a, b) = pair();
        let reader = std::thread::spawn(move || recv::<ParentMessage>(b.as_fd()).map(|m| m.0));
        let env = (0..20_000)
            .map(|i| (format!("VAR{i}").into_bytes(), vec![b'x'; 40]))
            .collect();
        let spec = crate::child_messages::ChildSpec {
            version: 1,
            privileges: crate::SessionPrivileges::Root,
            tun_name: "mnet0".into(),
            ipv4: vec![],
            ipv6: vec![],
            mtu: 1500,
            hostname: "h".into(),
            files: vec![],
            command: vec![b"true".to_vec()],
            user: None,
            env: Some(env),
            env_overrides: Vec::new(),
            remote_files: None,
            tun_offload: false,
            tun_segmentation: false,
            target_localhost: false,
            outgoing: None,
            dns_resolvers: None,
            routed_target: None,
        };
        let message = ParentMessage::Spec(Box::new(spec));
        send(a.as_fd(), &message, &[]).unwrap();
        assert_eq!(reader.join().unwrap().unwrap(), message);
    }

    #[test]
    fn closed_peer_is_reported_as_closed() {
        let (a, b) = pair();
        drop(a);
        assert!(matches!(
            recv::<ParentMessage>(b.as_fd()),
            Err(ChannelError::Closed)
        ));
        assert!(matches!(
            send(b.as_fd(), &ParentMessage::Go, &[]),
            Err(ChannelError::Closed)
        ));
    }

    #[test]
    fn peer_dying_mid_frame_is_an_error_not_a_clean_close() {
        let (a, b) = pair();
        let frame = framing::encode_json(&ParentMessage::Go);
        nix::unistd::write(&a, &frame[..frame.len() - 1]).unwrap();
        drop(a);
        assert!(matches!(
            recv::<ParentMessage>(b.as_fd()),
            Err(ChannelError::Io(_))
        ));
    }
}
