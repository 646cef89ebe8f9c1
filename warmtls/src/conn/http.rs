//! HTTP/1.x between a device and a backend (`backend_protocol = "http"`): where
//! each request and each response ends, the heads rewritten on the way, and
//! whether the backend connection may carry the next device's request.
//!
//! [`Http`] owns the HTTP side of one device connection: the device's plaintext
//! not yet forwarded, a response head being assembled, and — for a request that
//! arrived as TLS 1.3 0-RTT — a copy to send again after a `425 Too Early`
//! (RFC 8470). It never touches a socket or TLS: the connection machine
//! (`conn::Conn`) feeds it bytes and carries out what it decides. One request
//! is in flight at a time: a device's pipelined request waits, unread, until
//! the response before it is complete.
//!
//! It must never forward a request it could not parse (the device gets a 4xx
//! and the connection closes), never let a header a device sent decide where a
//! message ends other than as RFC 9112 §6 says (Transfer-Encoding together with
//! Content-Length, differing lengths, or a transfer coding other than chunked
//! are refused, not guessed), and never pass on the headers it vouches for
//! (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, `Early-Data`, `X-TLS-Resumed`)
//! from a device.
use std::io::Write;
use std::net::IpAddr;

/// Largest request or response head (request line or status line and header
/// fields), bytes; a request head past it is refused with 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header fields in a request; more is refused with 431.
pub const MAX_REQUEST_HEADERS: usize = 64;
/// Most header fields in a backend's response; more is a 502.
pub const MAX_RESPONSE_HEADERS: usize = 128;
/// The most bytes of a 0-RTT request kept to send again after a `425 Too
/// Early`; a longer request's 425 goes to the device (RFC 8470 §5.2).
pub const MAX_REPLAY: usize = 16 * 1024;
/// Longest chunk-size line or trailer line of a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Why a device's request was refused; the device gets [`RequestError::status`]
/// and the connection closes. Nothing of the request reaches the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not an HTTP/1.0 or HTTP/1.1 request, or a field that breaks RFC 9112.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// A head longer than [`MAX_HEAD`].
    #[error("request head longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// More than [`MAX_REQUEST_HEADERS`] header fields.
    #[error("more than {MAX_REQUEST_HEADERS} header fields")]
    TooManyHeaders,
    /// A transfer coding other than `chunked`, or the CONNECT method.
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
}

impl RequestError {
    /// The status the device gets.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Malformed(_) => 400,
            RequestError::HeadTooLarge | RequestError::TooManyHeaders => 431,
            RequestError::NotImplemented(_) => 501,
        }
    }
}

/// Why a backend's response could not be relayed; the device gets a 502 if
/// nothing of the response reached it yet, else a truncated answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Bytes that are not an HTTP/1.x response (the reason).
    #[error("malformed response from the backend: {0}")]
    Malformed(&'static str),
    /// A response head longer than `MAX_HEAD`.
    #[error("response head longer than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// More header fields than `MAX_RESPONSE_HEADERS`.
    #[error("more than {MAX_RESPONSE_HEADERS} response header fields")]
    TooManyHeaders,
    /// `101 Switching Protocols`: warmtls does not pass upgrades on, so the
    /// backend had no upgrade to accept.
    #[error("101 Switching Protocols to a request that offered no upgrade")]
    UnaskedUpgrade,
    /// The backend closed before the response was complete.
    #[error("the backend closed before its response was complete")]
    Truncated,
}

/// What the endpoint vouches for in the request heads it forwards.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding {
    /// The device's address (`X-Forwarded-For`), when the driver knows it.
    pub client: Option<IpAddr>,
    /// `X-TLS-Resumed: 1|0`, when configured.
    pub resumed: Option<bool>,
    /// The head is forwarded before the TLS handshake completed (0-RTT):
    /// `Early-Data: 1`.
    pub early: bool,
}

/// Where a message body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the backend closes (responses only).
    UntilClose,
}

/// Progress through a chunked body (RFC 9112 §7.1). Bytes pass through
/// unchanged; only the boundaries are tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// At the start of a chunk-size line.
    SizeStart,
    /// In the size's hex digits.
    Size {
        value: u64,
        digits: u8,
        line: usize,
    },
    /// After the size: whitespace or an extension until CR.
    Ext {
        value: u64,
        line: usize,
    },
    /// The LF ending the size line.
    SizeLf {
        value: u64,
    },
    /// Chunk data still to come.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer {
        line: usize,
    },
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    Done,
}

impl Chunked {
    /// Consume `input` up to the end of the body; how many bytes belong to it.
    fn scan(&mut self, input: &[u8]) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < input.len() && *self != Chunked::Done {
            if let Chunked::Data(left) = *self {
                let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                i += n;
                let left = left - n as u64;
                *self = if left == 0 {
                    Chunked::DataCr
                } else {
                    Chunked::Data(left)
                };
                continue;
            }
            let b = input[i];
            i += 1;
            *self = match *self {
                Chunked::SizeStart => match hex(b) {
                    Some(d) => Chunked::Size {
                        value: u64::from(d),
                        digits: 1,
                        line: 1,
                    },
                    None => return Err("chunk size is not hexadecimal"),
                },
                Chunked::Size {
                    value,
                    digits,
                    line,
                } => match (hex(b), b) {
                    (Some(d), _) => {
                        if digits >= 15 {
                            return Err("chunk size too large");
                        }
                        Chunked::Size {
                            value: value << 4 | u64::from(d),
                            digits: digits + 1,
                            line: line + 1,
                        }
                    }
                    (None, b';' | b' ' | b'\t') => Chunked::Ext {
                        value,
                        line: line + 1,
                    },
                    (None, b'\r') => Chunked::SizeLf { value },
                    _ => return Err("bad chunk size line"),
                },
                Chunked::Ext { value, line } => match b {
                    b'\r' => Chunked::SizeLf { value },
                    b'\n' => return Err("bare LF in a chunk size line"),
                    _ if line >= MAX_CHUNK_LINE => return Err("chunk extension too long"),
                    _ => Chunked::Ext {
                        value,
                        line: line + 1,
                    },
                },
                Chunked::SizeLf { value } => match b {
                    b'\n' if value == 0 => Chunked::TrailerStart,
                    b'\n' => Chunked::Data(value),
                    _ => return Err("chunk size line not ended by CRLF"),
                },
                Chunked::DataCr => match b {
                    b'\r' => Chunked::DataLf,
                    _ => return Err("chunk data not followed by CRLF"),
                },
                Chunked::DataLf => match b {
                    b'\n' => Chunked::SizeStart,
                    _ => return Err("chunk data not followed by CRLF"),
                },
                Chunked::TrailerStart => match b {
                    b'\r' => Chunked::EndLf,
                    b'\n' => return Err("bare LF in trailers"),
                    _ => Chunked::Trailer { line: 1 },
                },
                Chunked::Trailer { line } => match b {
                    b'\r' => Chunked::TrailerLf,
                    b'\n' => return Err("bare LF in a trailer"),
                    _ if line >= MAX_CHUNK_LINE => return Err("trailer line too long"),
                    _ => Chunked::Trailer { line: line + 1 },
                },
                Chunked::TrailerLf => match b {
                    b'\n' => Chunked::TrailerStart,
                    _ => return Err("trailer not ended by CRLF"),
                },
                Chunked::EndLf => match b {
                    b'\n' => Chunked::Done,
                    _ => return Err("chunked body not ended by CRLF"),
                },
                Chunked::Data(_) | Chunked::Done => unreachable!("handled above"),
            };
        }
        Ok(i)
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Body {
    /// Consume `input` up to the end of the body: (bytes of it, body complete).
    fn scan(&mut self, input: &[u8]) -> Result<(usize, bool), &'static str> {
        match self {
            Body::Length(left) => {
                let n = (input.len() as u64).min(*left) as usize;
                *left -= n as u64;
                Ok((n, *left == 0))
            }
            Body::Chunked(c) => {
                let n = c.scan(input)?;
                Ok((n, *c == Chunked::Done))
            }
            Body::UntilClose => Ok((input.len(), false)),
        }
    }
}

/// The request side of the exchange in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// Waiting for a whole request head.
    Head,
    /// Head forwarded; the body is being forwarded.
    Body(Body),
    /// Forwarded whole.
    Done,
}

/// The response side of the exchange in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Response {
    /// Waiting for a (final) response head.
    Head,
    /// Relaying the body.
    Body(Body),
    /// Discarding the body of a `425 Too Early` that will be retried.
    Discard(Body),
}

/// What the request head said, for the response and the connection's fate.
#[derive(Debug, Clone, Copy, Default)]
struct Asked {
    /// HEAD: the response has no body whatever its headers say.
    head_method: bool,
    /// HTTP/1.0 (else 1.1).
    http10: bool,
    /// The device wants to keep its connection after this exchange.
    keep_alive: bool,
    /// Forwarded with `Early-Data: 1`.
    early: bool,
}

/// How a response ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// Relayed whole. `backend_reusable`: the backend may take another request
    /// on this connection; `device_continues`: the device may send another.
    Relayed {
        /// The backend may take another request on this connection.
        backend_reusable: bool,
        /// The device may send another request on its connection.
        device_continues: bool,
    },
    /// A `425 Too Early` to a 0-RTT request, not relayed: send the request again
    /// (without `Early-Data`) once the handshake is complete.
    TooEarly {
        /// The backend may take another request on this connection.
        backend_reusable: bool,
    },
}

/// The HTTP side of one device connection.
#[derive(Debug)]
pub struct Http {
    /// Device plaintext not yet forwarded (a head being assembled, or the next
    /// request waiting for the response before it).
    inbox: Vec<u8>,
    /// Backend bytes of a response head not yet whole.
    head: Vec<u8>,
    /// A 0-RTT request as the device sent it, to send again after a 425;
    /// `None` once it outgrew [`MAX_REPLAY`] (or for other requests).
    replay: Option<Vec<u8>>,
    request: Request,
    response: Response,
    asked: Asked,
    /// Bytes of the current response passed to the device (a 502 can only
    /// replace a response none of which was sent).
    relayed: usize,
    /// The backend sent bytes for the current exchange.
    answered: bool,
    /// The response to tell the device `Connection: close` on (decided with
    /// its head).
    device_continues: bool,
    backend_reusable: bool,
}

impl Default for Http {
    fn default() -> Http {
        Http {
            inbox: Vec::new(),
            head: Vec::new(),
            replay: None,
            request: Request::Head,
            response: Response::Head,
            asked: Asked::default(),
            relayed: 0,
            answered: false,
            device_continues: false,
            backend_reusable: false,
        }
    }
}

impl Http {
    /// Where device plaintext goes before it is framed (a pooled buffer, taken
    /// on first use).
    pub fn inbox(&mut self, pool: &mut super::BufPool) -> &mut Vec<u8> {
        if self.inbox.capacity() == 0 {
            self.inbox = pool.take();
        }
        &mut self.inbox
    }

    /// Device bytes waiting to be framed.
    pub fn inbox_len(&self) -> usize {
        self.inbox.len()
    }

    /// A request head was forwarded and its response is not complete: the
    /// exchange needs a backend connection.
    pub fn in_exchange(&self) -> bool {
        self.request != Request::Head
    }

    /// The request was forwarded whole and its response is awaited: nothing
    /// more is read from the device until then.
    pub fn awaiting_response(&self) -> bool {
        self.request == Request::Done
    }

    /// Bytes of the current response already passed to the device.
    pub fn relayed(&self) -> usize {
        self.relayed
    }

    /// The backend has sent something for the current exchange.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// Between exchanges, nothing buffered: a device EOF here is a clean end.
    pub fn idle(&self) -> bool {
        self.request == Request::Head && self.inbox.is_empty()
    }

    /// The current request was forwarded with `Early-Data: 1` and can be sent
    /// again after a 425.
    pub fn replayable(&self) -> bool {
        self.asked.early && self.replay.is_some()
    }

    /// Give back the buffers (the connection is done).
    pub fn release(&mut self, pool: &mut super::BufPool) {
        pool.give(std::mem::take(&mut self.inbox));
        // Not from the pool (sized for one head): dropped, so the pool keeps
        // only buffers of a full record.
        self.head = Vec::new();
        self.replay = None;
    }

    /// Frame what the inbox holds of the current request into `out` (bound for
    /// the backend): a whole head is checked, rewritten and forwarded, body
    /// bytes follow as they come. Stops at the end of the request; bytes after
    /// it wait for the next exchange.
    pub fn frame_request(
        &mut self,
        out: &mut Vec<u8>,
        fwd: &Forwarding,
    ) -> Result<(), RequestError> {
        let mut used = 0;
        if self.request == Request::Head {
            match self.parse_request_head(out, fwd)? {
                None => return Ok(()),
                Some(n) => used = n,
            }
        }
        if let Request::Body(mut body) = self.request {
            let (n, done) = body
                .scan(&self.inbox[used..])
                .map_err(RequestError::Malformed)?;
            out.extend_from_slice(&self.inbox[used..used + n]);
            used += n;
            self.request = if done {
                Request::Done
            } else {
                Request::Body(body)
            };
        }
        if let Some(r) = &mut self.replay {
            if r.len() + used <= MAX_REPLAY {
                r.extend_from_slice(&self.inbox[..used]);
            } else {
                self.replay = None;
            }
        }
        self.inbox.drain(..used);
        Ok(())
    }

    /// Parse a whole request head at the start of the inbox and write it,
    /// rewritten, to `out`; `None` if it is not whole yet.
    fn parse_request_head(
        &mut self,
        out: &mut Vec<u8>,
        fwd: &Forwarding,
    ) -> Result<Option<usize>, RequestError> {
        // Lenient to nothing: a device must send CRLF-terminated lines; a
        // leading empty line (RFC 9112 §2.2) is tolerated.
        let start = leading_crlfs(&self.inbox);
        let mut headers = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let len = match req.parse(&self.inbox[start..]) {
            Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
                return Err(RequestError::HeadTooLarge)
            }
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if self.inbox.len() > MAX_HEAD => {
                return Err(RequestError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
            Err(e) => return Err(RequestError::Malformed(parse_error(e))),
        };
        let method = req.method.unwrap_or_default();
        let http10 = req.version == Some(0);
        if method == "CONNECT" {
            return Err(RequestError::NotImplemented("CONNECT"));
        }
        let f = Fields::of(req.headers).map_err(RequestError::Malformed)?;
        let body = match (f.transfer_encoding, f.content_length) {
            (Some(_), Some(_)) => {
                return Err(RequestError::Malformed(
                    "both Transfer-Encoding and Content-Length",
                ))
            }
            (Some(_), None) if http10 => {
                return Err(RequestError::Malformed("Transfer-Encoding in HTTP/1.0"))
            }
            (Some(Coding::Chunked), None) => Body::Chunked(Chunked::SizeStart),
            (Some(Coding::Other), None) => {
                return Err(RequestError::NotImplemented(
                    "a transfer coding other than chunked",
                ))
            }
            (None, Some(0)) | (None, None) => Body::Length(0),
            (None, Some(n)) => Body::Length(n),
        };
        if f.hosts > 1 {
            return Err(RequestError::Malformed("more than one Host"));
        }
        self.asked = Asked {
            head_method: method == "HEAD",
            http10,
            keep_alive: !f.close && (!http10 || f.keep_alive),
            early: fwd.early,
        };
        // The request line as the device wrote it, then its fields without the
        // ones that are ours to set or that concern only the device's hop.
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.path.unwrap_or("/").as_bytes());
        out.extend_from_slice(if http10 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        for h in req.headers.iter() {
            if request_field_is_ours(h.name) || f.named_by_connection(h.name) {
                continue;
            }
            put_field(out, h.name.as_bytes(), h.value);
        }
        if let Some(ip) = fwd.client {
            let _ = write!(out, "X-Forwarded-For: {ip}\r\n");
        }
        out.extend_from_slice(b"X-Forwarded-Proto: https\r\n");
        if let Some(r) = fwd.resumed {
            out.extend_from_slice(if r {
                b"X-TLS-Resumed: 1\r\n"
            } else {
                b"X-TLS-Resumed: 0\r\n"
            });
        }
        if fwd.early {
            out.extend_from_slice(b"Early-Data: 1\r\n");
        }
        if http10 {
            // An HTTP/1.0 request asks for a persistent backend connection only
            // this way; backends answer it with a length, never chunked.
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        self.request = match body {
            Body::Length(0) => Request::Done,
            b => Request::Body(b),
        };
        self.response = Response::Head;
        self.relayed = 0;
        self.answered = false;
        self.replay = fwd.early.then(Vec::new);
        Ok(Some(start + len))
    }

    /// Backend bytes of the current response: append what goes to the device
    /// (heads rewritten) to `device`, so a head and the body behind it leave in
    /// one TLS record. `Ok(Some(..))` once the response is complete; bytes
    /// after it are a backend fault ([`ResponseError::Malformed`]).
    pub fn frame_response(
        &mut self,
        mut bytes: &[u8],
        device: &mut Vec<u8>,
    ) -> Result<Option<Completed>, ResponseError> {
        if !bytes.is_empty() {
            self.answered = true;
        }
        while !bytes.is_empty() {
            match self.response {
                Response::Head => {
                    let consumed = self.parse_response_head(bytes, device)?;
                    bytes = &bytes[consumed..];
                    if let Some(done) = self.complete_if_empty_body() {
                        return if bytes.is_empty() {
                            Ok(Some(done))
                        } else {
                            Err(ResponseError::Malformed("bytes after the response"))
                        };
                    }
                }
                Response::Body(mut body) | Response::Discard(mut body) => {
                    let discard = matches!(self.response, Response::Discard(_));
                    let (n, done) = body.scan(bytes).map_err(ResponseError::Malformed)?;
                    if !discard {
                        device.extend_from_slice(&bytes[..n]);
                        self.relayed += n;
                    }
                    bytes = &bytes[n..];
                    if !done {
                        self.response = if discard {
                            Response::Discard(body)
                        } else {
                            Response::Body(body)
                        };
                        continue;
                    }
                    if !bytes.is_empty() {
                        return Err(ResponseError::Malformed("bytes after the response"));
                    }
                    return Ok(Some(self.finish(discard)));
                }
            }
        }
        Ok(None)
    }

    /// The backend closed its side: the end of a response delimited by the
    /// close, else a truncation (`Err`).
    pub fn backend_eof(&mut self) -> Result<Completed, ResponseError> {
        match self.response {
            Response::Body(Body::UntilClose) => {
                self.backend_reusable = false;
                Ok(self.finish(false))
            }
            _ => Err(ResponseError::Truncated),
        }
    }

    /// Start over on the current request without `Early-Data` (after a 425 and
    /// the handshake's completion): the device's bytes go back in front of the
    /// inbox. Returns false if there is no copy to send.
    pub fn rewind_for_retry(&mut self) -> bool {
        let Some(replay) = self.replay.take() else {
            return false;
        };
        // Keep the inbox's (pooled) buffer: the copy goes in front of what it holds.
        self.inbox.splice(0..0, replay);
        self.request = Request::Head;
        self.response = Response::Head;
        self.asked = Asked::default();
        true
    }

    /// Done with this exchange: the next request may be framed.
    pub fn next_exchange(&mut self) {
        self.request = Request::Head;
        self.response = Response::Head;
        self.asked = Asked::default();
        self.replay = None;
        self.relayed = 0;
        self.answered = false;
    }

    fn complete_if_empty_body(&mut self) -> Option<Completed> {
        match self.response {
            Response::Body(Body::Length(0)) => Some(self.finish(false)),
            Response::Discard(Body::Length(0)) => Some(self.finish(true)),
            _ => None,
        }
    }

    fn finish(&mut self, discarded: bool) -> Completed {
        // A backend that answered before the whole request was sent keeps
        // waiting for the rest of it: it cannot take another request.
        let backend_reusable = self.backend_reusable && self.request == Request::Done;
        self.response = Response::Head;
        if discarded {
            return Completed::TooEarly { backend_reusable };
        }
        Completed::Relayed {
            backend_reusable,
            device_continues: self.device_continues && self.request == Request::Done,
        }
    }

    /// Assemble and parse a response head; relay it rewritten (or, for a
    /// retried 425, not at all). Returns how many of `bytes` it used.
    fn parse_response_head(
        &mut self,
        bytes: &[u8],
        device: &mut Vec<u8>,
    ) -> Result<usize, ResponseError> {
        let before = self.head.len();
        if self.head.capacity() == 0 {
            self.head.reserve(MAX_HEAD.min(bytes.len().max(512)));
        }
        self.head.extend_from_slice(bytes);
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(&self.head) {
            Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
                return Err(ResponseError::HeadTooLarge)
            }
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if self.head.len() > MAX_HEAD => {
                return Err(ResponseError::HeadTooLarge)
            }
            Ok(httparse::Status::Partial) => return Ok(bytes.len()),
            Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyHeaders),
            Err(e) => return Err(ResponseError::Malformed(parse_error(e))),
        };
        let code = resp.code.unwrap_or(0);
        let http10 = resp.version == Some(0);
        let f = Fields::of(resp.headers).map_err(ResponseError::Malformed)?;
        let used = len - before;
        if code == 101 {
            return Err(ResponseError::UnaskedUpgrade);
        }
        let interim = (100..200).contains(&code);
        // RFC 9112 §6.3, in its order.
        let body = if interim || self.asked.head_method || code == 204 || code == 304 {
            Body::Length(0)
        } else {
            match (f.transfer_encoding, f.content_length) {
                (Some(Coding::Chunked), _) => Body::Chunked(Chunked::SizeStart),
                (Some(Coding::Other), _) => Body::UntilClose,
                (None, Some(n)) => Body::Length(n),
                (None, None) => Body::UntilClose,
            }
        };
        let retry = code == 425 && self.replayable();
        if !interim {
            // Both framings at once may be a smuggling attempt: relay by
            // Transfer-Encoding as RFC 9112 §6.3 says, then close.
            let ambiguous = f.transfer_encoding.is_some() && f.content_length.is_some();
            self.backend_reusable =
                body != Body::UntilClose && !ambiguous && !f.close && (!http10 || f.keep_alive);
            self.device_continues = self.asked.keep_alive
                && body != Body::UntilClose
                && self.request == Request::Done
                && !retry;
        }
        if !retry {
            let before = device.len();
            let out = device;
            out.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
            let _ = write!(out, "{code:03} {}\r\n", resp.reason.unwrap_or(""));
            for h in resp.headers.iter() {
                if response_field_is_ours(h.name) || f.named_by_connection(h.name) {
                    continue;
                }
                put_field(out, h.name.as_bytes(), h.value);
            }
            if !interim {
                if !self.device_continues {
                    out.extend_from_slice(b"Connection: close\r\n");
                } else if self.asked.http10 {
                    out.extend_from_slice(b"Connection: keep-alive\r\n");
                }
            }
            out.extend_from_slice(b"\r\n");
            self.relayed += out.len() - before;
        }
        self.head.clear();
        self.response = if interim {
            Response::Head
        } else if retry {
            Response::Discard(body)
        } else {
            Response::Body(body)
        };
        Ok(used)
    }
}

/// A whole response warmtls makes itself: `status` with a one-line body, and
/// `Connection: close` (the connection ends after it).
pub fn error_response(status: u16) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    )
    .into_bytes()
}

fn leading_crlfs(b: &[u8]) -> usize {
    let mut i = 0;
    while b[i..].starts_with(b"\r\n") {
        i += 2;
    }
    i
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header field name",
        httparse::Error::HeaderValue => "invalid header field value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in the request line",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "not HTTP/1.0 or HTTP/1.1",
    }
}

/// Write one header field.
fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Fields a device may not send on: hop-by-hop ones (RFC 9110 §7.6.1) and the
/// ones warmtls sets and vouches for.
fn request_field_is_ours(name: &str) -> bool {
    hop_by_hop(name)
        || name.eq_ignore_ascii_case("te")
        || name.eq_ignore_ascii_case("upgrade")
        || name.eq_ignore_ascii_case("early-data")
        || name.eq_ignore_ascii_case("forwarded")
        || name.eq_ignore_ascii_case("x-real-ip")
        || name.eq_ignore_ascii_case("x-tls-resumed")
        || (name.len() >= 12 && name[..12].eq_ignore_ascii_case("x-forwarded-"))
}

/// Response fields that concern only the backend's hop.
fn response_field_is_ours(name: &str) -> bool {
    hop_by_hop(name) || name.eq_ignore_ascii_case("upgrade")
}

fn hop_by_hop(name: &str) -> bool {
    name.eq_ignore_ascii_case("connection")
        || name.eq_ignore_ascii_case("keep-alive")
        || name.eq_ignore_ascii_case("proxy-connection")
}

/// A message's transfer coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    /// `chunked` alone.
    Chunked,
    /// Anything else (another coding, or one layered under chunked).
    Other,
}

/// What a head's fields say about framing and persistence.
struct Fields<'h> {
    transfer_encoding: Option<Coding>,
    content_length: Option<u64>,
    close: bool,
    keep_alive: bool,
    hosts: usize,
    /// The `Connection` values (names of more hop-by-hop fields).
    connection: [&'h [u8]; 4],
}

impl<'h> Fields<'h> {
    fn of(headers: &'h [httparse::Header<'h>]) -> Result<Fields<'h>, &'static str> {
        let mut f = Fields {
            transfer_encoding: None,
            content_length: None,
            close: false,
            keep_alive: false,
            hosts: 0,
            connection: [&[]; 4],
        };
        let mut connections = 0;
        for h in headers {
            let v = trim(h.value);
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Several fields are one list; only `chunked` alone is chunked.
                let coding = if f.transfer_encoding.is_none() && v.eq_ignore_ascii_case(b"chunked")
                {
                    Coding::Chunked
                } else {
                    Coding::Other
                };
                f.transfer_encoding = Some(coding);
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n = parse_length(v).ok_or("invalid Content-Length")?;
                if f.content_length.is_some_and(|m| m != n) {
                    return Err("differing Content-Length values");
                }
                f.content_length = Some(n);
            } else if h.name.eq_ignore_ascii_case("host") {
                f.hosts += 1;
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in v.split(|&b| b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        f.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        f.keep_alive = true;
                    } else if !token.is_empty() && connections < f.connection.len() {
                        f.connection[connections] = token;
                        connections += 1;
                    }
                }
            }
        }
        Ok(f)
    }

    /// Whether `Connection` named this field as hop-by-hop. Framing fields and
    /// Host are never dropped this way: a device must not make the backend
    /// read a body differently from warmtls.
    fn named_by_connection(&self, name: &str) -> bool {
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("host")
        {
            return false;
        }
        self.connection
            .iter()
            .any(|t| !t.is_empty() && t.eq_ignore_ascii_case(name.as_bytes()))
    }
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// A Content-Length: decimal digits only, at most 18 of them.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd() -> Forwarding {
        Forwarding {
            client: Some("192.0.2.7".parse().unwrap()),
            resumed: Some(true),
            early: false,
        }
    }

    /// Feed `device` bytes in pieces of `step`; the bytes for the backend.
    fn request(device: &[u8], step: usize) -> Result<(Http, Vec<u8>), RequestError> {
        let mut pool = crate::conn::BufPool::new(4, 0);
        let mut h = Http::default();
        let mut out = Vec::new();
        for piece in device.chunks(step.max(1)) {
            h.inbox(&mut pool).extend_from_slice(piece);
            h.frame_request(&mut out, &fwd())?;
        }
        Ok((h, out))
    }

    #[test]
    fn forwarded_heads_carry_our_fields_and_none_of_the_devices() {
        let dev = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\nx-forwarded-proto: http\r\nEarly-Data: 1\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-TLS-Resumed: 0\r\nConnection: X-Custom, keep-alive\r\nX-Custom: drop\r\nUser-Agent: d\r\n\r\n";
        for step in [1, 3, dev.len()] {
            let (h, out) = request(dev, step).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: d\r\nX-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-TLS-Resumed: 1\r\n\r\n"
            );
            assert!(h.awaiting_response());
        }
    }

    #[test]
    fn bodies_by_length_and_chunked_pass_byte_exact_and_stop_at_their_end() {
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let body_at = chunked.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let next_at = chunked.len() - b"GET /next HTTP/1.1\r\n\r\n".len();
        for step in [1, 2, 7, chunked.len()] {
            let (h, out) = request(chunked, step).unwrap();
            assert!(out.ends_with(&chunked[body_at..next_at]), "{step}");
            assert!(h.awaiting_response());
            assert_eq!(
                h.inbox_len(),
                chunked.len() - next_at,
                "the next request waits"
            );
        }
        let cl = b"PUT / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabcGET";
        let (h, out) = request(cl, 1).unwrap();
        assert!(out.ends_with(b"Connection: keep-alive\r\n\r\nabc"));
        assert_eq!(h.inbox_len(), 3);
    }

    #[test]
    fn ambiguous_or_broken_requests_are_refused_never_forwarded() {
        let cases: &[(&[u8], u16)] = &[
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            (b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 400),
            (b"GET /\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
            (b"CONNECT a:443 HTTP/1.1\r\n\r\n", 501),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
                400,
            ),
        ];
        let mut pool = crate::conn::BufPool::new(4, 0);
        for (dev, status) in cases {
            let mut h = Http::default();
            let mut out = Vec::new();
            h.inbox(&mut pool).extend_from_slice(dev);
            let e = h
                .frame_request(&mut out, &fwd())
                .expect_err(&String::from_utf8_lossy(dev));
            assert_eq!(e.status(), *status, "{}", String::from_utf8_lossy(dev));
            if e.status() != 400 || !dev.starts_with(b"POST") {
                assert!(out.is_empty(), "nothing forwarded");
            }
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_REQUEST_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            request(&many, 100).unwrap_err(),
            RequestError::TooManyHeaders
        );
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert_eq!(
            request(&long, 1000).unwrap_err(),
            RequestError::HeadTooLarge
        );
    }

    fn respond(h: &mut Http, backend: &[u8], step: usize) -> (Vec<u8>, Option<Completed>) {
        let mut dev = Vec::new();
        let mut done = None;
        for piece in backend.chunks(step.max(1)) {
            assert!(done.is_none(), "bytes after the end");
            done = h.frame_response(piece, &mut dev).unwrap();
        }
        (dev, done)
    }

    #[test]
    fn responses_end_where_rfc_9112_says_and_persistence_is_decided_per_side() {
        let get11 = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        /// Request, response, what the device gets, backend reusable, device continues.
        type Case<'a> = (&'a [u8], &'a [u8], &'a str, bool, bool);
        let cases: &[Case] = &[
            (
                get11,
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
                true,
                true,
            ),
            (
                get11,
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
                true,
                true,
            ),
            (
                get11,
                b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
                "HTTP/1.1 204 No Content\r\n\r\n",
                false,
                true,
            ),
            (
                b"HEAD / HTTP/1.1\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
                true,
                true,
            ),
            (
                get11,
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                true,
                true,
            ),
            (
                get11,
                b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
                "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx",
                false,
                true,
            ),
            (
                b"GET / HTTP/1.0\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nKeep-Alive: timeout=5\r\n\r\nx",
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
                true,
                false,
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nx",
                true,
                true,
            ),
            (
                b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
                "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
                true,
                false,
            ),
        ];
        for (req, resp, relayed, backend_reusable, device_continues) in cases {
            for step in [1, 5, resp.len()] {
                let (mut h, _) = request(req, req.len()).unwrap();
                let (dev, done) = respond(&mut h, resp, step);
                assert_eq!(String::from_utf8_lossy(&dev), *relayed);
                assert_eq!(
                    done,
                    Some(Completed::Relayed {
                        backend_reusable: *backend_reusable,
                        device_continues: *device_continues
                    }),
                    "{}",
                    String::from_utf8_lossy(resp)
                );
            }
        }
        // Delimited by the close: complete at EOF, nobody continues.
        let (mut h, _) = request(get11, 99).unwrap();
        let (dev, done) = respond(&mut h, b"HTTP/1.0 200 OK\r\n\r\nall of it", 4);
        assert!(done.is_none());
        assert!(dev.ends_with(b"Connection: close\r\n\r\nall of it"));
        assert_eq!(
            h.backend_eof(),
            Ok(Completed::Relayed {
                backend_reusable: false,
                device_continues: false
            })
        );
        // Cut short.
        let (mut h, _) = request(get11, 99).unwrap();
        respond(
            &mut h,
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
            99,
        );
        assert_eq!(h.backend_eof(), Err(ResponseError::Truncated));
    }

    #[test]
    fn a_425_to_an_early_request_is_discarded_and_the_request_sent_again_without_early_data() {
        let mut pool = crate::conn::BufPool::new(4, 0);
        let mut h = Http::default();
        let mut out = Vec::new();
        h.inbox(&mut pool)
            .extend_from_slice(b"GET /e HTTP/1.1\r\nEarly-Data: 1\r\n\r\n");
        h.frame_request(
            &mut out,
            &Forwarding {
                early: true,
                ..fwd()
            },
        )
        .unwrap();
        assert!(String::from_utf8_lossy(&out).contains("Early-Data: 1\r\n"));
        let (dev, done) = respond(
            &mut h,
            b"HTTP/1.1 425 Too Early\r\nContent-Length: 3\r\n\r\nno!",
            2,
        );
        assert!(dev.is_empty(), "not relayed");
        assert_eq!(
            done,
            Some(Completed::TooEarly {
                backend_reusable: true
            })
        );
        assert!(h.rewind_for_retry());
        let mut again = Vec::new();
        h.frame_request(&mut again, &fwd()).unwrap();
        let again = String::from_utf8(again).unwrap();
        assert!(again.starts_with("GET /e HTTP/1.1\r\n") && !again.contains("Early-Data"));
        // Not early: a 425 is relayed like any response.
        let (dev, _) = respond(
            &mut h,
            b"HTTP/1.1 425 Too Early\r\nContent-Length: 0\r\n\r\n",
            99,
        );
        assert!(dev.starts_with(b"HTTP/1.1 425"));
    }

    #[test]
    fn broken_responses_are_errors() {
        for resp in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"[..],
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            let (mut h, _) = request(b"GET / HTTP/1.1\r\n\r\n", 99).unwrap();
            let mut dev = Vec::new();
            assert!(h.frame_response(resp, &mut dev).is_err(), "{resp:?}");
        }
    }
}
