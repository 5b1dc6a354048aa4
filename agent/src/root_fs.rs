//! Reading files of the target as the target sees them.
//!
//! `/proc/PID/root` is the target's root directory, but a path opened through it follows
//! absolute symlinks from *our* root: `/proc/PID/root/etc/resolv.conf` pointing to
//! `/run/systemd/resolve/stub-resolv.conf` would read the host's file. `openat2` with
//! `RESOLVE_IN_ROOT` resolves every component, symlinks and `..` included, inside the target's
//! root, which is what a process of the target would see.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A directory file descriptor of a target's root.
#[derive(Debug)]
pub struct TargetRoot {
    root: OwnedFd,
}

impl TargetRoot {
    /// Opens `/proc/PID/root` of the target.
    pub fn of_pid(pid: u32) -> io::Result<Self> {
        let root = File::open(format!("/proc/{pid}/root"))?;
        Ok(Self { root: root.into() })
    }

    /// Opens `path` (absolute or relative, taken from the target's root) for reading.
    pub fn open(&self, path: &Path) -> io::Result<File> {
        use std::os::unix::ffi::OsStrExt;
        let relative = path.strip_prefix("/").unwrap_or(path);
        let c_path = std::ffi::CString::new(relative.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
        how.resolve = libc::RESOLVE_IN_ROOT;
        // SAFETY: arguments are a valid dirfd, a NUL-terminated path and an open_how of the
        // size we pass; the kernel returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c_path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this fd and nothing else owns it.
        Ok(unsafe { File::from_raw_fd(fd as i32) })
    }

    /// Reads a whole (small) file; `Ok(None)` when it does not exist.
    pub fn read_optional(&self, path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
        match self.open(path) {
            Ok(file) => {
                let mut contents = Vec::new();
                file.take(limit).read_to_end(&mut contents)?;
                Ok(Some(contents))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let dir = std::env::temp_dir().join(format!("mnet-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        std::fs::write(dir.join("run/real.conf"), b"inside\n").unwrap();
        std::os::unix::fs::symlink("/run/real.conf", dir.join("etc/link.conf")).unwrap();
        let root = TargetRoot {
            root: File::open(&dir).unwrap().into(),
        };
        let got = root
            .read_optional(Path::new("/etc/link.conf"), 1024)
            .unwrap();
        assert_eq!(got.as_deref(), Some(&b"inside\n"[..]));
        assert_eq!(
            root.read_optional(Path::new("/etc/missing"), 1024).unwrap(),
            None
        );
        // `..` cannot climb out of the root either.
        let escaped = root
            .read_optional(Path::new("../../../../etc/hostname"), 1024)
            .unwrap();
        assert_eq!(escaped, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
