//! The session's copy of the target's hosts file, with an entry for the target's own name.
//!
//! `hostname -i`, `getent hosts $(hostname)` and programs that look up their own name to learn
//! their address resolve the hostname through NSS, usually `files` first. Kubernetes writes the
//! pod's name into the pod's /etc/hosts, but a plain container or process may have no such
//! line, and then the lookup fails (or, worse, reaches DNS). So when no line of the target's
//! hosts names the hostname, the session's copy gets one for the target's first IPv4 and first
//! IPv6 address. The target's own file is never changed: only the bytes the session mounts.

use std::net::{Ipv4Addr, Ipv6Addr};

use mirrord_net_protocol::hosts::addresses_of;

/// `hosts` with lines for `hostname` at `ipv4`/`ipv6` appended, unless a line already gives
/// it an address (as glibc's `files` backend reads the file: `protocol::hosts`). An empty hostname
/// or no address leaves `hosts` as it is.
pub fn with_hostname_entry(
    hosts: &[u8],
    hostname: &str,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
) -> Vec<u8> {
    let mut out = hosts.to_vec();
    if hostname.is_empty()
        || (ipv4.is_none() && ipv6.is_none())
        || !addresses_of(hosts, hostname).is_empty()
    {
        return out;
    }
    if !out.is_empty() && !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    out.extend_from_slice(b"# the target's own name (added for this session)\n");
    if let Some(ip) = ipv4 {
        out.extend_from_slice(format!("{ip}\t{hostname}\n").as_bytes());
    }
    if let Some(ip) = ipv6 {
        out.extend_from_slice(format!("{ip}\t{hostname}\n").as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: Option<Ipv4Addr> = Some(Ipv4Addr::new(10, 0, 0, 5));
    const V6: Option<Ipv6Addr> = Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 5));

    #[test]
    fn missing_entry_is_added_for_the_first_addresses() {
        let hosts = b"127.0.0.1\tlocalhost\n";
        let out = with_hostname_entry(hosts, "pod-a", V4, V6);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"), "{text}");
        assert!(text.contains("\n10.0.0.5\tpod-a\n"), "{text}");
        assert!(text.ends_with("fd00::5\tpod-a\n"), "{text}");
    }

    #[test]
    fn existing_entry_leaves_the_file_unchanged() {
        for hosts in [
            "10.9.9.9 pod-a\n",
            "10.9.9.9\tpod-a.ns.svc.cluster.local\tpod-a\n",
            "10.9.9.9 POD-A # upper case\n",
        ] {
            assert_eq!(
                with_hostname_entry(hosts.as_bytes(), "pod-a", V4, V6),
                hosts.as_bytes(),
                "{hosts}"
            );
        }
    }

    #[test]
    fn names_in_comments_address_position_or_lines_without_an_address_do_not_count() {
        let hosts = b"# 10.9.9.9 pod-a\npod-a 10.0.0.1\nnot-an-address pod-a\n";
        let out = with_hostname_entry(hosts, "pod-a", V4, None);
        assert!(out.ends_with(b"10.0.0.5\tpod-a\n"));
        let hosts = b"10.9.9.9 pod-ab\n";
        assert_ne!(with_hostname_entry(hosts, "pod-a", V4, None), hosts);
    }

    #[test]
    fn file_without_final_newline_gets_one_first() {
        let out = with_hostname_entry(b"127.0.0.1 localhost", "h", V4, None);
        assert!(out.starts_with(b"127.0.0.1 localhost\n#"));
    }

    #[test]
    fn only_the_families_the_target_has_are_added() {
        let out = String::from_utf8(with_hostname_entry(b"", "h", None, V6)).unwrap();
        assert!(!out.contains("10.0.0.5"));
        assert!(out.contains("fd00::5\th\n"));
    }

    #[test]
    fn nothing_to_add_without_a_name_or_an_address() {
        assert_eq!(with_hostname_entry(b"x\n", "", V4, V6), b"x\n");
        assert_eq!(with_hostname_entry(b"x\n", "h", None, None), b"x\n");
    }
}
