//! Receiving the session's TUN descriptor from a local client.
//!
//! A client that starts the agent on its own machine creates a Unix socket pair, lets the
//! agent inherit one end and names its number with `--tun-socket-fd`. The session's TUN is
//! made later (by the session child, after the handshake), so the client sends it when it has
//! it: one byte with the descriptor attached as `SCM_RIGHTS`. The agent then runs its stack on
//! the device ([`stack::serve_tun`](crate::stack::serve_tun)) instead of on QUIC datagrams.
//!
//! An end of file without a descriptor means the client will send none (`mirrord-net env`
//! makes no session): the agent then serves until the connection closes, as always.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use mirrord_net_fd_passing::recv_with_fds;

/// The agent's end of the socket the client sends the TUN on.
#[derive(Debug)]
pub struct TunHandoff {
    socket: OwnedFd,
}

impl TunHandoff {
    /// Takes over inherited descriptor `fd`, which must be a Unix socket.
    pub fn from_inherited(fd: RawFd) -> anyhow::Result<Self> {
        // SAFETY: fstat writes into the struct we pass; an invalid fd is an error, not UB.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut stat) } != 0 {
            anyhow::bail!(
                "--tun-socket-fd {fd}: {} (it must be an inherited Unix socket)",
                io::Error::last_os_error()
            );
        }
        if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            anyhow::bail!("--tun-socket-fd {fd} is not a socket");
        }
        // SAFETY: the descriptor is open (fstat succeeded) and was handed to this process for
        // it alone; nothing else owns it.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: fcntl on a descriptor we own, with integer arguments.
        unsafe {
            libc::fcntl(socket.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
        Ok(Self { socket })
    }

    /// Waits for the TUN descriptor; `None` if the client closed the socket without one.
    pub async fn receive(self) -> io::Result<Option<OwnedFd>> {
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(self.socket.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(
                self.socket.as_raw_fd(),
                libc::F_SETFL,
                flags | libc::O_NONBLOCK,
            );
        }
        // SAFETY: the `OwnedFd` stays open, naming the same socket, until the `AsyncFd` drops
        // it.
        let socket = unsafe { AsyncFd::register_with_interest(self.socket, Interest::READABLE) }?;
        loop {
            let mut ready = socket.readable().await?;
            match ready.try_io(|fd| receive_once(fd.get_ref().as_fd())) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

/// Room for more descriptors than the one expected, so that a sender passing a few too many
/// hears how many it sent.
const ROOM: usize = 4;

/// One `recvmsg`: the descriptor that came with it, `None` at end of file.
fn receive_once(socket: BorrowedFd<'_>) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut fds = Vec::new();
    let bytes = recv_with_fds(socket, &mut byte, &mut fds, ROOM)?;
    if bytes == 0 && fds.is_empty() {
        return Ok(None);
    }
    match fds.len() {
        1 => Ok(fds.pop()),
        n => Err(io::Error::other(format!(
            "the client sent {n} descriptors where one TUN was expected"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn send_fd(socket: &UnixStream, fd: Option<RawFd>) {
        let raw: Vec<RawFd> = fd.into_iter().collect();
        mirrord_net_fd_passing::send_with_fds(socket.as_fd(), &[1], &raw).unwrap();
    }

    #[tokio::test]
    async fn receives_the_descriptor_sent() {
        let (client, agent) = UnixStream::pair().unwrap();
        let handoff =
            TunHandoff::from_inherited(std::os::fd::IntoRawFd::into_raw_fd(agent)).unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        send_fd(&client, Some(b.as_raw_fd()));
        let fd = handoff.receive().await.unwrap().expect("a descriptor");
        // The descriptor received is the same socket: what goes in at `a` comes out of it.
        std::io::Write::write_all(&mut a, b"ok").unwrap();
        let mut got = [0u8; 2];
        let mut received = UnixStream::from(fd);
        std::io::Read::read_exact(&mut received, &mut got).unwrap();
        assert_eq!(&got, b"ok");
    }

    #[tokio::test]
    async fn end_of_file_means_no_descriptor() {
        let (client, agent) = UnixStream::pair().unwrap();
        let handoff =
            TunHandoff::from_inherited(std::os::fd::IntoRawFd::into_raw_fd(agent)).unwrap();
        drop(client);
        assert!(handoff.receive().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn bytes_without_a_descriptor_are_an_error() {
        let (client, agent) = UnixStream::pair().unwrap();
        let handoff =
            TunHandoff::from_inherited(std::os::fd::IntoRawFd::into_raw_fd(agent)).unwrap();
        send_fd(&client, None);
        let err = handoff.receive().await.unwrap_err();
        assert!(err.to_string().contains("0 descriptors"), "{err}");
    }

    #[test]
    fn a_descriptor_that_is_not_a_socket_is_refused() {
        let file = std::fs::File::open("/dev/null").unwrap();
        let err = TunHandoff::from_inherited(file.as_raw_fd()).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
    }
}
