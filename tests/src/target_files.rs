//! Files only the target sees: what a session must show from the target's mount namespace.
//!
//! Two mounts are made inside the target's mount namespace only (the host keeps two empty
//! directories, the mount points):
//!
//! - `<pod dir>/data`: a bind of `<pod dir>/store` (on disk, so a cold read really reads the
//!   disk), holding `config.yaml`, a tree of [`TREE_FILES`] files and [`TREE_LINKS`] relative
//!   and absolute symlinks in 100 directories, and optionally a 512 MiB file of random bytes;
//! - `<pod dir>/secrets`: a tmpfs (mode 0700) holding `token`, as Kubernetes mounts a secret.
//!
//! Everything lives under the pod's directory, which the pod removes; the mounts go with the
//! target's mount namespace.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::pod::Pod;
use crate::session::Invocation;

/// Regular files in the tree.
pub const TREE_FILES: usize = 9_800;
/// Symlinks in the tree (half relative, half absolute).
pub const TREE_LINKS: usize = 200;
/// Size of the big file.
pub const BIG_FILE_LEN: usize = 512 << 20;
/// The config file's contents.
pub const CONFIG: &str = "port: 8080\nmode: pod\n";
/// The secret's contents.
pub const TOKEN: &str = "s3cr3t-token\n";

/// The target's own files, installed in a pod's target.
pub struct TargetFiles {
    /// The target's data mount (empty on the host).
    pub data: PathBuf,
    /// The target's secrets tmpfs (empty on the host).
    pub secrets: PathBuf,
}

impl TargetFiles {
    /// Installs the files in `pod`'s target; `big_file` adds the 512 MiB file.
    pub fn install(pod: &Pod, big_file: bool) -> Result<TargetFiles> {
        let dir = pod.dir();
        let (store, data, secrets) = (dir.join("store"), dir.join("data"), dir.join("secrets"));
        for path in [&store, &data, &secrets] {
            fs::create_dir_all(path)?;
        }
        fs::write(store.join("config.yaml"), CONFIG)?;
        write_tree(&store.join("tree"), &data.join("tree"))?;
        if big_file {
            write_random(&store.join("big.bin"), BIG_FILE_LEN)?;
        }
        let script = format!(
            "set -e\n\
             mount --bind '{store}' '{data}'\n\
             mount -t tmpfs -o size=1m,mode=0700 secrets '{secrets}'\n\
             printf '{token}' > '{secrets}/token'\n\
             chmod 0400 '{secrets}/token'\n",
            store = store.display(),
            data = data.display(),
            secrets = secrets.display(),
            token = TOKEN.trim_end().to_owned() + "\\n",
        );
        Invocation::in_pod(pod, &["/bin/sh", "-c", &script])
            .run()
            .assert_success();
        if secrets.join("token").exists() || data.join("config.yaml").exists() {
            bail!("the target's mounts leaked to the host");
        }
        Ok(TargetFiles { data, secrets })
    }

    pub fn path(&self, relative: &str) -> String {
        self.data.join(relative).display().to_string()
    }
}

/// 100 directories of files, then symlinks to some of them: relative ones (`../d0/f0`) and
/// absolute ones through the path the target sees (`<data>/tree/d0/f0`).
fn write_tree(tree: &std::path::Path, seen_as: &std::path::Path) -> Result<()> {
    let per_dir = TREE_FILES / 100;
    for d in 0..100 {
        let sub = tree.join(format!("d{d}"));
        fs::create_dir_all(&sub)?;
        for f in 0..per_dir {
            fs::write(sub.join(format!("f{f}")), format!("file {d}/{f}\n"))?;
        }
    }
    let links = tree.join("links");
    fs::create_dir_all(&links)?;
    for l in 0..TREE_LINKS / 2 {
        symlink(format!("../d{l}/f0"), links.join(format!("rel{l}")))?;
        symlink(
            seen_as.join(format!("d{l}/f1")),
            links.join(format!("abs{l}")),
        )?;
    }
    Ok(())
}

/// `len` bytes (whole MiBs) from a fast PRNG (xorshift64*), so the file is real data, not a
/// hole.
pub fn write_random(path: &std::path::Path, len: usize) -> Result<()> {
    let mut file = std::io::BufWriter::with_capacity(
        1 << 20,
        fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..len / chunk.len() {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            word.copy_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        file.write_all(&chunk)?;
    }
    file.flush()?;
    Ok(())
}
