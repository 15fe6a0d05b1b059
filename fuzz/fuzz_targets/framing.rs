//! The HTTP/1 framing guard (`l7::framing`), fed any bytes split anywhere:
//! it never panics; where the reads split the input does not change what it
//! hands hyper or whether it refuses; and what it hands on, fed to a second
//! guard, comes out unchanged (the guard agrees with itself on where every
//! message ends, which is what request smuggling needs broken); and its fast
//! path (bytes passed in place) hands on exactly what feeding them would.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "shared/pieces.rs"]
mod shared;
use shared::pieces;
use splitter_user::l7::framing::{Framing, Refusal};

/// Heads longer than this are handed to hyper unfollowed, at a point that
/// depends on the reads: the split property holds below it.
const SPLIT_INDEPENDENT_BELOW: usize = 64 * 1024;

fn guard<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, Option<Refusal>) {
    let mut framing = Framing::default();
    let mut out = Vec::new();
    for read in reads {
        framing.feed(read, &mut out);
    }
    (out, framing.refusal())
}

/// The same as the guard reads on its fast path: what passes in place is
/// left where it is, the rest is fed.
fn guard_fast<'a>(reads: impl IntoIterator<Item = &'a [u8]>) -> (Vec<u8>, Option<Refusal>) {
    let mut framing = Framing::default();
    let mut out = Vec::new();
    for read in reads {
        let passed = framing.pass_in_place(read);
        out.extend_from_slice(&read[..passed]);
        framing.feed(&read[passed..], &mut out);
    }
    (out, framing.refusal())
}

// The first byte picks how the rest is cut into reads.
fuzz_target!(|data: &[u8]| {
    let Some((&pattern, bytes)) = data.split_first() else { return };
    let whole = guard([bytes]);
    let split = guard(pieces(bytes, pattern));
    assert_eq!(guard_fast(pieces(bytes, pattern)), split, "the fast path changed the guard's output");
    assert_eq!(guard_fast([bytes]), whole, "the fast path changed the guard's output");
    if bytes.len() < SPLIT_INDEPENDENT_BELOW {
        assert_eq!(whole, split, "the reads' boundaries changed the guard's output");
    }
    let (out, refusal) = whole;
    let (again, refusal_again) = guard([out.as_slice()]);
    assert_eq!(again, out, "a second guard changed what the first handed on");
    let expected = match refusal {
        // The stand-in head a refusal leaves is itself unparsable.
        Some(Refusal::MalformedChunk) | None => refusal,
        Some(_) => Some(Refusal::Unparsable),
    };
    assert_eq!(refusal_again, expected, "a second guard judged the output differently");
});
