//! Names that identify the test process that made them, and removal of those whose test
//! process is gone.
//!
//! Every namespace and directory a pod makes is named `mnet-<test pid>-<n>-...`, and so is a
//! cgroup a test or the splice probe makes at the cgroup v2 root. A test process killed
//! outright (SIGKILL, a crashed runner) cannot run its destructors; the next pod any test
//! builds removes what such a process left: it kills the processes inside the stale
//! namespaces, deletes them, removes the directories, and removes the stale cgroups that are
//! empty. Names of live test processes are never touched, so parallel tests do not disturb
//! each other.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

use crate::cgroup;
use crate::netns;
use crate::procfs;
use crate::testdir;

pub const PREFIX: &str = "mnet-";

/// A name no other pod, in this or any other live test process, has: `mnet-<pid>-<n>`.
pub fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The test process that made `name`, if it is one of ours.
pub fn owner_of(name: &str) -> Option<i32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Removes what dead test processes left behind; once per test process.
pub fn sweep_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sweep);
}

/// Removes every namespace, directory and (empty) cgroup named by a test process that is no
/// longer alive.
pub fn sweep() {
    let stale = |name: &str| owner_of(name).is_some_and(|pid| !procfs::is_alive(pid));
    for name in names_in("/run/netns") {
        if stale(&name) {
            netns::remove(&name);
        }
    }
    for name in names_in(testdir::ROOT) {
        if stale(&name) {
            let _ = fs::remove_dir_all(Path::new(testdir::ROOT).join(&name));
        }
    }
    if let Some(root) = cgroup::v2_mount() {
        for name in names_in(&root) {
            if stale(&name) {
                // Fails, and keeps it, if processes are still inside.
                let _ = fs::remove_dir(root.join(&name));
            }
        }
    }
}

fn names_in(dir: impl AsRef<Path>) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|name| name.starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_name_their_owner() {
        let a = unique_name();
        let b = unique_name();
        assert_ne!(a, b);
        assert_eq!(owner_of(&a), Some(std::process::id() as i32));
        assert_eq!(
            owner_of(&format!("{b}-pod")),
            Some(std::process::id() as i32)
        );
        assert_eq!(owner_of("other-123-0"), None);
    }
}
