use super::*;

/// Feeds `input` in pieces of `split` bytes; returns a description of every event.
fn run(input: &[u8], split: usize) -> Result<Vec<String>, ParseError> {
    let mut stream = RequestStream::new();
    let mut pending = Vec::new();
    let mut events = Vec::new();
    let mut fed = 0;
    loop {
        let mut headers = EMPTY_HEADERS;
        let step = stream.feed(&pending, &mut headers)?;
        let consumed = match step {
            Step::NeedMore => {
                if fed == input.len() {
                    return Ok(events);
                }
                let end = (fed + split).min(input.len());
                pending.extend_from_slice(&input[fed..end]);
                fed = end;
                continue;
            }
            Step::Head(info) => {
                events.push(format!("head {} {}", info.method, info.head.path));
                info.len
            }
            Step::Body(n) => {
                let text = String::from_utf8_lossy(&pending[..n]).into_owned();
                match events.last_mut() {
                    Some(last) if last.starts_with("body ") => last.push_str(&text),
                    _ => events.push(format!("body {text}")),
                }
                n
            }
            Step::End => {
                events.push("end".into());
                0
            }
        };
        pending.drain(..consumed);
    }
}

const PIPELINE: &[u8] = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n\
POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
GET http://example.com/d?q HTTP/1.1\r\n\r\n";

#[test]
fn pipelined_requests_are_framed_whatever_the_split() {
    let expected = [
        "head GET /a?x=1",
        "end",
        "head POST /b",
        "body hello",
        "end",
        "head POST /c",
        "body 3;ext=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
        "end",
        "head GET /d?q",
        "end",
    ];
    for split in 1..=PIPELINE.len() {
        assert_eq!(run(PIPELINE, split).unwrap(), expected, "split {split}");
    }
}

/// A small deterministic generator (no dependency) for the randomised test below.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n.max(1)
    }
}

#[test]
fn random_pipelines_in_random_pieces_give_back_every_body_byte() {
    let mut rng = Lcg(7);
    for _ in 0..300 {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for r in 0..1 + rng.below(6) {
            let body: Vec<u8> = (0..rng.below(300)).map(|i| b'a' + (i % 26) as u8).collect();
            match rng.below(3) {
                0 => input.extend_from_slice(format!("GET /{r} HTTP/1.1\r\n\r\n").as_bytes()),
                1 => {
                    let head = format!(
                        "PUT /{r} HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    input.extend_from_slice(head.as_bytes());
                    input.extend_from_slice(&body);
                }
                _ => {
                    input.extend_from_slice(
                        format!("POST /{r} HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                            .as_bytes(),
                    );
                    let mut rest = &body[..];
                    while !rest.is_empty() {
                        let n = 1 + rng.below(rest.len());
                        input.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                        input.extend_from_slice(&rest[..n]);
                        input.extend_from_slice(b"\r\n");
                        rest = &rest[n..];
                    }
                    input.extend_from_slice(b"0\r\n\r\n");
                }
            }
            expected.push(r);
        }
        // Whatever the pieces, the stream yields each request once, in order, and the
        // head and body steps account for every byte.
        let mut stream = RequestStream::new();
        let (mut pending, mut fed, mut heads, mut accounted) = (Vec::new(), 0, Vec::new(), 0);
        loop {
            let mut headers = EMPTY_HEADERS;
            let consumed = match stream.feed(&pending, &mut headers).unwrap() {
                Step::NeedMore if fed == input.len() => break,
                Step::NeedMore => {
                    let end = (fed + 1 + rng.below(64)).min(input.len());
                    pending.extend_from_slice(&input[fed..end]);
                    fed = end;
                    0
                }
                Step::Head(info) => {
                    heads.push(info.head.path[1..].parse::<usize>().unwrap());
                    info.len
                }
                Step::Body(n) => n,
                Step::End => 0,
            };
            accounted += consumed;
            pending.drain(..consumed);
        }
        assert_eq!(heads, expected);
        assert_eq!(accounted, input.len());
    }
}

#[test]
fn chunked_body_ends_after_last_chunk_and_trailers() {
    let mut framer = BodyFramer::new(BodyKind::Chunked);
    let body = b"A\r\n0123456789\r\n0\r\n\r\nNEXT";
    let progress = framer.feed(body).unwrap();
    assert_eq!(
        progress,
        Progress {
            consumed: body.len() - 4,
            done: true
        }
    );
    let mut bare_lf = BodyFramer::new(BodyKind::Chunked);
    assert!(bare_lf.feed(b"1\na\n0\n\n").unwrap().done);
}

#[test]
fn malformed_chunks_are_errors() {
    for bad in [
        &b"x\r\n"[..],
        b"\r\n",
        b"1\r\naXY",
        b"1234567890abcdef0\r\n",
    ] {
        let mut framer = BodyFramer::new(BodyKind::Chunked);
        assert_eq!(framer.feed(bad), Err(ParseError::Chunk), "{bad:?}");
    }
}

#[test]
fn smuggling_shapes_are_refused() {
    let mut h = EMPTY_HEADERS;
    let cl = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(
        parse_request(cl, &mut h).unwrap_err(),
        ParseError::ContentLength
    );
    let mut h = EMPTY_HEADERS;
    let te = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
    assert_eq!(
        parse_request(te, &mut h).unwrap_err(),
        ParseError::TransferEncoding
    );
    let mut h = EMPTY_HEADERS;
    let both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(
        parse_request(both, &mut h).unwrap().unwrap().body,
        BodyKind::Chunked
    );
}

#[test]
fn upgrades_and_close_are_seen() {
    let mut h = EMPTY_HEADERS;
    let ws = b"GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let info = parse_request(ws, &mut h).unwrap().unwrap();
    assert!(info.upgrade && !info.h2c && !info.close);
    let mut h = EMPTY_HEADERS;
    let h2c = b"GET / HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n";
    assert!(parse_request(h2c, &mut h).unwrap().unwrap().h2c);
    let mut h = EMPTY_HEADERS;
    let old = b"GET / HTTP/1.0\r\n\r\n";
    assert!(parse_request(old, &mut h).unwrap().unwrap().close);
    let mut h = EMPTY_HEADERS;
    let no_conn = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n";
    assert!(!parse_request(no_conn, &mut h).unwrap().unwrap().upgrade);
}

#[test]
fn response_bodies_follow_status_and_method() {
    let parse = |bytes: &[u8], head| {
        let mut h = EMPTY_HEADERS;
        parse_response(bytes, &mut h, head).unwrap().unwrap()
    };
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n";
    assert_eq!(parse(ok, false).body, BodyKind::Length(12));
    assert_eq!(parse(ok, true).body, BodyKind::Empty);
    for status in [
        "100 Continue",
        "101 Switching Protocols",
        "204 No Content",
        "304 Not Modified",
    ] {
        let bytes = format!("HTTP/1.1 {status}\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(
            parse(bytes.as_bytes(), false).body,
            BodyKind::Empty,
            "{status}"
        );
    }
    let open = parse(b"HTTP/1.1 200 OK\r\n\r\n", false);
    assert_eq!((open.body, open.close), (BodyKind::UntilClose, true));
    let chunked = parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
    );
    assert_eq!((chunked.body, chunked.close), (BodyKind::Chunked, false));
    let old = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
    assert!(old.close);
}

#[test]
fn partial_heads_wait_and_huge_ones_fail() {
    let mut h = EMPTY_HEADERS;
    assert!(parse_request(b"GET / HTTP/1.1\r\nHost:", &mut h)
        .unwrap()
        .is_none());
    let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
    huge.resize(MAX_HEAD + 1, b'a');
    let mut h = EMPTY_HEADERS;
    assert_eq!(
        parse_request(&huge, &mut h).unwrap_err(),
        ParseError::HeadTooLarge
    );
}
