//! A pod's scratch directory: configuration, scripts, logs, database files.
//!
//! It lives at `/tmp/mnet-<test pid>-<n>` with mode 0755, because sessions that drop to an
//! unprivileged user (and servers that run as `postgres`) must read the scripts and files in
//! it. Removed on drop; [`crate::sweep`] removes those of test processes that died.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub const ROOT: &str = "/tmp";

#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn create(name: &str) -> Result<TestDir> {
        let path = Path::new(ROOT).join(name);
        if path.exists() {
            fs::remove_dir_all(&path)
                .with_context(|| format!("removing old {}", path.display()))?;
        }
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(TestDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes a world-readable file (mode 0644, or 0755 for scripts that get executed).
    pub fn write(&self, name: &str, contents: &[u8], mode: u32) -> Result<PathBuf> {
        let path = self.join(name);
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        Ok(path)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
