//! Raising RLIMIT_NOFILE: 10,000 idle flows need 10,000 descriptors in the client, in the
//! server, and in mirrord-net-agent's upstream sockets. The harness raises its own limit
//! before it starts anything, so every process it starts (including the agent, started by
//! mirrord-net) inherits it.

/// Soft and hard limit the harness asks for.
const WANTED: u64 = 65536;

/// Raises the soft (and, as root, the hard) limit to at least [`WANTED`]; best effort.
pub fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let wanted = WANTED.max(limit.rlim_cur);
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            let soft_only = libc::rlimit {
                rlim_cur: limit.rlim_max.min(wanted),
                rlim_max: limit.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft_only);
        }
    }
}
