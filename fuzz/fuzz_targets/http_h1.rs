//! Bytes a client of a filtered port sends (requests) and a service answers (responses): the
//! HTTP/1.x framing of the filtered steal, fed in pieces of every size the first byte picks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrord_net_agent::incoming::http::h1::{self, RequestStream, Step, EMPTY_HEADERS};

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).max(1);
    requests(input, split);
    let mut headers = [httparse::EMPTY_HEADER; h1::MAX_HEADERS];
    let _ = h1::parse_response(input, &mut headers, split % 2 == 0);
});

/// Frames every request of `input`, as the proxy does, until it needs more than there is.
fn requests(input: &[u8], split: usize) {
    let mut stream = RequestStream::new();
    let mut pending = Vec::new();
    let mut fed = 0;
    // Each step consumes bytes or ends a request; `End` twice in a row would be a loop.
    let mut steps_without_progress = 0;
    loop {
        let mut headers = EMPTY_HEADERS;
        let step = match stream.feed(&pending, &mut headers) {
            Ok(step) => step,
            Err(_) => return,
        };
        let consumed = match step {
            Step::NeedMore => {
                if fed == input.len() {
                    return;
                }
                let end = (fed + split).min(input.len());
                pending.extend_from_slice(&input[fed..end]);
                fed = end;
                continue;
            }
            Step::Head(info) => {
                assert!(
                    info.len > 0 && info.len <= pending.len(),
                    "a head of {} bytes",
                    info.len
                );
                info.len
            }
            Step::Body(n) => {
                assert!(n > 0 && n <= pending.len(), "a body step of {n} bytes");
                n
            }
            Step::End => 0,
        };
        if consumed == 0 {
            steps_without_progress += 1;
            assert!(
                steps_without_progress < 2,
                "the framing stopped making progress"
            );
        } else {
            steps_without_progress = 0;
        }
        pending.drain(..consumed);
    }
}
