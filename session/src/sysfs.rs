//! The session's interfaces under `/sys/class/net`, not the host's.
//!
//! sysfs shows the network devices of the network namespace its mounter was in when it was
//! mounted, and the host's `/sys` was mounted in the host's: without this, netlink and
//! `/proc/net` show the session's `lo` and TUN while `/sys/class/net` lists the host's `eth0`,
//! `docker0`, …, and a program reading an interface's facts from sysfs (its MTU, its state,
//! whether it exists at all) reads another machine's.
//!
//! Runs in the child, in the session's network and private mount namespaces, after the TUN
//! exists. A new sysfs is mounted on a scratch directory (it is tagged with the session's
//! namespace), and two of its directories are bound over the host's:
//! - `class/net`, the list of interfaces;
//! - `devices/virtual/net`, where those entries point: each is a relative symlink
//!   (`../../devices/virtual/net/eth0`), resolved in the `/sys` it is read through, so the
//!   list alone would lead to the host's `lo`. The session's interfaces are all virtual (`lo`
//!   and a TUN), so nothing of theirs lives elsewhere under `devices/`.
//!
//! The rest of `/sys` (cgroups, the kernel's knobs, the machine's devices) stays the host's,
//! and so do its submounts, which a new sysfs over all of `/sys` would hide. The scratch mount
//! is detached at once; the binds keep the new sysfs alive for the session's lifetime.
//!
//! The kernel refuses a new sysfs where the caller's `/sys` is only partly visible (a
//! container with masked paths, for a session without root): the session then keeps the
//! host's view with a warning, as it had before.

use std::os::fd::OwnedFd;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

use super::child_messages::{SetupFailure, SetupStep};
use super::mounts::{bind_over, scratch_dir, Scratch};

/// The directories of the session's sysfs bound over the host's, relative to `/sys`.
const NET_DIRECTORIES: [&str; 2] = ["class/net", "devices/virtual/net"];

/// Shows the session's own interfaces in `/sys/class/net`.
pub fn show_own_interfaces(warnings: &mut Vec<String>) -> Result<(), SetupFailure> {
    let mut targets = Vec::with_capacity(NET_DIRECTORIES.len());
    for directory in NET_DIRECTORIES {
        let path = Path::new("/sys").join(directory);
        match open_directory(&path) {
            Ok(fd) => targets.push((directory, fd)),
            // No sysfs mounted at all (a bare chroot): nothing shows the host's either.
            Err(Errno::ENOENT) => return Ok(()),
            Err(err) => return Err(SetupFailure::os(SetupStep::Sysfs, err)),
        }
    }
    let scratch = scratch_dir()?;
    if let Err(err) = mount(
        Some("sysfs"),
        scratch,
        Some("sysfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        warnings.push(format!(
            "/sys/class/net shows this machine's interfaces, not the session's: the kernel \
             refused the session a sysfs of its own ({err})"
        ));
        return Ok(());
    }
    let scratch = Scratch(scratch);
    for (directory, target) in &targets {
        bind_over(&scratch.0.join(directory), target)
            .map_err(|err| SetupFailure::os(SetupStep::Sysfs, err))?;
    }
    scratch
        .detach()
        .map_err(|err| SetupFailure::os(SetupStep::Sysfs, err))
}

fn open_directory(path: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}
