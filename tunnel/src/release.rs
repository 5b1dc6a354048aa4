//! Closing the session's TUN device without waiting for the kernel to unregister it.
//!
//! A TUN device that is not persistent is unregistered when its last descriptor closes, and
//! that `close()` waits for RCU grace periods: 12–22 ms measured here, on every session's
//! exit. Marked persistent, the close returns at once; the device lives on in the session's
//! network namespace, which dies with the session's last process, and the kernel deletes
//! every device of a dying namespace in its cleanup work, off anyone's path. The device
//! cannot outlive its namespace, so nothing is left behind, even after SIGKILL.

use std::os::fd::AsRawFd;

/// `TUNSETPERSIST` (`_IOW('T', 203, int)`).
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

/// Lets the session's network namespace, not the last `close()`, remove `tun`. Best effort:
/// if the kernel refuses, the close is only slower.
pub fn release_with_namespace(tun: &impl AsRawFd) {
    // SAFETY: an ioctl taking an int argument by value on a descriptor we own.
    let done = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST as _, 1 as libc::c_int) };
    if done != 0 {
        tracing::debug!(
            "cannot hand the TUN device to its namespace: {}",
            std::io::Error::last_os_error()
        );
    }
}
