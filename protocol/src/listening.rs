//! Reading which ports a network namespace serves, from `/proc/PID/net/tcp`, `tcp6`, `udp`
//! and `udp6` text. Both ends need it: the client for the session's programs (stealing, and
//! the loopback redirect), the agent for the target's (`--steal-all`). Parsing only; the
//! reading is the caller's.

/// The listening TCP ports in a `/proc/net/tcp` or `/proc/net/tcp6` table.
pub fn parse_listening(table: &str) -> Vec<u16> {
    ports_in_state(table, "0A")
}

/// The UDP ports that sockets wait on unconnected (`bind()` without `connect()`: servers) in
/// a `/proc/net/udp` or `/proc/net/udp6` table.
pub fn parse_bound_udp(table: &str) -> Vec<u16> {
    ports_in_state(table, "07")
}

/// The local ports of a `/proc/net` socket table's lines in state `wanted` (hex, as printed).
fn ports_in_state(table: &str, wanted: &str) -> Vec<u16> {
    let mut ports: Vec<u16> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != wanted {
                return None;
            }
            let port = local.rsplit(':').next()?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_listening_sockets_are_read() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0200D50A:1F90 0100D50A:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
";
        assert_eq!(parse_listening(table), [80, 8080]);
        let v6 =
            "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1F91 00000000000000000000000000000000:0000 0A 0
";
        assert_eq!(parse_listening(v6), [8081]);
    }

    #[test]
    fn proc_net_udp_unconnected_sockets_are_read() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 0100007F:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0
  2: 0100007F:D431 0100007F:0035 01 00000000:00000000 00:00000000 00000000     0        0 2 2 0000000000000000 0
";
        assert_eq!(parse_bound_udp(table), [5353]);
        assert!(parse_listening(table).is_empty());
    }
}
