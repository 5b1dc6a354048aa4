//! The file jobs of the client: passes over a file or a tree, each timed on its own.
//!
//! Each job makes two passes in one process: the first is cold (the harness dropped the page
//! cache before starting the run, and a mirrord-net run is a fresh session whose FUSE caches
//! are empty), the second warm (whatever the kernel, and the session, kept from the first).
//! Reading goes through a 128 KiB buffer into nothing, as `cat > /dev/null` would; the walk
//! lists every directory and stats every entry without following symlinks, as
//! `find -printf '%s %m'` does. Both check what they saw against what the harness built, so
//! a session that showed the wrong files fails instead of measuring them.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use crate::job::Answer;

/// How many passes each file job makes: cold, then warm.
const PASSES: usize = 2;
const READ_BUFFER: usize = 128 * 1024;

pub fn read_file(path: &str, len: u64) -> Result<Answer> {
    let mut buf = vec![0u8; READ_BUFFER];
    let passes = timed_passes(|| {
        let mut file = File::open(path).with_context(|| format!("opening {path}"))?;
        let mut read = 0u64;
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("reading {path}"))?;
            if n == 0 {
                break;
            }
            read += n as u64;
        }
        ensure!(read == len, "read {read} bytes of {path}, expected {len}");
        Ok(())
    })?;
    Ok(Answer {
        bytes: Some(len),
        passes_ms: passes,
        ..Answer::default()
    })
}

pub fn stat_tree(path: &str, entries: u64) -> Result<Answer> {
    let passes = timed_passes(|| {
        let seen = walk(Path::new(path))?;
        ensure!(
            seen == entries,
            "found {seen} entries below {path}, expected {entries}"
        );
        Ok(())
    })?;
    Ok(Answer {
        passes_ms: passes,
        ..Answer::default()
    })
}

fn timed_passes(mut pass: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    (0..PASSES)
        .map(|_| {
            let start = Instant::now();
            pass()?;
            Ok(start.elapsed().as_secs_f64() * 1000.0)
        })
        .collect()
}

/// Stats every entry below `dir` (`fstatat` relative to the open directory, no symlink
/// followed) and descends into directories; returns how many entries it saw.
fn walk(dir: &Path) -> Result<u64> {
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let metadata = entry
            .metadata()
            .with_context(|| format!("stat of {}", entry.path().display()))?;
        // What find prints with '%s %m': kept alive so the stat is not optimised away.
        std::hint::black_box((metadata.len(), metadata.mode()));
        seen += 1;
        if metadata.is_dir() {
            seen += walk(&entry.path())?;
        }
    }
    Ok(seen)
}
