//! Mounting `/dev/fuse`, done by the session child inside the session's mount namespace.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// The file system type shown in `/proc/self/mountinfo`.
pub const FS_TYPE: &str = "fuse.mirrord-net";

/// Why the FUSE device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot open /dev/fuse: {0}")]
    Device(io::Error),
    #[error("cannot mount a FUSE file system on {path}: {source}")]
    Mount { path: String, source: io::Error },
}

/// The mount data: a connection owned by `uid`/`gid` (root's in a root session; in a user
/// namespace they must be ids mapped in it), any user may use it (in a user namespace: any
/// process of it), and the kernel checks permissions against the attributes the agent reports.
pub fn mount_data(fd: i32, uid: u32, gid: u32) -> String {
    format!(
        "fd={fd},rootmode=40000,user_id={uid},group_id={gid},allow_other,default_permissions,max_read={}",
        mirrord_net_protocol::fs::MAX_IO
    )
}

/// Opens `/dev/fuse` and mounts it on `mount_point` as the caller's effective uid and gid; the
/// descriptor is the connection.
pub fn mount_device(mount_point: &Path, writable: bool) -> Result<OwnedFd, MountError> {
    let device: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(MountError::Device)?
        .into();
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if !writable {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some("mirrord-net"),
        mount_point,
        Some(FS_TYPE),
        flags,
        Some(
            mount_data(
                device.as_raw_fd(),
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
            .as_str(),
        ),
    )
    .map_err(|err| MountError::Mount {
        path: mount_point.display().to_string(),
        source: err.into(),
    })?;
    Ok(device)
}
