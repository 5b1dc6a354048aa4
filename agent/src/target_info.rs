//! What a session needs to know about its target: addresses, hostname, resolver files,
//! environment.
//!
//! Gathered once, after the agent has entered the target's namespaces: the addresses are those
//! of the interfaces the agent now sees, the hostname is the UTS namespace's, the resolver
//! files are read from the target's root (see [`crate::root_fs`]) and the environment from
//! `/proc/PID/environ` and its mounts from `/proc/PID/mountinfo` (the agent keeps the host's
//! /proc: it never enters the target's mount namespace).

use std::net::IpAddr;
use std::path::Path;

use mirrord_net_env_injector::Var;
use mirrord_net_protocol::messages::TargetInfo;

use crate::root_fs::TargetRoot;

/// resolv.conf and hosts larger than this are cut (real ones are a few KiB).
const RESOLVER_FILE_LIMIT: u64 = 1024 * 1024;

/// A larger environment is refused rather than cut (a cut would change the last value); real
/// ones are a few KiB, and the kernel's own limit for `execve` is a quarter of the stack limit.
const ENVIRON_LIMIT: u64 = 4 * 1024 * 1024;

/// A larger mount table is refused rather than cut (a cut line would be misread); a node with
/// hundreds of pods has a few hundred KiB.
const MOUNTINFO_LIMIT: u64 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TargetInfoError {
    #[error("cannot list the target's addresses: {0}")]
    Addresses(nix::Error),
    #[error("cannot read the target's hostname: {0}")]
    Hostname(nix::Error),
    #[error("cannot read {path} of the target: {source}")]
    File {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("cannot read the environment of process {pid}: {source}")]
    Environ { pid: u32, source: std::io::Error },
    #[error("the environment of process {pid} is larger than {ENVIRON_LIMIT} bytes")]
    EnvironTooLarge { pid: u32 },
    #[error("cannot read the mounts of process {pid} (/proc/{pid}/mountinfo): {source}")]
    Mountinfo { pid: u32, source: std::io::Error },
    #[error("the mount table of process {pid} is larger than {MOUNTINFO_LIMIT} bytes")]
    MountinfoTooLarge { pid: u32 },
}

/// Describes the target `pid`, whose namespaces the calling thread is in.
pub fn gather(root: &TargetRoot, pid: u32) -> Result<TargetInfo, TargetInfoError> {
    let mut ipv4 = Vec::new();
    let mut ipv6 = Vec::new();
    // The interface of the first address kept, IPv4 before IPv6 (as the client uses them).
    let mut interface_v4 = None;
    let mut interface_v6 = None;
    let addrs = nix::ifaddrs::getifaddrs().map_err(TargetInfoError::Addresses)?;
    for addr in addrs {
        let Some(address) = addr.address else {
            continue;
        };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        match ip {
            IpAddr::V4(v4) if is_global_v4(v4) && !ipv4.contains(&v4) => {
                ipv4.push(v4);
                interface_v4.get_or_insert_with(|| addr.interface_name.clone());
            }
            IpAddr::V6(v6) if is_global_v6(v6) && !ipv6.contains(&v6) => {
                ipv6.push(v6);
                interface_v6.get_or_insert_with(|| addr.interface_name.clone());
            }
            _ => {}
        }
    }
    let hostname = nix::unistd::gethostname()
        .map_err(TargetInfoError::Hostname)?
        .to_string_lossy()
        .into_owned();
    let read = |path: &'static str| {
        root.read_optional(Path::new(path), RESOLVER_FILE_LIMIT)
            .map_err(|source| TargetInfoError::File { path, source })
    };
    Ok(TargetInfo {
        hostname,
        ipv4,
        ipv6,
        interface: interface_v4.or(interface_v6),
        resolv_conf: read("/etc/resolv.conf")?,
        hosts: read("/etc/hosts")?,
        environ: environ_of(pid)?,
        mountinfo: mountinfo_of(pid)?,
    })
}

/// The mount table of `pid`, as its mount namespace shows it.
fn mountinfo_of(pid: u32) -> Result<String, TargetInfoError> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(format!("/proc/{pid}/mountinfo"))
        .and_then(|file| file.take(MOUNTINFO_LIMIT + 1).read_to_string(&mut text))
        .map_err(|source| TargetInfoError::Mountinfo { pid, source })?;
    if text.len() as u64 > MOUNTINFO_LIMIT {
        return Err(TargetInfoError::MountinfoTooLarge { pid });
    }
    Ok(text)
}

/// The environment `pid` was started with (as `execve` left it; a process that later
/// `setenv`s changes only its own memory, which is what `/proc/PID/environ` shows too).
fn environ_of(pid: u32) -> Result<Vec<Var>, TargetInfoError> {
    use std::io::Read;
    let mut block = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/environ"))
        .and_then(|file| file.take(ENVIRON_LIMIT + 1).read_to_end(&mut block))
        .map_err(|source| TargetInfoError::Environ { pid, source })?;
    if block.len() as u64 > ENVIRON_LIMIT {
        return Err(TargetInfoError::EnvironTooLarge { pid });
    }
    Ok(mirrord_net_env_injector::environ::parse(&block))
}

/// Addresses a packet from the target could carry as its source: not loopback, not
/// link-local, not unspecified.
fn is_global_v4(ip: std::net::Ipv4Addr) -> bool {
    !(ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() || ip.is_multicast())
}

fn is_global_v6(ip: std::net::Ipv6Addr) -> bool {
    let link_local = (ip.segments()[0] & 0xffc0) == 0xfe80;
    !(ip.is_loopback() || link_local || ip.is_unspecified() || ip.is_multicast())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environ_of_this_process_is_its_environment() {
        let environ = environ_of(std::process::id()).unwrap();
        let expected: Vec<Var> = std::env::vars_os()
            .map(|(k, v)| {
                use std::os::unix::ffi::OsStrExt;
                (k.as_bytes().to_vec(), v.as_bytes().to_vec())
            })
            .collect();
        // Entries set after exec are not in /proc/PID/environ; the test harness sets none.
        for var in &expected {
            assert!(environ.contains(var), "{var:?} missing");
        }
    }

    #[test]
    fn mountinfo_of_this_process_is_its_mount_table() {
        let expected = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let got = mountinfo_of(std::process::id()).unwrap();
        // Same mount namespace: the same mounts (their order and ids are the kernel's).
        assert_eq!(got.lines().count(), expected.lines().count());
        assert!(got.lines().any(|line| line.split(' ').nth(4) == Some("/")));
    }

    #[test]
    fn only_routable_addresses_describe_the_target() {
        assert!(is_global_v4("10.1.2.3".parse().unwrap()));
        assert!(!is_global_v4("127.0.0.1".parse().unwrap()));
        assert!(!is_global_v4("169.254.1.1".parse().unwrap()));
        assert!(is_global_v6("fd00::5".parse().unwrap()));
        assert!(is_global_v6("2001:db8::1".parse().unwrap()));
        assert!(!is_global_v6("fe80::1".parse().unwrap()));
        assert!(!is_global_v6("::1".parse().unwrap()));
    }
}
