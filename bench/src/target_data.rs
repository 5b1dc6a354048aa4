//! The target's data for the file rows: a big file of random bytes and a tree of small files
//! that only the target sees, and dropping the page cache before a cold pass.
//!
//! The data is written once per harness run to `<pod dir>/files-store` (on disk, in the pod's
//! scratch directory, so the pod removes it on every exit path) and bind-mounted on
//! `<pod dir>/files` inside the target's mount namespace only: on the host that path is an
//! empty directory. A run that reads the data there must therefore have been given the
//! target's files — directly by entering the target's mount namespace, through mirrord-net
//! by its FUSE mount of the target's mounts. The bind goes with the target's namespace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use mirrord_net_tests::target_files::write_random;
use mirrord_net_tests::tool;

/// The big file, below the data directory.
const FILE: &str = "big.bin";
/// The tree of small files, below the data directory.
const TREE: &str = "tree";

/// How much data to build.
#[derive(Debug, Clone, Copy)]
pub struct DataSizes {
    /// Length of the big file, whole MiBs.
    pub file_len: u64,
    pub tree_dirs: usize,
    pub files_per_dir: usize,
}

impl DataSizes {
    /// Entries below the tree's root: its directories and their files.
    pub fn tree_entries(&self) -> u64 {
        (self.tree_dirs * (1 + self.files_per_dir)) as u64
    }
}

/// Where the target sees its data (an empty directory on the host).
pub fn data_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("files")
}

pub fn file_path(pod_dir: &Path) -> PathBuf {
    data_dir(pod_dir).join(FILE)
}

pub fn tree_path(pod_dir: &Path) -> PathBuf {
    data_dir(pod_dir).join(TREE)
}

/// Writes the data into the pod's directory and mounts it in the target's mount namespace.
pub fn install(pod_dir: &Path, target_pid: u32, sizes: &DataSizes) -> Result<()> {
    let store = pod_dir.join("files-store");
    let data = data_dir(pod_dir);
    fs::create_dir_all(&data)?;
    fs::create_dir_all(store.join(TREE))?;
    write_random(&store.join(FILE), sizes.file_len as usize)?;
    for d in 0..sizes.tree_dirs {
        let dir = store.join(TREE).join(format!("d{d}"));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for f in 0..sizes.files_per_dir {
            fs::write(dir.join(format!("f{f}")), format!("file {d}/{f}\n"))?;
        }
    }
    let output = Command::new(tool("nsenter"))
        .args(["--target", &target_pid.to_string(), "--mount", "--"])
        .arg(tool("mount"))
        .arg("--bind")
        .args([&store, &data])
        .output()
        .context("starting nsenter")?;
    if !output.status.success() {
        bail!(
            "mounting the data in the target's mount namespace: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    ensure!(
        !file_path(pod_dir).exists(),
        "the target's data mount leaked to the host"
    );
    let seen = PathBuf::from(format!("/proc/{target_pid}/root")).join(
        file_path(pod_dir)
            .strip_prefix("/")
            .expect("the pod directory is absolute"),
    );
    let len = fs::metadata(&seen)
        .with_context(|| format!("the target does not see its data ({})", seen.display()))?
        .len();
    ensure!(
        len == sizes.file_len,
        "the target sees {len} bytes in {}",
        seen.display()
    );
    Ok(())
}

/// Writes dirty pages back and drops the page, dentry and inode caches of the whole machine,
/// so the next read of the data comes from the disk.
pub fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache")
}
