//! Strict HTTP/1 request framing, in front of hyper: request smuggling needs
//! two parties to disagree on where a request ends, so a request whose head
//! carries more than one `Content-Length` (even equal ones) or both
//! `Transfer-Encoding` and `Content-Length` is refused (400, connection
//! closed) instead of being interpreted. (hyper alone merges equal
//! duplicates and lets chunked win.)
//!
//! [`Guarded`] wraps the client connection. It follows the message framing of
//! the bytes it reads (heads, `Content-Length` bodies, chunked bodies) and
//! hands hyper each head only once it is complete and checked. A refused head
//! is replaced by an invalid request line, which hyper answers with 400 and a
//! close; nothing after it is read. Anything it does not understand (an
//! unparsable head, an HTTP/2 preface, a huge head) is passed through for
//! hyper to judge, and the guard steps aside.

use std::{
    future::Future as _,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest head the guard holds back; longer ones go to hyper (431).
const MAX_HEAD: usize = 64 * 1024 + 1024;
/// What hyper sees instead of a refused head: an invalid method (400).
const REFUSED: &[u8] = b"\x01 / HTTP/1.1\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading `SIZE[;ext]\r\n`; the value parsed so far.
    Size { value: u64, digits: bool, in_ext: bool },
    /// `n` data bytes left.
    Data(u64),
    /// The CRLF after data: bytes left.
    DataEnd(u8),
    /// Trailer lines after the last chunk; whether the current line is empty so far.
    Trailer { line_empty: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    Chunked(Chunk),
    /// Not following any more: everything goes to hyper as read.
    Passthrough,
    /// A head was refused: nothing more is read.
    Refused,
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    DuplicateContentLength,
    ContentLengthWithTransferEncoding,
}

/// The framing state machine, fed with the bytes read from a client.
#[derive(Debug)]
pub struct Framing {
    state: State,
    head: Vec<u8>,
    first: bool,
    refused: Option<Refusal>,
    /// HTTP/2: bytes of the client preface and the first frame header
    /// still to come (the connection's "first head").
    h2_opening: Option<usize>,
}

impl Default for Framing {
    fn default() -> Self {
        Framing { state: State::Head, head: Vec::new(), first: true, refused: None, h2_opening: None }
    }
}

/// HTTP/2's client preface (24 bytes) and the header of the SETTINGS frame
/// that must follow it (9).
const H2_OPENING: usize = 24 + 9;

impl Framing {
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
                State::Refused => return None,
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
                    self.state = next;
                }
                State::Head => {
                    let start = self.head.len();
                    self.head.extend_from_slice(input);
                    input = &[];
                    if self.first && self.head.len() >= 3 && self.head.starts_with(b"PRI") {
                        // HTTP/2 with prior knowledge: hyper's business, once
                        // its opening is in.
                        self.h2_opening = Some(H2_OPENING.saturating_sub(self.head.len()));
                        self.pass_rest(out);
                        continue;
                    }
                    // Search from a little before the new bytes (the end marker may straddle reads).
                    let from = start.saturating_sub(3);
                    match find(&self.head[from..], b"\r\n\r\n") {
                        Some(at) => {
                            let end = from + at + 4;
                            let rest = self.head.split_off(end);
                            let head = std::mem::take(&mut self.head);
                            self.first = false;
                            self.judge(head, out);
                            return (!rest.is_empty()).then_some(rest);
                        }
                        None if self.head.len() > MAX_HEAD => self.pass_rest(out),
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

    /// Decides a complete head.
    fn judge(&mut self, head: Vec<u8>, out: &mut Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(&head), Ok(httparse::Status::Complete(_))) {
            out.extend_from_slice(&head);
            self.state = State::Passthrough;
            return;
        }
        let mut lengths = Vec::new();
        let mut te: Option<&[u8]> = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths.push(h.value);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = Some(h.value);
            }
        }
        let refusal = if lengths.len() > 1 {
            Some(Refusal::DuplicateContentLength)
        } else if te.is_some() && !lengths.is_empty() {
            Some(Refusal::ContentLengthWithTransferEncoding)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.refused = Some(r);
            out.extend_from_slice(REFUSED);
            self.state = State::Refused;
            return;
        }
        out.extend_from_slice(&head);
        self.state = match (te, lengths.first()) {
            (Some(te), _) => {
                let last = te.rsplit(|b| *b == b',').next().unwrap_or(te);
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    State::Chunked(Chunk::Size { value: 0, digits: false, in_ext: false })
                } else {
                    State::Passthrough
                }
            }
            (None, Some(len)) => match std::str::from_utf8(len).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
                Some(0) => State::Head,
                Some(n) => State::Body(n),
                None => State::Passthrough,
            },
            (None, None) => State::Head,
        };
    }
}

/// Advances a chunked body over `input`: bytes consumed and the next state.
fn step_chunked(mut c: Chunk, input: &[u8]) -> (usize, State) {
    let mut i = 0;
    while i < input.len() {
        match &mut c {
            Chunk::Data(n) => {
                let take = (*n).min((input.len() - i) as u64) as usize;
                *n -= take as u64;
                i += take;
                if *n == 0 {
                    c = Chunk::DataEnd(2);
                }
                continue;
            }
            Chunk::DataEnd(left) => {
                *left -= 1;
                if *left == 0 {
                    c = Chunk::Size { value: 0, digits: false, in_ext: false };
                }
            }
            Chunk::Size { value, digits, in_ext } => {
                let b = input[i];
                match b {
                    b'\n' => {
                        if !*digits {
                            return (i + 1, State::Passthrough);
                        }
                        c = if *value == 0 { Chunk::Trailer { line_empty: true } } else { Chunk::Data(*value) };
                    }
                    b'\r' => {}
                    _ if *in_ext => {}
                    b';' => *in_ext = true,
                    _ => match (b as char).to_digit(16) {
                        Some(d) if *value < u64::MAX >> 4 => {
                            *value = *value << 4 | u64::from(d);
                            *digits = true;
                        }
                        // Not a chunk size (or absurd): hyper decides.
                        _ => return (i + 1, State::Passthrough),
                    },
                }
            }
            Chunk::Trailer { line_empty } => match input[i] {
                b'\n' if *line_empty => return (i + 1, State::Head),
                b'\n' => *line_empty = true,
                b'\r' => {}
                _ => *line_empty = false,
            },
        }
        i += 1;
    }
    (i, State::Chunked(c))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A client connection whose reads pass through [`Framing`].
pub struct Guarded<T> {
    inner: T,
    framing: Framing,
    ready: Vec<u8>,
    at: usize,
    /// How long a head may take: from accept to the first complete head,
    /// and from each later head's first byte to its end.
    head_limit: std::time::Duration,
    /// Running while a head is awaited.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Counts connections closed because a head did not arrive in time.
    timeouts: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl<T> Guarded<T> {
    pub fn new(
        inner: T,
        head_limit: std::time::Duration,
        timeouts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> Guarded<T> {
        Guarded { inner, framing: Framing::default(), ready: Vec::new(), at: 0, head_limit, deadline: None, timeouts }
    }
}

impl Framing {
    /// Whether a head is awaited: from the start until the first head is
    /// complete (hyper's protocol sniff waits too), and once a later head's
    /// first byte is in until it is complete. (Not in passthrough, where
    /// hyper is on its own, as for HTTP/2.)
    pub fn awaiting_head(&self) -> bool {
        match self.state {
            State::Head => self.first || !self.head.is_empty(),
            State::Passthrough => self.h2_opening.is_some_and(|left| left > 0),
            _ => false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
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
            if this.framing.state == State::Refused {
                // End of input: hyper answers the refused head and closes.
                return Poll::Ready(Ok(()));
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if !this.framing.awaiting_head() {
                        this.deadline = None;
                        return Poll::Pending;
                    }
                    let limit = this.head_limit;
                    let deadline = this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no complete request head within {limit:?}"),
                        )));
                    }
                    return Poll::Pending;
                }
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
                    if !this.framing.awaiting_head() {
                        this.deadline = None;
                    }
                }
            }
        }
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

    /// Feeds `input` in pieces of `step` bytes; returns what hyper would read.
    fn run(input: &[u8], step: usize) -> (Vec<u8>, Option<Refusal>) {
        let mut f = Framing::default();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            f.feed(piece, &mut out);
        }
        (out, f.refusal())
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
    fn what_it_does_not_understand_goes_to_hyper_untouched() {
        let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        assert_eq!(run(h2, 1).0, h2.to_vec());
        let garbage = b"GARBAGE\r\n\r\nmore";
        assert_eq!(run(garbage, 2).0, garbage.to_vec());
        let bad_chunk = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nrest";
        assert_eq!(run(bad_chunk, 4).0, bad_chunk.to_vec());
    }
}
