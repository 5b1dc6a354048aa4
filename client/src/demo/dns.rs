//! The demo pod's DNS server: authoritative for `cluster.local`, which holds one service.
//!
//! The pod's resolv.conf names this server (10.89.0.53, UDP) with the Kubernetes search list
//! `demo.svc.cluster.local svc.cluster.local cluster.local` and `ndots:5`, so the system
//! resolver turns the short name `hello` into `hello.demo.svc.cluster.local.` first, which is
//! the one name of the zone with addresses (A 10.89.0.10, AAAA fd89::10). Answers follow what
//! an authoritative server must say, because stub resolvers act on the difference:
//!
//! - the name exists and has records of the type asked: NOERROR with them;
//! - the name exists (the apex, `hello…`, or a name on the way to it, such as
//!   `svc.cluster.local.`) but has no records of that type: NOERROR with no answer and the SOA
//!   in the authority section ("NODATA"), so getaddrinfo keeps the A answer when AAAA is
//!   empty;
//! - any other name, inside the zone or not: NXDOMAIN, so the resolver moves on to the next
//!   search domain. Names outside the zone get NXDOMAIN too, without the authoritative bit:
//!   the pod has no upstream, and "does not exist" is what a process in it should see.
//!
//! Requests that are responses, or that cannot be decoded beyond their ID, get no answer;
//! other opcodes NOTIMP, other classes REFUSED, not exactly one question FORMERR. A request
//! with EDNS gets EDNS back (RFC 6891). [`Zone::respond`] is the whole logic, bytes in and
//! bytes out; [`serve`] only moves datagrams.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

/// TTL of the service's addresses (Kubernetes' CoreDNS uses 30 s too).
const TTL: u32 = 30;
/// Negative answers may be cached this long (SOA minimum).
const NEGATIVE_TTL: u32 = 5;
/// The UDP payload size offered to EDNS clients: the DNS flag day's safe value.
const EDNS_PAYLOAD: u16 = 1232;
/// Largest request we read; requests are a few dozen bytes.
const MAX_REQUEST: usize = 4096;

/// The zone the pod's DNS server answers for.
#[derive(Debug, Clone)]
pub struct Zone {
    apex: Name,
    soa: Record,
    hosts: Vec<(Name, Vec<IpAddr>)>,
}

/// What the zone holds for one question.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    Records(Vec<RData>),
    NoData,
    NxDomain,
}

impl Zone {
    /// `cluster.local` with `hello.demo.svc.cluster.local`.
    pub fn demo() -> Self {
        let apex = fqdn(super::SEARCH[2]);
        let service = fqdn(&format!("{}.{}", super::SERVICE_NAME, super::SEARCH[0]));
        Self::new(
            apex,
            vec![(
                service,
                vec![
                    IpAddr::V4(super::SERVICE_IPV4),
                    IpAddr::V6(super::SERVICE_IPV6),
                ],
            )],
        )
    }

    fn new(apex: Name, hosts: Vec<(Name, Vec<IpAddr>)>) -> Self {
        let soa = SOA::new(
            fqdn(&format!("ns.dns.{apex}")),
            fqdn(&format!("hostmaster.{apex}")),
            1,
            7200,
            1800,
            86400,
            NEGATIVE_TTL,
        );
        let soa = Record::from_rdata(apex.clone(), NEGATIVE_TTL, RData::SOA(soa));
        Self { apex, soa, hosts }
    }

    fn lookup(&self, name: &Name, kind: RecordType) -> Lookup {
        if !self.apex.zone_of(name) {
            return Lookup::NxDomain;
        }
        if *name == self.apex {
            return match kind {
                RecordType::SOA | RecordType::ANY => Lookup::Records(vec![self.soa.data.clone()]),
                _ => Lookup::NoData,
            };
        }
        if let Some((_, addresses)) = self.hosts.iter().find(|(host, _)| host == name) {
            let records: Vec<RData> = addresses
                .iter()
                .filter_map(|address| match (address, kind) {
                    (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => Some(RData::A(A(*v4))),
                    (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                        Some(RData::AAAA(AAAA(*v6)))
                    }
                    _ => None,
                })
                .collect();
            return if records.is_empty() {
                Lookup::NoData
            } else {
                Lookup::Records(records)
            };
        }
        // An empty non-terminal (`svc.cluster.local.` on the way to `hello…`) exists.
        if self.hosts.iter().any(|(host, _)| name.zone_of(host)) {
            return Lookup::NoData;
        }
        Lookup::NxDomain
    }

    /// The response to one request datagram, or `None` when it gets no response.
    pub fn respond(&self, request: &[u8]) -> Option<Vec<u8>> {
        let request = match Message::from_vec(request) {
            Ok(request) => request,
            Err(_) => {
                // Undecodable: answer FORMERR if it at least looks like a query with an ID.
                let header = request.get(..12)?;
                if header[2] & 0x80 != 0 {
                    return None;
                }
                let id = u16::from_be_bytes([header[0], header[1]]);
                return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata = Metadata::response_from_request(&request.metadata);
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            response.set_edns(edns);
        }
        let code = self.answer(&request, &mut response);
        response.metadata.response_code = code;
        response.to_vec().ok()
    }

    /// Fills `response` for `request` and returns its response code.
    fn answer(&self, request: &Message, response: &mut Message) -> ResponseCode {
        if request.metadata.op_code != OpCode::Query {
            return ResponseCode::NotImp;
        }
        let [query] = request.queries.as_slice() else {
            return ResponseCode::FormErr;
        };
        response.add_query(query.clone());
        if query.query_class() != DNSClass::IN {
            return ResponseCode::Refused;
        }
        let name = query.name();
        let in_zone = self.apex.zone_of(name);
        response.metadata.authoritative = in_zone;
        match self.lookup(name, query.query_type()) {
            Lookup::Records(records) => {
                // The question's spelling, so that 0x20-randomised names match.
                for data in records {
                    response.add_answer(Record::from_rdata(name.clone(), TTL, data));
                }
                ResponseCode::NoError
            }
            Lookup::NoData => {
                response.add_authority(self.soa.clone());
                ResponseCode::NoError
            }
            Lookup::NxDomain => {
                if in_zone {
                    response.add_authority(self.soa.clone());
                }
                ResponseCode::NXDomain
            }
        }
    }
}

fn fqdn(name: &str) -> Name {
    let mut name = Name::from_ascii(name).expect("a valid constant DNS name");
    name.set_fqdn(true);
    name
}

/// Answers requests on `socket` until it fails.
pub async fn serve(socket: UdpSocket, zone: Zone, verbose: bool) -> std::io::Result<()> {
    let socket = Arc::new(socket);
    let mut buffer = vec![0u8; MAX_REQUEST];
    loop {
        let (len, peer) = socket.recv_from(&mut buffer).await?;
        let request = &buffer[..len];
        if let Some(response) = zone.respond(request) {
            if verbose {
                log_exchange(request, &response, peer);
            }
            // A reply that cannot be sent (the client went away) is not the server's failure.
            let _ = socket.send_to(&response, peer).await;
        }
    }
}

fn log_exchange(request: &[u8], response: &[u8], peer: std::net::SocketAddr) {
    let Ok(response) = Message::from_vec(response) else {
        return;
    };
    let question = Message::from_vec(request)
        .ok()
        .and_then(|request| request.queries.first().cloned())
        .map(|query| format!("{} {}", query.query_type(), query.name()))
        .unwrap_or_else(|| "?".to_owned());
    let answers: Vec<String> = response
        .answers
        .iter()
        .filter_map(|record| record.data.ip_addr().map(|ip| ip.to_string()))
        .collect();
    eprintln!(
        "demo-pod dns: {peer} asked {question}: {} {}",
        response.metadata.response_code,
        answers.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;

    use super::*;
    use crate::demo::{SEARCH, SERVICE_IPV4, SERVICE_IPV6};

    fn query(name: &str, kind: RecordType) -> Message {
        let mut message = Message::query();
        message.metadata.id = 0x1234;
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        message
    }

    fn ask(message: &Message) -> Message {
        let response = Zone::demo()
            .respond(&message.to_vec().unwrap())
            .expect("a response");
        Message::from_vec(&response).unwrap()
    }

    fn addresses(response: &Message) -> Vec<IpAddr> {
        response
            .answers
            .iter()
            .filter_map(|record| record.data.ip_addr())
            .collect()
    }

    #[test]
    fn the_service_has_an_a_record() {
        let response = ask(&query("hello.demo.svc.cluster.local.", RecordType::A));
        assert_eq!(response.metadata.id, 0x1234);
        assert_eq!(response.metadata.message_type, MessageType::Response);
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert!(response.metadata.authoritative);
        assert!(response.metadata.recursion_desired, "RD is copied");
        assert_eq!(response.queries.len(), 1, "the question is echoed");
        assert_eq!(addresses(&response), [IpAddr::V4(SERVICE_IPV4)]);
        assert_eq!(response.answers[0].ttl, TTL);
    }

    #[test]
    fn the_service_has_an_aaaa_record() {
        let response = ask(&query("hello.demo.svc.cluster.local.", RecordType::AAAA));
        assert_eq!(response.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&response), [IpAddr::V6(SERVICE_IPV6)]);
    }

    #[test]
    fn names_match_whatever_their_case_and_answers_keep_the_question_spelling() {
        let response = ask(&query("HeLLo.Demo.SVC.cluster.local.", RecordType::A));
        assert_eq!(addresses(&response), [IpAddr::V4(SERVICE_IPV4)]);
        assert!(response.answers[0]
            .name
            .eq_case(&Name::from_ascii("HeLLo.Demo.SVC.cluster.local.").unwrap()));
    }

    #[test]
    fn the_search_list_forms_of_hello_resolve_as_in_kubernetes() {
        // With `ndots:5` the resolver tries the search list first; which candidates exist
        // decides what `hello`, `hello.demo` and `hello.demo.svc` resolve to.
        let exists = |name: &str| {
            let response = ask(&query(name, RecordType::A));
            match response.metadata.response_code {
                ResponseCode::NoError if !response.answers.is_empty() => true,
                ResponseCode::NXDomain => false,
                other => panic!("{name}: unexpected {other} with {response:?}"),
            }
        };
        let resolve = |short: &str| {
            SEARCH
                .iter()
                .map(|domain| format!("{short}.{domain}."))
                .chain([format!("{short}.")])
                .find(|candidate| exists(candidate))
        };
        let service = Some("hello.demo.svc.cluster.local.".to_owned());
        assert_eq!(resolve("hello"), service);
        assert_eq!(resolve("hello.demo"), service);
        assert_eq!(resolve("hello.demo.svc"), service);
        assert_eq!(resolve("nothere"), None);
        assert_eq!(resolve("hello.other"), None);
    }

    #[test]
    fn an_unknown_name_in_the_zone_is_nxdomain_with_the_soa() {
        let response = ask(&query("nothere.demo.svc.cluster.local.", RecordType::A));
        assert_eq!(response.metadata.response_code, ResponseCode::NXDomain);
        assert!(response.metadata.authoritative);
        assert!(response.answers.is_empty());
        assert_eq!(response.authorities.len(), 1);
        assert_eq!(response.authorities[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn a_name_outside_the_zone_is_nxdomain_without_authority() {
        for name in [
            "hello.",
            "example.com.",
            "hello.demo.svc.cluster.local.example.",
        ] {
            let response = ask(&query(name, RecordType::A));
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::NXDomain,
                "{name}"
            );
            assert!(!response.metadata.authoritative, "{name}");
            assert!(response.authorities.is_empty(), "{name}");
        }
    }

    #[test]
    fn an_existing_name_without_that_type_is_nodata_not_nxdomain() {
        for (name, kind) in [
            ("hello.demo.svc.cluster.local.", RecordType::TXT),
            ("hello.demo.svc.cluster.local.", RecordType::MX),
            ("svc.cluster.local.", RecordType::A),
            ("demo.svc.cluster.local.", RecordType::AAAA),
            ("cluster.local.", RecordType::A),
        ] {
            let response = ask(&query(name, kind));
            assert_eq!(
                response.metadata.response_code,
                ResponseCode::NoError,
                "{name} {kind}"
            );
            assert!(response.answers.is_empty(), "{name} {kind}");
            assert_eq!(response.authorities[0].record_type(), RecordType::SOA);
        }
    }

    #[test]
    fn the_apex_answers_its_soa() {
        let response = ask(&query("cluster.local.", RecordType::SOA));
        assert_eq!(response.answers.len(), 1);
        assert_eq!(response.answers[0].record_type(), RecordType::SOA);
    }

    #[test]
    fn edns_requests_get_edns_responses() {
        let mut request = query("hello.demo.svc.cluster.local.", RecordType::A);
        assert!(ask(&request).edns.is_none());
        request.set_edns(Edns::new());
        let edns = ask(&request).edns.expect("EDNS in the response");
        assert_eq!(edns.max_payload(), EDNS_PAYLOAD);
    }

    #[test]
    fn responses_are_never_answered() {
        let mut message = query("hello.demo.svc.cluster.local.", RecordType::A);
        message.metadata.message_type = MessageType::Response;
        assert_eq!(Zone::demo().respond(&message.to_vec().unwrap()), None);
    }

    #[test]
    fn other_opcodes_classes_and_question_counts_are_refused_properly() {
        let mut notify = query("hello.demo.svc.cluster.local.", RecordType::A);
        notify.metadata.op_code = OpCode::Notify;
        assert_eq!(ask(&notify).metadata.response_code, ResponseCode::NotImp);

        let mut chaos = Message::query();
        let mut question = Query::query(fqdn("version.bind"), RecordType::TXT);
        question.set_query_class(DNSClass::CH);
        chaos.add_query(question);
        assert_eq!(ask(&chaos).metadata.response_code, ResponseCode::Refused);

        let mut two = query("hello.demo.svc.cluster.local.", RecordType::A);
        two.add_query(Query::query(fqdn("cluster.local"), RecordType::A));
        assert_eq!(ask(&two).metadata.response_code, ResponseCode::FormErr);

        let none = Message::query();
        assert_eq!(ask(&none).metadata.response_code, ResponseCode::FormErr);
    }

    #[test]
    fn garbage_gets_formerr_when_it_has_an_id_and_nothing_otherwise() {
        let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
        garbage.extend_from_slice(&[0x3f, b'x']); // a label that runs past the end
        let response = Message::from_vec(&Zone::demo().respond(&garbage).unwrap()).unwrap();
        assert_eq!(response.metadata.id, 0xabcd);
        assert_eq!(response.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(Zone::demo().respond(&[1, 2, 3]), None);
    }
}
