//! What a session needs to know about its target: addresses, hostname, resolver files.
//!
//! Gathered once, after the agent has entered the target's namespaces: the addresses are those
//! of the interfaces the agent now sees, the hostname is the UTS namespace's, and the resolver
//! files are read from the target's root (see [`crate::root_fs`]).

use std::net::IpAddr;
use std::path::Path;

use mirrord_net_protocol::messages::TargetInfo;

use crate::root_fs::TargetRoot;

/// resolv.conf and hosts larger than this are cut (real ones are a few KiB).
const RESOLVER_FILE_LIMIT: u64 = 1024 * 1024;

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
}

/// Describes the target whose namespaces the calling thread is in.
pub fn gather(root: &TargetRoot) -> Result<TargetInfo, TargetInfoError> {
    let mut ipv4 = Vec::new();
    let mut ipv6 = Vec::new();
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
            IpAddr::V4(v4) if is_global_v4(v4) && !ipv4.contains(&v4) => ipv4.push(v4),
            IpAddr::V6(v6) if is_global_v6(v6) && !ipv6.contains(&v6) => ipv6.push(v6),
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
        resolv_conf: read("/etc/resolv.conf")?,
        hosts: read("/etc/hosts")?,
    })
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
