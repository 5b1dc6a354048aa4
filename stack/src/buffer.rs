//! One TCP flow's smoltcp socket, in a socket set of its own, over buffers that cost memory
//! only where they are used.
//!
//! Why a set per flow: smoltcp's `Interface` matches every ingress segment against every
//! socket of the set it is given, and its egress poll visits every socket. The flow table
//! already knows which flow a packet belongs to (it has to, to hold SYNs), so it hands the
//! interface just that flow's set: per-packet cost stays flat at 10,000 flows.
//!
//! Why anonymous mappings: the receive buffer sets the window the session's kernel may fill,
//! so a bulk flow wants hundreds of KiB each way, while an idle flow wants almost nothing.
//! smoltcp buffers are fixed at creation (the window scale is announced in the SYN-ACK), so
//! each flow gets one `mmap(MAP_NORESERVE)` region for both rings (`MADV_NOHUGEPAGE`: a
//! write never backs 2 MiB at once): the kernel backs a page only when the ring first writes
//! it, and `munmap` returns it all when the flow ends. (A heap allocation would be zeroed by
//! `calloc` or recycled dirty by the allocator, and so be resident in full.)
//!
//! Rings drift: smoltcp's receive ring never rewinds, so a long-lived flow that trickles
//! small requests walks through all its pages over time. The TCP code therefore gives pages
//! back ([`TcpEndpoint::release_rx`], [`TcpEndpoint::release_tx`], `MADV_DONTNEED`) when a
//! ring holds nothing live and the flow has been quiet for a second. Measured: 6,000 open,
//! idle flows (each after one request and reply) cost the process 1.6 KiB each.
//!
//! Soundness: the socket borrows the mapping as `'static`. The mapping is the last field, so
//! it is unmapped after the socket set is dropped, and the socket is only lent out through
//! closures generic over its lifetime, so no caller can move it (or a set holding it) out.

use std::io;
use std::ptr::NonNull;

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// An anonymous, lazily backed memory region.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; it has no thread affinity.
unsafe impl Send for Mapping {}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        let len = len.next_multiple_of(page_size());
        // SAFETY: a fresh private anonymous mapping aliases nothing; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        // Where transparent huge pages are "always" on, one byte written would back 2 MiB.
        // SAFETY: advice on the mapping just made; failure only loses the advice.
        unsafe {
            libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_NOHUGEPAGE);
        }
        Ok(Self { ptr, len })
    }
}

#[cfg(test)]
impl Mapping {
    /// Pages of the mapping the kernel currently backs.
    fn resident_pages(&self) -> usize {
        let page = page_size();
        let mut vec = vec![0u8; self.len.div_ceil(page)];
        // SAFETY: `vec` has one byte per page of the mapped region.
        let rc = unsafe { libc::mincore(self.ptr.as_ptr().cast(), self.len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the region mapped in `new`; nothing borrows it any
        // more (see the soundness note above).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

impl Mapping {
    /// Drops the pages of `start..start + len` (page-aligned); they read as zeros after.
    fn release(&self, start: usize, len: usize) {
        debug_assert!(start + len <= self.len);
        // SAFETY: the range lies within the mapping; only its contents change (to zeros),
        // while no reference into it is in use (callers hold the endpoint exclusively).
        unsafe {
            libc::madvise(
                self.ptr.as_ptr().add(start).cast(),
                len,
                libc::MADV_DONTNEED,
            );
        }
    }
}

/// A flow's TCP socket in its own set, over its own buffers.
pub(crate) struct TcpEndpoint {
    sockets: SocketSet<'static>,
    handle: SocketHandle,
    rx_len: usize,
    // Declared last: dropped after `sockets`, which borrows it.
    _memory: Mapping,
}

impl TcpEndpoint {
    /// A closed socket with `rx` and `tx` bytes of ring buffer.
    pub fn new(rx: usize, tx: usize) -> io::Result<Self> {
        assert!(rx > 0 && tx > 0);
        let memory = Mapping::new(rx + tx)?;
        // SAFETY: the two slices are disjoint halves of a live mapping of `rx + tx` bytes
        // that outlives every use of them (it is dropped after `sockets`).
        let (rx_buf, tx_buf): (&'static mut [u8], &'static mut [u8]) = unsafe {
            (
                std::slice::from_raw_parts_mut(memory.ptr.as_ptr(), rx),
                std::slice::from_raw_parts_mut(memory.ptr.as_ptr().add(rx), tx),
            )
        };
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(rx_buf),
            tcp::SocketBuffer::new(tx_buf),
        );
        let mut sockets = SocketSet::new(Vec::with_capacity(1));
        let handle = sockets.add(socket);
        Ok(Self {
            sockets,
            handle,
            rx_len: rx,
            _memory: memory,
        })
    }

    /// Returns the receive ring's pages to the kernel. Only for a ring that holds nothing
    /// live: no queued data *and* no out-of-order data beyond it (which smoltcp also keeps
    /// in the ring); the TCP code proves both before calling.
    pub fn release_rx(&mut self) {
        let whole_pages = self.rx_len & !(page_size() - 1);
        if whole_pages > 0 {
            self._memory.release(0, whole_pages);
        }
    }

    /// Returns the send ring's pages to the kernel. Only when nothing is queued to send
    /// (smoltcp keeps sent data until it is acknowledged).
    pub fn release_tx(&mut self) {
        let page = page_size();
        let start = self.rx_len.next_multiple_of(page);
        let end = self._memory.len & !(page - 1);
        if end > start {
            self._memory.release(start, end - start);
        }
    }

    /// Lends the socket.
    pub fn with_socket<R>(&mut self, f: impl for<'x> FnOnce(&mut tcp::Socket<'x>) -> R) -> R {
        f(self.sockets.get_mut::<tcp::Socket>(self.handle))
    }

    /// Reads from the socket.
    pub fn socket(&self) -> &tcp::Socket<'_> {
        self.sockets.get::<tcp::Socket>(self.handle)
    }

    /// Lends the socket set, for the interface to poll.
    pub fn with_set<R>(&mut self, f: impl for<'x> FnOnce(&mut SocketSet<'x>) -> R) -> R {
        f(&mut self.sockets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_buffers_have_the_requested_sizes() {
        let mut ep = TcpEndpoint::new(256 * 1024, 64 * 1024).unwrap();
        assert_eq!(ep.socket().recv_capacity(), 256 * 1024);
        assert_eq!(ep.socket().send_capacity(), 64 * 1024);
        ep.with_socket(|s| {
            s.listen(("10.0.0.1".parse::<std::net::IpAddr>().unwrap(), 80))
                .unwrap()
        });
        assert!(ep.socket().is_listening());
    }

    #[test]
    fn fresh_endpoints_hold_no_buffer_pages() {
        let ep = TcpEndpoint::new(1 << 20, 1 << 20).unwrap();
        assert_eq!(ep._memory.resident_pages(), 0);
        // The mapping itself is usable memory.
        // SAFETY: test-only write within the mapping, which nothing else uses yet.
        unsafe { ep._memory.ptr.as_ptr().add(4096 * 3).write(1) };
        assert_eq!(ep._memory.resident_pages(), 1);
    }

    #[test]
    fn released_rings_give_their_pages_back() {
        let mut ep = TcpEndpoint::new(64 * 1024, 64 * 1024).unwrap();
        let base = ep._memory.ptr.as_ptr();
        // SAFETY: test-only writes within the mapping, which the closed socket never reads.
        unsafe {
            base.write(1);
            base.add(70 * 1024).write(1);
        }
        assert_eq!(ep._memory.resident_pages(), 2);
        ep.release_tx();
        assert_eq!(
            ep._memory.resident_pages(),
            1,
            "only the send ring's page went"
        );
        ep.release_rx();
        assert_eq!(ep._memory.resident_pages(), 0);
        // SAFETY: as above.
        assert_eq!(unsafe { base.read() }, 0, "released pages read as zeros");
    }
}
