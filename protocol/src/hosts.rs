//! The target's hosts file, which arrives in the hello ([`TargetInfo`]), read as glibc's
//! `files` backend reads it. One reader for both who need it: the agent (a `--remote` name is
//! looked up there first) and the session (whether the target's own name has a line).
//!
//! A line is an address and its names: `#` starts a comment, fields are separated by blanks,
//! and a line whose first field is not an address gives nothing at all. Names compare
//! without regard to ASCII case, and a trailing dot of the name asked is ignored.
//!
//! [`TargetInfo`]: crate::messages::TargetInfo

use std::net::IpAddr;

/// The addresses `hosts` gives `name` (as canonical name or alias), in file order, each once.
pub fn addresses_of(hosts: &[u8], name: &str) -> Vec<IpAddr> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut found = Vec::new();
    for line in hosts.split(|&b| b == b'\n') {
        let line = match line.iter().position(|&b| b == b'#') {
            Some(hash) => &line[..hash],
            None => line,
        };
        let mut fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|field| !field.is_empty());
        let Some(addr) = fields
            .next()
            .and_then(|field| std::str::from_utf8(field).ok())
            .and_then(|field| field.parse::<IpAddr>().ok())
        else {
            continue;
        };
        if fields.any(|alias| alias.eq_ignore_ascii_case(name.as_bytes())) && !found.contains(&addr)
        {
            found.push(addr);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_of_a_name_in_any_case_in_file_order() {
        let hosts = b"127.0.0.1 localhost\n10.1.2.3 db DB.internal # primary\n\
                      fd00::3\tdb\n# 10.9.9.9 db\n10.1.2.3 db\n";
        assert_eq!(
            addresses_of(hosts, "db"),
            [
                "10.1.2.3".parse::<IpAddr>().unwrap(),
                "fd00::3".parse().unwrap()
            ]
        );
        assert_eq!(
            addresses_of(hosts, "db.internal."),
            ["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
        // A comment's words are no names.
        assert!(addresses_of(hosts, "primary").is_empty());
    }

    #[test]
    fn a_line_without_an_address_first_gives_nothing() {
        for hosts in [
            &b"not-an-address db\n"[..],
            b"db 10.0.0.1\n",
            b"\xff\xfe db\n",
        ] {
            assert!(addresses_of(hosts, "db").is_empty(), "{hosts:?}");
        }
        assert!(addresses_of(b"10.0.0.1 dbx\n", "db").is_empty());
    }

    #[test]
    fn a_file_without_a_final_newline_or_with_crlf_is_read() {
        assert_eq!(addresses_of(b"10.0.0.1 db", "db").len(), 1);
        assert_eq!(addresses_of(b"10.0.0.1 db\r\n", "db").len(), 1);
    }
}
