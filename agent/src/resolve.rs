//! Names resolved as the target resolves them, for the client's `--remote NAME` entries.
//!
//! The agent runs in the target's network namespace but not in its mount namespace, so the C
//! library's resolver here would read the host's `/etc/resolv.conf`. The agent has the
//! target's own files instead (read for the hello) and asks as the target's resolver would:
//! the target's `/etc/hosts` first, then, for each name the search list makes of it (`ndots`
//! decides whether the name as given comes first or last), A and AAAA queries to the
//! target's nameservers in their order, `attempts` rounds of `timeout` each. An answer
//! with addresses ends the search; NXDOMAIN or an empty answer goes on to the next name;
//! no answer from any server ends it with an error (the next names would fare no better).
//! Answers come over UDP; a truncated one (more addresses than fit in the datagram) is asked
//! again of the same server over TCP, as glibc does, and if that fails, the truncated
//! answer's addresses are kept (a useful set rather than none).
//!
//! Everything but [`resolve`] is pure and unit-tested; `resolve` is exercised end to end
//! (`tests/tests/e2e/outgoing_filter.rs`, a `--remote` name only the pod's DNS knows).

use std::net::{IpAddr, SocketAddr};

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use mirrord_net_protocol::resolv_conf::ResolvConf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// glibc asks at most three nameservers.
const MAX_NAMESERVERS: usize = 3;

/// The nameservers to ask, as glibc would: the first three, or the local one without any.
fn nameservers(conf: &ResolvConf) -> Vec<SocketAddr> {
    let mut servers = conf.servers();
    servers.truncate(MAX_NAMESERVERS);
    servers
}

/// A query for `fqdn`'s records of `kind`, with `id`, recursion desired.
pub fn query(id: u16, fqdn: &str, kind: RecordType) -> Result<Vec<u8>, String> {
    let name = Name::from_ascii(format!("{fqdn}.")).map_err(|err| format!("{fqdn}: {err}"))?;
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(name, kind));
    message.to_vec().map_err(|err| err.to_string())
}

/// What a nameserver said to one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The addresses of the answer (possibly none: the name has no record of that kind).
    Addresses(Vec<IpAddr>),
    /// A truncated answer (TC) and the addresses it still holds: ask again over TCP.
    Truncated(Vec<IpAddr>),
    /// The name does not exist.
    NoSuchName,
    /// The server failed or refused: ask the next one.
    Failed(ResponseCode),
}

/// Reads the answer to the query `id`; `None` for a packet that is not it (another id, not a
/// response, garbage), which the caller ignores as the C library does.
pub fn answer(id: u16, packet: &[u8]) -> Option<Answer> {
    let message = Message::from_vec(packet).ok()?;
    if message.metadata.id != id || message.metadata.message_type != MessageType::Response {
        return None;
    }
    let addresses = || {
        message
            .answers
            .iter()
            .filter_map(|record| match &record.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })
            .collect()
    };
    Some(match message.metadata.response_code {
        ResponseCode::NoError if message.metadata.truncation => Answer::Truncated(addresses()),
        ResponseCode::NoError => Answer::Addresses(addresses()),
        ResponseCode::NXDomain => Answer::NoSuchName,
        other => Answer::Failed(other),
    })
}

/// Resolves `name` as the target would (see the module's documentation): its addresses,
/// IPv4 first, or why there are none.
pub async fn resolve(conf: &ResolvConf, hosts: &[u8], name: &str) -> Result<Vec<IpAddr>, String> {
    let from_hosts = mirrord_net_protocol::hosts::addresses_of(hosts, name);
    if !from_hosts.is_empty() {
        return Ok(from_hosts);
    }
    for fqdn in conf.candidates(name) {
        let (v4, v6) = tokio::join!(
            ask(conf, &fqdn, RecordType::A),
            ask(conf, &fqdn, RecordType::AAAA)
        );
        match (v4, v6) {
            (Ok(mut v4), Ok(v6)) if !(v4.is_empty() && v6.is_empty()) => {
                v4.extend(v6);
                return Ok(v4);
            }
            (Ok(_), Ok(_)) => {}
            // No server answered: the other names would not be answered either.
            (Err(err), _) | (_, Err(err)) => return Err(err),
        }
    }
    Err("no such name".into())
}

/// The addresses of `fqdn`'s records of `kind`: `Ok` (maybe empty) once a nameserver
/// answered, `Err` when none did.
async fn ask(conf: &ResolvConf, fqdn: &str, kind: RecordType) -> Result<Vec<IpAddr>, String> {
    let mut last = String::from("no nameserver answered");
    for _ in 0..conf.attempts {
        for server in nameservers(conf) {
            let id = rand_id();
            let packet = query(id, fqdn, kind)?;
            match tokio::time::timeout(conf.timeout, exchange(server, id, &packet)).await {
                Ok(Ok(Answer::Addresses(addrs))) => return Ok(addrs),
                Ok(Ok(Answer::Truncated(partial))) => {
                    let whole =
                        tokio::time::timeout(conf.timeout, exchange_tcp(server, id, &packet));
                    return Ok(match whole.await {
                        Ok(Ok(Answer::Addresses(addrs) | Answer::Truncated(addrs))) => addrs,
                        _ => partial,
                    });
                }
                Ok(Ok(Answer::NoSuchName)) => return Ok(Vec::new()),
                Ok(Ok(Answer::Failed(code))) => last = format!("{server} answered {code}"),
                Ok(Err(err)) => last = format!("{server}: {err}"),
                Err(_) => last = format!("no answer from {server} within {:?}", conf.timeout),
            }
        }
    }
    Err(last)
}

/// Sends `packet` to `server` from a fresh socket and waits for the answer to `id`.
async fn exchange(server: SocketAddr, id: u16, packet: &[u8]) -> std::io::Result<Answer> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => ([0u16; 8], 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(packet).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = socket.recv(&mut buf).await?;
        if let Some(answer) = answer(id, &buf[..n]) {
            return Ok(answer);
        }
    }
}

/// Sends `packet` to `server` over TCP (two-byte length, then the message) and reads the
/// answer to `id`.
async fn exchange_tcp(server: SocketAddr, id: u16, packet: &[u8]) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(server).await?;
    let mut framed = Vec::with_capacity(2 + packet.len());
    framed.extend_from_slice(&(packet.len() as u16).to_be_bytes());
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await? as usize;
    let mut message = vec![0u8; len];
    stream.read_exact(&mut message).await?;
    answer(id, &message).ok_or_else(|| std::io::Error::other("not the answer to the query"))
}

/// A query id no off-path sender can guess cheaply (the socket's random port does the rest).
fn rand_id() -> u16 {
    let mut id = [0u8; 2];
    // SAFETY: getrandom writes at most `id.len()` bytes into `id`.
    let n = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if n == 2 {
        u16::from_ne_bytes(id)
    } else {
        std::process::id() as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, AAAA};
    use hickory_proto::rr::Record;

    #[test]
    fn the_first_three_nameservers_are_asked_or_the_local_one() {
        let conf = ResolvConf::parse(
            "nameserver 10.96.0.10\nnameserver fd00::a\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n",
        );
        assert_eq!(
            nameservers(&conf),
            [
                "10.96.0.10:53".parse::<SocketAddr>().unwrap(),
                "[fd00::a]:53".parse().unwrap(),
                "1.1.1.1:53".parse().unwrap(),
            ]
        );
        assert_eq!(
            nameservers(&ResolvConf::default()),
            ["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
    }

    fn response(id: u16, code: ResponseCode, records: Vec<Record>) -> Vec<u8> {
        let mut message = Message::response(id, hickory_proto::op::OpCode::Query);
        message.metadata.response_code = code;
        message.answers = records;
        message.to_vec().unwrap()
    }

    #[test]
    fn answers_are_matched_by_id_and_give_their_addresses() {
        let packet = query(7, "web.svc.cluster.local", RecordType::A).unwrap();
        let asked = Message::from_vec(&packet).unwrap();
        assert_eq!(asked.metadata.id, 7);
        assert!(asked.metadata.recursion_desired);
        assert_eq!(asked.queries[0].name().to_ascii(), "web.svc.cluster.local.");

        let name = Name::from_ascii("web.svc.cluster.local.").unwrap();
        let records = vec![
            Record::from_rdata(name.clone(), 30, RData::A(A::new(10, 0, 0, 7))),
            Record::from_rdata(
                name,
                30,
                RData::AAAA(AAAA::new(0xfd00, 0, 0, 0, 0, 0, 0, 7)),
            ),
        ];
        assert_eq!(
            answer(7, &response(7, ResponseCode::NoError, records)),
            Some(Answer::Addresses(vec![
                "10.0.0.7".parse().unwrap(),
                "fd00::7".parse().unwrap()
            ]))
        );
        assert_eq!(
            answer(7, &response(7, ResponseCode::NXDomain, vec![])),
            Some(Answer::NoSuchName)
        );
        assert_eq!(
            answer(7, &response(7, ResponseCode::ServFail, vec![])),
            Some(Answer::Failed(ResponseCode::ServFail))
        );
        // A truncated answer keeps what it holds, and says it is not all.
        let mut truncated = Message::from_vec(&response(
            7,
            ResponseCode::NoError,
            vec![Record::from_rdata(
                Name::from_ascii("web.svc.cluster.local.").unwrap(),
                30,
                RData::A(A::new(10, 0, 0, 8)),
            )],
        ))
        .unwrap();
        truncated.metadata.truncation = true;
        assert_eq!(
            answer(7, &truncated.to_vec().unwrap()),
            Some(Answer::Truncated(vec!["10.0.0.8".parse().unwrap()]))
        );
        // Another id, the query itself, garbage: not the answer.
        assert_eq!(answer(8, &response(7, ResponseCode::NoError, vec![])), None);
        assert_eq!(answer(7, &packet), None);
        assert_eq!(answer(7, b"\x00\x07garbage"), None);
    }

    #[test]
    fn a_name_that_is_not_a_dns_name_is_an_error() {
        assert!(query(1, "a..b", RecordType::A).is_err());
    }
}
