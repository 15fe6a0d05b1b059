//! The proxy's HTTP/1.1 client reading endpoints' answers (`l7::origin`),
//! fed any bytes split anywhere: it never panics; where the reads split
//! the answer changes nothing it makes of it (status, fields, body,
//! trailers, whether the connection is reused, or the error); a length-
//! delimited body is exactly as long as its `Content-Length`; and a
//! connection is only reused after a body whose end its framing marks.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;

#[path = "shared/pieces.rs"]
mod shared;
use shared::pieces;
use splitter_user::l7::origin::read_answer;

// The first byte picks how the rest is cut into reads, and its low bit
// whether the request was a HEAD.
fuzz_target!(|data: &[u8]| {
    let Some((&pattern, bytes)) = data.split_first() else { return };
    let method = if pattern & 1 == 1 { Method::HEAD } else { Method::GET };
    let whole = read_answer(&method, [bytes]);
    let split = read_answer(&method, pieces(bytes, pattern));
    assert_eq!(whole, split, "the reads' boundaries changed the answer");
    let Ok(answer) = whole else { return };
    let field = |name: &str| answer.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let chunked = field("transfer-encoding").is_some();
    // Every length that passes is one number, whether a body follows or not.
    let length = field("content-length").map(|l| std::str::from_utf8(&l).unwrap().parse::<u64>().unwrap());
    if let (Some(length), false, false) = (length, chunked, method == Method::HEAD) {
        if ![204, 304].contains(&answer.status) {
            assert_eq!(answer.body.len() as u64, length, "a body of another length than its own");
        }
    }
    if answer.reusable {
        assert!(
            field("content-length").is_some()
                || chunked
                || method == Method::HEAD
                || [204, 304].contains(&answer.status),
            "a connection reused after a body read to the close"
        );
    }
});
