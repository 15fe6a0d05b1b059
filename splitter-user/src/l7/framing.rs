//! Strict HTTP/1 request framing, in front of hyper: request smuggling needs
//! two parties to disagree on where a request ends, so a request whose head
//! carries more than one `Content-Length` (even equal ones) or both
//! `Transfer-Encoding` and `Content-Length` is refused (400, connection
//! closed) instead of being interpreted. (hyper alone merges equal
//! duplicates and lets chunked win.)
//!
//! [`Guarded`] wraps the client connection. It follows the message framing of
//! the bytes it reads (heads, `Content-Length` bodies, chunked bodies) for the
//! whole connection and hands hyper each head only once it is complete and
//! checked. A refused head (unparsable, ambiguous framing, a transfer coding
//! other than chunked last, a bad `Content-Length`) is replaced by an invalid
//! request line, which hyper answers with 400 and a close; nothing after it
//! is read. A chunked body that breaks the grammar (a size that is not hex or
//! too large, a line without its CRLF, data without its CRLF) ends the
//! connection's input with an error: the request fails as the client's
//! fault (400), never the endpoint's. Only an HTTP/2 preface and a head too
//! large for hyper, or with more fields than it takes (431), are passed
//! through, and hyper closes after both.

use std::{
    future::Future as _,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest head the guard holds back by default (`l7.max_header_bytes`'s
/// default and some slack); longer ones go to hyper (431).
const MAX_HEAD: usize = 64 * 1024 + 1024;
/// Header fields the guard parses; a head with more goes to hyper, which
/// has the same bound ([`MAX_HEADERS`]) and answers 431.
use splitter_model::config::l7::MAX_HEADERS;

use super::conn::Activity;
/// What hyper sees instead of a refused head: an invalid method (400).
const REFUSED: &[u8] = b"\x01 / HTTP/1.1\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading `SIZE [BWS] [;ext] CRLF`: the value and hex digits so far,
    /// and what follows the digits (whitespace, or an extension).
    Size { value: u64, digits: u8, after: After },
    /// The LF after a size line's CR.
    SizeLf { value: u64 },
    /// `n` data bytes left.
    Data(u64),
    /// The CRLF after data: `\r` (2 left) then `\n` (1 left).
    DataEnd(u8),
    /// Trailer lines after the last chunk; whether the current line is
    /// empty so far, and whether its CR was seen.
    Trailer { line_empty: bool, cr: bool },
}

/// What a size line has after its digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    Digits,
    /// Blanks: only more blanks, `;` or the line end may follow.
    Blank,
    /// An extension (after `;`): any visible byte or blank.
    Extension,
}

/// Hex digits a chunk size may have (16 would reach past `u64` in sums).
const MAX_SIZE_DIGITS: u8 = 15;

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    Chunked(Chunk),
    /// Not following any more: everything goes to hyper as read (HTTP/2,
    /// or a head larger than hyper takes, which it refuses and closes).
    Passthrough,
    /// A head was refused: nothing more is read.
    Refused,
    /// A chunked body broke the grammar: the input ends with an error.
    Broken,
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    DuplicateContentLength,
    ContentLengthWithTransferEncoding,
    /// Not an HTTP/1 request head httparse accepts.
    Unparsable,
    /// A `Content-Length` that is not a number.
    BadContentLength,
    /// `Transfer-Encoding` without `chunked` last (RFC 9112 §6.3).
    UnknownTransferEncoding,
    /// A chunked body that breaks the grammar.
    MalformedChunk,
}

/// The framing state machine, fed with the bytes read from a client.
#[derive(Debug)]
pub struct Framing {
    state: State,
    head: Vec<u8>,
    refused: Option<Refusal>,
    /// HTTP/2: bytes of the client preface and the first frame header
    /// still to come (the connection's "first head").
    h2_opening: Option<usize>,
    /// Empty lines of the next head came in (skipped, but its clock runs).
    started: bool,
    /// Longest head held back; a longer one goes to hyper (431).
    max_head: usize,
    /// Heads completed so far (none: the connection's first is awaited).
    heads: u64,
}

impl Default for Framing {
    fn default() -> Self {
        Framing::new(MAX_HEAD)
    }
}

/// HTTP/2's client preface (24 bytes) and the header of the SETTINGS frame
/// that must follow it (9).
const H2_OPENING: usize = 24 + 9;

impl Framing {
    /// A connection's framing, holding back heads up to `max_head` bytes.
    pub fn new(max_head: usize) -> Framing {
        Framing {
            state: State::Head,
            head: Vec::new(),
            refused: None,
            h2_opening: None,
            started: false,
            max_head,
            heads: 0,
        }
    }

    /// Why the connection's last head was refused, if it was.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refused
    }

    /// Feeds `input`; appends what hyper may read to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut rest = self.step(input, out);
        // Bytes after a completed head go round again in the new state.
        while let Some(more) = rest {
            rest = self.step(&more, out);
        }
    }

    /// The fast path of a read: advances over the leading bytes of `input`
    /// that hyper may read exactly as they are (complete heads judged good,
    /// body bytes, HTTP/2) and returns how many; the rest goes through
    /// [`Framing::feed`]. Together they hand hyper what `feed` alone would,
    /// without copying what passes unchanged (the common case: each read a
    /// whole request).
    pub fn pass_in_place(&mut self, input: &[u8]) -> usize {
        if !self.head.is_empty() {
            return 0;
        }
        let mut at = 0;
        while at < input.len() {
            let rest = &input[at..];
            match &mut self.state {
                State::Passthrough => {
                    if let Some(left) = &mut self.h2_opening {
                        *left = left.saturating_sub(rest.len());
                    }
                    return input.len();
                }
                State::Refused | State::Broken => return at,
                State::Body(n) => {
                    let take = (*n).min(rest.len() as u64) as usize;
                    *n -= take as u64;
                    if *n == 0 {
                        self.state = State::Head;
                    }
                    at += take;
                }
                State::Chunked(c) => {
                    let (used, next) = step_chunked(*c, rest);
                    if next == State::Broken {
                        return at;
                    }
                    self.state = next;
                    at += used;
                }
                State::Head => {
                    // Empty lines before a head (skipped, not passed) and a
                    // possible HTTP/2 preface take the slow path.
                    if matches!(rest[0], b'\r' | b'\n') || self.heads == 0 && rest[0] == b'P' {
                        return at;
                    }
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut req = httparse::Request::new(&mut headers);
                    match req.parse(rest) {
                        Ok(httparse::Status::Complete(n)) if n <= self.max_head => match decide(req.headers) {
                            Ok(next) => {
                                self.state = next;
                                self.heads += 1;
                                self.started = false;
                                at += n;
                            }
                            Err(_) => return at,
                        },
                        _ => return at,
                    }
                }
            }
        }
        at
    }

    /// Feeds `input` up to the end of the next complete head; returns the
    /// bytes read past it, if any.
    fn step(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Option<Vec<u8>> {
        while !input.is_empty() {
            match &mut self.state {
                State::Passthrough => {
                    if let Some(left) = &mut self.h2_opening {
                        *left = left.saturating_sub(input.len());
                    }
                    out.extend_from_slice(input);
                    return None;
                }
                State::Refused | State::Broken => return None,
                State::Body(n) => {
                    let take = (*n).min(input.len() as u64) as usize;
                    out.extend_from_slice(&input[..take]);
                    *n -= take as u64;
                    if *n == 0 {
                        self.state = State::Head;
                    }
                    input = &input[take..];
                }
                State::Chunked(c) => {
                    let (used, next) = step_chunked(*c, input);
                    out.extend_from_slice(&input[..used]);
                    input = &input[used..];
                    if next == State::Broken {
                        self.refused = Some(Refusal::MalformedChunk);
                    }
                    self.state = next;
                }
                State::Head => {
                    let start = self.head.len();
                    self.head.extend_from_slice(input);
                    input = &[];
                    // Empty lines before a request line are skipped (RFC
                    // 9112 §2.2; httparse and so hyper skip them too), here
                    // and not in hyper: the end of the head is then its first
                    // empty line, whatever the reads' boundaries.
                    let blank = leading_empty_lines(&self.head);
                    if blank > 0 {
                        self.head.drain(..blank);
                        self.started = true;
                    }
                    let start = start.saturating_sub(blank);
                    if self.head.is_empty() {
                        continue;
                    }
                    if self.heads == 0 && self.head.len() >= 3 && self.head.starts_with(b"PRI") {
                        // HTTP/2 with prior knowledge: hyper's business, once
                        // its opening is in.
                        self.h2_opening = Some(H2_OPENING.saturating_sub(self.head.len()));
                        self.pass_rest(out);
                        continue;
                    }
                    // A head ends at its first empty line, with CRLF or bare
                    // LF endings alike (httparse takes both): search from a
                    // little before the new bytes (the end may straddle reads).
                    let from = start.saturating_sub(2);
                    let end = find(&self.head[from..], b"\n\n")
                        .map(|at| from + at + 2)
                        .into_iter()
                        .chain(find(&self.head[from..], b"\n\r\n").map(|at| from + at + 3))
                        .min();
                    match end {
                        Some(_) => {
                            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                            let mut req = httparse::Request::new(&mut headers);
                            match req.parse(&self.head) {
                                Ok(httparse::Status::Complete(n)) => {
                                    let verdict = decide(req.headers);
                                    let rest = self.head.split_off(n);
                                    let head = std::mem::take(&mut self.head);
                                    self.heads += 1;
                                    self.started = false;
                                    match verdict {
                                        Ok(next) => {
                                            out.extend_from_slice(&head);
                                            self.state = next;
                                        }
                                        Err(why) => {
                                            self.refuse(why, out);
                                            return None;
                                        }
                                    }
                                    return (!rest.is_empty()).then_some(rest);
                                }
                                Ok(httparse::Status::Partial) => {}
                                // hyper has the same bound and answers 431.
                                Err(httparse::Error::TooManyHeaders) => self.pass_rest(out),
                                Err(_) => {
                                    self.refuse(Refusal::Unparsable, out);
                                    return None;
                                }
                            }
                        }
                        None if self.head.len() > self.max_head => self.pass_rest(out),
                        None => {}
                    }
                }
            }
        }
        None
    }

    /// Gives up following: what is held goes to hyper, and all that follows.
    fn pass_rest(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.head);
        self.state = State::Passthrough;
    }

    /// Refuses the head just read: hyper sees an invalid request line (400,
    /// close) and nothing after it.
    fn refuse(&mut self, why: Refusal, out: &mut Vec<u8>) {
        self.refused = Some(why);
        self.head.clear();
        out.extend_from_slice(REFUSED);
        self.state = State::Refused;
    }
}

/// What follows a complete head with these `headers`: its body's framing
/// (the next state), or why it is refused.
fn decide(headers: &[httparse::Header<'_>]) -> Result<State, Refusal> {
    let mut lengths = 0;
    let mut length: &[u8] = &[];
    let mut te: Option<&[u8]> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = h.value;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(h.value);
        }
    }
    if lengths > 1 {
        return Err(Refusal::DuplicateContentLength);
    }
    if te.is_some() && lengths > 0 {
        return Err(Refusal::ContentLengthWithTransferEncoding);
    }
    if let Some(te) = te {
        let mut codings = te.split(|b| *b == b',').map(<[u8]>::trim_ascii);
        let last = codings.next_back().unwrap_or_default();
        // Chunked last, and only there.
        return if last.eq_ignore_ascii_case(b"chunked") && !codings.any(|c| c.eq_ignore_ascii_case(b"chunked")) {
            Ok(State::Chunked(Chunk::Size { value: 0, digits: 0, after: After::Digits }))
        } else {
            Err(Refusal::UnknownTransferEncoding)
        };
    }
    if lengths == 0 {
        return Ok(State::Head);
    }
    let digits = length.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(Refusal::BadContentLength);
    }
    // ASCII digits: UTF-8.
    match std::str::from_utf8(digits).map_err(|_| Refusal::BadContentLength)?.parse::<u64>() {
        Ok(0) => Ok(State::Head),
        Ok(n) => Ok(State::Body(n)),
        Err(_) => Err(Refusal::BadContentLength),
    }
}

/// Advances a chunked body over `input` (RFC 9112 §7.1, strictly: CRLF line
/// ends, hex sizes of at most 15 digits, whitespace only before an
/// extension): bytes consumed and the next state; [`State::Broken`] at the
/// first byte that breaks the grammar.
fn step_chunked(c: Chunk, input: &[u8]) -> (usize, State) {
    walk_chunked(c, input, &mut |_, _| {}, false)
}

/// What a span of a chunked body is: chunk data, or trailer section bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Data,
    Trailer,
}

/// [`step_chunked`], telling `on` where the data and the trailer bytes are;
/// with `stop_after_data` it returns right after the first data span.
fn walk_chunked(
    mut c: Chunk,
    input: &[u8],
    on: &mut dyn FnMut(Span, std::ops::Range<usize>),
    stop_after_data: bool,
) -> (usize, State) {
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if matches!(c, Chunk::Trailer { .. }) {
            on(Span::Trailer, i..i + 1);
        }
        c = match c {
            Chunk::Data(n) => {
                let take = n.min((input.len() - i) as u64) as usize;
                on(Span::Data, i..i + take);
                i += take;
                c = if n == take as u64 { Chunk::DataEnd(2) } else { Chunk::Data(n - take as u64) };
                if stop_after_data {
                    return (i, State::Chunked(c));
                }
                continue;
            }
            Chunk::DataEnd(2) if b == b'\r' => Chunk::DataEnd(1),
            Chunk::DataEnd(1) if b == b'\n' => Chunk::Size { value: 0, digits: 0, after: After::Digits },
            Chunk::DataEnd(_) => return (i + 1, State::Broken),
            Chunk::Size { value, digits, after } => match (after, b) {
                (_, b'\r') if digits > 0 => Chunk::SizeLf { value },
                (After::Extension, b'\t' | 0x20..=0x7e | 0x80..) => c,
                (After::Digits | After::Blank, b';') if digits > 0 => {
                    Chunk::Size { value, digits, after: After::Extension }
                }
                (After::Digits | After::Blank, b' ' | b'\t') if digits > 0 => {
                    Chunk::Size { value, digits, after: After::Blank }
                }
                (After::Digits, _) => match (b as char).to_digit(16) {
                    Some(d) if digits < MAX_SIZE_DIGITS => {
                        Chunk::Size { value: value << 4 | u64::from(d), digits: digits + 1, after: After::Digits }
                    }
                    _ => return (i + 1, State::Broken),
                },
                _ => return (i + 1, State::Broken),
            },
            Chunk::SizeLf { value } if b == b'\n' => {
                if value == 0 {
                    Chunk::Trailer { line_empty: true, cr: false }
                } else {
                    Chunk::Data(value)
                }
            }
            Chunk::SizeLf { .. } => return (i + 1, State::Broken),
            Chunk::Trailer { line_empty, cr: false } => match b {
                b'\r' => Chunk::Trailer { line_empty, cr: true },
                b'\n' => return (i + 1, State::Broken),
                _ => Chunk::Trailer { line_empty: false, cr: false },
            },
            Chunk::Trailer { line_empty, cr: true } => match b {
                b'\n' if line_empty => return (i + 1, State::Head),
                b'\n' => Chunk::Trailer { line_empty: true, cr: false },
                _ => return (i + 1, State::Broken),
            },
        };
        i += 1;
    }
    (i, State::Chunked(c))
}

/// A chunked body read by the proxy itself (an endpoint's answer, in
/// [`super::origin`]), on the same strict grammar the guard holds clients'
/// bodies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked(ChunkedAt);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkedAt {
    In(Chunk),
    Done,
}

/// A chunked body broke the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

impl Default for Chunked {
    fn default() -> Self {
        Chunked(ChunkedAt::In(Chunk::Size { value: 0, digits: 0, after: After::Digits }))
    }
}

impl Chunked {
    /// Reads `input` up to the end of its first data span (or to its end,
    /// or the body's): the bytes used, and where that data is; trailer
    /// bytes met on the way go to `trailer`.
    pub fn next(
        &mut self,
        input: &[u8],
        trailer: &mut dyn FnMut(std::ops::Range<usize>),
    ) -> Result<(usize, Option<std::ops::Range<usize>>), Malformed> {
        let ChunkedAt::In(c) = self.0 else { return Ok((0, None)) };
        let mut data = None;
        let mut on = |span, range: std::ops::Range<usize>| match span {
            Span::Data => data = Some(range),
            Span::Trailer => trailer(range),
        };
        let (used, next) = walk_chunked(c, input, &mut on, true);
        self.0 = match next {
            State::Chunked(c) => ChunkedAt::In(c),
            State::Head => ChunkedAt::Done,
            _ => return Err(Malformed),
        };
        Ok((used, data))
    }

    /// The body's last byte (the trailer section's end) was read.
    pub fn done(&self) -> bool {
        self.0 == ChunkedAt::Done
    }
}

/// Length of the empty lines (CRLF or bare LF) `head` starts with.
fn leading_empty_lines(head: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match head[at..] {
            [b'\n', ..] => at += 1,
            [b'\r', b'\n', ..] => at += 2,
            _ => return at,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Set once the connection has switched protocols (a 101 to an
/// `Upgrade`): from the next read on, the guard passes every byte as it
/// is and keeps no head deadline (the tunnel has its own idle bound).
#[derive(Clone, Default)]
pub struct Switch(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Switch {
    pub fn switch(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    fn switched(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A client connection whose reads pass through [`Framing`].
pub struct Guarded<T> {
    inner: T,
    /// The protocol switch, once it happened (see [`Switch`]).
    switch: Switch,
    framing: Framing,
    ready: Vec<u8>,
    at: usize,
    /// How long a head may take: from accept to the first complete head,
    /// and from each later head's first byte to its end.
    head_limit: std::time::Duration,
    /// Running while a head is awaited.
    deadline: HeadClock,
    /// Counts connections closed because a head did not arrive in time.
    timeouts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Told while a head is awaited, so the connection is not closed as
    /// idle under a head that `head_limit` bounds (and answers with 408).
    activity: Activity,
    awaiting: bool,
    /// The framing's count of completed heads when the clock last looked.
    heads: u64,
}

impl<T> Guarded<T> {
    /// `inner` guarded: heads must arrive within `head_limit` and heads of
    /// up to `max_head` bytes are checked (a larger one goes to hyper, which
    /// answers 431).
    pub fn new(
        inner: T,
        head_limit: std::time::Duration,
        max_head: usize,
        timeouts: std::sync::Arc<std::sync::atomic::AtomicU64>,
        switch: Switch,
        activity: Activity,
    ) -> Guarded<T> {
        // Some slack over the limit: hyper draws the line itself.
        let framing = Framing::new(max_head + 1024);
        let awaiting = framing.awaiting_head();
        activity.awaiting_head(awaiting);
        Guarded {
            inner,
            switch,
            framing,
            ready: Vec::new(),
            at: 0,
            head_limit,
            deadline: HeadClock::default(),
            timeouts,
            activity,
            awaiting,
            heads: 0,
        }
    }
}

impl Framing {
    /// Whether a head is awaited: from the start until the first head is
    /// complete (hyper's protocol sniff waits too), and once a later head's
    /// first byte is in until it is complete. (Not in passthrough, where
    /// hyper is on its own, as for HTTP/2.)
    pub fn awaiting_head(&self) -> bool {
        match self.state {
            State::Head => self.heads == 0 || self.started || !self.head.is_empty(),
            State::Passthrough => self.h2_opening.is_some_and(|left| left > 0),
            _ => false,
        }
    }
}

/// Room in hyper's buffer from which a read goes straight into it.
const DIRECT_READ: usize = 1024;

/// What a client whose HTTP/1 head did not arrive in time is told before
/// the connection closes.
const TIMED_OUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let read = self.as_mut().read_framed(cx, buf);
        let this = &mut *self;
        let awaiting = this.framing.awaiting_head();
        if awaiting != this.awaiting {
            this.awaiting = awaiting;
            this.activity.awaiting_head(awaiting);
        }
        read
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> Guarded<T> {
    fn read_framed(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let this = &mut *self;
            if this.at < this.ready.len() {
                let n = (this.ready.len() - this.at).min(buf.remaining());
                buf.put_slice(&this.ready[this.at..this.at + n]);
                this.at += n;
                return Poll::Ready(Ok(()));
            }
            this.ready.clear();
            this.at = 0;
            if this.framing.state != State::Passthrough && this.switch.switched() {
                // Not HTTP any more: what was held (bytes sent early) and
                // all that follows go through as they are.
                this.framing.pass_rest(&mut this.ready);
                this.deadline.stop();
                if !this.ready.is_empty() {
                    continue;
                }
            }
            if this.framing.state == State::Refused {
                // End of input: hyper answers the refused head and closes.
                return Poll::Ready(Ok(()));
            }
            if this.framing.state == State::Broken {
                // The body in flight fails: the client's fault (400).
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body")));
            }
            if this.framing.head.is_empty() && buf.remaining() >= DIRECT_READ {
                // The fast path: read into hyper's buffer, and take back
                // only what the framing holds or changes (a partial head).
                let before = buf.filled().len();
                match Pin::new(&mut this.inner).poll_read(cx, buf) {
                    Poll::Pending => return this.pending(cx),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) if buf.filled().len() == before => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(())) => {
                        let read = &buf.filled()[before..];
                        let passed = this.framing.pass_in_place(read);
                        if passed < read.len() {
                            let rest = read[passed..].to_vec();
                            buf.set_filled(before + passed);
                            this.framing.feed(&rest, &mut this.ready);
                        }
                        this.head_clock_after_input();
                        if passed > 0 {
                            return Poll::Ready(Ok(()));
                        }
                        // Nothing passed yet (a head held back, or what
                        // the slow path made of it is in `ready`).
                        continue;
                    }
                }
            }
            let mut tmp = [std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
            let mut rb = ReadBuf::uninit(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return this.pending(cx),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // EOF: whatever was held goes to hyper, which sees it end.
                    let mut out = Vec::new();
                    this.framing.pass_rest(&mut out);
                    if out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                    this.ready = out;
                }
                Poll::Ready(Ok(())) => {
                    let mut out = std::mem::take(&mut this.ready);
                    this.framing.feed(rb.filled(), &mut out);
                    this.ready = out;
                    // A head completed: the next one gets its own time.
                    this.head_clock_after_input();
                }
            }
        }
    }

    /// After input went through the framing: a completed head stops the
    /// clock, so the next head (even one that came in the same read) gets
    /// its own time, from now.
    fn head_clock_after_input(&mut self) {
        if !self.framing.awaiting_head() || self.framing.heads != self.heads {
            self.heads = self.framing.heads;
            self.deadline.stop();
        }
    }

    /// Nothing to read now: while a head is awaited, its clock runs, and
    /// when it is out an HTTP/1 client is told (408) and the input ends.
    fn pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.framing.awaiting_head() {
            self.deadline.stop();
            return Poll::Pending;
        }
        let limit = self.head_limit;
        if self.deadline.poll(cx, limit).is_pending() {
            return Poll::Pending;
        }
        self.timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Best effort: the socket takes these few bytes at once or never.
        if self.framing.state == State::Head {
            if let Poll::Ready(Ok(n)) = Pin::new(&mut self.inner).poll_write(cx, TIMED_OUT) {
                if n == TIMED_OUT.len() {
                    let _ = Pin::new(&mut self.inner).poll_flush(cx);
                }
            }
        }
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, format!("no complete request head within {limit:?}"))))
    }
}

/// The clock of the head being awaited: one timer per connection, re-armed
/// for each head rather than made anew (an allocation and a timer per
/// keep-alive request otherwise).
#[derive(Default)]
struct HeadClock {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    running: bool,
}

impl HeadClock {
    /// The head arrived (or none is awaited any more).
    fn stop(&mut self) {
        self.running = false;
    }

    /// Starts the clock at `limit` if it is not running, and polls it.
    fn poll(&mut self, cx: &mut Context<'_>, limit: std::time::Duration) -> Poll<()> {
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if !self.running {
                    sleep.as_mut().reset(tokio::time::Instant::now() + limit);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep(limit))),
        };
        self.running = true;
        sleep.as_mut().poll(cx)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes; returns what hyper would
    /// read, having checked that the guard's fast path (bytes passed in
    /// place, the rest fed) hands on the same.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Option<Refusal>) {
        let (mut slow, mut fast) = (Framing::default(), Framing::default());
        let (mut out, mut fast_out) = (Vec::new(), Vec::new());
        for piece in input.chunks(step) {
            slow.feed(piece, &mut out);
            let passed = fast.pass_in_place(piece);
            fast_out.extend_from_slice(&piece[..passed]);
            fast.feed(&piece[passed..], &mut fast_out);
        }
        assert_eq!((&fast_out, fast.refusal()), (&out, slow.refusal()), "the fast path agrees, step {step}");
        (out, slow.refusal())
    }

    #[test]
    fn good_pipelines_pass_unchanged_however_they_are_split() {
        let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n\
GET /z HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
        for step in [1, 2, 3, 7, 13, 64, 4096] {
            assert_eq!(run(stream, step), (stream.to_vec(), None), "step {step}");
        }
    }

    /// Found by the `framing` fuzz target: a head after empty lines was
    /// judged when its first read ended at the empty lines' end (refused at
    /// once) and not when the reads split elsewhere (left waiting).
    #[test]
    fn empty_lines_before_a_head_are_skipped_however_the_reads_split() {
        let garbage: &[u8] = b"\n\nGTEGTEPT/ /\x03P ";
        for step in [1, 2, 7, 4096] {
            assert_eq!(run(garbage, step), (Vec::new(), None), "step {step}: an incomplete head waits");
        }
        let good: &[u8] = b"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n";
        let want = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        for step in [1, 2, 3, 4096] {
            assert_eq!(run(good, step), (want.clone(), None), "step {step}");
        }
        // Empty lines alone start the next head's clock.
        let mut f = Framing::default();
        f.feed(b"GET / HTTP/1.1\r\n\r\n", &mut Vec::new());
        assert!(!f.awaiting_head());
        f.feed(b"\r\n", &mut Vec::new());
        assert!(f.awaiting_head());
    }

    #[test]
    fn smuggling_heads_are_refused_and_nothing_after_them_is_read() {
        let cases: [(&[u8], Refusal); 3] = [
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhelloGET /evil HTTP/1.1\r\n\r\n", Refusal::DuplicateContentLength),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /evil HTTP/1.1\r\n\r\n", Refusal::ContentLengthWithTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", Refusal::ContentLengthWithTransferEncoding),
        ];
        for (input, why) in cases {
            for step in [1, 5, 4096] {
                let (out, refused) = run(input, step);
                assert_eq!(refused, Some(why));
                assert_eq!(out, REFUSED, "step {step}: only the invalid line reaches hyper");
            }
        }
        // A good request first is served; the smuggling one after it is refused.
        let mixed = b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx";
        let (out, refused) = run(mixed, 3);
        assert_eq!(refused, Some(Refusal::DuplicateContentLength));
        assert_eq!(out, [&b"GET / HTTP/1.1\r\n\r\n"[..], REFUSED].concat());
    }

    #[test]
    fn only_h2_and_oversized_heads_go_to_hyper_untouched() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        assert_eq!(run(h2, 1).0, h2.to_vec());
        let huge = [&b"GET / HTTP/1.1\r\nX: "[..], &vec![b'a'; MAX_HEAD + 10]].concat();
        assert_eq!(run(&huge, 4096).0, huge, "hyper answers 431 and closes");
        let many: Vec<u8> = (0..=MAX_HEADERS)
            .fold(b"GET / HTTP/1.1\r\n".to_vec(), |mut h, i| {
                h.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
                h
            })
            .into_iter()
            .chain(*b"\r\n")
            .collect();
        assert_eq!(run(&many, 64).0, many, "more fields than hyper takes: hyper answers 431 and closes");
        let (mut limited, mut out) = (Framing::new(100), Vec::new());
        let long = [&b"GET / HTTP/1.1\r\nX: "[..], &[b'a'; 200]].concat();
        limited.feed(&long, &mut out);
        assert_eq!(out, long, "a head over a lower max_head goes to hyper as it is");
    }

    #[test]
    fn heads_it_cannot_follow_are_refused_not_passed() {
        let cases: [(&[u8], Refusal); 7] = [
            (b"GARBAGE\r\n\r\nmore", Refusal::Unparsable),
            (b"POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\nhello", Refusal::BadContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", Refusal::BadContentLength),
            (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello", Refusal::BadContentLength),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nxx", Refusal::UnknownTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", Refusal::UnknownTransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", Refusal::UnknownTransferEncoding),
        ];
        for (input, why) in cases {
            for step in [1, 4096] {
                let (out, refused) = run(input, step);
                assert_eq!((refused, out.as_slice()), (Some(why), REFUSED), "{}", String::from_utf8_lossy(input));
            }
        }
        let ok = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(run(ok, 3), (ok.to_vec(), None));
    }

    #[test]
    fn a_malformed_chunked_body_breaks_the_input() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            &b"zz\r\nabc"[..],
            b"0x3\r\nabc\r\n0\r\n\r\n",
            b"FFFFFFFFFFFFFFFFFF\r\n",
            b"3\r\nabcX0\r\n\r\n",
            b"3\nabc\n0\n\n",
            b"3 3\r\nabc\r\n",
            b"3\r\nabc\r\n0\r\nX: 1\n\r\n",
        ] {
            for step in [1, 4096] {
                let mut f = Framing::default();
                let mut out = Vec::new();
                for piece in [&head[..], body].concat().chunks(step) {
                    f.feed(piece, &mut out);
                }
                assert_eq!(f.state, State::Broken, "{}", String::from_utf8_lossy(body));
                assert_eq!(f.refusal(), Some(Refusal::MalformedChunk));
            }
        }
    }

    #[test]
    fn the_guard_stays_on_after_odd_but_valid_requests() {
        let smuggle = &b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"[..];
        for first in [
            // A chunk size with blanks before the line end and an extension.
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n2\t;a=b\r\nde\r\n0\r\n\r\n"[..],
            // Bare-LF line endings.
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
        ] {
            for step in [1, 2, 4096] {
                let (out, refused) = run(&[first, smuggle].concat(), step);
                assert_eq!(refused, Some(Refusal::DuplicateContentLength), "{}", String::from_utf8_lossy(first));
                assert_eq!(out, [first, REFUSED].concat(), "step {step}");
            }
        }
    }
}
