//! Least privilege once the agent is inside the target: drop what the session cannot use.
//!
//! The agent starts with every capability (it must enter the target's namespaces and open
//! its root). Once it has, before it serves anything a client sends, it keeps only the
//! capabilities its features still use ([`kept`]) in its effective, permitted and
//! inheritable sets, removes every other one from the bounding set, and sets
//! `no_new_privs`, so nothing it could be talked into running gains privileges either:
//!
//! | kept | for |
//! |---|---|
//! | `NET_ADMIN` | only when the session may steal: the steal's nftables table |
//! | `NET_RAW` | only when the session may mirror (the sniffer's packet socket) or the target's namespace refuses the agent ping sockets (raw ICMP sockets for the session's pings) |
//! | `NET_BIND_SERVICE` | listeners on low ports |
//! | `DAC_OVERRIDE`, `DAC_READ_SEARCH`, `SYS_PTRACE` | the file server reads the target's whole tree and `/proc` |
//! | `CHOWN`, `FOWNER`, `FSETID` | only in write mode: changes to files other users own |
//!
//! `SYS_ADMIN` (namespaces, mounts), `SYS_MODULE`, `SYS_RAWIO`, `MKNOD`, `SETUID`/`SETGID`
//! and the rest go. The client says at start which inbound traffic the session may ask for
//! (`--incoming`), so a session that steals nothing runs without network administration.
//! The seccomp allow-list follows (see [`seccomp`](crate::seccomp)). Capabilities are per thread: this runs on the main thread before the
//! runtime starts, so every thread the agent starts later inherits the reduced sets.

/// Capability numbers (linux/capability.h).
pub mod cap {
    pub const CHOWN: u32 = 0;
    pub const DAC_OVERRIDE: u32 = 1;
    pub const DAC_READ_SEARCH: u32 = 2;
    pub const FOWNER: u32 = 3;
    pub const FSETID: u32 = 4;
    pub const NET_BIND_SERVICE: u32 = 10;
    pub const NET_ADMIN: u32 = 12;
    pub const NET_RAW: u32 = 13;
    pub const SYS_PTRACE: u32 = 19;
    pub const SYS_ADMIN: u32 = 21;
    /// The highest capability this code knows of (CAP_CHECKPOINT_RESTORE); the bounding set
    /// is cleared up to the kernel's own last one.
    pub const LAST_KNOWN: u32 = 40;
}

/// What the session's features need, which decides the capabilities kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The file server writes (`--fs-mode write`).
    pub write_files: bool,
    /// The session may steal inbound connections.
    pub steal: bool,
    /// Raw or packet sockets: the mirror's sniffer, or pings where ping sockets are refused.
    pub raw_sockets: bool,
}

/// The capabilities the agent keeps, as a 64-bit mask: see the module comment.
pub fn kept(needs: Needs) -> u64 {
    let mut caps = vec![
        cap::NET_BIND_SERVICE,
        cap::DAC_OVERRIDE,
        cap::DAC_READ_SEARCH,
        cap::SYS_PTRACE,
    ];
    if needs.steal {
        caps.push(cap::NET_ADMIN);
    }
    if needs.raw_sockets {
        caps.push(cap::NET_RAW);
    }
    if needs.write_files {
        caps.extend([cap::CHOWN, cap::FOWNER, cap::FSETID]);
    }
    caps.into_iter().fold(0, |mask, cap| mask | 1 << cap)
}

/// Whether this network namespace gives the calling process ICMP ping sockets (its
/// `net.ipv4.ping_group_range` covers our group), so pings need no raw socket.
pub fn ping_sockets_allowed() -> bool {
    [
        (libc::AF_INET, libc::IPPROTO_ICMP),
        (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    ]
    .into_iter()
    .any(|(family, protocol)| {
        // SAFETY: socket with integer arguments; the descriptor is closed at once.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, protocol) };
        if fd >= 0 {
            // SAFETY: the descriptor just made, closed once.
            unsafe { libc::close(fd) };
        }
        fd >= 0
    })
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Keeps only `keep` (a mask from [`kept`]) on the calling thread and sets `no_new_privs`.
pub fn drop_to(keep: u64) -> anyhow::Result<()> {
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(cap::LAST_KNOWN);
    for cap in 0..=last {
        if keep & (1 << cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            let done = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if done != 0 {
                let err = std::io::Error::last_os_error();
                // EINVAL: a capability this kernel does not have. EPERM: no CAP_SETPCAP (a
                // container without it); the sets below and no_new_privs still apply.
                if err.raw_os_error() == Some(libc::EPERM) {
                    tracing::debug!("cannot shrink the bounding set without CAP_SETPCAP");
                    break;
                }
                if err.raw_os_error() != Some(libc::EINVAL) {
                    return Err(anyhow::Error::new(err).context(format!(
                        "cannot drop capability {cap} from the bounding set"
                    )));
                }
            }
        }
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a version-3 header and room for its two data words.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(anyhow::Error::new(std::io::Error::last_os_error()).context("capget"));
    }
    for (word, data) in data.iter_mut().enumerate() {
        let mask = (keep >> (32 * word)) as u32;
        data.effective &= mask;
        data.permitted &= mask;
        data.inheritable &= mask;
    }
    // SAFETY: capset with the header and data capget filled, only narrowed.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(anyhow::Error::new(std::io::Error::last_os_error()).context("capset"));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(anyhow::Error::new(std::io::Error::last_os_error()).context("no_new_privs"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_ownership_is_kept_only_for_write_mode() {
        let read = kept(Needs::default());
        let write = kept(Needs {
            write_files: true,
            ..Needs::default()
        });
        assert_eq!(read & (1 << cap::CHOWN), 0);
        assert_ne!(write & (1 << cap::CHOWN), 0);
        assert_eq!(write & (1 << cap::SYS_ADMIN), 0);
        assert_eq!(
            write & !read,
            1 << cap::CHOWN | 1 << cap::FOWNER | 1 << cap::FSETID
        );
    }

    #[test]
    fn network_administration_only_for_a_steal_and_raw_sockets_only_when_needed() {
        let none = kept(Needs::default());
        assert_eq!(none & (1 << cap::NET_ADMIN | 1 << cap::NET_RAW), 0);
        let steal = kept(Needs {
            steal: true,
            ..Needs::default()
        });
        assert_eq!(steal & !none, 1 << cap::NET_ADMIN);
        let raw = kept(Needs {
            raw_sockets: true,
            ..Needs::default()
        });
        assert_eq!(raw & !none, 1 << cap::NET_RAW);
    }

    /// On a thread of its own (capabilities are per thread; the test process keeps its own).
    #[test]
    fn the_thread_keeps_only_what_it_was_told() {
        std::thread::spawn(|| {
            drop_to(kept(Needs::default())).expect("dropping capabilities");
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(name))
                    .map(|value| value.trim().to_owned())
                    .unwrap_or_else(|| panic!("no {name} in {status}"))
            };
            let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
            assert_eq!(eff & !kept(Needs::default()), 0, "CapEff {eff:x}");
            assert_eq!(eff & (1 << cap::SYS_ADMIN), 0);
            let bnd = u64::from_str_radix(&field("CapBnd:"), 16).unwrap();
            assert_eq!(bnd & !kept(Needs::default()), 0, "CapBnd {bnd:x}");
            assert_eq!(field("NoNewPrivs:"), "1");
        })
        .join()
        .unwrap();
    }
}
