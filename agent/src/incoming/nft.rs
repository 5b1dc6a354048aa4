//! The agent's nftables table, spoken over netlink: the redirect of stolen ports.
//!
//! One table per agent, in the `inet` family (IPv4 and IPv6 at once), created with
//! `NFT_TABLE_F_OWNER`: the kernel ties it to the netlink socket that made it and deletes it
//! when that socket closes, which happens when the agent exits however it exits (SIGKILL
//! included). Nothing of a session can be left in the target's rule set. Only the owning
//! socket may change the table, so [`Nft`] keeps its socket for the agent's life.
//!
//! The table holds one chain, `nat` type on `prerouting` at `dstnat` priority, with one rule
//! per stolen port:
//!
//! ```text
//! table inet mirrord-net-<pid>-<nonce> {    # flags owner
//!     chain steal {
//!         type nat hook prerouting priority dstnat; policy accept;
//!         meta l4proto tcp tcp dport 8080 tcp flags & (syn | ack) == syn
//!             redirect to :<agent listener port>
//!     }
//! }
//! ```
//!
//! Prerouting sees connections that arrive from outside the target's network namespace
//! (other pods, the node, a Service's DNAT), which is what stealing takes; the agent's own
//! connections to the target's port (the fallback when the session does not take one) leave
//! through `output` and are not redirected. Conntrack keeps each connection on the path it
//! started on, so changing the rules never moves a connection already under way, as long as
//! conntrack runs: the chain's last rule is there to keep it running
//! ([`conntrack_holder_rule`]).
//!
//! ```text
//!         ct state                     # after the redirects, for the table's life
//! ```
//!
//! [`set_ports`](Nft::set_ports) replaces the chain's rules in one batch (flush, then one
//! rule per port), which the kernel applies atomically.
//!
//! The netlink encoding and the socket are `mirrord-net-netfilter`'s, shared with the
//! client's loopback redirect; this module holds what the rules say.

use std::io;

use mirrord_net_netfilter::{
    self as nf, Message, Socket, NFTA_CT_DREG, NFTA_CT_KEY, NFTA_REDIR_REG_PROTO_MIN, NFT_CT_STATE,
    NFT_META_L4PROTO, NFT_PAYLOAD_TRANSPORT_HEADER, NFT_REG_1, NF_INET_PRE_ROUTING,
    NF_IP_PRI_NAT_DST,
};

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The name of the agent's chain in its table.
pub const CHAIN: &str = "steal";

/// `add chain inet TABLE steal { type nat hook prerouting priority dstnat; }`
fn new_chain(seq: u32, table: &str) -> Vec<u8> {
    nf::new_nat_chain(seq, table, CHAIN, NF_INET_PRE_ROUTING, NF_IP_PRI_NAT_DST)
}

/// `add rule inet TABLE steal meta l4proto tcp tcp dport PORT tcp flags & (syn|ack) == syn
/// redirect to :TO`
///
/// Only a connection's opening SYN is redirected. Conntrack decides NAT on a connection's
/// first packet anyway; the flags test keeps a connection that conntrack picks up in the
/// middle (its entry was lost, or the connection predates conntrack in this namespace, which
/// starts with the agent's nat chain) from being sent, mid-stream, to the agent's listener,
/// which could only reset it.
fn redirect_rule(seq: u32, table: &str, port: u16, to: u16) -> Vec<u8> {
    nf::new_rule(seq, table, CHAIN, |m: &mut Message| {
        m.meta(NFT_META_L4PROTO)
            .cmp_eq(&[libc::IPPROTO_TCP as u8])
            // the destination port
            .payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2)
            .cmp_eq(&port.to_be_bytes())
            // the flags
            .payload(NFT_PAYLOAD_TRANSPORT_HEADER, 13, 1)
            .and_mask(&[TCP_SYN | TCP_ACK])
            .cmp_eq(&[TCP_SYN])
            .immediate(NFT_REG_1, &to.to_be_bytes())
            .expr("redir", |m| {
                m.be32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
            });
    })
}

/// `add rule inet TABLE steal ct state`: loads the connection's state and does nothing with
/// it. Its point is that it uses conntrack: the kernel runs conntrack in a network namespace
/// only while some rule there needs it (`nf_ct_netns_get`), and NAT rides on it. In a pod
/// whose only NAT rules are the steal's, flushing the last redirect would stop conntrack, and
/// with it the rewriting of the connections already redirected: their answers would leave
/// from the agent's listener port and be reset by their clients (the e2e test
/// `nftables_unsteal_keeps_a_stolen_connection_under_way`). So the chain keeps this rule
/// after the redirects, for the table's life.
fn conntrack_holder_rule(seq: u32, table: &str) -> Vec<u8> {
    nf::new_rule(seq, table, CHAIN, |m: &mut Message| {
        m.expr("ct", |m| {
            m.be32(NFTA_CT_KEY, NFT_CT_STATE);
            m.be32(NFTA_CT_DREG, NFT_REG_1);
        });
    })
}

/// The agent's table, owned by the netlink socket this holds.
pub struct Nft {
    socket: Socket,
    table: String,
}

impl Nft {
    /// Creates table `table` (with its chain) in the calling thread's network namespace.
    pub fn create(table: &str) -> io::Result<Self> {
        let mut socket = Socket::open()?;
        socket.apply(|push| {
            push(&|seq| nf::new_table(seq, table));
            push(&|seq| new_chain(seq, table));
        })?;
        Ok(Self {
            socket,
            table: table.to_owned(),
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Redirects exactly `ports` (`(target port, agent listener port)`), atomically: flush,
    /// then one rule per port, in one batch.
    pub fn set_ports(&mut self, ports: &[(u16, u16)]) -> io::Result<()> {
        let table = &self.table;
        self.socket.apply(|push| {
            push(&|seq| nf::flush_chain(seq, table, CHAIN));
            for &(port, to) in ports {
                push(&|seq| redirect_rule(seq, table, port, to));
            }
            push(&|seq| conntrack_holder_rule(seq, table));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nf::inspect::{attrs, expr_names};
    use nf::*;

    #[test]
    fn the_conntrack_holder_loads_the_state_and_nothing_else() {
        let m = conntrack_holder_rule(4, "t");
        assert_eq!(expr_names(&m), ["ct"]);
    }

    #[test]
    fn chain_message_hooks_prerouting_at_dstnat() {
        let m = new_chain(1, "t");
        let a = attrs(&m[20..]);
        assert_eq!(a[1], (NFTA_CHAIN_NAME, &b"steal\0"[..]));
        let hook = attrs(a[2].1);
        assert_eq!(hook[0], (NFTA_HOOK_HOOKNUM, &[0, 0, 0, 0][..]));
        assert_eq!(hook[1], (NFTA_HOOK_PRIORITY, &(-100i32).to_be_bytes()[..]));
    }

    #[test]
    fn redirect_rule_matches_tcp_dport_and_redirects_to_the_listener() {
        let m = redirect_rule(3, "t", 8080, 40000);
        assert_eq!(
            expr_names(&m),
            [
                "meta",
                "cmp",
                "payload",
                "cmp",
                "payload",
                "bitwise",
                "cmp",
                "immediate",
                "redir"
            ]
        );
        let a = attrs(&m[20..]);
        assert_eq!(a[2].0, NFTA_RULE_EXPRESSIONS | NLA_F_NESTED);
        let exprs = attrs(a[2].1);
        let data = |i: usize| attrs(attrs(exprs[i].1)[1].1);
        // cmp of the port: the value in network order, padded to 4 bytes on the wire.
        let port_cmp = data(3);
        let value = attrs(port_cmp[2].1);
        assert_eq!(value[0], (NFTA_DATA_VALUE, &8080u16.to_be_bytes()[..]));
        let flags = data(4);
        assert_eq!(flags[2], (NFTA_PAYLOAD_OFFSET, &[0, 0, 0, 13][..]));
        let bitwise = data(5);
        assert_eq!(attrs(bitwise[3].1)[0], (NFTA_DATA_VALUE, &[0x12][..]));
        let syn = data(6);
        assert_eq!(attrs(syn[2].1)[0], (NFTA_DATA_VALUE, &[0x02][..]));
        let immediate = data(7);
        assert_eq!(
            attrs(immediate[1].1)[0],
            (NFTA_DATA_VALUE, &40000u16.to_be_bytes()[..])
        );
        let payload = data(2);
        assert_eq!(payload[1], (NFTA_PAYLOAD_BASE, &[0, 0, 0, 2][..]));
        assert_eq!(payload[2], (NFTA_PAYLOAD_OFFSET, &[0, 0, 0, 2][..]));
    }
}
