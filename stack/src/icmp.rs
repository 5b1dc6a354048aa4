//! ICMP echo: a `ping` from the session becomes a real echo from the target's network
//! namespace, and the real reply comes back with the session's identifier and sequence.
//!
//! What maps to what: a flow is (session address, destination, echo identifier). Its
//! socket is an ICMP socket connected to the destination: a ping socket where the kernel
//! allows one (it then picks its own identifier, and delivers only replies to it), or else
//! a raw socket (we send the session's identifier and pick our replies out of every ICMP
//! message the destination sends). Once a ping socket is refused (the agent runs as root,
//! and `net.ipv4.ping_group_range` admits no group by default) raw is used directly for that
//! family. Sequence numbers and data pass unchanged; replies are rebuilt from the
//! destination to the session with the session's identifier.
//!
//! States: a flow lives until it has been idle for the ICMP idle timeout.
//!
//! Odd cases: other ICMP from the session (errors, router solicitations) is dropped by the
//! parser. A request that cannot be sent for a routing reason is answered with the matching
//! destination unreachable, as a router would; one that cannot be sent for lack of
//! privilege is dropped and counted.

use std::io::{self, Read};
use std::net::IpAddr;
use std::ops::Range;
use std::task::{Context, Poll};

use smoltcp::time::{Duration, Instant};
use socket2::Socket;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::ctx::Ctx;
use super::datagram::{DatagramFlows, READ_BUDGET};
use super::flow::{FlowId, Proto, Token};
use super::limits::{admit_flow, Limits, LoggedOnce, Refusal};
use super::packet::{echo_request, push_echo_reply, push_unreachable, EchoKey};
use super::stats::Stats;
use super::upstream::{self, EchoSocketKind};

/// An echo reply read from an upstream socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EchoReply {
    pub ident: u16,
    pub seq: u16,
    /// Where the echo data is in the buffer read.
    pub data: Range<usize>,
}

/// Picks an echo reply out of what an ICMP socket read; `None` for anything else.
pub(crate) fn parse_reply(kind: EchoSocketKind, v6: bool, buf: &[u8]) -> Option<EchoReply> {
    let start = match (kind, v6) {
        // Raw IPv4 sockets deliver the IP header too.
        (EchoSocketKind::Raw, false) => usize::from(buf.first()? & 0x0f) * 4,
        _ => 0,
    };
    let icmp = buf.get(start..)?;
    if icmp.len() < 8 {
        return None;
    }
    let echo_reply = if v6 { 129 } else { 0 };
    if icmp[0] != echo_reply || icmp[1] != 0 {
        return None;
    }
    Some(EchoReply {
        ident: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        data: start + 8..buf.len(),
    })
}

/// An echo flow's upstream end: its ICMP socket, and which kind it is.
struct Upstream {
    socket: AsyncFd<Socket>,
    kind: EchoSocketKind,
}

/// All echo flows of a stack.
pub(crate) struct IcmpFlows {
    limits: Limits,
    logged: LoggedOnce,
    flows: DatagramFlows<EchoKey, Upstream>,
    recv_buf: Box<[u8]>,
    send_buf: Vec<u8>,
    /// Per family (v4, v6): ping sockets were refused, go straight to raw.
    raw_only: [bool; 2],
    /// Per family: no ICMP socket can be made at all (warned once).
    unavailable: [bool; 2],
}

fn family(addr: IpAddr) -> usize {
    usize::from(addr.is_ipv6())
}

impl IcmpFlows {
    pub fn new(idle: Duration, limits: Limits) -> Self {
        Self {
            limits,
            logged: LoggedOnce::default(),
            flows: DatagramFlows::new(Proto::Icmp, idle),
            recv_buf: vec![0; 65_535].into_boxed_slice(),
            send_buf: Vec::new(),
            raw_only: [false; 2],
            unavailable: [false; 2],
        }
    }

    /// Sends one echo request from the session (`pkt` is the whole IP packet).
    pub fn on_echo(
        &mut self,
        ctx: &mut Ctx<'_>,
        pkt: &[u8],
        key: EchoKey,
        seq: u16,
        data: Range<usize>,
    ) {
        let id = match self.flows.find(&key) {
            Some(id) => id,
            None if admit_flow(&self.limits, self.flows.len()).is_err() => {
                Stats::inc(&ctx.stats.icmp_refused_by_limit);
                if self.logged.first(Refusal::Flows) {
                    tracing::warn!(
                        max = self.limits.max_flows,
                        "dropping echo requests of new flows beyond the session's flow cap; \
                         counted as icmp_refused_by_limit"
                    );
                }
                return;
            }
            None => match self.open(ctx, key) {
                Ok(id) => id,
                Err(e) => {
                    Stats::inc(&ctx.stats.icmp_dropped);
                    self.report(ctx, pkt, key, &e);
                    return;
                }
            },
        };
        let flow = self.flows.get_mut(id).expect("mapped flow exists");
        flow.last_active = ctx.now;
        echo_request(
            &mut self.send_buf,
            key.client.is_ipv6(),
            key.ident,
            seq,
            &pkt[data],
        );
        match flow.upstream.socket.get_ref().send(&self.send_buf) {
            Ok(_) => Stats::inc(&ctx.stats.icmp_echo_requests),
            Err(e) => {
                Stats::inc(&ctx.stats.icmp_dropped);
                self.report(ctx, pkt, key, &e);
            }
        }
    }

    fn report(&mut self, ctx: &mut Ctx<'_>, pkt: &[u8], key: EchoKey, err: &io::Error) {
        let fam = family(key.server);
        match err.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) | Some(libc::EPROTONOSUPPORT) => {
                if !self.unavailable[fam] {
                    self.unavailable[fam] = true;
                    tracing::warn!(
                        error = %err,
                        "cannot send ICMP echo from the target's namespace (no ping socket \
                         permission and no CAP_NET_RAW); pings from the session are dropped"
                    );
                }
            }
            _ => {
                if let Some(why) = upstream::unreachable_reason(err) {
                    let mtu = ctx.device.mtu();
                    push_unreachable(&mut ctx.device.tx, mtu, pkt, why);
                }
            }
        }
    }

    fn open(&mut self, ctx: &mut Ctx<'_>, key: EchoKey) -> io::Result<FlowId> {
        let fam = family(key.server);
        let (socket, kind) = upstream::open_echo(key.server, self.raw_only[fam])?;
        if kind == EchoSocketKind::Raw && !self.raw_only[fam] {
            tracing::debug!("ping sockets refused; using raw ICMP sockets");
            self.raw_only[fam] = true;
        }
        // SAFETY: the socket owns its descriptor and keeps it, unchanged, until the AsyncFd
        // that owns the socket drops it.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
        let id = self.flows.insert(ctx, key, Upstream { socket, kind });
        Stats::inc(&ctx.stats.icmp_opened);
        Ok(id)
    }

    /// Passes replies to the session.
    pub fn service(&mut self, ctx: &mut Ctx<'_>, id: FlowId) {
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        flow.waker.clear();
        let mut cx = Context::from_waker(flow.waker.waker());
        let v6 = flow.key.server.is_ipv6();
        let mtu = ctx.device.mtu();
        let token = Token {
            proto: Proto::Icmp,
            id,
        };
        for left in (0..READ_BUDGET).rev() {
            if !flow.may_read(ctx, token, left) {
                break;
            }
            let mut guard = match flow.upstream.socket.poll_read_ready(&mut cx) {
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(_)) | Poll::Pending => break,
            };
            let buf = &mut self.recv_buf;
            match guard.try_io(|fd| {
                let mut sock: &Socket = fd.get_ref();
                sock.read(buf)
            }) {
                Ok(Ok(n)) => {
                    let Some(reply) = parse_reply(flow.upstream.kind, v6, &self.recv_buf[..n])
                    else {
                        continue;
                    };
                    if flow.upstream.kind == EchoSocketKind::Raw && reply.ident != flow.key.ident {
                        continue;
                    }
                    flow.last_active = ctx.now;
                    Stats::inc(&ctx.stats.icmp_echo_replies);
                    let ident = ctx.next_ident();
                    push_echo_reply(
                        &mut ctx.device.tx,
                        mtu,
                        ident,
                        flow.key.server,
                        flow.key.client,
                        flow.key.ident,
                        reply.seq,
                        &self.recv_buf[reply.data],
                    );
                }
                // Errors queued on the socket (ICMP errors about our requests): nothing to
                // pass on; keep reading.
                Ok(Err(_)) => continue,
                // Would block: readiness was cleared; the next poll registers the waker.
                Err(_) => continue,
            }
        }
    }

    /// Reaps the flow if it stayed idle.
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: FlowId, at: Instant) {
        if self.flows.on_timer(ctx, id, at).is_some() {
            Stats::inc(&ctx.stats.icmp_closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_ipv4_replies_are_found_behind_the_ip_header() {
        let mut buf = vec![0x45u8];
        buf.resize(20, 0);
        buf.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 5, b'h', b'i']);
        let r = parse_reply(EchoSocketKind::Raw, false, &buf).unwrap();
        assert_eq!((r.ident, r.seq), (0x1234, 5));
        assert_eq!(&buf[r.data], b"hi");
    }

    #[test]
    fn ping_socket_replies_start_with_icmp_and_requests_are_ignored() {
        let reply = [129u8, 0, 0, 0, 0, 9, 0, 1, b'x'];
        let r = parse_reply(EchoSocketKind::Ping, true, &reply).unwrap();
        assert_eq!((r.ident, r.seq), (9, 1));
        let request = [128u8, 0, 0, 0, 0, 9, 0, 1];
        assert_eq!(parse_reply(EchoSocketKind::Raw, true, &request), None);
        let unreachable = [3u8, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_reply(EchoSocketKind::Ping, false, &unreachable), None);
        assert_eq!(parse_reply(EchoSocketKind::Ping, false, &[0, 0, 0]), None);
    }
}
