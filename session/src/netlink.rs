//! A minimal synchronous rtnetlink client for the session child.
//!
//! The child configures its network with a handful of requests (link up, MTU, addresses,
//! default routes), each answered by one ACK or error. `rtnetlink`'s handle needs an async
//! runtime, and starting one in the child would add threads to a process that must stay
//! simple; so the messages are built with the `netlink-packet-route` types that `rtnetlink`
//! re-exports (and its message builders), and sent on a blocking `NETLINK_ROUTE` socket, one
//! request at a time, each waiting for the reply that carries its sequence number. The socket
//! is opened after `unshare`, so it speaks to the session's network namespace.

use std::io;
use std::net::Ipv4Addr;

use rtnetlink::packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::packet_route::link::{AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rtnetlink::{AddressMessageBuilder, LinkUnspec};

/// A blocking rtnetlink socket in the caller's network namespace.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl Netlink {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            sequence: 0,
            buffer: Vec::with_capacity(64 * 1024),
        })
    }

    /// Sends a request that changes something (`RTM_SETLINK`, ...) and waits for its ACK.
    pub fn change(&mut self, message: RouteNetlinkMessage) -> io::Result<()> {
        self.request(message, NLM_F_REQUEST | NLM_F_ACK)
    }

    /// Sends a request that creates something that must not exist yet (`RTM_NEWADDR`,
    /// `RTM_NEWROUTE`) and waits for its ACK.
    pub fn create(&mut self, message: RouteNetlinkMessage) -> io::Result<()> {
        self.request(
            message,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// `ip link set dev INDEX up`
    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        self.change(RouteNetlinkMessage::SetLink(
            LinkUnspec::new_with_index(index).up().build(),
        ))
    }

    /// `ip addr add ADDR/PREFIX dev INDEX`
    pub fn add_ipv4(&mut self, index: u32, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let message = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(addr, prefix)
            .build();
        self.create(RouteNetlinkMessage::NewAddress(message))
    }

    /// Sets the device's IPv4 settings (`net.ipv4.conf.<dev>.*`) that are non-zero in `conf`
    /// (`IFLA_INET_CONF` in `RTM_SETLINK`). Over netlink rather than through `/proc/sys`,
    /// which a container may mount read-only.
    pub fn set_inet_conf(&mut self, index: u32, conf: InetDevConf) -> io::Result<()> {
        let mut link = LinkUnspec::new_with_index(index).build();
        link.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(conf),
            ])]));
        self.change(RouteNetlinkMessage::SetLink(link))
    }

    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;

        loop {
            self.buffer.clear();
            let len = self.socket.recv(&mut self.buffer, 0)?;
            if len > self.buffer.len() {
                return Err(io::Error::other("netlink reply truncated"));
            }
            let mut offset = 0;
            while offset < len {
                let frame = NetlinkBuffer::new_checked(&self.buffer[offset..len])
                    .map_err(|err| io::Error::other(err.to_string()))?;
                let frame_len = frame.length() as usize;
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(
                    &self.buffer[offset..offset + frame_len],
                )
                .map_err(|err| io::Error::other(err.to_string()))?;
                // Netlink messages are 4-byte aligned.
                offset += (frame_len + 3) & !3;
                if reply.header.sequence_number != sequence {
                    continue;
                }
                if let NetlinkPayload::Error(error) = reply.payload {
                    return match error.code {
                        None => Ok(()),
                        Some(_) => Err(error.to_io()),
                    };
                }
            }
        }
    }
}
