//! HTTP/1.x messages on a reassembled connection: request and response heads (`httparse`),
//! and body framing with linger's own rules (`linger-h1`: the request gate's framing checks,
//! `response_framing`, `BodyDecoder`), so that the end of every message is known. Only a
//! head being read is buffered (at most [`MAX_HEAD`] bytes); bodies are counted, not kept.

use std::collections::VecDeque;

use linger_h1::{BodyDecoder, Framing};
use serde::Serialize;

use crate::tcp::{push_event, Event, Mark, Side};

/// The longest head followed; a longer one stops the tracking of its direction.
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

/// How a message's body is framed, as the report shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "length")]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

impl From<Framing> for Body {
    fn from(f: Framing) -> Self {
        match f {
            Framing::Empty | Framing::Length(0) => Self::None,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked,
            Framing::UntilClose => Self::UntilClose,
        }
    }
}

/// A message whose end did not arrive.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cut {
    /// "FIN" or "RST".
    pub by: &'static str,
    pub at: Mark,
}

#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub method: String,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// `X-Request-Id`, when the request carries one.
    pub id: Option<String>,
    pub start: Mark,
    pub end: Option<Mark>,
    pub body: Body,
    pub body_bytes: u64,
    /// The client asked to close after it (`Connection: close`, or HTTP/1.0 without
    /// keep-alive).
    pub close: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    pub cut: Option<Cut>,
}

/// What a response said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Announced {
    /// `Connection: close`, HTTP/1.0 without keep-alive, or a body ended by the close.
    Close,
    /// `Connection: keep-alive` said outright.
    KeepAlive,
    /// Nothing: HTTP/1.1's persistent default.
    Nothing,
}

#[derive(Debug, Clone, Serialize)]
pub struct Response {
    pub status: u16,
    pub minor: u8,
    pub start: Mark,
    pub end: Option<Mark>,
    pub body: Body,
    pub body_bytes: u64,
    pub announced: Announced,
    /// `Keep-Alive: timeout=N`.
    pub keep_alive_timeout: Option<u64>,
    pub cut: Option<Cut>,
}

/// A head whose framing another hop could read differently (R12).
#[derive(Debug, Clone, Serialize)]
pub struct FramingProblem {
    pub side: Side,
    pub at: Mark,
    pub what: String,
}

#[derive(Debug, Default)]
enum Parser {
    #[default]
    Start,
    Head(Vec<u8>),
    Body(BodyDecoder),
    /// Not followed further (not HTTP/1.x, a protocol switch, a broken body).
    Opaque,
}

/// The HTTP/1.x messages of one connection.
#[derive(Debug, Default)]
pub struct Conversation {
    client: Parser,
    server: Parser,
    pub requests: Vec<Request>,
    pub responses: Vec<Response>,
    /// 1xx responses.
    pub interim: u64,
    pub problems: Vec<FramingProblem>,
    /// Why a direction stopped being followed.
    pub opaque: Vec<(Side, String)>,
    /// Exchanges no longer held (the oldest, answered), see [`Conversation::trim`].
    pub trimmed: usize,
    /// The longest idle age at which one of them was written (all were answered).
    pub trimmed_longest_idle: Option<f64>,
    /// When the last of them ended: the start of the idle time before the first held request.
    pub trimmed_end: Option<f64>,
    /// The first of them that got a final status to `Expect: 100-continue` before its body
    /// was sent, on a connection kept open, with the request after it (R12).
    pub expect_early: Option<Box<(Request, Response, Option<Request>)>>,
}

/// Exchanges held per connection: past twice this many, the oldest answered ones are
/// dropped down to this many, and only counted (with their longest idle age). The detectors
/// read the end of a connection; a keep-alive connection may carry millions of requests.
pub const KEEP_EXCHANGES: usize = 64;
/// Framing problems kept per connection (the first ones).
pub const MAX_PROBLEMS: usize = 16;

/// Whether `resp` is a final status to `req`'s `Expect: 100-continue`, sent before the body
/// was, on a connection kept open.
pub fn answered_before_body(req: &Request, resp: &Response) -> bool {
    req.expect_continue
        && req.body != Body::None
        && resp.status >= 200
        && resp.announced != Announced::Close
        && req.end.is_none_or(|e| e.packet > resp.start.packet)
}

fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    buf[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn keep_alive_timeout(headers: &[httparse::Header<'_>]) -> Option<u64> {
    let h = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("keep-alive"))?;
    let v = std::str::from_utf8(h.value).ok()?;
    v.split(',').find_map(|p| {
        let (k, n) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("timeout")
            .then(|| n.trim().parse().ok())?
    })
}

fn body_text(body: Body) -> String {
    match body {
        Body::None => String::new(),
        Body::Length(n) => format!(", body {n} bytes"),
        Body::Chunked => ", chunked body".into(),
        Body::UntilClose => ", body until the close".into(),
    }
}

impl Conversation {
    /// Requests seen on the connection.
    pub fn request_count(&self) -> usize {
        self.trimmed + self.requests.len()
    }

    /// Responses seen on the connection.
    pub fn response_count(&self) -> usize {
        self.trimmed + self.responses.len()
    }

    /// When the exchange before held request `i` ended: the start of the idle time before
    /// it (`None` for the connection's first request).
    pub fn idle_start(&self, i: usize) -> Option<f64> {
        if i == 0 {
            return self.trimmed_end;
        }
        let prev = self.responses.get(i - 1)?;
        let resp_end = prev.end.unwrap_or(prev.start).time;
        let req_end = self.requests[i - 1].end.map_or(0.0, |m| m.time);
        Some(resp_end.max(req_end))
    }

    /// Drops the oldest answered exchanges past twice [`KEEP_EXCHANGES`], down to that many,
    /// keeping what the report and the detectors read of them.
    pub fn trim(&mut self) {
        if self.requests.len() <= 2 * KEEP_EXCHANGES {
            return;
        }
        let n = (self.requests.len() - KEEP_EXCHANGES).min(self.responses.len().saturating_sub(1));
        if n == 0 {
            return;
        }
        for i in 0..n {
            let idle = (i > 0 || self.trimmed > 0)
                .then(|| self.idle_start(i))
                .flatten()
                .map(|start| self.requests[i].start.time - start);
            if let Some(age) = idle {
                if self.trimmed_longest_idle.is_none_or(|l| age > l) {
                    self.trimmed_longest_idle = Some(age);
                }
            }
            let req = &self.requests[i];
            if self.expect_early.is_none() && answered_before_body(req, &self.responses[i]) {
                self.expect_early = Some(Box::new((
                    req.clone(),
                    self.responses[i].clone(),
                    self.requests.get(i + 1).cloned(),
                )));
            }
        }
        self.trimmed_end = self.idle_start(n);
        self.requests.drain(..n);
        self.responses.drain(..n);
        self.trimmed += n;
    }

    fn problem(&mut self, p: FramingProblem) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p);
        }
    }

    fn parser(&mut self, side: Side) -> &mut Parser {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Bytes that `side` sent, in order.
    pub fn feed(
        &mut self,
        side: Side,
        data: &[u8],
        mark: Mark,
        events: &mut VecDeque<Event>,
        dropped: &mut u64,
    ) {
        let mut pos = 0;
        while pos < data.len() {
            match std::mem::take(self.parser(side)) {
                Parser::Opaque => {
                    *self.parser(side) = Parser::Opaque;
                    return;
                }
                Parser::Start => {
                    // Blank lines may precede a message.
                    while pos < data.len() && matches!(data[pos], b'\r' | b'\n') {
                        pos += 1;
                    }
                    if pos < data.len() {
                        *self.parser(side) = Parser::Head(Vec::new());
                    }
                }
                Parser::Head(mut buf) => {
                    let old = buf.len();
                    let room = MAX_HEAD + 4 - old;
                    let take = (data.len() - pos).min(room);
                    buf.extend_from_slice(&data[pos..pos + take]);
                    match head_end(&buf, old.saturating_sub(3)) {
                        Some(end) => {
                            pos += end - old;
                            buf.truncate(end);
                            let next = self.head(side, &buf, mark, events, dropped);
                            *self.parser(side) = next;
                        }
                        None if buf.len() > MAX_HEAD => {
                            self.stop(side, format!("a head over {MAX_HEAD} bytes"));
                            return;
                        }
                        None => {
                            *self.parser(side) = Parser::Head(buf);
                            return;
                        }
                    }
                }
                Parser::Body(mut dec) => match dec.decode(&data[pos..]) {
                    Ok(step) => {
                        let n = step.data.map_or(0, |r| r.len() as u64);
                        pos += step.consumed;
                        match side {
                            Side::Client => {
                                if let Some(r) = self.requests.last_mut() {
                                    r.body_bytes += n;
                                    if dec.is_done() {
                                        r.end = Some(mark);
                                    }
                                }
                            }
                            Side::Server => {
                                if let Some(r) = self.responses.last_mut() {
                                    r.body_bytes += n;
                                    if dec.is_done() {
                                        r.end = Some(mark);
                                    }
                                }
                            }
                        }
                        if dec.is_done() {
                            let what = match side {
                                Side::Client => "request body ends",
                                Side::Server => "response ends",
                            };
                            push_event(events, dropped, mark, side, what.to_string());
                            *self.parser(side) = Parser::Start;
                        } else {
                            *self.parser(side) = Parser::Body(dec);
                            if step.consumed == 0 {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        self.problem(FramingProblem {
                            side,
                            at: mark,
                            what: format!("{} body: {e}", side_noun(side)),
                        });
                        self.stop(side, format!("a broken body ({e})"));
                        return;
                    }
                },
            }
        }
    }

    fn stop(&mut self, side: Side, why: String) {
        *self.parser(side) = Parser::Opaque;
        self.opaque.push((side, why));
    }

    /// A complete head: records its message, and says how to read what follows.
    fn head(
        &mut self,
        side: Side,
        head: &[u8],
        mark: Mark,
        events: &mut VecDeque<Event>,
        dropped: &mut u64,
    ) -> Parser {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match side {
            Side::Client => {
                let mut req = httparse::Request::new(&mut slots);
                if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
                    self.opaque
                        .push((side, "bytes that are not an HTTP/1.x request".into()));
                    return Parser::Opaque;
                }
                let method = req.method.unwrap_or("").to_string();
                let minor = req.version.unwrap_or(1);
                let (framing, switches) = match linger_h1::check_head(head) {
                    Ok(c) => (c.framing, c.switches),
                    Err(v) => {
                        self.problem(FramingProblem {
                            side,
                            at: mark,
                            what: format!("request head: {}", v.as_str()),
                        });
                        (lenient_framing(req.headers), false)
                    }
                };
                let close = has_token(req.headers, "connection", "close")
                    || (minor == 0 && !has_token(req.headers, "connection", "keep-alive"));
                let id = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("x-request-id"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned());
                let body = Body::from(framing);
                let target = req.path.unwrap_or("").to_string();
                push_event(
                    events,
                    dropped,
                    mark,
                    side,
                    format!("request {method} {target}{}", body_text(body)),
                );
                self.requests.push(Request {
                    method,
                    target,
                    minor,
                    id,
                    start: mark,
                    end: (body == Body::None).then_some(mark),
                    body,
                    body_bytes: 0,
                    close,
                    expect_continue: has_token(req.headers, "expect", "100-continue"),
                    cut: None,
                });
                if switches {
                    self.opaque.push((side, "a protocol switch".into()));
                    return Parser::Opaque;
                }
                next_parser(framing)
            }
            Side::Server => {
                let mut resp = httparse::Response::new(&mut slots);
                if !matches!(resp.parse(head), Ok(httparse::Status::Complete(_))) {
                    self.opaque
                        .push((side, "bytes that are not an HTTP/1.x response".into()));
                    return Parser::Opaque;
                }
                let status = resp.code.unwrap_or(0);
                let minor = resp.version.unwrap_or(1);
                if (100..200).contains(&status) && status != 101 {
                    self.interim += 1;
                    push_event(events, dropped, mark, side, format!("interim {status}"));
                    return Parser::Start;
                }
                let method = self
                    .requests
                    .get(self.responses.len())
                    .map_or("GET", |r| r.method.as_str());
                let framing = match linger_h1::response_framing(method, status, resp.headers) {
                    Ok(f) => {
                        let cl = resp
                            .headers
                            .iter()
                            .any(|h| h.name.eq_ignore_ascii_case("content-length"));
                        if f.must_close && cl && f.framing != Framing::Empty {
                            self.problem(FramingProblem {
                                side,
                                at: mark,
                                what: "response head: both Content-Length and Transfer-Encoding"
                                    .into(),
                            });
                        }
                        f.framing
                    }
                    Err(e) => {
                        self.problem(FramingProblem {
                            side,
                            at: mark,
                            what: format!("response head: {e}"),
                        });
                        Framing::UntilClose
                    }
                };
                let announced = if has_token(resp.headers, "connection", "close")
                    || framing == Framing::UntilClose
                    || (minor == 0 && !has_token(resp.headers, "connection", "keep-alive"))
                {
                    Announced::Close
                } else if has_token(resp.headers, "connection", "keep-alive") {
                    Announced::KeepAlive
                } else {
                    Announced::Nothing
                };
                let body = Body::from(framing);
                let said = match announced {
                    Announced::Close => ", Connection: close",
                    Announced::KeepAlive => ", Connection: keep-alive",
                    Announced::Nothing => "",
                };
                push_event(
                    events,
                    dropped,
                    mark,
                    side,
                    format!("response {status}{}{said}", body_text(body)),
                );
                self.responses.push(Response {
                    status,
                    minor,
                    start: mark,
                    end: (body == Body::None).then_some(mark),
                    body,
                    body_bytes: 0,
                    announced,
                    keep_alive_timeout: keep_alive_timeout(resp.headers),
                    cut: None,
                });
                if status == 101 {
                    self.opaque.push((side, "a protocol switch".into()));
                    return Parser::Opaque;
                }
                next_parser(framing)
            }
        }
    }

    /// `side` sent a FIN or an RST: a body that ends with the close ends here, any other
    /// message in progress is cut.
    pub fn closed(
        &mut self,
        side: Side,
        mark: Mark,
        by: &'static str,
        events: &mut VecDeque<Event>,
        dropped: &mut u64,
    ) {
        let parser = std::mem::replace(self.parser(side), Parser::Opaque);
        let cut = Cut { by, at: mark };
        match parser {
            Parser::Body(mut dec) => {
                let ended = dec.eof().is_ok();
                let text = match side {
                    Side::Client => self.requests.last_mut().map(|r| {
                        r.cut = Some(cut);
                        format!("request body cut by {by} after {} bytes", r.body_bytes)
                    }),
                    Side::Server => self.responses.last_mut().map(|r| {
                        if ended {
                            r.end = Some(mark);
                            "response ends with the close".to_string()
                        } else {
                            r.cut = Some(cut);
                            format!(
                                "response {} cut by {by} after {} body bytes",
                                r.status, r.body_bytes
                            )
                        }
                    }),
                };
                if let Some(text) = text {
                    push_event(events, dropped, mark, side, text);
                }
            }
            Parser::Head(buf) if !buf.is_empty() => {
                let what = format!("a partial {} head cut by {by}", side_noun(side));
                push_event(events, dropped, mark, side, what);
            }
            _ => {}
        }
    }
}

fn side_noun(side: Side) -> &'static str {
    match side {
        Side::Client => "request",
        Side::Server => "response",
    }
}

fn next_parser(framing: Framing) -> Parser {
    match framing {
        Framing::Empty | Framing::Length(0) => Parser::Start,
        f => Parser::Body(BodyDecoder::new(f)),
    }
}

/// How a request that the gate refused would most likely be read: chunked when
/// `Transfer-Encoding` says so, else its first valid `Content-Length`.
fn lenient_framing(headers: &[httparse::Header<'_>]) -> Framing {
    if has_token(headers, "transfer-encoding", "chunked") {
        return Framing::Chunked;
    }
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .find_map(|h| linger_h1::body::parse_length(h.value))
        .map_or(Framing::Empty, Framing::Length)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `(side, bytes)` in order, each as its own packet, then closes `closing` sides.
    fn run(steps: &[(Side, &[u8])], closing: &[(Side, &'static str)]) -> Conversation {
        let mut conv = Conversation::default();
        let (mut events, mut dropped) = (VecDeque::new(), 0);
        let mut n = 0;
        for (side, bytes) in steps {
            n += 1;
            let mark = Mark {
                packet: n,
                time: n as f64,
            };
            conv.feed(*side, bytes, mark, &mut events, &mut dropped);
        }
        for (side, by) in closing {
            n += 1;
            let mark = Mark {
                packet: n,
                time: n as f64,
            };
            conv.closed(*side, mark, by, &mut events, &mut dropped);
        }
        conv
    }

    #[test]
    fn pipelined_requests_and_bodies_split_anywhere_are_followed() {
        let c = run(
            &[
                (
                    Side::Client,
                    b"POST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhel",
                ),
                (Side::Client, b"loGET /b HTTP/1.1\r\n\r\nGET /c HTT"),
                (Side::Client, b"P/1.1\r\n\r\n"),
            ],
            &[],
        );
        let got: Vec<(&str, u64, Option<u64>)> = c
            .requests
            .iter()
            .map(|r| (r.target.as_str(), r.body_bytes, r.end.map(|m| m.packet)))
            .collect();
        assert_eq!(
            got,
            [("/a", 5, Some(2)), ("/b", 0, Some(2)), ("/c", 0, Some(3))]
        );
    }

    #[test]
    fn head_1xx_204_and_304_have_no_body_and_chunked_ends_at_its_last_chunk() {
        let c = run(
            &[
                (
                    Side::Client,
                    b"HEAD / HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
                ),
                (
                    Side::Client,
                    b"GET /y HTTP/1.1\r\n\r\nGET /z HTTP/1.1\r\n\r\n",
                ),
                (
                    Side::Server,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n",
                ),
                (
                    Side::Server,
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                ),
                (
                    Side::Server,
                    b"HTTP/1.1 304 Not Modified\r\ncontent-length: 7\r\n\r\n",
                ),
                (
                    Side::Server,
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab",
                ),
                (Side::Server, b"c\r\n0\r\n\r\n"),
            ],
            &[],
        );
        assert_eq!(c.interim, 1);
        let got: Vec<(u16, Body, Option<u64>)> = c
            .responses
            .iter()
            .map(|r| (r.status, r.body, r.end.map(|m| m.packet)))
            .collect();
        assert_eq!(
            got,
            [
                (200, Body::None, Some(3)),
                (204, Body::None, Some(4)),
                (304, Body::None, Some(5)),
                (200, Body::Chunked, Some(7)),
            ]
        );
        assert_eq!(c.responses[3].body_bytes, 3);
    }

    #[test]
    fn a_close_ends_a_body_that_ends_with_it_and_cuts_any_other() {
        let c = run(
            &[
                (Side::Client, b"GET / HTTP/1.1\r\n\r\n"),
                (Side::Server, b"HTTP/1.0 200 OK\r\n\r\nuntil the close"),
            ],
            &[(Side::Server, "FIN")],
        );
        let r = &c.responses[0];
        assert_eq!((r.body, r.announced), (Body::UntilClose, Announced::Close));
        assert!(r.end.is_some() && r.cut.is_none());
        let c = run(
            &[
                (Side::Client, b"GET / HTTP/1.1\r\n\r\n"),
                (
                    Side::Server,
                    b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
                ),
            ],
            &[(Side::Server, "RST")],
        );
        let r = &c.responses[0];
        assert_eq!(r.cut.map(|c| (c.by, c.at.packet)), Some(("RST", 3)));
        assert_eq!((r.end, r.body_bytes), (None, 4));
    }

    #[test]
    fn ambiguous_framing_is_a_problem_and_bytes_that_are_not_http_stop_the_tracking() {
        let c = run(
            &[
                (
                    Side::Client,
                    b"POST / HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabc",
                ),
                (Side::Server, b"\x16\x03\x01 not http at all\r\n\r\n"),
            ],
            &[],
        );
        assert_eq!(c.problems.len(), 1, "{:?}", c.problems);
        assert!(c.problems[0].what.contains("more than one Content-Length"));
        assert!(c.responses.is_empty());
        assert_eq!(c.opaque.len(), 1);
        assert_eq!(c.opaque[0].0, Side::Server);
    }
}
