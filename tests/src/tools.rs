//! Finding the programs the tests drive. A missing one fails the test at once, with the
//! package that provides it: a test that quietly skips would pass on a machine that tests
//! nothing.

use std::path::{Path, PathBuf};

/// The PATH every fixture process and session gets: the system's, without anything a
/// developer's shell put in front (pyenv shims, ~/.cargo/bin), so the same binaries run
/// everywhere and an unprivileged user can run them.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The Debian package that provides each tool, for the failure message.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("nsenter", "util-linux"),
    ("unshare", "util-linux"),
    ("setpriv", "util-linux"),
    ("dnsmasq", "dnsmasq-base"),
    ("socat", "socat"),
    ("curl", "curl"),
    ("busybox", "busybox-static"),
    ("psql", "postgresql-client"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("dig", "dnsutils"),
    ("ping", "iputils-ping"),
    ("gron", "gron"),
    ("go", "golang-go"),
    ("python3", "python3"),
    ("getent", "libc-bin"),
    ("sha256sum", "coreutils"),
    ("id", "coreutils"),
    ("env", "coreutils"),
    ("printenv", "coreutils"),
    ("sleep", "coreutils"),
    ("od", "coreutils"),
    ("cat", "coreutils"),
    ("mount", "mount"),
    ("hostname", "hostname"),
    ("nft", "nftables"),
];

/// The absolute path of `name` on [`SYSTEM_PATH`]; panics naming the package if it is missing.
pub fn tool(name: &str) -> String {
    find(name)
        .unwrap_or_else(|| {
            let package = PACKAGES
                .iter()
                .find(|(tool, _)| *tool == name)
                .map_or("?", |(_, package)| package);
            panic!(
                "required tool `{name}` is not installed (Debian package `{package}`): \
                 run scripts/install-test-deps.sh"
            )
        })
        .to_string_lossy()
        .into_owned()
}

fn find(name: &str) -> Option<PathBuf> {
    SYSTEM_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The newest PostgreSQL server's bin directory (`/usr/lib/postgresql/N/bin`). Debian keeps
/// `initdb` and `postgres` there, off PATH.
pub fn postgres_bin_dir() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            is_executable(&bin.join("postgres")).then_some((version, bin))
        })
        .max();
    match newest {
        Some((_, bin)) => bin,
        None => panic!(
            "required tool `postgres` is not installed (Debian package `postgresql`): \
             run scripts/install-test-deps.sh"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_tool_every_machine_has() {
        assert!(tool("sh").ends_with("/sh"));
    }

    #[test]
    #[should_panic(expected = "run scripts/install-test-deps.sh")]
    fn a_missing_tool_fails_loudly() {
        tool("surely-no-such-tool-here");
    }
}
