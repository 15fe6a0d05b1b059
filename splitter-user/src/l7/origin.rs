//! The proxy's own HTTP/1.1 client towards endpoints, for the requests of
//! clients' HTTP/1 connections: one exchange (the request out, the answer
//! in) runs in the client connection's own task, on buffers that exist only
//! while it is in flight, so an idle endpoint connection is its socket
//! alone (hyper's client keeps a task, a request channel and two buffers per
//! connection for good, and hands every request across tasks).
//!
//! Answers are framed as strictly as the framing guard frames requests: a
//! head httparse refuses, differing `Content-Length`s, a length that is not
//! a number, a chunked body that breaks the grammar, bytes beyond the answer
//! or an unasked `101` fail the exchange (502 before the head, a cut-off
//! body after it) and the connection is closed. With `Transfer-Encoding`
//! and `Content-Length` chunked wins and the connection is not reused (RFC
//! 9112 §6.3); a body without either runs to the close. `1xx` heads before
//! the answer are skipped. A connection goes back for the next request only
//! once its answer was read to the end, nothing followed it, the request
//! went out whole and neither side said `close`.

use std::{
    io,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};
use splitter_model::config::l7::MAX_HEADERS;
use thiserror::Error;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::{
    framing::Chunked,
    proxy::{BodyError, ProxyBody},
};

/// Longest answer head read (hyper's client reads up to 400 KiB; an
/// endpoint's head past this is a broken endpoint).
const MAX_HEAD: usize = 64 * 1024;
/// Longest trailer section of a chunked answer.
const MAX_TRAILER: usize = 16 * 1024;
/// What an exchange's read buffer starts with (and grows by).
const READ_CHUNK: usize = 8 * 1024;

/// An endpoint connection's socket: clear text or TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection to an endpoint, between exchanges.
pub struct OriginConn {
    io: Io,
    /// Answers read on it so far.
    answered: u64,
}

impl OriginConn {
    pub fn new(io: Io) -> OriginConn {
        OriginConn { io, answered: 0 }
    }

    /// Whether it can carry a request: the endpoint has neither closed it
    /// nor sent anything unasked (looked at without waiting).
    pub fn usable(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut buf), Poll::Pending)
    }

    /// It answered before (a kept connection, which may have been closed by
    /// the endpoint as the request went out).
    pub fn reused(&self) -> bool {
        self.answered > 0
    }
}

/// Why an exchange failed.
#[derive(Debug, Error)]
pub enum OriginError {
    /// A kept connection closed before a byte of an answer came, and the
    /// request had no body: it may go again on a new connection.
    #[error("the kept connection closed before answering")]
    ClosedUnanswered,
    #[error("writing the request: {0}")]
    Write(io::Error),
    #[error("reading the answer: {0}")]
    Read(io::Error),
    #[error("the endpoint closed the connection before its answer's head was complete")]
    Closed,
    #[error("the endpoint's answer is malformed: {0}")]
    Malformed(&'static str),
    #[error("the request body failed: {0}")]
    Body(BodyError),
}

/// How a request's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
}

/// How an answer's body is delimited.
#[derive(Debug)]
enum In {
    Length(u64),
    Chunked(Chunked),
    Close,
}

/// Sends `head` and `body` on `conn` and reads the answer's head. The
/// answer's body reads from the connection as the client's side takes it;
/// once it was read to the end and the connection can carry another
/// request, `keep` gets it back (else it is closed).
pub async fn exchange<K>(
    mut conn: OriginConn,
    head: &Parts,
    mut body: ProxyBody,
    keep: K,
) -> Result<Response<ProxyBody>, OriginError>
where
    K: FnOnce(OriginConn) + Send + Sync + Unpin + 'static,
{
    let mut out = Vec::with_capacity(512);
    let framing = encode_head(head, &body, &mut out);
    let mut rbuf = BytesMut::new();
    let mut whole = true;
    if framing == Out::None {
        write_all(&mut conn.io, &out).await.map_err(|e| unsent(&conn, e))?;
    } else {
        whole = send_body(&mut conn.io, out, &mut body, framing, &mut rbuf).await?;
    }
    drop(body);
    let (resp, framing, reusable) = read_head(&mut conn, &mut rbuf, head, framing == Out::None).await?;
    conn.answered += 1;
    let reusable = reusable && whole;
    let (parts, ()) = resp.into_parts();
    let body = match framing {
        None => {
            finish(conn, reusable && rbuf.is_empty(), keep);
            Empty::new().map_err(|never| match never {}).boxed()
        }
        // The whole answer is in: the connection goes back before the
        // client is even answered.
        Some(In::Length(n)) if rbuf.len() as u64 >= n => {
            let data = rbuf.split_to(n as usize).freeze();
            finish(conn, reusable && rbuf.is_empty(), keep);
            Full::new(data).map_err(|never| match never {}).boxed()
        }
        Some(decode) => {
            let reusable = reusable && !matches!(decode, In::Close);
            OriginBody { conn: Some(conn), buf: rbuf, decoder: Decoder::new(decode), reusable, keep: Some(keep) }
                .boxed()
        }
    };
    Ok(Response::from_parts(parts, body))
}

/// A write that failed at once on a kept connection is one the endpoint
/// closed meanwhile: nothing reached it.
fn unsent(conn: &OriginConn, e: io::Error) -> OriginError {
    if conn.reused()
        && matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::NotConnected)
    {
        OriginError::ClosedUnanswered
    } else {
        OriginError::Write(e)
    }
}

/// Gives `conn` to `keep` when `reusable`, else closes it.
fn finish<K: FnOnce(OriginConn)>(conn: OriginConn, reusable: bool, keep: K) {
    if reusable {
        keep(conn);
    }
}

/// Writes the request head into `out`, framing the body as its
/// `Content-Length` says, else as its size is known, else chunked.
fn encode_head(head: &Parts, body: &ProxyBody, out: &mut Vec<u8>) -> Out {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.uri.path_and_query().map_or("/", |pq| pq.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut framing = None;
    for (name, value) in &head.headers {
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        if name == header::CONTENT_LENGTH {
            // hyper's server checked the client's; a copy keeps one.
            if framing.is_some() {
                continue;
            }
            framing = value.to_str().ok().and_then(|v| v.trim().parse().ok()).map(Out::Length);
            if framing.is_none() {
                continue;
            }
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match framing {
        Some(f) => f,
        None if body.is_end_stream() => {
            if matches!(head.method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Out::None
        }
        None => match body.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
                Out::Length(n)
            }
            None => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Out::Chunked
            }
        },
    };
    out.extend_from_slice(b"\r\n");
    if framing == Out::Length(0) {
        Out::None
    } else {
        framing
    }
}

async fn write_all(io: &mut Io, mut buf: &[u8]) -> io::Result<()> {
    std::future::poll_fn(|cx| {
        while !buf.is_empty() {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            buf = &buf[n..];
        }
        Pin::new(&mut *io).poll_flush(cx)
    })
    .await
}

/// Writes `out` (the head) and the body framed as `framing`, reading what
/// the endpoint sends meanwhile into `rbuf`: an answer that comes before the
/// body is through (a 413, say) ends the sending. Whether the body went
/// whole.
async fn send_body(
    io: &mut Io,
    mut out: Vec<u8>,
    body: &mut ProxyBody,
    framing: Out,
    rbuf: &mut BytesMut,
) -> Result<bool, OriginError> {
    let mut left = match framing {
        Out::Length(n) => n,
        _ => 0,
    };
    let mut written = 0;
    let mut ended = false;
    let mut trailers: Option<HeaderMap> = None;
    std::future::poll_fn(|cx| loop {
        // What is queued goes out first.
        while written < out.len() {
            match Pin::new(&mut *io).poll_write(cx, &out[written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(OriginError::Write(io::ErrorKind::WriteZero.into()))),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(after_write_error(io, cx, rbuf, e)),
                Poll::Pending => return early_answer(io, cx, rbuf).map(|r| r.map(|()| false)),
            }
        }
        out.clear();
        written = 0;
        if ended {
            return match Pin::new(&mut *io).poll_flush(cx) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(true)),
                Poll::Ready(Err(e)) => Poll::Ready(Err(OriginError::Write(e))),
                Poll::Pending => early_answer(io, cx, rbuf).map(|r| r.map(|()| false)),
            };
        }
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => {
                // What was written leaves (TLS holds nothing back) while
                // the client's body is slow to come.
                if let Poll::Ready(Err(e)) = Pin::new(&mut *io).poll_flush(cx) {
                    return Poll::Ready(Err(OriginError::Write(e)));
                }
                return early_answer(io, cx, rbuf).map(|r| r.map(|()| false));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(OriginError::Body(e))),
            Poll::Ready(Some(Ok(frame))) => {
                let data = match frame.into_data() {
                    Ok(data) => data,
                    // Trailers go after the last chunk (a body of known
                    // length has no room for them).
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        continue;
                    }
                };
                if data.is_empty() {
                    continue;
                }
                if framing == Out::Chunked {
                    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    out.extend_from_slice(&data);
                    out.extend_from_slice(b"\r\n");
                } else {
                    if data.len() as u64 > left {
                        return Poll::Ready(Err(OriginError::Body(
                            "the body is longer than its Content-Length".into(),
                        )));
                    }
                    left -= data.len() as u64;
                    out.extend_from_slice(&data);
                }
            }
            Poll::Ready(None) => {
                ended = true;
                match framing {
                    Out::Chunked => {
                        out.extend_from_slice(b"0\r\n");
                        for (name, value) in trailers.iter().flatten() {
                            out.extend_from_slice(name.as_str().as_bytes());
                            out.extend_from_slice(b": ");
                            out.extend_from_slice(value.as_bytes());
                            out.extend_from_slice(b"\r\n");
                        }
                        out.extend_from_slice(b"\r\n");
                    }
                    _ if left > 0 => {
                        return Poll::Ready(Err(OriginError::Body(
                            "the body is shorter than its Content-Length".into(),
                        )))
                    }
                    _ => {}
                }
            }
        }
    })
    .await
}

/// A write of the request failed: an endpoint that answered early and
/// closed may have left its answer, which is then read (the body did not go
/// whole).
fn after_write_error(
    io: &mut Io,
    cx: &mut Context<'_>,
    rbuf: &mut BytesMut,
    e: io::Error,
) -> Result<bool, OriginError> {
    match early_answer(io, cx, rbuf) {
        Poll::Ready(Ok(())) if !rbuf.is_empty() => Ok(false),
        _ => Err(OriginError::Write(e)),
    }
}

/// While the request is still going out: reads what the endpoint sent into
/// `rbuf`, skipping interim (1xx) heads. Ready once a final answer's head is
/// in, or the endpoint closed (the answer, if any, is then read from
/// `rbuf`); pending otherwise.
fn early_answer(io: &mut Io, cx: &mut Context<'_>, rbuf: &mut BytesMut) -> Poll<Result<(), OriginError>> {
    loop {
        match final_head(rbuf) {
            Ok(Some(_)) => return Poll::Ready(Ok(())),
            Ok(None) => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
        reserve(rbuf);
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, rbuf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
            Poll::Ready(Ok(_)) => {}
            Poll::Ready(Err(_)) if !rbuf.is_empty() => return Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(OriginError::Read(e))),
        }
    }
}

/// Room for the next read in `buf`.
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
}

/// A complete answer head at the start of a buffer: its status, where its
/// fields are, and its length.
struct Head {
    status: u16,
    http10: bool,
    /// Each field's name and its value's place in the buffer.
    fields: Vec<(HeaderName, std::ops::Range<usize>)>,
    len: usize,
}

impl Head {
    /// An interim answer (`1xx` other than `101`), skipped.
    fn interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// The answer head `buf` starts with, when complete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, &'static str> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("more header fields than the proxy takes"),
        Err(_) => return Err("not an HTTP/1 answer head"),
    };
    let status = resp.code.expect("complete");
    let base = buf.as_ptr() as usize;
    let mut fields = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| "a header field name is invalid")?;
        let at = h.value.as_ptr() as usize - base;
        fields.push((name, at..at + h.value.len()));
    }
    Ok(Some(Head { status, http10: resp.version == Some(0), fields, len }))
}

/// Drops the interim heads at the front of `rbuf`; the final answer's head
/// there, once complete.
fn final_head(rbuf: &mut BytesMut) -> Result<Option<Head>, OriginError> {
    loop {
        match parse_head(rbuf).map_err(OriginError::Malformed)? {
            // However it was read (a head longer than the bound may come
            // whole in one read).
            Some(head) if head.len > MAX_HEAD => return Err(OriginError::Malformed("head too large")),
            Some(head) if head.interim() => rbuf.advance(head.len),
            Some(head) => return Ok(Some(head)),
            None if rbuf.len() > MAX_HEAD => return Err(OriginError::Malformed("head too large")),
            None => return Ok(None),
        }
    }
}

/// An answer's head, as read: the answer without its body, how its body
/// is delimited (`None`: it has none), and whether the connection may carry
/// another request after it.
type AnswerHead = (Response<()>, Option<In>, bool);

/// Reads the answer's head (after interim ones) from `conn` into `rbuf`.
async fn read_head(
    conn: &mut OriginConn,
    rbuf: &mut BytesMut,
    req: &Parts,
    bodiless: bool,
) -> Result<AnswerHead, OriginError> {
    let mut got_any = !rbuf.is_empty();
    loop {
        if let Some(head) = take_head(rbuf, &req.method)? {
            return Ok(head);
        }
        reserve(rbuf);
        let retry = !got_any && conn.reused() && bodiless;
        match std::future::poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, rbuf)).await {
            Ok(0) if retry => return Err(OriginError::ClosedUnanswered),
            Ok(0) => return Err(OriginError::Closed),
            Ok(_) => got_any = true,
            Err(e) if retry && e.kind() == io::ErrorKind::ConnectionReset => return Err(OriginError::ClosedUnanswered),
            Err(e) => return Err(OriginError::Read(e)),
        }
    }
}

/// Takes the answer's head off the front of `rbuf` once it is complete
/// (interim heads before it are dropped), for a request of `method`.
fn take_head(rbuf: &mut BytesMut, method: &Method) -> Result<Option<AnswerHead>, OriginError> {
    let Some(head) = final_head(rbuf)? else { return Ok(None) };
    let bytes = rbuf.split_to(head.len).freeze();
    let mut headers = HeaderMap::with_capacity(head.fields.len());
    for (name, at) in head.fields {
        let value = HeaderValue::from_maybe_shared(bytes.slice(at))
            .map_err(|_| OriginError::Malformed("a header field value is invalid"))?;
        headers.append(name, value);
    }
    let status = StatusCode::from_u16(head.status).map_err(|_| OriginError::Malformed("the status is invalid"))?;
    let (framing, reusable) = framing_of(status, method, &mut headers, head.http10).map_err(OriginError::Malformed)?;
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    // The proxy's own version towards the client, whatever the endpoint's.
    *resp.version_mut() = Version::HTTP_11;
    *resp.headers_mut() = headers;
    Ok(Some((resp, framing, reusable)))
}

/// How an answer's body is delimited (RFC 9112 §6.3; `None`: it has none)
/// and whether its connection may be reused after it; `headers` lose a
/// `Content-Length` that chunked overrides and keep one of equal copies.
fn framing_of(
    status: StatusCode,
    method: &Method,
    headers: &mut HeaderMap,
    http10: bool,
) -> Result<(Option<In>, bool), &'static str> {
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("101 Switching Protocols to a request that asked for no upgrade");
    }
    let close = http10 || has_token(headers, header::CONNECTION, "close");
    // Every Content-Length is checked, whether a body follows or not.
    let length = content_length(headers)?;
    if *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((None, !close));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty());
        let (mut chunked, mut last_chunked) = (0, false);
        for coding in codings {
            last_chunked = coding.eq_ignore_ascii_case(b"chunked");
            chunked += usize::from(last_chunked);
        }
        if !(last_chunked && chunked == 1) {
            // Read to the close (RFC 9112 §6.3, 6.).
            return Ok((Some(In::Close), false));
        }
        if length.is_some() {
            headers.remove(header::CONTENT_LENGTH);
        }
        return Ok((Some(In::Chunked(Chunked::default())), !close && length.is_none()));
    }
    Ok(match length {
        Some(0) => (None, !close),
        Some(n) => (Some(In::Length(n)), !close),
        None => (Some(In::Close), false),
    })
}

/// The answer's `Content-Length`, if it has one: copies (and lists) of one
/// number become one field; a value that is not a number, or differing
/// ones, are an error.
fn content_length(headers: &mut HeaderMap) -> Result<Option<u64>, &'static str> {
    let (mut length, mut seen) = (None, 0);
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|b| *b == b',') {
            let digits = part.trim_ascii();
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err("Content-Length is not a number");
            }
            let n: u64 =
                std::str::from_utf8(digits).ok().and_then(|d| d.parse().ok()).ok_or("Content-Length is too large")?;
            if length.is_some_and(|l| l != n) {
                return Err("differing Content-Lengths");
            }
            length = Some(n);
            seen += 1;
        }
    }
    if let (Some(n), 2..) = (length, seen) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(length)
}

/// Whether a `name` field of `headers` lists `token`.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// What one step of reading a body gave.
enum Step {
    Data(Bytes),
    /// More bytes are needed.
    More,
    /// The body ended, with these trailers.
    End(Option<HeaderMap>),
}

/// Reads an answer's body out of the bytes read from its connection.
struct Decoder {
    decode: In,
    /// A chunked body's trailer section, as read.
    trailer: Vec<u8>,
}

impl Decoder {
    fn new(decode: In) -> Decoder {
        Decoder { decode, trailer: Vec::new() }
    }

    /// The next piece of the body from the front of `buf`.
    fn step(&mut self, buf: &mut BytesMut) -> Result<Step, BodyError> {
        match &mut self.decode {
            In::Length(0) => Ok(Step::End(None)),
            _ if buf.is_empty() => Ok(Step::More),
            In::Length(left) => {
                let take = (*left).min(buf.len() as u64);
                *left -= take;
                Ok(Step::Data(buf.split_to(take as usize).freeze()))
            }
            In::Close => Ok(Step::Data(buf.split().freeze())),
            In::Chunked(chunked) => {
                let (input, trailer) = (&buf[..], &mut self.trailer);
                let (used, data) = chunked
                    .next(input, &mut |at| trailer.extend_from_slice(&input[at]))
                    .map_err(|_| BodyError::from("the endpoint's chunked body is malformed"))?;
                if self.trailer.len() > MAX_TRAILER {
                    return Err("the endpoint's trailer section is too large".into());
                }
                let Some(at) = data else {
                    // All of it was used up (or the body ended).
                    buf.advance(used);
                    return Ok(if chunked.done() { Step::End(trailers(&self.trailer)?) } else { Step::More });
                };
                buf.advance(at.start);
                let data = buf.split_to(at.len()).freeze();
                buf.advance(used - at.end);
                Ok(Step::Data(data))
            }
        }
    }

    /// The last byte of a length-delimited body was taken.
    fn complete(&self) -> bool {
        matches!(self.decode, In::Length(0))
    }

    /// The connection closed with nothing left in the buffer: the end of a
    /// body read to the close, else a body cut off.
    fn at_close(&self) -> Result<(), BodyError> {
        match self.decode {
            In::Close => Ok(()),
            _ => Err("the endpoint closed the connection inside the body".into()),
        }
    }
}

/// An answer's body, read from its connection as the client's side takes
/// it; the connection goes to `keep` at its end when it can be reused.
struct OriginBody<K> {
    conn: Option<OriginConn>,
    buf: BytesMut,
    decoder: Decoder,
    reusable: bool,
    keep: Option<K>,
}

impl<K: FnOnce(OriginConn)> OriginBody<K> {
    /// The body was read to its end.
    fn end(&mut self) {
        let (Some(conn), Some(keep)) = (self.conn.take(), self.keep.take()) else { return };
        finish(conn, self.reusable && self.buf.is_empty(), keep);
    }
}

impl<K: FnOnce(OriginConn) + Unpin> Body for OriginBody<K> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else { return Poll::Ready(None) };
            match this.decoder.step(&mut this.buf) {
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Step::Data(data)) => {
                    if this.decoder.complete() {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End(trailers)) => {
                    this.end();
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                }
                Ok(Step::More) => {}
            }
            reserve(&mut this.buf);
            match ready!(tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut this.buf)) {
                Ok(0) => {
                    let ended = this.decoder.at_close();
                    // Never reused: the endpoint closed it.
                    this.conn = None;
                    return Poll::Ready(ended.err().map(Err));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.decode {
            In::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// An answer as [`exchange`] reads it, from `reads` (what successive reads
/// of the connection gave, then its close), for a request of `method`: the
/// status, the fields, the body, the trailers, and whether the connection
/// could carry another request; or why it failed. For fuzzing: it takes the
/// same steps in the same order.
pub fn read_answer<'a>(method: &Method, reads: impl IntoIterator<Item = &'a [u8]>) -> Result<Answer, String> {
    let mut reads = reads.into_iter();
    let mut buf = BytesMut::new();
    let (resp, framing, reusable) = loop {
        if let Some(head) = take_head(&mut buf, method).map_err(|e| e.to_string())? {
            break head;
        }
        buf.extend_from_slice(reads.next().ok_or_else(|| OriginError::Closed.to_string())?);
    };
    let mut answer = Answer {
        status: resp.status().as_u16(),
        fields: resp.headers().iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect(),
        body: Vec::new(),
        trailers: Vec::new(),
        reusable,
    };
    // Bytes beyond the answer, read with it or later (which the next
    // request's `usable` would see), close the connection.
    let Some(framing) = framing else {
        answer.reusable &= nothing_beyond(&buf, &mut reads);
        return Ok(answer);
    };
    answer.reusable &= !matches!(framing, In::Close);
    let mut decoder = Decoder::new(framing);
    loop {
        match decoder.step(&mut buf).map_err(|e| e.to_string())? {
            Step::Data(data) => {
                answer.body.extend_from_slice(&data);
                if decoder.complete() {
                    break;
                }
            }
            Step::End(trailers) => {
                answer.trailers =
                    trailers.iter().flatten().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect();
                break;
            }
            Step::More => match reads.next() {
                Some(read) => buf.extend_from_slice(read),
                None => {
                    decoder.at_close().map_err(|e| e.to_string())?;
                    answer.reusable = false;
                    return Ok(answer);
                }
            },
        }
    }
    answer.reusable &= nothing_beyond(&buf, &mut reads);
    Ok(answer)
}

/// Nothing is left beyond an answer: not in `buf`, not in the `reads` to come.
fn nothing_beyond<'a>(buf: &BytesMut, mut reads: impl Iterator<Item = &'a [u8]>) -> bool {
    buf.is_empty() && reads.all(<[u8]>::is_empty)
}

/// An answer [`read_answer`] read.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub fields: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, Vec<u8>)>,
    pub reusable: bool,
}

/// The fields of a chunked body's trailer section (`None` if it has none).
fn trailers(section: &[u8]) -> Result<Option<HeaderMap>, BodyError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let fields = match httparse::parse_headers(section, &mut headers) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err("the endpoint's trailer section is malformed".into()),
    };
    if fields.is_empty() {
        return Ok(None);
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| "a trailer field name is invalid")?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| "a trailer field value is invalid")?;
        map.append(name, value);
    }
    Ok(Some(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        net::SocketAddr,
        sync::{Arc, Mutex},
        time::Duration,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What a scripted endpoint does on each connection: read one request
    /// (its head, and a body of the length it names) and answer `answer`,
    /// written in pieces of `piece` bytes; then the next request, or a close
    /// with `close`.
    #[derive(Clone)]
    struct Script {
        answers: Vec<Vec<u8>>,
        piece: usize,
        close: bool,
        /// Answer right after the head, reading no body.
        early: bool,
    }

    impl Script {
        fn new(answers: &[&[u8]]) -> Script {
            Script {
                answers: answers.iter().map(|a| a.to_vec()).collect(),
                piece: usize::MAX,
                close: false,
                early: false,
            }
        }
    }

    /// A scripted endpoint: its address, how many connections it took, and
    /// every request it read (head and body bytes as they came).
    async fn endpoint(script: Script) -> (SocketAddr, Arc<Mutex<usize>>, Arc<Mutex<Vec<Vec<u8>>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, seen) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(Vec::new())));
        let (count, log) = (accepted.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                *count.lock().unwrap() += 1;
                let (script, log) = (script.clone(), log.clone());
                tokio::spawn(async move {
                    for answer in &script.answers {
                        let Some(req) = read_request(&mut s, script.early).await else { return };
                        log.lock().unwrap().push(req);
                        for piece in answer.chunks(script.piece.min(answer.len()).max(1)) {
                            if s.write_all(piece).await.is_err() {
                                return;
                            }
                            if script.piece != usize::MAX {
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                        }
                    }
                    if !script.close {
                        // Read whatever comes until the client goes.
                        let mut sink = vec![0u8; 64 * 1024];
                        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                    }
                });
            }
        });
        (addr, accepted, seen)
    }

    /// One request's bytes: the head, then (unless `head_only`) a
    /// `content-length` body or a chunked one up to its last chunk.
    async fn read_request(s: &mut TcpStream, head_only: bool) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            got.push(byte[0]);
        }
        if head_only {
            return Some(got);
        }
        let text = String::from_utf8_lossy(&got).to_lowercase();
        if let Some(n) = text.lines().find_map(|l| l.strip_prefix("content-length: ")) {
            let mut body = vec![0u8; n.trim().parse().unwrap()];
            s.read_exact(&mut body).await.ok()?;
            got.extend_from_slice(&body);
        } else if text.contains("transfer-encoding: chunked") {
            let mut chunked = Chunked::default();
            while !chunked.done() {
                if s.read(&mut byte).await.ok()? == 0 {
                    return None;
                }
                got.push(byte[0]);
                chunked.next(&byte, &mut |_| {}).ok()?;
            }
        }
        Some(got)
    }

    async fn connect(addr: SocketAddr) -> OriginConn {
        OriginConn::new(Io::Plain(TcpStream::connect(addr).await.unwrap()))
    }

    fn head(method: Method, headers: &[(&str, &str)]) -> Parts {
        let mut req = http::Request::builder().method(method).uri("/p?q=1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    fn empty() -> ProxyBody {
        Empty::new().map_err(|never| match never {}).boxed()
    }

    /// Where a connection handed back goes.
    type Slot = Arc<Mutex<Option<OriginConn>>>;

    fn keeper() -> (Slot, impl FnOnce(OriginConn) + Send + Sync + Unpin + 'static) {
        let slot: Slot = Arc::default();
        let to = slot.clone();
        (slot, move |c| *to.lock().unwrap() = Some(c))
    }

    /// The answer's body and trailers, or its error.
    async fn read_all(resp: Response<ProxyBody>) -> Result<(Bytes, Option<HeaderMap>), String> {
        let collected = resp.into_body().collect().await.map_err(|e| e.to_string())?;
        let trailers = collected.trailers().cloned();
        Ok((collected.to_bytes(), trailers))
    }

    /// `GET` on a new connection to an endpoint answering `answer` (in
    /// pieces of `piece`): the answer's status and headers, its body (or
    /// error), and whether the connection came back.
    async fn get(answer: &[u8], piece: usize) -> Result<(Response<()>, Result<Bytes, String>, bool), OriginError> {
        let (addr, _, _) = endpoint(Script { piece, close: true, ..Script::new(&[answer]) }).await;
        let (slot, keep) = keeper();
        let resp = exchange(connect(addr).await, &head(Method::GET, &[("host", "x")]), empty(), keep).await?;
        let (parts, body) = resp.into_parts();
        let body = read_all(Response::new(body)).await.map(|(b, _)| b);
        let kept = slot.lock().unwrap().is_some();
        Ok((Response::from_parts(parts, ()), body, kept))
    }

    #[tokio::test]
    async fn answers_of_every_framing_are_read_whole_however_they_arrive() {
        let answers: [(&[u8], &str, bool); 5] = [
            (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", "hello", true),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1 \r\n!\r\n0\r\n\r\n",
                "hello!",
                true,
            ),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc", "abc", true),
            // To the close: not reused.
            (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", "until the end", false),
            (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", "ok", false),
        ];
        for (answer, body, reused) in answers {
            for piece in [usize::MAX, 7, 1] {
                let close = !reused;
                let (addr, _, _) = endpoint(Script { piece, close, ..Script::new(&[answer]) }).await;
                let (slot, keep) = keeper();
                let resp = exchange(connect(addr).await, &head(Method::GET, &[("host", "x")]), empty(), keep)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(answer)));
                assert_eq!(resp.status(), 200);
                assert_eq!(read_all(resp).await.unwrap().0, body, "in pieces of {piece}");
                assert_eq!(slot.lock().unwrap().is_some(), reused, "{}", String::from_utf8_lossy(answer));
            }
        }
    }

    #[tokio::test]
    async fn a_kept_connection_carries_the_next_request() {
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n1",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\n2\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ];
        let (addr, accepted, _) = endpoint(Script::new(&answers)).await;
        let mut conn = connect(addr).await;
        for want in ["1", "2", ""] {
            assert!(conn.usable());
            let (slot, keep) = keeper();
            let resp = exchange(conn, &head(Method::GET, &[("host", "x")]), empty(), keep).await.unwrap();
            assert_eq!(read_all(resp).await.unwrap().0, want);
            conn = slot.lock().unwrap().take().expect("handed back");
            assert!(conn.reused());
        }
        assert_eq!(*accepted.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn answers_without_a_body_have_none_whatever_they_say() {
        // HEAD, 204 and 304 carry no body, even with a length.
        let (addr, _, _) = endpoint(Script::new(&[
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ]))
        .await;
        let mut conn = connect(addr).await;
        for (method, status, body) in [(Method::HEAD, 200, ""), (Method::GET, 304, ""), (Method::GET, 200, "ok")] {
            let (slot, keep) = keeper();
            let resp = exchange(conn, &head(method, &[("host", "x")]), empty(), keep).await.unwrap();
            assert_eq!(resp.status(), status);
            if status == 200 && body.is_empty() {
                assert_eq!(resp.headers()["content-length"], "10", "a HEAD answer keeps its length");
            }
            assert_eq!(read_all(resp).await.unwrap().0, body);
            conn = slot.lock().unwrap().take().expect("handed back");
        }
    }

    #[tokio::test]
    async fn interim_answers_are_skipped_and_trailers_kept() {
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
            HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-sum: 42\r\n\r\n";
        for piece in [usize::MAX, 3] {
            let (addr, _, _) = endpoint(Script { piece, ..Script::new(&[answer]) }).await;
            let (slot, keep) = keeper();
            let resp =
                exchange(connect(addr).await, &head(Method::GET, &[("host", "x")]), empty(), keep).await.unwrap();
            assert_eq!(resp.status(), 200);
            assert!(!resp.headers().contains_key("link"));
            let (body, trailers) = read_all(resp).await.unwrap();
            assert_eq!(body, "ok");
            assert_eq!(trailers.expect("trailers")["x-sum"], "42");
            assert!(slot.lock().unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn hostile_answer_heads_fail_the_exchange() {
        let heads: [&[u8]; 9] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            // Checked where no body follows too: it is passed on.
            b"HTTP/1.1 204 No Content\r\ncontent-length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\nabcd",
            b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\nabc",
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: folded\r\n  over two lines\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        ];
        for answer in heads {
            let got = get(answer, usize::MAX).await;
            assert!(
                matches!(got, Err(OriginError::Malformed(_))),
                "{}: {:?}",
                String::from_utf8_lossy(answer),
                got.map(|(r, b, k)| (r.status(), b, k))
            );
        }
        // A head that never ends.
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        endless.extend(std::iter::repeat_n(b"x-filler: 0123456789abcdef0123456789\r\n".as_slice(), 2500).flatten());
        assert!(matches!(get(&endless, usize::MAX).await, Err(OriginError::Malformed(_) | OriginError::Closed)));
        // Closed before a whole head came.
        assert!(matches!(get(b"HTTP/1.1 200 O", usize::MAX).await, Err(OriginError::Closed)));
    }

    #[tokio::test]
    async fn hostile_answer_bodies_fail_and_close_the_connection() {
        let bodies: [&[u8]; 6] = [
            // Not hex, too many digits, no CRLF after the data, bare LF.
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000000\r\nx\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
            // Cut off inside the body.
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhel",
        ];
        for answer in bodies {
            for piece in [usize::MAX, 1] {
                let (addr, _, _) = endpoint(Script { piece, close: true, ..Script::new(&[answer]) }).await;
                let (slot, keep) = keeper();
                let resp = exchange(connect(addr).await, &head(Method::GET, &[("host", "x")]), empty(), keep).await;
                let resp =
                    resp.unwrap_or_else(|e| panic!("{}: the head is fine: {e}", String::from_utf8_lossy(answer)));
                assert!(read_all(resp).await.is_err(), "{}", String::from_utf8_lossy(answer));
                assert!(slot.lock().unwrap().is_none(), "a broken answer's connection is closed");
            }
        }
    }

    #[tokio::test]
    async fn ambiguous_or_unreusable_answers_are_read_but_not_reused() {
        // Chunked wins over a length, which is dropped (RFC 9112 §6.3).
        let (resp, body, kept) =
            get(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 1)
                .await
                .unwrap();
        assert_eq!(body.unwrap(), "ok");
        assert!(!resp.headers().contains_key("content-length"));
        assert!(!kept);
        // A coding other than chunked last: to the close.
        let (_, body, kept) = get(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nraw", usize::MAX).await.unwrap();
        assert_eq!(body.unwrap(), "raw");
        assert!(!kept);
        // HTTP/1.0 and bytes after the answer.
        for answer in [
            b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok".as_slice(),
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",
        ] {
            let (_, body, kept) = get(answer, usize::MAX).await.unwrap();
            assert_eq!(body.unwrap(), "ok");
            assert!(!kept, "{}", String::from_utf8_lossy(answer));
        }
    }

    #[tokio::test]
    async fn request_bodies_go_out_framed() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let (addr, _, seen) = endpoint(Script::new(&[ok, ok, ok])).await;
        let mut conn = connect(addr).await;
        // A length the client gave; a stream of unknown length (chunked);
        // an empty POST (a zero length).
        let mut sum = HeaderMap::new();
        sum.insert("x-sum", HeaderValue::from_static("5"));
        let frames = ["ab", "", "cde"].map(|s| Frame::data(Bytes::from_static(s.as_bytes())));
        let stream =
            futures_util::stream::iter(frames.into_iter().chain([Frame::trailers(sum)]).map(Ok::<_, BodyError>));
        let bodies: [(Parts, ProxyBody); 3] = [
            (
                head(Method::PUT, &[("host", "x"), ("content-length", "5")]),
                Full::new(Bytes::from_static(b"hello")).map_err(|never| match never {}).boxed(),
            ),
            (head(Method::POST, &[("host", "x")]), http_body_util::StreamBody::new(stream).boxed()),
            (head(Method::POST, &[("host", "x")]), empty()),
        ];
        for (parts, body) in bodies {
            let (slot, keep) = keeper();
            let resp = exchange(conn, &parts, body, keep).await.unwrap();
            assert_eq!(resp.status(), 200);
            conn = slot.lock().unwrap().take().expect("handed back");
        }
        let seen: Vec<String> = seen.lock().unwrap().iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect();
        assert_eq!(seen[0], "PUT /p?q=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello");
        assert_eq!(
            seen[1],
            "POST /p?q=1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\nx-sum: 5\r\n\r\n"
        );
        assert_eq!(seen[2], "POST /p?q=1 HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n");
    }

    #[tokio::test]
    async fn a_body_that_breaks_its_length_fails_the_exchange() {
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        for text in ["hell", "hello!"] {
            let (addr, _, _) = endpoint(Script::new(&[ok])).await;
            let parts = head(Method::PUT, &[("host", "x"), ("content-length", "5")]);
            let body = Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed();
            let got = exchange(connect(addr).await, &parts, body, |_| {}).await;
            assert!(matches!(got, Err(OriginError::Body(_))), "{text:?}: {got:?}");
        }
    }

    #[tokio::test]
    async fn an_early_answer_ends_the_upload() {
        let (addr, _, _) = endpoint(Script {
            early: true,
            ..Script::new(&[b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 3\r\n\r\nbig"])
        })
        .await;
        // 256 MiB, far more than the socket buffers hold.
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::iter((0..4096).map(move |_| Ok::<_, BodyError>(Frame::data(chunk.clone()))));
        let (slot, keep) = keeper();
        let resp = tokio::time::timeout(
            Duration::from_secs(10),
            exchange(
                connect(addr).await,
                &head(Method::POST, &[("host", "x")]),
                http_body_util::StreamBody::new(stream).boxed(),
                keep,
            ),
        )
        .await
        .expect("the answer ends the upload")
        .unwrap();
        assert_eq!(resp.status(), 413);
        assert_eq!(read_all(resp).await.unwrap().0, "big");
        assert!(slot.lock().unwrap().is_none(), "the request did not go whole: not reused");
    }

    #[tokio::test]
    async fn a_kept_connection_closed_unanswered_says_so() {
        // Answers once, then closes after reading the second request.
        let (addr, _, _) =
            endpoint(Script { close: true, ..Script::new(&[b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]) }).await;
        let (slot, keep) = keeper();
        let resp = exchange(connect(addr).await, &head(Method::GET, &[("host", "x")]), empty(), keep).await.unwrap();
        read_all(resp).await.unwrap();
        let conn = slot.lock().unwrap().take().unwrap();
        let got = exchange(conn, &head(Method::GET, &[("host", "x")]), empty(), |_| {}).await;
        assert!(matches!(got, Err(OriginError::ClosedUnanswered)), "{got:?}");
        // A new connection that closes (or resets) unanswered just failed.
        let (addr, _, _) = endpoint(Script { close: true, ..Script::new(&[]) }).await;
        let got = exchange(connect(addr).await, &head(Method::GET, &[("host", "x")]), empty(), |_| {}).await;
        assert!(matches!(got, Err(OriginError::Closed | OriginError::Read(_))), "{got:?}");
    }
}
